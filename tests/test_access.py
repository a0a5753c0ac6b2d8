"""Access rules and rate limits: pure tests, then real servers over 127.0.0.0/8."""

import configparser
import ipaddress
import socket
import time

import pytest

from msgsrv import config as config_module
from msgsrv.access import AccessRules, RateLimiter, client_address
from msgsrv.errors import ConfigError
from msgsrv.server import make_server
from msgsrv.settings import Rate, networks, rate
from msgsrv.stream import FrameStream
from tests.conftest import recv_until_closed, service_config

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
    undo = server.reconfigure(service_config("echo", allow="127.0.0.1", max_connections=5))
    with connect_from(server, "127.0.0.2") as refused:
        assert recv_until_closed(refused) == b""
    old.sendall(b"b")
    assert old.recv(10) == b"b"  # the open connection keeps working
    assert server.config["max_connections"] == 5
    undo()
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
