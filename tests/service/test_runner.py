"""ProcessRun over a socketpair: stdin, output caps, back-pressure, leftovers, hard stop."""

import os
import socket
import sys
import threading
import time

import pytest

from msgsrv.services.command import process as runner
from msgsrv.services.command.allowlist import Limits
from msgsrv.services.command.handler import output_frame
from msgsrv.wire.frames import NEED_DATA, FrameDecoder
from tests.conftest import wait_for
from tests.processes import alive, kill_quietly

pytestmark = pytest.mark.timeout(30)

ENV = {"PATH": "/usr/bin:/bin", "LANG": "C"}


def limits(timeout=5.0, kill_grace=0.2, max_output=1 << 20):
    return Limits(timeout, kill_grace, max_output, 1 << 20, "/")


class Peer:
    """The far end of a socketpair, read by a thread into decoded frames."""

    def __init__(self, read=True):
        self.near, self.far = socket.socketpair()
        self.decoder = FrameDecoder(1 << 16, 1 << 20)
        self.frames = []
        self.thread = threading.Thread(target=self._read, daemon=True) if read else None
        if self.thread:
            self.thread.start()

    def _read(self):
        while True:
            data = self.far.recv(65536)
            if not data:
                return
            self.decoder.feed(data)
            while (message := self.decoder.next_message()) is not NEED_DATA:
                self.frames.append(message)

    def output(self, stream="stdout"):
        return b"".join(m.body for m in self.frames if m.header.get("stream") == stream)

    def finish(self, run):
        self.near.settimeout(5)  # the run left it non-blocking; the reader may lag behind
        self.near.sendall(bytes(run.pending))
        self.near.close()
        self.thread.join(5)
        self.far.close()


def pump(argv, peer, stdin=b"", io_timeout=5.0, on_input=lambda data: True,
         cancelled=lambda: False, **limit_args):
    proc = runner.spawn(argv, workdir="/", env=ENV, stdin=bool(stdin))
    run = runner.ProcessRun(proc, peer.near, limits(**limit_args), io_timeout=io_timeout,
                            encode=output_frame, on_input=on_input, stdin=stdin,
                            cancelled=cancelled)
    return run, run.pump()


def test_stdin_is_fed_in_pieces_and_output_comes_back():
    data = os.urandom(300 * 1024)
    peer = Peer()
    run, outcome = pump(["cat"], peer, stdin=data)
    peer.finish(run)
    assert outcome.exit_code == 0 and peer.output() == data
    assert outcome.produced == {"stdout": len(data), "stderr": 0}


def test_a_child_that_ignores_its_stdin_is_fine():
    peer = Peer()
    run, outcome = pump(["sh", "-c", "exec 0<&-; echo done"], peer, stdin=b"x" * (1 << 20))
    peer.finish(run)
    assert outcome.exit_code == 0 and peer.output() == b"done\n"


def test_output_over_the_cap_is_read_and_discarded():
    peer = Peer()
    run, outcome = pump(["sh", "-c", "head -c 300000 /dev/zero; head -c 10 /dev/zero >&2"],
                        peer, max_output=1000)
    peer.finish(run)
    assert outcome.exit_code == 0
    assert peer.output() == b"\0" * 1000 and peer.output("stderr") == b"\0" * 10
    assert outcome.truncated == {"stdout": True, "stderr": False}
    assert outcome.produced == {"stdout": 300000, "stderr": 10}


def test_a_peer_that_stops_reading_is_dropped_and_the_run_killed():
    peer = Peer(read=False)
    started = time.monotonic()
    run, outcome = pump(["sh", "-c", "while :; do head -c 65536 /dev/zero; done"], peer,
                        io_timeout=0.3)
    assert outcome.ended_by == "stalled" and outcome.signal == "SIGTERM"
    assert time.monotonic() - started < 3
    assert run.pending == bytearray()
    peer.near.close()
    peer.far.close()


def test_pending_output_stays_bounded_while_the_peer_is_slow():
    peer = Peer(read=False)
    sizes = []
    proc = runner.spawn(["head", "-c", "5000000", "/dev/zero"], workdir="/", env=ENV)
    run = runner.ProcessRun(proc, peer.near, limits(timeout=0.3, max_output=1 << 30),
                            io_timeout=0.6, encode=output_frame, on_input=lambda data: True)
    original = run._forward
    run._forward = lambda name, data: (original(name, data), sizes.append(len(run.pending)))
    outcome = run.pump()
    assert outcome.timed_out and outcome.ended_by == "stalled"
    assert max(sizes) < runner.HIGH_WATER + 2 * runner.READ_SIZE
    peer.near.close()
    peer.far.close()


def test_peer_disconnect_kills_the_group():
    peer = Peer(read=False)
    threading.Timer(0.3, peer.far.close).start()
    run, outcome = pump(["sh", "-c", "sleep 30 & wait"], peer)
    assert outcome.ended_by == "disconnected" and outcome.signal == "SIGTERM"
    assert outcome.duration < 5
    peer.near.close()


def test_a_cancelled_run_is_killed_without_waiting_its_kill_grace():
    # The peer is not even watched (on_input said stop) and the group ignores SIGTERM.
    peer = Peer(read=False)
    peer.far.sendall(b"x")
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    run, outcome = pump(["sh", "-c", "trap '' TERM; sleep 30"], peer, kill_grace=30,
                        on_input=lambda data: False, cancelled=cancel.is_set)
    assert outcome.ended_by == "cancelled" and outcome.signal == "SIGKILL"
    assert outcome.duration < 0.3 + runner.CANCEL_POLL + runner.CANCEL_KILL_GRACE + 1.0
    peer.near.close()
    peer.far.close()


def test_bytes_from_the_peer_go_to_on_input_until_it_says_stop():
    peer = Peer()
    got = []

    def on_input(data):
        got.append(data)
        return False

    threading.Timer(0.1, peer.far.sendall, [b"pipelined"]).start()
    run, outcome = pump(["sleep", "0.5"], peer, on_input=on_input)
    peer.finish(run)
    assert got == [b"pipelined"] and outcome.exit_code == 0


def test_what_the_leader_leaves_behind_is_killed():
    peer = Peer()
    run, outcome = pump(["sh", "-c", "sleep 30 >/dev/null 2>&1 & echo $!"], peer)
    peer.finish(run)
    pid = int(peer.output())
    assert outcome.exit_code == 0
    wait_for(lambda: not alive(pid), 5, message="leftover sleep to die")


def test_a_descendant_that_left_the_group_cannot_hold_the_run_forever():
    peer = Peer()
    started = time.monotonic()
    run, outcome = pump(["sh", "-c", "setsid sleep 30 & echo $!; sleep 0.2"], peer, timeout=0.3,
                        kill_grace=0.1)
    peer.finish(run)
    pid = int(peer.output())
    try:
        elapsed = time.monotonic() - started
        assert 0.3 + 0.1 + runner.HARD_STOP_MARGIN - 0.1 < elapsed < 4
        assert outcome.exit_code == 0 and not outcome.timed_out
    finally:
        kill_quietly(pid)


def test_exit_is_noticed_without_pidfd(monkeypatch):
    monkeypatch.delattr(os, "pidfd_open", raising=False)
    peer = Peer()
    run, outcome = pump(["sh", "-c", "echo hi; exit 7"], peer)
    peer.finish(run)
    assert outcome.exit_code == 7 and peer.output() == b"hi\n" and outcome.duration < 2


def test_spawn_refuses_missing_programs_and_inherits_no_descriptors(tmp_path):
    with pytest.raises(OSError):
        runner.spawn(["/nonexistent/program"], workdir="/", env=ENV)
    keep_r, keep_w = os.pipe()
    peer = Peer()
    try:
        run, outcome = pump([sys.executable, "-c", "import os; print(sorted(os.listdir("
                             "'/proc/self/fd')))"], peer)
        peer.finish(run)
    finally:
        os.close(keep_r)
        os.close(keep_w)
    assert peer.output() == b"['0', '1', '2', '3']\n"  # 3 is listdir's own descriptor


def test_signal_names():
    assert runner._signal_name(9) == "SIGKILL" and runner._signal_name(200) == "SIG200"
