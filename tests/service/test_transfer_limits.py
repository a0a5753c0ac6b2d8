"""Transfer limits: rate watch (sans-IO), paced socket, transfer gate, the pool's blocking cap."""

import os
import socket
import threading
import time

import pytest

from msgsrv.wire.errors import RequestTimeout, ServiceBusy, TooSlow
from msgsrv.wire.frame_stream import FrameStream
from msgsrv.net.transfer_limits import PacedSocket, RateWatch, TransferGate
from tests.conftest import connect, wait_for

pytestmark = pytest.mark.timeout(60)


def feed(watch, seconds, rate, step=0.1, receiving=False):
    """Feed ``seconds`` of waiting moving ``rate`` bytes/s, in steps of ``step``."""
    for _ in range(int(round(seconds / step))):
        watch.step(step, int(rate * step), receiving)


# -- RateWatch ----------------------------------------------------------------

def test_a_trickle_is_too_slow_once_the_window_has_passed():
    watch = RateWatch(min_rate=1024, window=10)
    feed(watch, 9.9, rate=10)  # the first window is the grace period
    with pytest.raises(TooSlow) as caught:
        feed(watch, 0.2, rate=10, receiving=True)
    assert caught.value.receiving and "min_transfer_rate" in caught.value.message
    assert 10.0 <= watch.waited <= 10.1


def test_a_steady_transfer_at_the_rate_is_never_too_slow():
    watch = RateWatch(min_rate=1024, window=2)
    feed(watch, 60, rate=1100)
    assert watch.moved == int(1100 * 0.1) * 600


def test_a_stall_shorter_than_the_window_after_fast_progress_is_tolerated():
    watch = RateWatch(min_rate=1024, window=10, idle_limit=30)
    feed(watch, 5, rate=1 << 20)
    feed(watch, 9, rate=0)  # the window still holds the fast part
    feed(watch, 5, rate=1 << 20)
    with pytest.raises(TooSlow):
        feed(watch, 11, rate=0)  # a whole window without a byte


def test_a_burst_then_a_trickle_is_too_slow():
    watch = RateWatch(min_rate=1024, window=4)
    feed(watch, 1, rate=10 << 20)
    with pytest.raises(TooSlow):
        feed(watch, 10, rate=100)
    assert watch.waited < 1 + 4 + 4 / 8 + 0.2


def test_no_progress_for_the_idle_limit_is_a_timeout_even_without_a_rate():
    watch = RateWatch(min_rate=0, window=10, idle_limit=3)
    feed(watch, 100, rate=10)  # one byte per step is progress
    with pytest.raises(RequestTimeout) as caught:
        feed(watch, 3.1, rate=0)
    assert not isinstance(caught.value, TooSlow)


def test_step_size_does_not_change_the_verdict():
    coarse, fine = RateWatch(1000, 5), RateWatch(1000, 5)
    feed(coarse, 20, rate=1200, step=0.5)
    feed(fine, 20, rate=1200, step=0.01)
    for watch, step in ((coarse, 0.5), (fine, 0.01)):
        with pytest.raises(TooSlow):
            feed(watch, 6, rate=500, step=step)


# -- TransferGate ---------------------------------------------------------------

def test_gate_limits_transfers_per_service_per_address_and_buffers():
    gate = TransferGate(max_transfers=3, per_ip=2, budget=1000)
    gate.acquire("10.0.0.1", 100)
    gate.acquire("10.0.0.1", 100)
    with pytest.raises(ServiceBusy, match="max_transfers_per_ip") as caught:
        gate.acquire("10.0.0.1")
    assert caught.value.code == "busy"
    with pytest.raises(ServiceBusy, match="transfer_buffer_budget"):
        gate.acquire("10.0.0.2", 801)
    gate.acquire("10.0.0.2", 800)
    with pytest.raises(ServiceBusy, match=r"max_transfers\)"):
        gate.acquire("10.0.0.3")
    gate.release("10.0.0.1", 100)
    with gate.admit("10.0.0.3", 100):
        assert (gate.active, gate.reserved) == (3, 1000)
    for ip, buffers in (("10.0.0.1", 100), ("10.0.0.2", 800)):
        gate.release(ip, buffers)
    assert (gate.active, gate.reserved) == (0, 0)


def test_gate_tune_applies_to_new_transfers_only():
    gate = TransferGate(2, 2, 1 << 20)
    gate.acquire("a")
    gate.acquire("b")
    gate.tune(1, 1, 1 << 20)
    with pytest.raises(ServiceBusy):
        gate.acquire("c")
    gate.release("a")
    gate.release("b")
    gate.acquire("c")


# -- PacedSocket over a socket pair -----------------------------------------------

@pytest.fixture
def pair():
    left, right = socket.socketpair()
    yield left, right
    left.close()
    right.close()


def trickle(sock, stop, chunk=b"x", interval=0.05):
    def run():
        while not stop.wait(interval):
            try:
                sock.send(chunk)
            except OSError:
                return
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_paced_receive_of_a_trickle_ends_too_slow_near_the_window(pair):
    left, right = pair
    paced = PacedSocket(left, RateWatch(min_rate=1000, window=1.0, idle_limit=30), step=0.1)
    stop = threading.Event()
    trickle(right, stop)
    started = time.monotonic()
    buffer = bytearray(1 << 16)
    with pytest.raises(TooSlow) as caught:
        while True:
            paced.recv_into(buffer)
    stop.set()
    assert caught.value.receiving
    assert 0.9 < time.monotonic() - started < 3.0


def test_paced_sendall_to_a_peer_that_never_reads_ends(pair):
    left, right = pair
    right.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    paced = PacedSocket(left, RateWatch(min_rate=0, window=1.0, idle_limit=0.5), step=0.1)
    with pytest.raises(RequestTimeout):
        paced.sendall(b"y" * (8 << 20))


def test_paced_sendfile_moves_the_file_exactly(pair, tmp_path):
    left, right = pair
    data = os.urandom(3 << 20)
    (tmp_path / "f").write_bytes(data)
    paced = PacedSocket(left, RateWatch(min_rate=1024, window=1.0, idle_limit=5), step=0.1)
    got = bytearray()

    def read():
        while len(got) < len(data) - 100:
            got.extend(right.recv(1 << 16))
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    with open(tmp_path / "f", "rb") as file:
        assert paced.sendfile(file, 100, len(data) - 100) == len(data) - 100
    reader.join(10)
    assert bytes(got) == data[100:]
    assert paced.watch.moved == len(data) - 100


def test_paced_sendfile_to_a_slow_reader_ends_too_slow(pair, tmp_path):
    left, right = pair
    (tmp_path / "f").write_bytes(b"z" * (16 << 20))
    paced = PacedSocket(left, RateWatch(min_rate=100_000, window=1.0, idle_limit=30), step=0.1)
    stop = threading.Event()

    def sip():
        while not stop.wait(0.05):
            right.recv(100)
    threading.Thread(target=sip, daemon=True).start()
    started = time.monotonic()
    with open(tmp_path / "f", "rb") as file, pytest.raises(TooSlow) as caught:
        paced.sendfile(file, 0, 16 << 20)
    stop.set()
    assert not caught.value.receiving
    assert time.monotonic() - started < 5.0


# -- the pool keeps threads for everyone else --------------------------------------

def test_at_most_max_threads_minus_workers_requests_block(start_service):
    server = start_service("tests.plugins:BlockingFramed", workers=2, max_threads=5,
                           io_timeout=30, min_transfer_rate=0)
    blocked = [connect(server) for _ in range(3)]
    for sock in blocked:
        FrameStream(sock).send({"type": "sleep", "bytes": 10})
    wait_for(lambda: server.pool.thread_count == 5, message="3 blocked + 2 free threads")
    with connect(server) as extra:
        stream = FrameStream(extra)
        stream.send({"type": "sleep", "bytes": 10})
        refused = stream.recv()
        assert refused.header["code"] == "busy", refused.header
        started = time.monotonic()
        stream.send({"type": "ping"}, b"still usable")
        assert stream.recv().body == b"still usable"
        assert time.monotonic() - started < 1.0
    for sock in blocked:
        sock.sendall(b"x" * 10)
        assert FrameStream(sock).recv().type == "slept"
        sock.close()
