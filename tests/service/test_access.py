"""Access rules and rate limits: pure tests, then real servers over 127.0.0.0/8."""

import configparser
import ipaddress
import logging
import re
import socket
import time

import pytest

from msgsrv.wire import auth
from msgsrv.ops import config as config_module
from msgsrv.services.status import report as status
from msgsrv.net.access import (AccessRules, PenaltyBox, PenaltyRules, RateLimiter, client_address,
                           source_key)
from msgsrv.wire.errors import ConfigError
from msgsrv.net.server import make_server
from msgsrv.ops.settings import Rate, networks, rate
from msgsrv.wire.frame_stream import FrameStream
from tests.conftest import recv_until_closed, service_config, wait_for
from tests.service.test_authed import SECRET, keys_file  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(30)


def nets(text):
    return networks(text)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


# -- rules, without sockets -----------------------------------------------------

@pytest.mark.parametrize("ip, allowed", [
    ("127.0.0.1", True), ("127.9.9.9", True), ("127.0.0.66", False), ("10.0.0.1", False),
    ("::1", True), ("::ffff:127.0.0.5", True), ("::ffff:127.0.0.66", False),
    ("fe80::1%eth0", False), ("junk", False),
])
def test_deny_wins_and_allow_must_match(ip, allowed):
    rules = AccessRules([nets("127.0.0.0/8, ::1")], nets("127.0.0.66"))
    assert (rules.refusal(ip) is None) is allowed


def test_every_allow_level_must_match():
    rules = AccessRules.from_options({"allow": nets("127.0.0.0/24"), "deny": ()},
                                     {"allow": nets("127.0.0.0/8"), "deny": nets("127.0.0.9")})
    assert rules.refusal("127.0.0.1") is None
    assert "not in allow" in rules.refusal("127.1.0.1")
    assert "deny 127.0.0.9/32" in rules.refusal("127.0.0.9")
    assert not AccessRules.from_options({"allow": (), "deny": ()})
    assert AccessRules([], nets("all")).refusal("2001:db8::1") is not None


def test_client_address_maps_ipv4_in_ipv6():
    assert client_address("::ffff:10.1.2.3") == ipaddress.ip_address("10.1.2.3")
    with pytest.raises(ValueError):
        client_address("example.org")


def test_network_and_rate_parsers():
    assert [str(n) for n in nets("10.1.2.3/8 ::1, all")] == [
        "10.0.0.0/8", "::1/128", "0.0.0.0/0", "::/0"]
    with pytest.raises(ValueError, match="bad entry 'nope'"):
        nets("10.0.0.0/8 nope")
    assert rate("20") == Rate(20, 1.0) and str(rate("100/10s")) == "100/10s"
    assert rate("50 per minute") == Rate(50, 60.0) and rate("3/min") == Rate(3, 60.0)
    assert rate("0") is None and rate("") is None and rate("0/s") is None
    for bad in ("x", "20/0", "20/h", "-1", "5 per fortnight"):
        with pytest.raises(ValueError, match="must be a rate"):
            rate(bad)


def test_rate_limiter_penalty_then_recovery():
    clock = FakeClock()
    limiter = RateLimiter(Rate(3, 1.0), penalty=5.0, clock=clock)
    assert [limiter.check("a") for _ in range(3)] == [None] * 3
    assert limiter.check("a") == (5.0, True)
    assert limiter.check("b") is None  # per address
    clock.now += 2.0  # tokens are back, but the penalty is not over
    left, started = limiter.check("a")
    assert left == pytest.approx(3.0) and not started
    clock.now += 3.0
    assert limiter.check("a") is None


def test_rate_limiter_forgets_quiet_addresses():
    clock = FakeClock()
    limiter = RateLimiter(Rate(1, 1.0), penalty=0.5, clock=clock)
    for index in range(1100):
        limiter.check("10.0.%d.%d" % (index // 256, index % 256))
        clock.now += 0.01
    assert len(limiter) < 1100
    clock.now += 2.0
    limiter.check("again")
    assert len(limiter) <= 1100


def test_penalty_box_refuses_a_source_after_n_failures_then_lets_it_back():
    clock = FakeClock()
    box, rules = PenaltyBox(clock), PenaltyRules(failures=3, window=10, time=5, max_time=60)
    assert [box.failed("10.0.0.1", rules) for _ in range(2)] == [None, None]
    assert box.check("10.0.0.1", rules) is None
    assert box.failed("10.0.0.1", rules) == ("10.0.0.1", 5)
    assert box.check("10.0.0.2", rules) is None  # per source
    clock.now += 2
    assert box.check("10.0.0.1", rules) == pytest.approx(3)
    assert box.failed("10.0.0.1", rules) is None  # not counted while penalised
    clock.now += 3
    assert box.check("10.0.0.1", rules) is None
    assert box.check("10.0.0.1", PenaltyRules()) is None  # failures = 0: off


def test_penalty_box_counts_within_a_window_and_doubles_repeats_up_to_the_max():
    clock = FakeClock()
    box, rules = PenaltyBox(clock), PenaltyRules(failures=2, window=10, time=5, max_time=12)
    box.failed("10.0.0.1", rules)
    clock.now += 10  # the window is over: counting starts again
    assert box.failed("10.0.0.1", rules) is None
    lengths = []
    for _ in range(4):
        lengths.append(box.failed("10.0.0.1", rules) or box.failed("10.0.0.1", rules))
        clock.now += lengths[-1][1]
    assert [seconds for _, seconds in lengths] == [5, 10, 12, 12]
    clock.now += 12  # quiet for max_time after the last penalty: a fresh start
    box.failed("10.0.0.1", rules)
    assert box.failed("10.0.0.1", rules) == ("10.0.0.1", 5)


def test_penalty_sources_exemptions_and_bounded_memory():
    assert source_key("2001:db8::1") == source_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert source_key("::ffff:10.1.2.3") == "10.1.2.3"
    clock = FakeClock()
    box = PenaltyBox(clock)
    rules = PenaltyRules(failures=1, exempt=nets("127.0.0.0/8, ::1"), max_sources=3)
    for ip in ("127.0.0.1", "::1", "::ffff:127.0.0.2", "not-an-ip"):
        assert box.failed(ip, rules) is None and box.check(ip, rules) is None
    assert len(box) == 0
    assert box.failed("2001:db8::1", rules)[0] == "2001:db8::/64"
    assert box.check("2001:db8::2", rules) == pytest.approx(60)
    for index in range(5):
        clock.now += 1
        box.failed("10.0.0.%d" % index, rules)
    assert len(box) == 3  # the least recent failures were forgotten first
    assert box.check("10.0.0.4", rules) and box.check("2001:db8::1", rules) is None
    rules = PenaltyRules(failures=3, window=1, max_time=1)
    for index in range(3000):  # quiet sources are pruned as the table grows
        box.failed("10.1.%d.%d" % (index // 256, index % 256), rules)
        clock.now += 0.01
    assert len(box) < 2048


# -- real servers over 127.0.0.0/8 ---------------------------------------------

def connect_from(server, source, timeout=5.0):
    sock = socket.socket()
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", server.port))
    return sock


def echo_from(server, source, data=b"hi"):
    with connect_from(server, source) as sock:
        sock.sendall(data)
        return sock.recv(100)


def full_config(text):
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str
    parser.read_string(text)
    return config_module.from_parser(parser, "<test>")


def test_allow_list_admits_and_refuses_by_source(start_service):
    server = start_service("echo", allow="127.0.0.1, 127.0.0.3", deny="127.0.0.3")
    assert echo_from(server, "127.0.0.1") == b"hi"
    for source in ("127.0.0.2", "127.0.0.3"):
        started = time.monotonic()
        with connect_from(server, source) as sock:
            assert recv_until_closed(sock) == b""
        assert time.monotonic() - started < 2.0
    assert server.counters.snapshot()["refused_access"] == 2
    assert server.counters.snapshot()["connections_total"] == 1


def test_global_deny_applies_to_every_service():
    config = full_config("[msgsrv]\ndeny = 127.0.0.2\nallow = 127.0.0.0/8\n"
                         "[service:a]\nhandler = echo\n[service:b]\nhandler = echo\n"
                         "allow = 127.0.0.1, 127.0.0.2\n")
    servers = [make_server(service, global_options=config.options) for service in config.services]
    try:
        for server in servers:
            server.serve_in_thread()
            assert echo_from(server, "127.0.0.1") == b"hi"
            with connect_from(server, "127.0.0.2") as sock:
                assert recv_until_closed(sock) == b""
        with connect_from(servers[1], "127.0.0.4") as sock:
            assert recv_until_closed(sock) == b""
        assert echo_from(servers[0], "127.0.0.4") == b"hi"
    finally:
        for server in servers:
            server.stop(2.0)


def test_rate_limit_refuses_with_busy_then_penalty(start_service, caplog):
    server = start_service("tests.plugins:BlockingFramed", rate_limit="2/10s", rate_penalty=30)
    held = [connect_from(server, "127.0.0.3") for _ in range(2)]
    for _ in range(3):
        with connect_from(server, "127.0.0.3") as sock:
            refusal = FrameStream(sock).recv()
        assert refusal.header["code"] == "busy"
        assert "rate_limit=2/10s" in refusal.header["message"]
    with connect_from(server, "127.0.0.4") as other:
        stream = FrameStream(other)
        stream.send({"type": "ping"})
        assert stream.recv().type == "pong"
    counters = server.counters.snapshot()
    assert counters["refused_rate"] == 3 and counters["connections_total"] == 3
    assert caplog.text.count("over rate_limit") == 1  # the flood is logged once
    for sock in held:
        sock.close()


def test_reconfigure_applies_to_new_connections_only(start_service):
    server = start_service("echo")
    old = connect_from(server, "127.0.0.2")
    old.sendall(b"a")
    assert old.recv(10) == b"a"
    before = server.config
    server.reconfigure(service_config("echo", allow="127.0.0.1", max_connections=5))
    with connect_from(server, "127.0.0.2") as refused:
        assert recv_until_closed(refused) == b""
    old.sendall(b"b")
    assert old.recv(10) == b"b"  # the open connection keeps working
    assert server.config["max_connections"] == 5
    server.reconfigure(before)
    assert echo_from(server, "127.0.0.2") == b"hi"
    old.close()


def test_reconfigure_failure_changes_nothing(start_service, tmp_path):
    server = start_service("echo")
    before = server.config
    with pytest.raises(ConfigError, match=r"\[service:svc\] tls_cert/tls_key: cannot load"):
        server.reconfigure(service_config("echo", tls_cert=tmp_path / "missing.pem",
                                          allow="127.0.0.9"))
    assert server.config is before and not server.access
    assert echo_from(server, "127.0.0.2") == b"hi"


def test_udp_deny_drops_and_counts(start_service):
    server = start_service("echo", transport="udp", deny="127.0.0.2")
    sockets = {}
    for source in ("127.0.0.2", "127.0.0.1"):  # served in order: the denied one goes first
        sockets[source] = sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((source, 0))
        sock.settimeout(5)
        sock.sendto(b"x", ("127.0.0.1", server.port))
    assert sockets["127.0.0.1"].recv(10) == b"x"
    sockets["127.0.0.2"].setblocking(False)
    with pytest.raises(BlockingIOError):
        sockets["127.0.0.2"].recv(10)
    counters = server.counters.snapshot()
    assert counters["refused_access"] == 1 and counters["datagrams"] == 1
    for sock in sockets.values():
        sock.close()


def test_tls_on_udp_is_a_config_error():
    with pytest.raises(ConfigError, match="tls_cert needs transport tcp"):
        make_server(service_config("echo", transport="udp", tls_cert="/x.pem"))


def authenticate_from(server, source, secret="wrong-wrong-wrong-wrong", reply=True):
    """One auth attempt from ``source``: the reply frame (hello skipped) or the refusal;
    without ``reply`` the open socket, the attempt sent (failures are counted on receipt)."""
    sock = connect_from(server, source)
    stream = FrameStream(sock)
    first = stream.recv()
    if first.type == "hello":
        stream.send(auth.answer_hello(first.header, "alice", secret))
        if not reply:
            return sock
        first = stream.recv()
    sock.close()
    return first


def first_frame_from(server, source):
    with connect_from(server, source) as sock:
        return FrameStream(sock).recv()


def test_auth_failures_penalise_the_source_for_a_while(start_service, keys_file, caplog):
    server = start_service("tests.plugins:AuthedEcho", keys_file=keys_file,
                           auth_penalty_failures=3, auth_penalty_time=1,
                           auth_penalty_exempt="127.0.0.1")
    early = connect_from(server, "127.0.0.2")  # opened before the penalty
    hello = FrameStream(early).recv()
    with caplog.at_level(logging.WARNING, "msgsrv.server"):
        pending = [authenticate_from(server, source, reply=False)
                   for source in ["127.0.0.1"] * 4 + ["127.0.0.2"] * 3]
        wait_for(lambda: server.auth_penalty_left(("127.0.0.2", 0)), message="the penalty")
        refusals = [first_frame_from(server, "127.0.0.2") for _ in range(3)]
    for refusal in refusals:  # at admission: no hello, no handler
        assert refusal.header["code"] == "busy"
        assert re.fullmatch(r"too many failed authentications from this address, refused "
                            r"for [01]\.[0-9]s more", refusal.header["message"])
    assert caplog.text.count("127.0.0.2 penalised: 3 failed authentications within 60s, "
                             "refused for 1s") == 1
    # The exempt address and other sources are served; an open connection gets no guess.
    assert authenticate_from(server, "127.0.0.1", SECRET).type == "authenticated"
    assert authenticate_from(server, "127.0.0.3", SECRET).type == "authenticated"
    stream = FrameStream(early)
    stream.send(auth.answer_hello(hello.header, "alice", SECRET))
    assert stream.recv().header["code"] == "busy" and recv_until_closed(early) == b""
    for sock in pending + [early]:
        sock.close()
    wait_for(lambda: authenticate_from(server, "127.0.0.2", SECRET).type == "authenticated",
             timeout=5, message="the penalty to end")
    counters = server.counters.snapshot()
    assert counters["auth_failures"] == 7 and counters["auth_penalties"] == 1
    entry = status.service_status(server, time.time())
    assert entry["refused"]["auth_penalty"] == counters["refused_auth_penalty"] >= 4
    assert entry["counters"]["auth_failures"] == 7


def test_auth_penalty_survives_a_reload_and_follows_its_rules(start_service, keys_file):
    options = dict(keys_file=keys_file, auth_penalty_failures=1, auth_penalty_time=60,
                   auth_penalty_exempt="")
    server = start_service("tests.plugins:AuthedEcho", **options)
    authenticate_from(server, "127.0.0.2")
    assert first_frame_from(server, "127.0.0.2").header["code"] == "busy"
    server.reconfigure(service_config("tests.plugins:AuthedEcho",
                                      **dict(options, auth_penalty_window=30)))
    assert first_frame_from(server, "127.0.0.2").header["code"] == "busy"
    before = server.config
    server.reconfigure(service_config("tests.plugins:AuthedEcho",
                                      **dict(options, auth_penalty_failures=0)))
    assert authenticate_from(server, "127.0.0.2", SECRET).type == "authenticated"
    server.reconfigure(before)
    assert first_frame_from(server, "127.0.0.2").header["code"] == "busy"
