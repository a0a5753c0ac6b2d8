"""TLS and mutual TLS over the pool and thread-per-connection, with throwaway certificates."""

import logging
import shutil
import socket
import ssl
import subprocess
import time

import pytest

from msgsrv.client import EchoClient
from msgsrv.client.base import connect_tcp
from msgsrv.client.framed import FramedClient
from msgsrv.wire.errors import ConfigError, ConnectionFailed, RequestTimeout
from msgsrv.wire.frames import encode
from msgsrv.wire.frame_stream import FrameStream
from tests.conftest import connect, recv_until_closed, stop_during_a_blocked_transfer, wait_for

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(shutil.which("openssl") is None,
                                 reason="the openssl command is needed to make test certificates")]

LEAF = """basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = {usage}
subjectAltName = {san}
authorityKeyIdentifier = keyid
"""


def openssl(*args, cwd):
    subprocess.run(("openssl",) + args, cwd=cwd, check=True, capture_output=True)


def make_ca(directory, name):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", name + ".key", "-out", name + ".pem", "-days", "2",
            "-subj", "/CN=" + name, "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)


def make_leaf(directory, ca, name, usage, san):
    (directory / (name + ".ext")).write_text(LEAF.format(usage=usage, san=san))
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=" + name,
            cwd=directory)
    openssl("x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key",
            "-CAcreateserial", "-out", name + ".pem", "-days", "2",
            "-extfile", name + ".ext", cwd=directory)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("certs")
    make_ca(directory, "ca")
    make_ca(directory, "other-ca")
    make_leaf(directory, "ca", "server", "serverAuth", "IP:127.0.0.1, DNS:localhost")
    make_leaf(directory, "ca", "client", "clientAuth", "DNS:client")
    make_leaf(directory, "other-ca", "stranger", "clientAuth", "DNS:stranger")
    return {name: str(directory / name) for name in (
        "ca.pem", "other-ca.pem", "server.pem", "server.key", "client.pem", "client.key",
        "stranger.pem", "stranger.key")}


def tls_service(start_service, certs, handler="echo", **options):
    return start_service(handler, tls_cert=certs["server.pem"], tls_key=certs["server.key"],
                         **options)


def test_echo_round_trip_small_and_large(start_service, certs):
    server = tls_service(start_service, certs, max_pending_output="64K")
    with EchoClient("127.0.0.1", server.port, ca_file=certs["ca.pem"]) as client:
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")
        assert client.echo(b"hello") == b"hello"
        payload = bytes(range(256)) * 16384  # 4 MiB: partial writes both ways
        assert client.echo(payload) == payload
    wait_for(lambda: server.connection_count == 0)
    counters = server.counters.snapshot()
    assert counters["bytes_in"] == counters["bytes_out"] == 5 + len(payload)


def test_mutual_tls_requires_a_certificate_from_the_client_ca(start_service, certs):
    server = tls_service(start_service, certs, handler="tests.plugins:BlockingFramed",
                         tls_client_ca=certs["ca.pem"])
    with connect_tcp("127.0.0.1", server.port, ca_file=certs["ca.pem"],
                     client_cert=certs["client.pem"], client_key=certs["client.key"]) as sock:
        stream = FrameStream(sock)
        stream.send({"type": "ping"}, b"over mtls")
        assert stream.recv().body == b"over mtls"
    for cert, key in ((None, None), (certs["stranger.pem"], certs["stranger.key"])):
        with pytest.raises(ConnectionFailed):
            with connect_tcp("127.0.0.1", server.port, ca_file=certs["ca.pem"],
                             client_cert=cert, client_key=key) as sock:
                # TLS 1.3 reports a refused client certificate at the first read.
                FrameStream(sock).send({"type": "ping"})
                FrameStream(sock).recv()
    wait_for(lambda: server.counters.snapshot().get("refused_tls") == 2)


def test_client_refuses_a_server_it_does_not_trust(start_service, certs):
    server = tls_service(start_service, certs)
    with pytest.raises(ConnectionFailed, match="certificate not trusted"):
        EchoClient("127.0.0.1", server.port, ca_file=certs["other-ca.pem"])
    with pytest.raises(ConnectionFailed, match="certificate not trusted"):
        EchoClient("localhost", server.port, tls=True)  # system CAs do not know ours
    context = ssl.create_default_context(cafile=certs["ca.pem"])
    with EchoClient("localhost", server.port, tls=context) as client:
        assert client.echo(b"named") == b"named"
    with pytest.raises(ConfigError, match="cannot load"):
        EchoClient("127.0.0.1", server.port, ca_file=certs["ca.pem"], client_cert="/nonexistent")


def test_plaintext_client_fails_fast_and_cleanly(start_service, certs):
    server = tls_service(start_service, certs)
    started = time.monotonic()
    with pytest.raises(ConnectionFailed):
        with EchoClient("127.0.0.1", server.port, timeout=5) as client:
            client.echo(b"plain text\n")
    assert time.monotonic() - started < 2.0
    wait_for(lambda: server.counters.snapshot().get("refused_tls") == 1)
    wait_for(lambda: server.connection_count == 0)


@pytest.mark.parametrize("handler", ["echo", "tests.plugins:ShoutHandler"])
def test_plaintext_is_closed_at_its_first_byte(start_service, certs, handler, caplog):
    server = tls_service(start_service, certs, handler=handler)  # handshake timeout: 10 s
    caplog.set_level(logging.INFO, logger="msgsrv")
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as plain:
        plain.sendall(b"hi")  # shorter than a TLS record header: OpenSSL alone would wait
        assert recv_until_closed(plain) == b""
    assert time.monotonic() - started < 2.0
    wait_for(lambda: server.counters.snapshot().get("refused_tls") == 1)
    wait_for(lambda: server.connection_count == 0)
    refused = [r.getMessage() for r in caplog.records if "first byte" in r.getMessage()]
    assert len(refused) == 1 and "its first byte is 0x68 'h', not 0x16" in refused[0]
    with connect_tcp("127.0.0.1", server.port, ca_file=certs["ca.pem"]) as sock:
        sock.sendall(b"still served\n")  # a TLS client's first byte is 0x16
        assert sock.recv(100).lower() == b"still served\n"


def test_file_commands_speak_tls_when_asked_and_explain_when_not(start_service, certs,
                                                                  tmp_path, capsys):
    from msgsrv.cli.client import main as client_main
    keys = tmp_path / "keys"
    keys.write_text("alice %s\n" % ("a" * 24))
    keys.chmod(0o600)
    server = tls_service(start_service, certs, handler="file", root=str(tmp_path / "root"),
                         keys_file=str(keys))
    address = "127.0.0.1:%d" % server.port
    assert client_main(["ls", address, "--keys-file", str(keys), "--ca-file",
                        certs["ca.pem"]]) == 0
    started = time.monotonic()
    assert client_main(["ls", address, "--keys-file", str(keys), "--hello-timeout", "0.3"]) == 1
    assert time.monotonic() - started < 3.0
    assert capsys.readouterr().err == (
        "msgsrv.client: %s sent nothing within 0.3 s of connecting: it does not speak the msgsrv "
        "frame protocol, or expects TLS, or is overloaded\n" % address)


def test_silent_client_is_dropped_at_the_handshake_deadline(start_service, certs):
    server = tls_service(start_service, certs, handler="tests.plugins:BlockingFramed",
                         tls_handshake_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(ConnectionFailed):  # waits for a hello that never comes in plaintext
        FramedClient("127.0.0.1", server.port, timeout=10)
    assert time.monotonic() - started < 3.0
    wait_for(lambda: server.counters.snapshot().get("refused_tls") == 1)


def test_refusal_over_tls_is_a_plain_close(start_service, certs):
    server = tls_service(start_service, certs, handler="tests.plugins:BlockingFramed",
                         max_connections=1)
    first = FramedTLS(server, certs)
    with connect(server) as sock:  # no plaintext "busy" frame on a TLS port
        assert recv_until_closed(sock) == b""
    assert server.counters.snapshot()["refused_busy"] == 1
    first.sock.close()


class FramedTLS:
    def __init__(self, server, certs):
        self.sock = connect_tcp("127.0.0.1", server.port, ca_file=certs["ca.pem"])
        self.stream = FrameStream(self.sock)


def test_blocking_transfer_then_pipelined_request_in_the_same_record(start_service, certs):
    server = tls_service(start_service, certs, handler="tests.plugins:BlockingFramed")
    client = FramedTLS(server, certs)
    # One write: the raw bytes' tail and the next frame share a TLS record, so the
    # frame waits in OpenSSL's buffer, where epoll cannot see it.
    client.sock.sendall(encode({"type": "sleep", "bytes": 100000}) + b"x" * 100000
                        + encode({"type": "ping", "n": 1}))
    assert client.stream.recv().type == "slept"
    reply = client.stream.recv()
    assert reply.type == "pong" and reply.header["echo"]["n"] == 1
    client.sock.close()


def test_stop_lets_a_blocked_transfer_over_tls_finish_and_reply(start_service, certs):
    server = tls_service(start_service, certs, handler="tests.plugins:BlockingFramed")
    client = FramedTLS(server, certs)
    assert stop_during_a_blocked_transfer(server, client.sock, client.stream) < 2.0
    client.sock.close()


def test_thread_mode_plugin_over_tls(start_service, certs):
    server = tls_service(start_service, certs, handler="tests.plugins:ShoutHandler",
                         tls_handshake_timeout=0.5)
    with connect_tcp("127.0.0.1", server.port, ca_file=certs["ca.pem"]) as sock:
        sock.sendall(b"quiet\n")
        assert sock.recv(100) == b"QUIET\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as plain:
        plain.sendall(b"not tls\n")
        assert recv_until_closed(plain) == b""
    wait_for(lambda: server.connection_count == 0)
    assert server.counters.snapshot()["refused_tls"] == 1


def test_client_handshake_timeout(certs):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        with pytest.raises(RequestTimeout, match="TLS handshake"):
            connect_tcp("127.0.0.1", silent.getsockname()[1], timeout=0.3,
                        ca_file=certs["ca.pem"])


def test_bad_certificate_files_are_config_errors(start_service, certs, tmp_path):
    with pytest.raises(ConfigError, match=r"\[service:svc\] tls_cert/tls_key: cannot load"):
        start_service("echo", tls_cert=certs["ca.pem"], tls_key=certs["server.key"])
    with pytest.raises(ConfigError, match="tls_client_ca: cannot load"):
        tls_service(start_service, certs, tls_client_ca=tmp_path / "none.pem")


def test_client_cli_tls_options(start_service, certs, capsys):
    from msgsrv.cli.client import main as client_main
    server = tls_service(start_service, certs, tls_client_ca=certs["ca.pem"])
    address = "127.0.0.1:%d" % server.port
    assert client_main(["echo", address, "over", "tls", "--ca-file", certs["ca.pem"],
                        "--client-cert", certs["client.pem"],
                        "--client-key", certs["client.key"]]) == 0
    assert capsys.readouterr().out == "over tls\n"
    assert client_main(["echo", address, "x", "--tls", "--ca-file", certs["other-ca.pem"]]) == 1
    assert "certificate not trusted" in capsys.readouterr().err


@pytest.mark.parametrize("origin, status", [("https", b"101"), ("http", b"403")])
def test_web_console_over_tls_checks_the_https_origin(start_service, certs, origin, status):
    pytest.importorskip("h11")
    pytest.importorskip("wsproto")
    server = tls_service(start_service, certs, handler="web", chat="")
    context = ssl.create_default_context(cafile=certs["ca.pem"])
    host = b"127.0.0.1:%d" % server.port
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        sock.sendall(b"GET /status.json HTTP/1.1\r\nHost: %s\r\n\r\n" % host)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
        sock.sendall(b"GET /ws/status HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "
                     b"a2tra2tra2tra2tra2traw==\r\nOrigin: %s://%s\r\n\r\n"
                     % (host, origin.encode(), host))
        assert sock.recv(65536).startswith(b"HTTP/1.1 " + status)
