"""Echo over TCP and UDP, through raw sockets and through EchoClient."""

import logging
import socket
import threading

import pytest

from msgsrv.client import ConnectionFailed, EchoClient, ProtocolError, RequestTimeout
from msgsrv.client.base import parse_address
from tests.conftest import connect, recv_until_closed

pytestmark = pytest.mark.timeout(60)


def test_tcp_echo_with_half_close(start_service):
    server = start_service("echo")
    with connect(server) as sock:
        sock.sendall(b"hello\r\n")
        sock.shutdown(socket.SHUT_WR)
        assert recv_until_closed(sock) == b"hello\r\n"


def test_tcp_echo_large_payload_streams(start_service):
    server = start_service("echo", max_pending_output="256K")
    payload = bytes(range(256)) * 40000  # 10 MB
    with connect(server) as sock:
        received = []
        reader = threading.Thread(target=lambda: received.append(recv_until_closed(sock, 1 << 26)))
        reader.start()
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        reader.join(30)
    assert received[0] == payload
    assert server.counters.snapshot()["bytes_out"] == len(payload)


def test_udp_echo(start_service):
    server = start_service("echo", transport="udp")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        for payload in (b"", b"x", b"y" * 60000):
            sock.sendto(payload, ("127.0.0.1", server.port))
            data, address = sock.recvfrom(65536)
            assert data == payload and address[1] == server.port


def test_udp_oversized_datagram_dropped_and_logged(start_service, caplog):
    server = start_service("echo", transport="udp", max_datagram=100)
    with caplog.at_level(logging.WARNING), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(b"x" * 101, ("127.0.0.1", server.port))
        sock.sendto(b"x" * 100, ("127.0.0.1", server.port))
        assert sock.recv(1000) == b"x" * 100  # the oversized one got no answer
    assert "larger than max_datagram=100" in caplog.text
    assert server.counters.snapshot()["refused_too_large"] == 1


def test_echo_client_tcp_and_udp(start_service):
    tcp = start_service("echo")
    udp = start_service("echo", transport="udp")
    with EchoClient("127.0.0.1", tcp.port) as client:
        assert client.echo(b"abc") == b"abc"
        assert client.echo(b"z" * 3_000_000) == b"z" * 3_000_000
    with EchoClient("127.0.0.1", udp.port, transport="udp") as client:
        assert client.echo(b"datagram") == b"datagram"


def test_echo_client_errors():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(ConnectionFailed):
        EchoClient("127.0.0.1", port)
    with pytest.raises(ValueError):
        EchoClient("127.0.0.1", port, transport="sctp")


def test_echo_client_timeout_and_early_close():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with EchoClient("127.0.0.1", port, timeout=0.3) as client:
            peer, _ = listener.accept()
            with pytest.raises(RequestTimeout):
                client.echo(b"never answered")
            peer.close()
            with pytest.raises(ConnectionFailed):
                client.echo(b"closed")
        with pytest.raises(ConnectionFailed):
            client.echo(b"after close")


def test_echo_client_udp_bad_reply():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as fake:
        fake.bind(("127.0.0.1", 0))
        with EchoClient("127.0.0.1", fake.getsockname()[1], transport="udp", timeout=2) as client:
            client.sock.send(b"")  # nothing; now answer a request with the wrong size
            fake.recvfrom(10)
            thread = threading.Thread(target=lambda: fake.sendto(
                b"longer", fake.recvfrom(10)[1]))
            thread.start()
            with pytest.raises(ProtocolError):
                client.echo(b"abc")
            thread.join()


@pytest.mark.parametrize("text, expected", [
    ("host:9000", ("host", 9000)), ("[::1]:9", ("::1", 9)), (":9", ("127.0.0.1", 9)),
])
def test_parse_address(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["host", "host:0", "host:x", "host:70000"])
def test_parse_address_refuses(text):
    with pytest.raises(ValueError):
        parse_address(text)
