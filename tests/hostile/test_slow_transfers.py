"""Slow transfers: trickled uploads, sipped downloads and command output must not lock anyone out.

More stuck transfers than the service has threads (``max_threads``) must
leave a fresh client's hello, auth, stat, small get and list as fast as
ever; the daemon's memory grows by the transfer buffers of the admitted ones
only; a transfer slower than ``min_transfer_rate`` is closed after
``transfer_rate_window`` seconds of waiting.  docs/ROBUSTNESS.rst, "Slow
transfers and the thread and buffer budget", quotes the figures.
"""

import io
import select
import threading
import time

import pytest

from msgsrv.wire import auth
from msgsrv.services.files import transfer
from msgsrv.services.command.client import CommandClient
from msgsrv.services.files.client import FileClient
from msgsrv.wire.frame_stream import FrameStream
from tests.conftest import wait_for
from tests.hostile import campaign
from tests.hostile.attackers import measure_latency, open_tcp, tiny_receiver
from tests.hostile.procwatch import PeakRSS, settle
from tests.hostile.targets import KEY_NAME, SECRET

pytestmark = pytest.mark.timeout(campaign.timeout(90))

UPLOAD_BUFFERS_KIB = (transfer.DEPTH + 1) * transfer.SERVER_CHUNK // 1024
HASH_BUFFERS_KIB = transfer.SERVER_CHUNK // 1024
RSS_SLACK_KIB = 8 * 1024  # interpreter noise, connection state, the allocator's rounding
FRESH_BOUND = 1.5  # seconds for hello + auth + stat + small get + list on a loaded 2-core box
SMALL = b"s" * 1000


def _authenticated(address):
    sock = open_tcp(address, timeout=10)
    stream = FrameStream(sock)
    stream.send(auth.answer_hello(stream.recv().header, KEY_NAME, SECRET))
    assert stream.recv().type == "authenticated"
    return sock, stream


def _start_upload(address, index, size=1 << 20):
    """An authenticated put; returns (socket, stream, the server's first reply)."""
    sock, stream = _authenticated(address)
    stream.send({"type": "put", "path": "slow-%d.bin" % index, "size": size, "overwrite": True})
    return sock, stream, stream.recv()


def _start_download(address, index):
    """An anonymous get of big.bin on a tiny receive buffer; (socket, stream, first reply)."""
    sock = tiny_receiver(address)
    stream = FrameStream(sock)
    assert stream.recv().type == "hello"
    stream.send({"type": "get", "path": "big.bin"})
    return sock, stream, stream.recv()


class Trickle(threading.Thread):
    """Every ``interval`` seconds, sends ``chunk`` to each socket (or, with ``sip``,
    reads up to ``sip`` bytes from each) until stopped."""

    def __init__(self, socks=(), chunk=b"x", interval=0.1, sip=0):
        super().__init__(daemon=True)
        self.socks, self.chunk, self.interval, self.sip = list(socks), chunk, interval, sip
        self.halt = threading.Event()
        self.start()

    def add(self, sock):
        """Trickle to ``sock`` too from now on."""
        self.socks = self.socks + [sock]

    def run(self):
        while not self.halt.wait(self.interval):
            for sock in self.socks:
                try:
                    if self.sip:
                        sock.recv(self.sip)
                    else:
                        sock.send(self.chunk)
                except OSError:
                    pass

    def stop(self):
        self.halt.set()
        self.join(5)


def _fresh_client(address):
    """What a fresh client does: hello, auth, stat, a small get, a list."""
    client = FileClient(address[0], address[1], KEY_NAME, SECRET, timeout=10)
    try:
        assert client.stat("").kind == "dir"
        local = io.BytesIO()
        client.get("small.bin", local)
        assert local.getvalue() == SMALL
        client.list("")
    finally:
        client.close()


#: case -> (file service options, transfers opened, how many are admitted, opener,
#: Trickle options, transfer buffers of one admitted transfer in KiB).  io_timeout is
#: the default (30 s): no transfer ends during the test.
LOCKOUT = {
    # The defaults: 64 threads, 32 transfers, 4 per address; uploads at 10 bytes/s.
    "uploads": ({}, 70, 4, _start_upload, {}, UPLOAD_BUFFERS_KIB),
    # Anonymous readers taking 2 KiB every 0.3 s (above min_transfer_rate).
    "anonymous-readers": ({"anonymous": "read"}, 70, 4, _start_download,
                          {"sip": 2048, "interval": 0.3}, HASH_BUFFERS_KIB),
    # Transfer limits opened wide: the pool's own cap (max_threads - workers) holds.
    "pool-cap": ({"max_threads": "16", "workers": "4", "max_transfers": "1000",
                  "max_transfers_per_ip": "1000"}, 20, 12, _start_upload, {},
                 UPLOAD_BUFFERS_KIB),
}


@pytest.mark.parametrize("case", sorted(LOCKOUT))
def test_more_stuck_transfers_than_threads_do_not_lock_out_fresh_clients(hostile_daemon, case):
    options, count, admitted, opener, pace, buffers_kib = LOCKOUT[case]
    daemon = hostile_daemon(["file"], overrides={"file": dict(options, io_timeout="30")})
    address = daemon.address("file")
    (daemon.where / "files" / "small.bin").write_bytes(SMALL)
    with open(daemon.where / "files" / "big.bin", "wb") as stream:
        stream.truncate(64 << 20)
    quiet = measure_latency(lambda: _fresh_client(address), duration=1.0)
    baseline = daemon.probe.snapshot()
    with PeakRSS(daemon.probe) as peak:
        trickle = Trickle(**pace)  # each admitted transfer paced from its first reply on
        uploads, opening = [], []
        for index in range(count):
            started = time.perf_counter()
            uploads.append(opener(address, index))
            opening.append(time.perf_counter() - started)
            if uploads[-1][2].type in ("ready", "data"):
                trickle.add(uploads[-1][0])
        stuck = trickle.socks
        refused = [upload for upload in uploads if upload[2].type == "error"]
        loaded = measure_latency(lambda: _fresh_client(address), duration=2.0)
        still = daemon.probe.snapshot()
        trickle.stop()
    assert max(opening) < FRESH_BOUND, "hello + request answered after %.2fs" % max(opening)
    assert loaded.samples[-1] < FRESH_BOUND, "fresh clients: %s (quiet: %s)" % (
        loaded.describe(), quiet.describe())
    assert len(stuck) == admitted, (len(stuck), [r.header for _, _, r in refused[:3]])
    assert {reply.header.get("code") for _, _, reply in refused} == {"busy"}
    _, stream, _ = refused[0]
    stream.send({"type": "stat", "path": ""})
    assert stream.recv().type == "stat", "a refused transfer's connection stays usable"
    growth = peak.peak_kib - baseline.rss_kib
    assert growth < admitted * buffers_kib + RSS_SLACK_KIB, growth
    for sock, _, _ in uploads:
        sock.close()
    after = settle(daemon.probe, baseline, timeout=15)
    daemon.assert_alive()
    daemon.assert_clean_log()
    campaign.record("slow-transfers-" + case, transfers=count, admitted=len(stuck),
                    refused_busy=len(refused), slowest_open_s=round(max(opening), 3),
                    fresh_quiet=quiet.describe(),
                    fresh_loaded=loaded.describe(), rss_peak_growth_kib=growth,
                    before=str(baseline), stuck=str(still), after=str(after))


WINDOW = 2.0
RATE_OPTIONS = {"min_transfer_rate": "1K", "transfer_rate_window": str(WINDOW), "io_timeout": "30"}
# The window counts waiting time; checks run every step (0.5 s) and the window is
# measured to 1/8th; a busy machine adds its own lag.
RATE_SLACK = 0.5 + WINDOW / 8 + 2.0


def _lifetime(daemon, service, sock):
    peer = "%s:%d" % sock.getsockname()
    wait_for(lambda: [r for r in daemon.closes(service) if r["peer"] == peer],
             timeout=WINDOW + RATE_SLACK + 10, message="the slow connection to be closed")
    return [r for r in daemon.closes(service) if r["peer"] == peer][0]["duration"]


def _sip(sock, halt, size=50, interval=0.1):
    def run():
        while not halt.wait(interval):
            try:
                if not sock.recv(size):
                    return
            except OSError:
                return
    threading.Thread(target=run, daemon=True).start()


def _tiny_receiver_session(address):
    sock = tiny_receiver(address)
    stream = FrameStream(sock)
    stream.send(auth.answer_hello(stream.recv().header, KEY_NAME, SECRET))
    assert stream.recv().type == "authenticated"
    return sock, stream


def test_a_trickled_upload_and_a_sipped_download_end_too_slow(hostile_daemon):
    daemon = hostile_daemon(["file"], overrides={"file": RATE_OPTIONS})
    address = daemon.address("file")
    with open(daemon.where / "files" / "big.bin", "wb") as stream:
        stream.truncate(64 << 20)
    upload, stream, ready = _start_upload(address, 0)
    assert ready.type == "ready"
    started = time.monotonic()
    trickle = Trickle([upload], chunk=b"u" * 10)  # 100 bytes/s
    assert select.select([upload], [], [], WINDOW + RATE_SLACK)[0], "no answer to the trickle"
    error = stream.recv()
    upload_seen = time.monotonic() - started
    trickle.stop()
    assert error.header.get("code") == "too-slow", error.header
    upload.close()

    download, stream = _tiny_receiver_session(address)
    stream.send({"type": "get", "path": "big.bin"})
    halt = threading.Event()
    _sip(download, halt)  # 500 bytes/s
    download_life = _lifetime(daemon, "file", download)
    halt.set()
    download.close()
    for life in (upload_seen, download_life):
        assert WINDOW * 0.9 <= life < WINDOW + RATE_SLACK, (upload_seen, download_life)
    assert daemon.log.count("transfer too slow") == 2
    daemon.ping("file")
    daemon.assert_clean_log()
    campaign.record("too-slow-file", window=WINDOW, upload_closed_after_s=round(upload_seen, 2),
                    download_closed_after_s=round(download_life, 2))


def test_command_output_nobody_reads_or_sips_ends_and_frees_the_slot(hostile_daemon):
    options = dict(RATE_OPTIONS, **{"command.flood": "head -c 67108864 /dev/zero",
                                     "timeout": "60",
                                     "max_output": "64M", "max_concurrent": "1"})
    daemon = hostile_daemon(["command"], overrides={"command": options})
    address = daemon.address("command")
    lives = {}
    for name in ("never-reads", "sips"):
        sock, stream = _tiny_receiver_session(address)
        stream.send({"type": "run", "command": "flood", "args": []})
        halt = threading.Event()
        if name == "sips":
            _sip(sock, halt)
        lives[name] = _lifetime(daemon, "command", sock)
        halt.set()
        sock.close()
        with CommandClient(address[0], address[1], KEY_NAME, SECRET, timeout=10) as client:
            assert client.run("echo", "free").stdout == b"free\n", "the run slot was not freed"
    for life in lives.values():
        assert life < WINDOW + RATE_SLACK, lives
    assert daemon.log.count("end=too-slow") == 2, daemon.log[-3000:]
    daemon.assert_clean_log()
    campaign.record("too-slow-command", window=WINDOW,
                    closed_after_s={k: round(v, 2) for k, v in lives.items()})
