"""Faults inside the daemon: handler crashes in every callback, signals under heavy logging."""

import contextlib
import signal
import socket
import threading
import time

import pytest

from msgsrv.ops import config as config_module
from msgsrv.ops.daemon import Daemon
from msgsrv.wire.frames import FrameDecoder, encode
from msgsrv.wire.frame_stream import FrameStream
from tests.conftest import recv_until_closed, wait_for
from tests.hostile import campaign
from tests.hostile.attackers import open_tcp
from tests.hostile.procwatch import settle
from tests.hostile.targets import SERVICES, running_daemon

pytestmark = pytest.mark.timeout(campaign.timeout(60))

CRASH_SERVICES = ["crash", "crash-framed", "crash-connect", "crash-plain", "echo"]


def _send_and_read(address, data, then=None):
    with open_tcp(address) as sock:
        sock.sendall(data)
        if then is not None:
            then(sock)
        return recv_until_closed(sock)


def crash_in_data(address):
    return _send_and_read(address, b"crash:data")


def crash_at_eof(address):
    return _send_and_read(address, b"crash:eof", lambda sock: sock.shutdown(socket.SHUT_WR))


def crash_in_timeout(address):
    return _send_and_read(address, b"crash:timeout")


def crash_in_connection_lost(address):
    with open_tcp(address) as sock:
        sock.sendall(b"crash:lost")
        got = sock.recv(100)
    return got


def crash_on_connect(address):
    with open_tcp(address) as sock:
        return recv_until_closed(sock)


def crash_in_message(address):
    return _send_and_read(address, encode({"type": "crash"}))


def crash_in_plain_handler(address):
    return _send_and_read(address, b"x")


# (service, how to crash it, the log message of the one ERROR record,
#  what the crashing client receives before the close)
CRASHES = [
    ("crash", crash_in_data, "handler error", b""),
    ("crash", crash_at_eof, "handler error", b"crash:eof"),
    ("crash", crash_in_timeout, "timer error", b"crash:timeout"),
    ("crash", crash_in_connection_lost, "error in connection_lost", b"crash:lost"),
    ("crash-connect", crash_on_connect, "handler error", b""),
    ("crash-framed", crash_in_message, "handler error", "internal"),
    ("crash-plain", crash_in_plain_handler, "handler error", b""),
]


@pytest.fixture(scope="module")
def crash_daemon(tmp_path_factory):
    with running_daemon(tmp_path_factory.mktemp("crash"), CRASH_SERVICES) as daemon:
        daemon.ping_all()
        daemon.initial = daemon.probe.snapshot()
        yield daemon


def _count(daemon, needle):
    return sum(needle in line for line in daemon.process.lines)


def _healthy_connection(daemon, service):
    """A connection to ``service`` served before the crash (None if the service never serves)."""
    session = SERVICES[service].session
    return None if session is None else session(daemon.address(service))


def _echo_again(sock):
    sock.sendall(b"still here")
    assert sock.recv(100) == b"still here"


def _pong_again(sock):
    stream = FrameStream(sock)
    stream.send({"type": "ping"})
    assert stream.recv().type == "pong"


#: service -> how its (already served) neighbour connection is used again.
AGAIN = {"crash": _echo_again, "crash-framed": _pong_again}


@pytest.mark.parametrize("service, crash, message, received", CRASHES,
                         ids=[row[1].__name__ for row in CRASHES])
def test_a_crash_is_contained_to_its_connection(crash_daemon, service, crash, message, received):
    errors, tracebacks = len(crash_daemon.error_lines()), _count(crash_daemon, "Traceback")
    neighbour = _healthy_connection(crash_daemon, service)
    got = crash(crash_daemon.address(service))
    assert b"Traceback" not in got and b"Crash" not in got
    if received == "internal":
        message_frame = _only_frame(got)
        assert message_frame.header["code"] == "internal"
        assert message_frame.header["message"] == "internal server error (logged)"
    else:
        assert got == received
    wait_for(lambda: len(crash_daemon.error_lines()) > errors, message="the crash's log record")
    if neighbour is not None:
        AGAIN[service](neighbour)
    crash_daemon.ping_all()
    new = crash_daemon.error_lines()[errors:]
    assert len(new) == 1 and message in new[0], new
    assert _count(crash_daemon, "Traceback") == tracebacks + 1
    if neighbour is not None:
        neighbour.close()
    crash_daemon.assert_alive()


def _only_frame(data):
    decoder = FrameDecoder()
    decoder.feed(data)
    message = decoder.next_message()
    decoder.eof()
    return message


def test_crashes_leave_no_thread_or_fd_behind(crash_daemon):
    for service, crash, _, _ in CRASHES * 5:
        crash(crash_daemon.address(service))
    crash_daemon.ping_all()
    after = settle(crash_daemon.probe, crash_daemon.initial, timeout=10)
    campaign.record("crash-containment", crashes=len(CRASHES) * 6, after=str(after),
                    before=str(crash_daemon.initial))


# -- signals while the daemon logs heavily -----------------------------------------------------

class Flood:
    """Threads making log-heavy requests (access lines, protocol warnings) until stopped."""

    def __init__(self, daemon, threads=6, services=("echo", "authed")):
        self.daemon = daemon
        self.services = services
        self.requests = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(threads)]

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        wait_for(lambda: self.requests > 50, message="the flood to start")
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _run(self, index):
        service = self.services[index % len(self.services)]
        data = b"ping\n" if service == "echo" else b"\x00\x00\x00\x05[1,2]"  # bad-header: a warning
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                _send_and_read(self.daemon.address(service), data,
                               lambda sock: sock.shutdown(socket.SHUT_WR))
                self.requests += 1


STOP_SIGNALS = [signal.SIGTERM, signal.SIGINT]


def _signal_daemon(tmp_path):
    return running_daemon(tmp_path, ["echo", "authed"], global_options={"log_level": "debug"})


@pytest.mark.parametrize("storm", [1, 40], ids=["once", "storm"])
@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=lambda s: s.name)
def test_stop_signal_while_logging_heavily_exits_cleanly(tmp_path, signum, storm):
    with _signal_daemon(tmp_path) as daemon, Flood(daemon):
        for _ in range(storm):
            daemon.process.proc.send_signal(signum)
            time.sleep(0.002)  # signals spread over the shutdown, not merged into one
        code = daemon.process.proc.wait(15)
    daemon.process.stop()
    assert code == 0, daemon.log[-3000:]
    assert "Traceback" not in daemon.log
    assert daemon.log.rstrip().endswith("msgsrv: stopped")


def test_other_handled_signals_under_heavy_logging_keep_the_daemon_serving(tmp_path):
    others = [s for s in _daemon_object(tmp_path).handled_signals() if s not in STOP_SIGNALS]
    if not others:
        pytest.skip("the daemon handles no signal besides SIGTERM/SIGINT yet")
    with _signal_daemon(tmp_path) as daemon, Flood(daemon):
        for index in range(40):
            daemon.process.proc.send_signal(others[index % len(others)])
            time.sleep(0.01)
        daemon.assert_alive()
        daemon.ping_all()
    daemon.process.proc.send_signal(signal.SIGTERM)
    assert daemon.process.proc.wait(15) == 0
    assert "Traceback" not in daemon.log


def _daemon_object(tmp_path):
    """An in-process Daemon for a one-service config (not started)."""
    path = tmp_path / "embedded.ini"
    path.write_text("[service:echo]\nhandler = echo\nport = 0\n")
    return Daemon(config_module.load(str(path)))


def test_an_embedded_daemon_gives_the_previous_signal_handlers_back(tmp_path):
    """run() in-process (not the command line) restores the caller's handlers after a stop."""
    daemon = _daemon_object(tmp_path)
    before = signal.getsignal(signal.SIGTERM)

    def stop_when_listening():
        wait_for(lambda: daemon.servers, message="the embedded daemon to listen")
        signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
    threading.Thread(target=stop_when_listening, daemon=True).start()
    assert daemon.run() == 0
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_with_transfers_in_flight_stops_within_the_shutdown_timeout(tmp_path):
    """Handlers blocked mid-stream (BlockingFramed ``sleep``) do not hold the stop up."""
    with running_daemon(tmp_path, ["blocking", "echo"], global_options={
            "shutdown_timeout": "1"}) as daemon, Flood(daemon, services=("echo",)):
        address = daemon.address("blocking")
        idle_threads = daemon.probe.snapshot().threads
        transfers = [open_tcp(address) for _ in range(8)]
        for sock in transfers:
            sock.sendall(encode({"type": "sleep", "bytes": 1 << 20}) + b"r" * 1000)
        # Each blocked handler gets a replacement worker: 8 more threads.
        wait_for(lambda: daemon.probe.snapshot().threads >= idle_threads + 8,
                 message="the handlers to block")
        started = time.monotonic()
        daemon.process.proc.send_signal(signal.SIGTERM)
        code = daemon.process.proc.wait(15)
        elapsed = time.monotonic() - started
        for sock in transfers:
            assert recv_until_closed(sock) == b""  # cut, never answered as if complete
            sock.close()
    assert code == 0 and "Traceback" not in daemon.log, daemon.log[-3000:]
    assert elapsed < 1 + 3, "stop took %.1fs with shutdown_timeout=1" % elapsed
