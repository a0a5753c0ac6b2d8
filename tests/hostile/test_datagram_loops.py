"""Datagram reflection and loops against the daemon: spoofed datagrams through a raw socket.

One spoofed datagram "from" one daemon's UDP echo to another's starts a
ping-pong; the per-address reply limit must end it.  Floods of spoofed
sources must cost bounded memory and one log line per reason and period.
Counters are read through each daemon's status service.
"""

import time

import pytest

from msgsrv.services.status.client import StatusClient
from msgsrv.ops.settings import SERVICE_SETTINGS
from tests.conftest import wait_for
from tests.hostile import campaign
from tests.hostile.attackers import SpoofedUDP

pytestmark = pytest.mark.timeout(campaign.timeout(60))

SERVICES = ["echo-udp", "status"]
#: The suite's echo-udp lifts reply_rate (all its clients are 127.0.0.1): put the defaults back.
DEFAULTS = {s.name: s.default for s in SERVICE_SETTINGS
            if s.name in ("reply_rate", "reply_burst", "reply_sources_max")}
BURST = int(DEFAULTS["reply_burst"])
RATE = int(DEFAULTS["reply_rate"].split("/")[0])
TABLE_MAX = int(DEFAULTS["reply_sources_max"])
FLOOD_SOURCES = campaign.pick(3 * TABLE_MAX, 1_000_000)
CHUNK = 200  # datagrams sent before waiting for the daemon: fewer than its socket buffer holds


@pytest.fixture
def spoofer():
    """A SpoofedUDP sender; the test is skipped where raw sockets are not permitted."""
    try:
        sender = SpoofedUDP()
    except PermissionError as exc:
        pytest.skip("raw sockets are not permitted here (%s): needs root or CAP_NET_RAW" % exc)
    with sender:
        yield sender


def echo_entry(daemon):
    """The echo-udp entry of the daemon's status document."""
    with StatusClient(*daemon.address("status"), timeout=5) as client:
        return next(s for s in client.status()["services"] if s["name"] == "echo-udp")


def datagrams(daemon):
    return echo_entry(daemon)["counters"].get("datagrams", 0)


def two_daemons(hostile_daemon, **options):
    return [hostile_daemon(SERVICES, overrides={"echo-udp": dict(DEFAULTS, **options)})
            for _ in range(2)]


def test_without_a_reply_limit_the_spoofed_loop_goes_on(hostile_daemon, spoofer):
    """The attack itself (reply_rate 0): proof that the next test's loop is a real one."""
    a, b = two_daemons(hostile_daemon, reply_rate="0")
    spoofer.send(a.address("echo-udp"), b.address("echo-udp"), b"ping-pong")
    wait_for(lambda: datagrams(a), message="the loop to start")
    started, first = time.monotonic(), datagrams(b)
    time.sleep(1.0)  # a measuring window, not a wait for readiness
    later = datagrams(b)
    rate = (later - first) / (time.monotonic() - started)
    campaign.record("udp-loop-unlimited", datagrams_per_second_each_way=round(rate))
    assert later > first + 100


def test_spoofed_loop_between_two_daemons_dies_out(hostile_daemon, spoofer):
    a, b = two_daemons(hostile_daemon)
    started = time.monotonic()
    spoofer.send(a.address("echo-udp"), b.address("echo-udp"), b"ping-pong")
    entries = wait_for(lambda: _dropped([echo_entry(a), echo_entry(b)]),
                       message="a reply to be dropped")
    elapsed = time.monotonic() - started
    exchanged = sum(entry["counters"]["datagrams"] for entry in entries)
    campaign.record("udp-loop-limited", exchanged=exchanged, died_within_s=round(elapsed, 3),
                    reply_burst=BURST)
    # Each side answers a burst, plus what its bucket refills while the loop runs.
    assert BURST < exchanged <= 2 * (BURST + RATE * elapsed) + 2 and elapsed < 2.0
    assert [datagrams(a), datagrams(b)] == [e["counters"]["datagrams"] for e in entries]
    for daemon in (a, b):
        daemon.assert_clean_log()


def _dropped(entries):
    return entries if any(e["refused"].get("reply_rate") for e in entries) else None


def test_spoofed_source_flood_costs_bounded_memory_and_few_log_lines(hostile_daemon, spoofer):
    daemon = hostile_daemon(SERVICES, overrides={"echo-udp": DEFAULTS})
    target = daemon.address("echo-udp")
    before = daemon.probe.snapshot()
    snapshots = {}
    for start in range(0, FLOOD_SOURCES, CHUNK):
        for index in range(start, min(start + CHUNK, FLOOD_SOURCES)):
            spoofer.send(("127.%d.%d.%d" % (1 + index // 65025 % 254, index // 255 % 255,
                                            1 + index % 255), 40000), target, b"x")
        sent = min(start + CHUNK, FLOOD_SOURCES)
        wait_for(lambda: datagrams(daemon) >= sent, message="%d datagrams served" % sent)
        if sent == TABLE_MAX:
            snapshots["full"] = daemon.probe.snapshot()
    full, after = snapshots["full"], daemon.probe.snapshot()
    for index in range(2000):  # drops of two kinds, each a flood
        spoofer.send(("127.0.9.%d" % (1 + index % 250), 19), target, b"chargen")
        spoofer.send(target, target, b"myself")
        if index % (CHUNK // 2) == CHUNK // 2 - 1:
            wait_for(lambda: sum(echo_entry(daemon)["refused"].values()) >= 2 * (index + 1))
    entry = echo_entry(daemon)
    campaign.record("udp-spoofed-flood", sources=FLOOD_SOURCES, before=str(before),
                    table_full=str(full), after=str(after), refused=entry["refused"],
                    replies=entry["counters"]["replies"])
    assert entry["counters"]["replies"] == FLOOD_SOURCES  # each a new address: a full burst
    assert entry["refused"]["privileged_port"] == entry["refused"]["own_address"] == 2000
    # Past reply_sources_max the table forgets as it learns: no growth (each entry ~0.4 KiB).
    assert after.rss_kib - full.rss_kib < 2 * 1024
    for counter in ("privileged_port", "own_address"):
        assert daemon.log.count("refused_%s" % counter) == 1
    daemon.assert_alive()
    daemon.assert_clean_log()
