"""Slow readers: clients that ask for a lot and never read it.

A download to a client that never reads must end at the file service's
``io_timeout``; a chat subscriber that never reads must be cut once
``max_queue`` bytes wait for it, also when what waits is room history
replayed as it joins.  Meanwhile other clients are served and the
daemon's memory stays bounded.
"""

import threading
import time

import pytest

from msgsrv.wire import auth
from msgsrv.services.chat.client import ChatClient
from msgsrv.wire.frame_stream import FrameStream
from tests.conftest import wait_for
from tests.hostile import campaign
from tests.hostile.attackers import open_tcp, tiny_receiver
from tests.hostile.procwatch import PeakRSS, settle
from tests.hostile.targets import KEY_NAME, SECRET

pytestmark = pytest.mark.timeout(campaign.timeout(60))

IO_TIMEOUT = 1.0
STALLED = 8
FILE_SIZE = 64 << 20
RSS_BOUND_KIB = 32 * 1024


def _stalled_download(address):
    sock = tiny_receiver(address)
    stream = FrameStream(sock)
    stream.send(auth.answer_hello(stream.recv().header, KEY_NAME, SECRET))
    assert stream.recv().type == "authenticated"
    stream.send({"type": "get", "path": "big.bin"})
    return sock  # never read again


def _latency(daemon, name, count=5):
    started = time.monotonic()
    for _ in range(count):
        daemon.ping(name)
    return (time.monotonic() - started) / count


def test_a_download_nobody_reads_ends_at_io_timeout(hostile_daemon):
    daemon = hostile_daemon(["file"], overrides={"file": {
        "io_timeout": str(IO_TIMEOUT), "max_transfers_per_ip": str(STALLED)}})
    with open(daemon.where / "files" / "big.bin", "wb") as stream:
        stream.truncate(FILE_SIZE)
    daemon.ping("file")
    normal = _latency(daemon, "file")
    baseline = daemon.probe.snapshot()
    with PeakRSS(daemon.probe) as peak:
        stalled = [_stalled_download(daemon.address("file")) for _ in range(STALLED)]
        started = time.monotonic()
        during = _latency(daemon, "file")
        peers = {"%s:%d" % sock.getsockname() for sock in stalled}
        closes = lambda: [r for r in daemon.closes("file") if r["peer"] in peers]  # noqa: E731
        wait_for(lambda: len(closes()) >= STALLED, timeout=IO_TIMEOUT + 10,
                 message="the stalled downloads to be closed")
        ended = time.monotonic() - started
    for sock in stalled:
        sock.close()
    durations = sorted(record["duration"] for record in closes())
    assert IO_TIMEOUT <= durations[0] and durations[-1] < IO_TIMEOUT + 3, durations
    assert during < max(0.5, 10 * normal), (normal, during)
    growth = peak.peak_kib - baseline.rss_kib
    assert growth < RSS_BOUND_KIB, "RSS peaked %d KiB above the baseline" % growth
    after = settle(daemon.probe, baseline, timeout=10, rss_slack_kib=RSS_BOUND_KIB)
    daemon.assert_alive()
    daemon.assert_clean_log()
    campaign.record("slow-download", stalled=STALLED, file_mib=FILE_SIZE >> 20,
                    io_timeout=IO_TIMEOUT, all_closed_after_s=round(ended, 2),
                    durations=[round(d, 2) for d in durations], latency_ms_before=round(
                        normal * 1000, 1), latency_ms_during=round(during * 1000, 1),
                    rss_peak_growth_kib=growth, before=str(baseline), after=str(after))


MAX_QUEUE = 8192
LINES = 2000
PAYLOAD = "p" * 2000  # 4 MB in all: more than any kernel buffers between us


class Drain(threading.Thread):
    """Reads a chat connection to its end, counting lines that carry PAYLOAD."""

    def __init__(self, address, nick):
        super().__init__(daemon=True)
        self.sock = open_tcp(address, timeout=20)
        self.sock.sendall(b"/nick %s\n" % nick.encode())
        self.heard = 0
        self.start()

    def run(self):
        pending = b""
        with self.sock:
            for chunk in iter(lambda: self._recv(), b""):
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()
                self.heard += sum(PAYLOAD.encode() in line for line in lines)

    def _recv(self):
        try:
            return self.sock.recv(1 << 16)
        except OSError:
            return b""


def test_a_chat_subscriber_that_never_reads_is_cut_at_max_queue(hostile_daemon):
    daemon = hostile_daemon(["chat"], overrides={"chat": {"max_queue": str(MAX_QUEUE),
                                                          "history": "0"}})
    address = daemon.address("chat")
    silent = tiny_receiver(address)
    silent.sendall(b"/nick silent\n")
    listener, talker = Drain(address, "listener"), Drain(address, "talker")
    wait_for(lambda: {"silent", "listener", "talker"} <= set(_who(address)),
             message="everyone in the lobby")
    baseline = daemon.probe.snapshot()
    with PeakRSS(daemon.probe) as peak:
        talker.sock.sendall("".join("line %d %s\n" % (i, PAYLOAD) for i in range(LINES)).encode())
        wait_for(lambda: listener.heard == LINES, timeout=20, message="the listener to hear all")
    assert "silent" not in _who(address)
    assert "send queue exceeded" in daemon.log
    growth = _bounded_and_closed(daemon, peak.peak_kib - baseline.rss_kib,
                                 (silent, listener.sock, talker.sock))
    campaign.record("slow-chat-subscriber", max_queue=MAX_QUEUE, lines=LINES,
                    line_bytes=len(PAYLOAD), listener_heard=listener.heard,
                    rss_peak_growth_kib=growth)


def _bounded_and_closed(daemon, growth, socks):
    """Check the RSS growth and the daemon; close ``socks``; return the growth."""
    assert growth < RSS_BOUND_KIB, growth
    for sock in socks:
        sock.close()
    daemon.assert_alive()
    return growth


def _who(address, room="lobby"):
    with ChatClient(*address, "who%d" % time.monotonic_ns(), timeout=10) as client:
        return client.who(room)


HISTORY_ROOMS = 10
HISTORY = 200
HISTORY_QUEUE = 1 << 20
LONG_LINE = PAYLOAD * 2  # 4000 bytes: one room's replay (~800 KB) fits in max_queue


def test_history_replays_to_a_client_that_never_reads_are_cut_at_max_queue(hostile_daemon):
    daemon = hostile_daemon(["chat"], overrides={"chat": {
        "max_queue": str(HISTORY_QUEUE), "history": str(HISTORY)}})
    address = daemon.address("chat")
    rooms = ["r%d" % i for i in range(HISTORY_ROOMS)]
    talker = Drain(address, "talker")
    talker.sock.sendall("".join("/join %s\n" % room + "".join(
        "line %d %s\n" % (i, LONG_LINE) for i in range(HISTORY)) for room in rooms).encode())
    wait_for(lambda: talker.heard == HISTORY_ROOMS * HISTORY, timeout=30,
             message="every room's history to fill")
    baseline = daemon.probe.snapshot()
    joins = "".join("/join %s\n" % room for room in rooms).encode()
    with PeakRSS(daemon.probe) as peak:
        silent = tiny_receiver(address)
        silent.sendall(b"/nick silent\n" + joins)  # 8 MB of replays, never read
        reader = Drain(address, "reader")
        # One room at a time: one room's replay fits in max_queue, all ten at once do not,
        # and on a loaded machine a reading client may fall a queue behind like any other.
        for count, room in enumerate(rooms, 1):
            reader.sock.sendall(b"/join %s\n" % room.encode())
            wait_for(lambda: reader.heard == count * HISTORY, timeout=30,
                     message="the reading client to get the replay of %s" % room)
        wait_for(lambda: "send queue exceeded" in daemon.log, timeout=10,
                 message="the silent client to be cut")
    assert "silent" not in _who(address, "r0")
    growth = _bounded_and_closed(daemon, peak.peak_kib - baseline.rss_kib,
                                 (silent, reader.sock, talker.sock))
    campaign.record("slow-history-replay", rooms=HISTORY_ROOMS, history=HISTORY,
                    line_bytes=len(LONG_LINE), max_queue=HISTORY_QUEUE,
                    reader_heard=reader.heard, rss_peak_growth_kib=growth)
