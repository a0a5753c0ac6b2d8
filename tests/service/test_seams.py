"""The pool/transport seam, timers and the core fixes of issue 12 (over real sockets)."""

import os
import signal
import socket
import threading
import time
import warnings

import pytest

from msgsrv.net.handler import Handler
from msgsrv.net.peer import format_peer
from msgsrv.net.pool import Connection, WorkerPool
from msgsrv.net.server import PooledTCPService, TCPService, ThreadedTCPService, make_server
from msgsrv.net.transport import PlainTransport
from tests.conftest import connect, service_config, wait_for
from tests.service.test_chat import Peer

pytestmark = pytest.mark.timeout(60)


def _open_fds():
    return len(os.listdir("/proc/self/fd"))


# -- byte accounting ----------------------------------------------------------


def test_a_chat_listener_that_only_receives_is_not_idle(start_service):
    server = start_service("chat", idle_timeout=1, max_connections_per_ip=10)
    alice, bob = Peer(server, "alice"), Peer(server, "bob")
    alice.expect("* join lobby bob")
    for number in range(10):  # 2.5 s: well past idle_timeout for a silent alice
        bob.send("line %d" % number)
        assert alice.expect("MSG lobby bob") == "MSG lobby bob line %d" % number
        time.sleep(0.25)
    assert not [line for line in alice.skipped if line.startswith("* quit")], alice.skipped
    bob.send("/who")
    assert bob.expect("* who lobby") in ("* who lobby alice bob", "* who lobby bob alice")


def test_blocking_sections_are_counted_by_the_connection(start_service):
    server = start_service("tests.plugins:BlockingSender")
    with connect(server) as sock:
        sock.sendall(b"send 300000")
        data = b""
        while b"out=" not in data or not data.endswith(b"\n"):
            data += sock.recv(65536)
    assert data.endswith(b"\nout=300000\n")
    conn = server.pool.connections()
    assert not conn or conn[0].bytes_out >= 300000


# -- thread-per-connection plugins --------------------------------------------


def test_max_threads_bounds_plain_socketserver_handlers(start_service):
    server = start_service("tests.plugins:HoldHandler", max_threads=4,
                           max_connections_per_ip=100)
    assert isinstance(server, ThreadedTCPService)
    before = threading.active_count()
    socks = [connect(server) for _ in range(12)]
    try:
        held = []
        for sock in socks:
            try:
                held.append(sock.recv(10) == b"held\n")
            except ConnectionResetError:
                held.append(False)
        assert held.count(True) == 4
        assert threading.active_count() - before <= 4
        assert server.counters.snapshot()["refused_busy"] == 8
    finally:
        for sock in socks:
            sock.close()


# -- descriptors ----------------------------------------------------------------


def test_a_failed_bind_or_a_closed_service_leaks_no_descriptor(tmp_path):
    files = {"root": str(tmp_path / "root"), "keys_file": str(tmp_path / "keys")}
    make_server(service_config("file", **files)).server_close()  # creates the keys file
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    config = service_config("echo", port=port)
    with socket.socket() as probe:  # a port in use even with SO_REUSEADDR
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with pytest.raises(OSError):
            probe.bind(("127.0.0.1", port))
    before = _open_fds()
    try:
        for _ in range(20):
            with pytest.raises(OSError):
                TCPService(config)
            with pytest.raises(OSError):  # its service object opened the root: released
                TCPService(service_config("file", port=port, **files))
        assert _open_fds() == before
        for _ in range(5):
            server = make_server(service_config("echo"))
            assert isinstance(server, PooledTCPService)
            server.server_close()
        wait_for(lambda: _open_fds() == before, message="descriptors to be released")
    finally:
        taken.close()


# -- timers --------------------------------------------------------------------


class _Timed(Handler):
    """Schedules timers on request: ``a`` fires after 0.1 s, ``b`` is cancelled."""

    def data_received(self, data):
        self.conn.call_later(0.1, lambda: self.conn.send(b"a fired\n"))
        cancelled = self.conn.call_later(0.1, lambda: self.conn.send(b"b fired\n"))
        cancelled.cancel()
        assert not cancelled.active


def _exchange(start_service, handler, request=b"go"):
    """A pooled server running ``handler``, a connection to it, and the first reply."""
    server = start_service("echo")
    server.RequestHandlerClass = handler
    sock = connect(server)
    sock.sendall(request)
    return server, sock, sock.recv(100)


def test_call_later_timers_are_independent_and_cancellable(start_service):
    server, sock, reply = _exchange(start_service, _Timed)
    with sock:
        assert reply == b"a fired\n"
        sock.settimeout(1.0)
        with pytest.raises(socket.timeout):
            sock.recv(100)
    wait_for(lambda: server.pool.timer_count == 0, message="no timer left")


class _Deadline(Handler):
    def data_received(self, data):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.conn.set_deadline(0.1)
        assert caught and issubclass(caught[0].category, DeprecationWarning)

    def timed_out(self, reason):
        self.conn.send(reason.encode())
        self.conn.close()


def test_set_deadline_still_works_as_a_deprecated_wrapper(start_service):
    _, sock, reply = _exchange(start_service, _Deadline)
    sock.close()
    assert reply == b"deadline"


def test_one_peer_formatter_brackets_ipv6():
    assert format_peer(("::1", 7, 0, 0)) == "[::1]:7"
    assert format_peer(("10.0.0.1", 7)) == "10.0.0.1:7"
    assert format_peer("::1", 7) == "[::1]:7"
    assert format_peer("/run/sock") == "/run/sock"


# -- stopping --------------------------------------------------------------------


def test_a_blocked_udp_plugin_does_not_delay_sigterm(tmp_path, daemon_factory):
    config = tmp_path / "server.ini"
    config.write_text("[msgsrv]\nshutdown_timeout = 1\n\n"
                      "[service:stuck]\nhandler = tests.plugins:BlockingDatagram\n"
                      "transport = udp\nhost = 127.0.0.1\nport = 0\n\n"
                      "[service:echo]\nhandler = echo\nhost = 127.0.0.1\nport = 0\n")
    daemon = daemon_factory(config)
    listeners = daemon.wait_listening(2)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(b"hi", listeners["stuck"])
        assert sock.recv(100) == b"blocking"
    started = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    daemon.proc.wait(15)
    elapsed = time.monotonic() - started
    assert elapsed < 1 + 1 + 0.8, "stop took %.1fs with shutdown_timeout=1" % elapsed
    assert "stuck: stop: handler tests.plugins.BlockingDatagram still running" in daemon.log


def test_the_signal_queue_is_bounded_and_drops_are_logged(tmp_path, caplog):
    from msgsrv.ops import config as config_module
    from msgsrv.ops.daemon import SIGNAL_QUEUE, Daemon
    path = tmp_path / "server.ini"
    path.write_text("[service:echo]\nhandler = echo\nhost = 127.0.0.1\nport = 0\n")
    daemon = Daemon(config_module.load(str(path)))
    for _ in range(SIGNAL_QUEUE + 20):
        daemon._record(signal.SIGUSR1, None)
    assert len(daemon._signals) == SIGNAL_QUEUE
    read, write = os.pipe()
    os.set_blocking(read, False)
    os.write(write, b"s")  # as the signal's wakeup byte would
    try:  # one pass of the main loop: dispatch what waits (the first stops it), log drops
        daemon.handle_usr1 = daemon._stopped.set
        daemon._loop(read)
    finally:
        os.close(read)
        os.close(write)
    assert "20 signals dropped" in caplog.text


def test_cancelled_timers_are_counted_out_and_compacted():
    pool = WorkerPool("timers", None, workers=0)
    pool.start()
    try:
        ours, peer = socket.socketpair()
        conn = Connection(pool, PlainTransport(ours), ("127.0.0.1", 0))
        timers = [conn.call_later(60, lambda: None) for _ in range(3000)]
        for timer in timers[:2500]:
            timer.cancel()
        assert pool.timer_count == 500
        conn.call_later(60, lambda: None)  # over half cancelled: the heap is compacted
        assert pool.timer_count == 501 and len(pool._timers) == 501
        conn.cancel_timers()
        assert pool.timer_count == 0
        peer.close()
        ours.close()
    finally:
        pool.close()
