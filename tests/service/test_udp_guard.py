"""UDP services are neither reflectors nor loops: privileged source ports, the daemon's own
listeners, per-address reply limits, drops counted and logged once per period."""

import logging
import os
import socket
import threading
import time

import pytest

from msgsrv.ops import config as config_module
from msgsrv.ops.daemon import Daemon
from msgsrv.net.datagram import DropLog, Listeners, ReplyLimiter, is_local_address, source_refusal
from msgsrv.ops.running import Registry
from tests.conftest import service_config, wait_for
from tests.hostile.attackers import SpoofedUDP

pytestmark = pytest.mark.timeout(30)

LOCAL = "127.0.0.1"


class Clock:
    """A settable monotonic clock."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


# -- the decisions, without sockets -------------------------------------------

def _local(ip):
    return ip in ("10.1.2.3", "::1", "127.0.0.1")


LISTENERS = Listeners([("127.0.0.1", 5000), ("0.0.0.0", 6000), ("::", 6001),
                       ("10.9.9.9", 7000)], is_local=_local)

DECISIONS = [
    # (source ip, source port, udp_min_source_port, expected counter or None)
    ("192.0.2.1", 7, 1024, "privileged_port"),       # echo
    ("192.0.2.1", 19, 1024, "privileged_port"),      # chargen
    ("192.0.2.1", 1023, 1024, "privileged_port"),
    ("192.0.2.1", 1024, 1024, None),
    ("192.0.2.1", 53, 0, None),                      # 0 disables the rule...
    ("192.0.2.1", 0, 0, "privileged_port"),          # ...but port 0 cannot be answered
    ("192.0.2.1", 80, 50, None),
    ("127.0.0.1", 5000, 1024, "own_address"),        # a specific listener
    ("::ffff:127.0.0.1", 5000, 1024, "own_address"),  # the same, IPv4-mapped
    ("127.0.0.2", 5000, 1024, None),
    ("127.0.0.1", 5001, 1024, None),
    ("10.1.2.3", 6000, 1024, "own_address"),         # a wildcard listener: any local ip
    ("192.0.2.1", 6000, 1024, None),                 # ...but not another host
    ("::1", 6001, 1024, "own_address"),
    ("10.9.9.9", 7000, 1024, "own_address"),
    ("127.0.0.1", 7000, 1024, None),
    ("127.0.0.1", 1000, 1024, "privileged_port"),    # the port rule comes first
]


@pytest.mark.parametrize("ip, port, min_port, expected", DECISIONS)
def test_source_refusal_decisions(ip, port, min_port, expected):
    drop = source_refusal(ip, port, min_port, LISTENERS)
    assert (drop and drop.counter) == expected


def test_the_local_address_test_runs_only_for_wildcard_ports_and_is_cached():
    asked = []
    listeners = Listeners([("0.0.0.0", 6000)], is_local=lambda ip: asked.append(ip))
    for _ in range(3):
        listeners.match("192.0.2.7", 6000)
        listeners.match("192.0.2.7", 6002)
    assert asked == ["192.0.2.7"]
    for index in range(Listeners._CACHE_MAX):  # a spoofed flood: the cache starts over
        listeners.match("10.0.%d.%d" % divmod(index, 256), 6000)
    listeners.match("192.0.2.7", 6000)
    assert asked.count("192.0.2.7") == 2


def test_is_local_address():
    assert is_local_address("127.0.0.1") and is_local_address("::ffff:127.0.0.5")
    assert not is_local_address("192.0.2.1")  # TEST-NET-1: never a host's address


def test_reply_limiter_burst_then_rate():
    clock = Clock()
    limiter = ReplyLimiter(rate=10.0, burst=3, max_sources=100, clock=clock)
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b")  # per address
    clock.now += 0.1
    assert [limiter.allow("a") for _ in range(2)] == [True, False]
    clock.now += 10
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]  # no more than a burst


def test_reply_limiter_table_is_bounded_least_recent_first():
    clock = Clock()
    limiter = ReplyLimiter(rate=1.0, burst=1, max_sources=2, clock=clock)
    assert limiter.allow("a") and limiter.allow("b")
    assert not limiter.allow("a")           # a is the most recent now
    assert limiter.allow("c")               # b is forgotten, a kept
    assert len(limiter) == 2 and not limiter.allow("a")
    assert limiter.allow("b")               # forgotten: a full burst again
    for index in range(10000):
        limiter.allow("spoofed-%d" % index)
    assert len(limiter) == 2


def test_drop_log_once_per_period_per_reason():
    clock = Clock()
    drops = DropLog(period=60, clock=clock)
    assert drops.first("reply_rate") and drops.first("too_large")
    assert not any(drops.first("reply_rate") for _ in range(500))
    clock.now += 59
    assert drops.due() == []
    clock.now += 1
    assert drops.due() == [("reply_rate", 500, 60)]   # too_large had no more: forgotten
    assert drops.due() == []
    assert drops.first("too_large")
    assert not drops.first("reply_rate")               # still within reply_rate's new period
    clock.now += 60
    assert drops.due() == [("reply_rate", 1, 60)]
    clock.now += 60
    assert drops.due() == [] and drops.first("reply_rate")


# -- real services ---------------------------------------------------------------

def spoof(source, destination, payload):
    """Send one UDP datagram claiming to come from ``source`` (skip unless raw sockets work)."""
    try:
        sender = SpoofedUDP()
    except PermissionError as exc:
        pytest.skip("raw sockets are not permitted here (%s): needs root or CAP_NET_RAW" % exc)
    with sender:
        sender.send(source, destination, payload)


def counter(server, name):
    return server.counters.snapshot().get(name, 0)


def udp_socket(port=0):
    """A UDP socket on 127.0.0.1 (``port``: skip unless this process may bind it)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((LOCAL, port))
    except PermissionError:
        sock.close()
        pytest.skip("binding port %d needs root (uid %d)" % (port, os.geteuid()))
    sock.settimeout(5)
    return sock


def test_spoofed_loop_between_two_independent_echo_services_dies_out(start_service):
    a = start_service("echo", name="a", transport="udp")
    b = start_service("echo", name="b", transport="udp")
    started = time.monotonic()
    spoof((LOCAL, a.port), (LOCAL, b.port), b"ping-pong")
    # One datagram is in flight at a time: once a reply is dropped the loop is over.
    wait_for(lambda: counter(a, "refused_reply_rate") + counter(b, "refused_reply_rate"),
             message="one side to drop a reply")
    took = time.monotonic() - started
    exchanged = counter(a, "datagrams") + counter(b, "datagrams")
    burst, rate = b.config["reply_burst"], b.config["reply_rate"]
    refilled = 2 * rate.count / rate.per * took  # both buckets refill while it runs
    assert burst < exchanged <= 2 * burst + refilled + 2, (exchanged, took)
    assert counter(a, "replies") + counter(b, "replies") == exchanged - 1


def test_loop_with_a_reflector_that_never_stops_dies_out(start_service):
    """Without raw sockets: the test's own socket answers everything the service sends."""
    # A rate that refills nothing meanwhile, so exactly the burst is answered.
    server = start_service("echo", transport="udp", reply_burst=50, reply_rate="1/m")
    reflected = []
    with udp_socket() as reflector:
        reflector.settimeout(0.5)

        def reflect():
            while True:
                try:
                    data, address = reflector.recvfrom(100)
                except socket.timeout:
                    return
                reflected.append(data)
                reflector.sendto(data, address)
        thread = threading.Thread(target=reflect)
        thread.start()
        reflector.sendto(b"loop", (LOCAL, server.port))
        wait_for(lambda: counter(server, "refused_reply_rate"), message="a dropped reply")
        thread.join(5)
    assert counter(server, "replies") == len(reflected) == 50
    assert counter(server, "datagrams") == 51


@pytest.mark.parametrize("port", [7, 19, 1023])
def test_privileged_source_ports_are_not_answered(start_service, port):
    server = start_service("echo", transport="udp")
    with udp_socket(port) as privileged, udp_socket() as normal:
        privileged.sendto(b"chargen?", (LOCAL, server.port))
        normal.sendto(b"hi", (LOCAL, server.port))  # served after the privileged one
        assert normal.recv(10) == b"hi"
        privileged.setblocking(False)
        with pytest.raises(BlockingIOError):
            privileged.recv(10)
    wait_for(lambda: counter(server, "replies") == 1)  # counted once sent: maybe after our recv
    assert counter(server, "refused_privileged_port") == 1


def test_udp_min_source_port_zero_answers_every_port(start_service):
    server = start_service("echo", transport="udp", udp_min_source_port=0)
    with udp_socket(1023) as sock:
        sock.sendto(b"hi", (LOCAL, server.port))
        assert sock.recv(10) == b"hi"


def test_reply_rate_drops_are_counted_and_logged_once_per_period(start_service, caplog):
    server = start_service("echo", transport="udp", reply_rate="1/s", reply_burst=2)
    clock = Clock()
    server.drops = DropLog(60, clock=clock)
    with caplog.at_level(logging.WARNING, "msgsrv.server"), udp_socket() as sock:
        for _ in range(30):
            sock.sendto(b"x", (LOCAL, server.port))
        wait_for(lambda: counter(server, "refused_reply_rate") == 28, message="28 drops")
        lines = [r.getMessage() for r in caplog.records if "refused_reply_rate" in r.getMessage()]
        assert len(lines) == 1 and "over reply_rate=1/1s (reply_burst=2)" in lines[0]
        clock.now += 60
        wait_for(lambda: "dropped 27 more (refused_reply_rate) in the last 60s" in caplog.text,
                 message="the period's summary line")
        assert [sock.recv(10) for _ in range(2)] == [b"x", b"x"]
    assert counter(server, "replies") == 2 and counter(server, "datagrams") == 30


def test_plain_socketserver_plugins_are_limited_and_counted_too(start_service):
    server = start_service("tests.plugins:DatagramShout", transport="udp", reply_burst=1)
    with udp_socket() as sock:
        sock.sendto(b"abc", (LOCAL, server.port))
        sock.sendto(b"def", (LOCAL, server.port))
        assert sock.recv(10) == b"ABC"
        wait_for(lambda: counter(server, "refused_reply_rate") == 1)
    assert counter(server, "bytes_out") == 3 and counter(server, "replies") == 1


def test_reload_keeps_the_reply_table_unless_its_settings_change(start_service):
    server = start_service("echo", transport="udp", reply_burst=5)
    with udp_socket() as sock:
        sock.sendto(b"x", (LOCAL, server.port))
        assert sock.recv(10) == b"x"
    table = server.replies
    server.reconfigure(service_config("echo", transport="udp", reply_burst=5, max_datagram=9))
    assert server.replies is table and len(table) == 1
    server.reconfigure(service_config("echo", transport="udp", reply_burst=6))
    assert server.replies is not table and server.replies.burst == 6
    server.reconfigure(service_config("echo", transport="udp", reply_rate=0,
                                      udp_min_source_port=7))
    assert server.replies is None and server.min_source_port == 7


def test_registry_addresses_follow_adds_and_removes():
    class Fake:
        def __init__(self, name, transport, address):
            self.name, self.server_address = name, address
            self.config = service_config("echo", transport=transport)
    registry = Registry()
    registry.add(Fake("u", "udp", ("127.0.0.1", 5)))
    registry.add(Fake("t", "tcp", ("127.0.0.1", 6)))
    registry.add(Fake("v", "udp", ("::1", 7, 0, 0)))
    udp = registry.addresses("udp")
    assert udp == {("127.0.0.1", 5), ("::1", 7)} and registry.addresses("udp") is udp
    assert registry.addresses("tcp") == {("127.0.0.1", 6)}
    registry.remove("u")
    assert registry.addresses("udp") == {("::1", 7)}
    registry.clear()
    assert registry.addresses("udp") == frozenset()


DAEMON_CONFIG = "[msgsrv]\n" + "".join(
    "[service:%s]\nhandler = echo\ntransport = udp\nport = 0\n" % name for name in ("a", "b"))


@pytest.fixture
def two_udp_echoes(tmp_path):
    """An in-process Daemon serving UDP echo services ``a`` and ``b``; stopped at teardown."""
    path = tmp_path / "two.ini"
    path.write_text(DAEMON_CONFIG)
    daemon = Daemon(config_module.load(str(path)))
    daemon.start()
    yield daemon, path
    daemon.stop()


def test_spoofed_datagram_from_a_sibling_listener_is_not_answered(two_udp_echoes):
    daemon, path = two_udp_echoes
    a, b = daemon.servers["a"], daemon.servers["b"]
    spoof((LOCAL, a.port), (LOCAL, b.port), b"from a")
    wait_for(lambda: counter(b, "refused_own_address") == 1, message="b to drop it")
    assert counter(b, "replies") == 0 and counter(a, "datagrams") == 0
    # After a reload without a, its old address is nobody's: answered, then the rate ends it.
    path.write_text(DAEMON_CONFIG.split("[service:a]")[0] + "[service:b]"
                    + DAEMON_CONFIG.split("[service:b]")[1])
    daemon.reload()
    assert "a" not in daemon.servers and daemon.servers["b"] is b
    with udp_socket(a.port) as old_a:
        spoof((LOCAL, a.port), (LOCAL, b.port), b"again")
        assert old_a.recv(10) == b"again"
    wait_for(lambda: counter(b, "replies") == 1)
    assert counter(b, "refused_own_address") == 1
