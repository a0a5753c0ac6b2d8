"""The server layer over real sockets: limits, timeouts, shutdown, threads, plugins."""

import logging
import select
import socket
import threading
import time

import pytest

from msgsrv.wire.frames import FrameDecoder, encode
from msgsrv.wire.frame_stream import FrameStream
from tests.conftest import connect, recv_until_closed, stop_during_a_blocked_transfer, wait_for

pytestmark = pytest.mark.timeout(60)


def echo_once(server, data=b"ping"):
    with connect(server) as sock:
        sock.sendall(data)
        got = b""
        while len(got) < len(data):
            got += sock.recv(65536)
        return got


def test_max_connections_refuses_with_close_and_log(start_service, caplog):
    server = start_service("echo", max_connections=2)
    held = [connect(server), connect(server)]
    wait_for(lambda: server.connection_count == 2)
    with caplog.at_level(logging.WARNING, "msgsrv.server"):
        extra = connect(server)
        assert recv_until_closed(extra) == b""
    assert "too many connections (max_connections=2)" in caplog.text
    assert server.counters.snapshot()["refused_busy"] == 1
    for sock in held:
        sock.close()
    wait_for(lambda: server.connection_count == 0)
    assert echo_once(server) == b"ping"


def test_framed_refusal_tells_the_client_why(start_service):
    server = start_service("tests.plugins:BlockingFramed", max_connections_per_ip=1)
    first = connect(server)
    wait_for(lambda: server.connection_count == 1)
    with connect(server) as second:
        message = FrameStream(second).recv()
    assert message.header["code"] == "busy"
    assert "max_connections_per_ip=1" in message.header["message"]
    first.close()


def test_idle_timeout_disconnects_silent_clients(start_service):
    server = start_service("echo", idle_timeout=0.3)
    sock = connect(server)
    started = time.monotonic()
    assert recv_until_closed(sock) == b""
    assert 0.25 < time.monotonic() - started < 3.0
    wait_for(lambda: server.connection_count == 0)


def test_idle_timeout_in_thread_mode(start_service):
    server = start_service("tests.plugins:ShoutHandler", idle_timeout=0.3)
    with connect(server) as sock:
        assert recv_until_closed(sock) == b""
    wait_for(lambda: server.connection_count == 0)


def test_stop_is_prompt_with_idle_clients(start_service, no_thread_leak):
    server = start_service("echo")
    clients = [connect(server) for _ in range(20)]
    wait_for(lambda: server.connection_count == 20)
    started = time.monotonic()
    server.stop(5.0)
    assert time.monotonic() - started < 2.0  # prompt: no 10 s shutdown_timeout wait
    for sock in clients:
        assert recv_until_closed(sock) == b""
        sock.close()


def test_stop_lets_a_running_transfer_finish_and_reply(start_service):
    server = start_service("tests.plugins:BlockingFramed")
    sock = connect(server)
    assert stop_during_a_blocked_transfer(server, sock, FrameStream(sock)) < 2.0
    sock.close()


def test_stop_in_thread_mode_serves_until_the_timeout_then_closes(start_service):
    server = start_service("tests.plugins:ShoutHandler")
    sock = connect(server)
    sock.sendall(b"one\n")
    assert sock.recv(100) == b"ONE\n"
    stopper = threading.Thread(target=server.stop, args=(0.5,))
    started = time.monotonic()
    stopper.start()
    sock.sendall(b"two\n")  # the handler cannot be told: it answers within the grace period
    assert sock.recv(100) == b"TWO\n"
    assert recv_until_closed(sock) == b""
    assert 0.4 < time.monotonic() - started < 2.0
    stopper.join(5)
    sock.close()


def test_no_thread_accumulation_after_many_short_connections(start_service):
    server = start_service("echo")
    baseline = threading.active_count()
    for _ in range(300):
        assert echo_once(server, b"x") == b"x"
    wait_for(lambda: server.connection_count == 0)
    assert threading.active_count() <= baseline + 1


def test_no_thread_accumulation_in_thread_mode(start_service):
    server = start_service("tests.plugins:ShoutHandler")
    baseline = threading.active_count()
    for _ in range(100):
        with connect(server) as sock:
            sock.sendall(b"hi\n")
            assert sock.recv(10) == b"HI\n"
    wait_for(lambda: server.connection_count == 0)
    wait_for(lambda: threading.active_count() <= baseline)


def test_handler_exception_is_logged_and_server_keeps_serving(start_service, caplog):
    server = start_service("tests.plugins:CrashHandler")
    with caplog.at_level(logging.ERROR):
        with connect(server) as sock:
            sock.sendall(b"boom")
            assert recv_until_closed(sock) == b""
    assert "boom requested" in caplog.text and "Traceback" in caplog.text
    assert echo_once(server) == b"ping"


def test_plain_handler_exception_is_logged(start_service, caplog):
    server = start_service("tests.plugins:CrashingThreadHandler")
    with caplog.at_level(logging.ERROR):
        with connect(server) as sock:
            sock.sendall(b"x")
            assert recv_until_closed(sock) == b""
        wait_for(lambda: "plain handler exploded" in caplog.text)
    assert server.counters.snapshot()["errors"] == 1


def test_udp_plugin_runs_inline(start_service):
    server = start_service("tests.plugins:DatagramShout", transport="udp")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(b"quiet", ("127.0.0.1", server.port))
        assert sock.recv(100) == b"QUIET"


def test_blocking_handler_does_not_stall_other_connections(start_service):
    server = start_service("tests.plugins:BlockingFramed", workers=1)
    blocked = connect(server)
    FrameStream(blocked).send({"type": "sleep", "bytes": 10})
    wait_for(lambda: server.pool.thread_count >= 2, message="a compensating worker")
    with connect(server) as other:
        stream = FrameStream(other)
        stream.send({"type": "ping"}, b"body")
        reply = stream.recv()
    assert reply.type == "pong" and reply.body == b"body"
    blocked.sendall(b"x" * 10)
    assert FrameStream(blocked).recv().type == "slept"
    blocked.close()
    wait_for(lambda: server.pool.thread_count == 1, message="the surplus worker to exit")


def test_framed_protocol_error_gets_error_frame_then_close(start_service):
    server = start_service("tests.plugins:BlockingFramed", max_header=100)
    with connect(server) as sock:
        sock.sendall(b"\x00\x00\x10\x00")
        data = recv_until_closed(sock)
    decoder = FrameDecoder()
    decoder.feed(data)
    message = decoder.next_message()
    assert message.header["code"] == "too-large"


def test_framed_pipelined_requests_answered_in_order(start_service):
    server = start_service("tests.plugins:BlockingFramed")
    with connect(server) as sock:
        sock.sendall(b"".join(encode({"type": "ping", "n": i}) for i in range(50)))
        stream = FrameStream(sock)
        assert [stream.recv().header["echo"]["n"] for _ in range(50)] == list(range(50))


def test_many_concurrent_connections_are_all_served(start_service):
    server = start_service("echo", max_connections_per_ip=2000, max_connections=2000)
    clients = [connect(server, timeout=20) for _ in range(400)]
    for index, sock in enumerate(clients):
        sock.sendall(b"%05d" % index)
    for index, sock in enumerate(clients):
        got = b""
        while len(got) < 5:
            got += sock.recv(5)
        assert got == b"%05d" % index
        sock.close()
    wait_for(lambda: server.connection_count == 0, timeout=20)


def test_slow_reader_backpressure_bounds_memory(start_service):
    server = start_service("echo", max_pending_output="64K")
    sock = connect(server)
    sock.setblocking(False)
    conn = wait_for(server.pool.connections)[0]
    highest, sent = 0, 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and sent < 64 << 20:
        if select.select([], [sock], [], 0.05)[1]:
            try:
                sent += sock.send(b"x" * 65536)
            except BlockingIOError:
                pass
        highest = max(highest, conn.pending_output)
        if highest and time.monotonic() > deadline - 19:
            break  # the backlog built up and we kept pushing for a while
    assert highest > 0, "the kernel buffers never filled"
    assert highest <= 64 * 1024 + 64 * 1024  # the limit plus one read
    sock.close()


def test_stop_is_prompt_while_clients_are_busy(start_service):
    server = start_service("echo")
    stop = threading.Event()
    errors = []

    def ping():
        try:
            with connect(server) as sock:
                while not stop.is_set():
                    sock.sendall(b"x" * 64)
                    if not sock.recv(100):
                        return
        except OSError as exc:
            errors.append(exc)

    pingers = [threading.Thread(target=ping) for _ in range(3)]
    for thread in pingers:
        thread.start()
    wait_for(lambda: server.counters.snapshot().get("connections_total", 0) == 3)
    started = time.monotonic()
    server.stop(5.0)
    assert time.monotonic() - started < 1.5
    stop.set()
    for thread in pingers:
        thread.join(5)
    assert not any(thread.is_alive() for thread in pingers)


def test_direct_serving_ends_on_abort(start_service):
    server = start_service("echo")
    with connect(server) as sock:
        for _ in range(50):  # a busy connection is served directly
            sock.sendall(b"ping")
            assert sock.recv(10) == b"ping"
        conn = server.pool.connections()[0]
        conn.abort("test abort")
        assert recv_until_closed(sock) == b""
    wait_for(lambda: server.connection_count == 0)


def test_slow_drip_frame_is_closed_at_frame_timeout(start_service):
    server = start_service("tests.plugins:BlockingFramed", frame_timeout=0.5)
    with connect(server) as sock:
        started = time.monotonic()
        frame = b"\x00\x00\x03\xe8{" + b" " * 200  # declares 1000 header bytes; never completes
        for byte in frame:
            if select.select([sock], [], [], 0.05)[0]:  # the drip interval
                break  # the server answered: stop dripping, read it
            sock.sendall(bytes([byte]))
            if time.monotonic() - started > 3:
                break
        message = FrameStream(sock).recv()
        assert message.header["code"] == "timeout"
        assert recv_until_closed(sock) == b""
    assert time.monotonic() - started < 3
    with connect(server) as fresh:  # others are still served
        stream = FrameStream(fresh)
        stream.send({"type": "ping"})
        assert stream.recv().type == "pong"


def test_complete_frames_clear_the_frame_timer(start_service):
    server = start_service("tests.plugins:BlockingFramed", frame_timeout=0.3)
    with connect(server) as sock:
        stream = FrameStream(sock)
        for _ in range(6):
            frame = encode({"type": "ping"})
            sock.sendall(frame[:3])
            time.sleep(0.1)  # partial frame for a while, then completed: must not time out
            sock.sendall(frame[3:])
            assert stream.recv().type == "pong"
