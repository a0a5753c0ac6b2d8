"""The pool's per-event paths: the short path for request/response events, and direct serving.

The short path (``Connection.on_event``) releases a connection without
re-arming it when nothing changed during the handler call; every change
made inside the call (reading paused, output queued, a close, a call_soon
that met the call) must still take effect.  Direct serving is for a
connection alone in its exchange, never while several are busy.
"""

import resource
import time

import pytest

from tests.conftest import connect, wait_for

pytestmark = pytest.mark.timeout(60)


def recv_line(sock):
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        assert chunk, "closed before a whole line: %r" % data
        data += chunk
    return data


def test_reading_paused_inside_a_call_stays_paused(start_service):
    server = start_service("tests.plugins:StateChanger")
    with connect(server) as sock:
        for _ in range(3):  # the short path is in use once the connection is established
            sock.sendall(b"hello\n")
            assert recv_line(sock) == b"hello\n"
        sock.sendall(b"pause\n")
        assert recv_line(sock) == b"paused\n"
        started, cpu = time.monotonic(), _cpu_seconds()
        sock.sendall(b"ping\n")
        assert recv_line(sock) == b"ping\n"
        assert time.monotonic() - started >= 0.25  # answered only once reading resumed
        # ... and meanwhile its registration left out input: no poll kept waking for it.
        assert _cpu_seconds() - cpu < 0.1


def _cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def test_output_queued_inside_a_call_is_all_sent(start_service):
    server = start_service("tests.plugins:StateChanger", max_pending_output="64M")
    with connect(server) as sock:
        sock.sendall(b"hello\n")
        assert recv_line(sock) == b"hello\n"
        sock.sendall(b"big 32000000\n")  # more than loopback's socket buffers take at once
        got = 0
        while got < 32000000:
            chunk = sock.recv(1 << 20)
            assert chunk
            got += len(chunk)
        sock.sendall(b"after\n")
        assert recv_line(sock) == b"after\n"


def test_a_close_inside_a_call_sends_the_answer_then_closes(start_service):
    server = start_service("tests.plugins:StateChanger")
    with connect(server) as sock:
        sock.sendall(b"hello\n")
        assert recv_line(sock) == b"hello\n"
        sock.sendall(b"close\n")
        assert recv_line(sock) == b"bye\n"
        assert sock.recv(10) == b""
    wait_for(lambda: not server.pool.connections(), message="the connection to be forgotten")


def test_a_call_soon_that_meets_the_call_runs_right_after_it(start_service):
    server = start_service("tests.plugins:StateChanger")
    with connect(server) as sock:
        sock.sendall(b"hello\n")
        assert recv_line(sock) == b"hello\n"
        started = time.monotonic()
        sock.sendall(b"soon\n")
        assert recv_line(sock) == b"soon\n"
        # Not left for the next sweep (the poll timeout, 0.5 s): the release woke the pool.
        assert time.monotonic() - started < 0.4


def _ping_pong(sock, rounds):
    for _ in range(rounds):
        sock.sendall(b"x" * 64)
        got = b""
        while len(got) < 64:
            got += sock.recv(64 - len(got))


def test_a_lone_busy_connection_is_served_directly(start_service):
    server = start_service("echo")
    with connect(server) as sock:
        _ping_pong(sock, 300)
    assert server.pool.direct_sessions >= 1


def test_two_busy_connections_are_never_served_directly(start_service):
    server = start_service("echo")
    with connect(server) as first, connect(server) as second:
        _lockstep(first, second, 5)  # both accepted and served once
        before = server.pool.direct_sessions
        _lockstep(first, second, 300)  # no poll finds the same one alone twice running
    assert server.pool.direct_sessions == before


def _lockstep(first, second, rounds):
    for _ in range(rounds):
        first.sendall(b"a" * 64)
        second.sendall(b"b" * 64)
        for sock, byte in ((first, b"a"), (second, b"b")):
            got = b""
            while len(got) < 64:
                got += sock.recv(64 - len(got))
            assert got == byte * 64


def test_a_direct_session_ends_once_another_connection_is_served(start_service):
    server = start_service("echo")
    with connect(server) as lone, connect(server) as other:
        _ping_pong(lone, 300)
        wait_for(lambda: server.pool.direct_wanted, message="a direct session to start")
        _ping_pong(other, 1)  # the leader serves it: the session is told to end
        assert not server.pool.direct_wanted
        _ping_pong(lone, 1)  # the direct thread serves this one, then hands the connection back
        wait_for(lambda: server.pool.serving_directly == 0, timeout=2,
                 message="the direct session to end after its read")
