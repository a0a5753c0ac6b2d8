"""TCP services behind a load balancer: PROXY headers read before anything else.

The test client plays the load balancer (its address 127.0.0.1 is trusted) and
claims clients inside 127.0.0.0/8.  tests/integration/test_haproxy.py does the
same through a real HAProxy.
"""

import contextlib
import logging
import socket
import ssl
import time

import pytest

from msgsrv.net.proxy_protocol import encode_v1, encode_v2
from msgsrv.net.server import make_server
from msgsrv.services.status.report import collect
from msgsrv.wire import auth
from msgsrv.wire.errors import ConfigError
from msgsrv.wire.frame_stream import FrameStream
from msgsrv.wire.frames import FrameDecoder, NEED_DATA
from tests.conftest import recv_until_closed, service_config, wait_for
from tests.service.test_authed import SECRET, keys_file  # noqa: F401  (a fixture)
from tests.service.test_tls import certs  # noqa: F401  (the module's certificate fixture)

pytestmark = pytest.mark.timeout(60)

LB = "127.0.0.1"
PROXIED = dict(proxy_protocol="any", proxy_trusted=LB)


def claim(host, port=40000):
    """A (source, destination) pair of a client at ``host:port`` reaching port 9000."""
    return (host, port), ("127.0.0.1", 9000)


def proxied(server, header, data=b"", timeout=5.0):
    """A connection to ``server`` that starts with ``header`` (then ``data``)."""
    sock = socket.create_connection((LB, server.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(header + data)
    return sock


def echo_once(sock, data=b"ping\n", sent_before=b""):
    """Send ``data``; return the echo of ``sent_before`` (sent already) and ``data``."""
    sock.sendall(data)
    got = b""
    while len(got) < len(sent_before + data):
        chunk = sock.recv(4096)
        assert chunk, "closed before the echo"
        got += chunk
    return got


def closes(records, service="svc"):
    return [r for r in records if r.name == "msgsrv.access" and "service=%s " % service in
            r.getMessage()]


@pytest.fixture
def echo(start_service):
    return start_service("echo", **PROXIED)


@pytest.mark.parametrize("encode", [encode_v1, encode_v2], ids=["v1", "v2"])
def test_the_claimed_client_is_served_and_named_in_the_access_log(echo, caplog, encode):
    with caplog.at_level(logging.INFO, "msgsrv.access"):
        with proxied(echo, encode(*claim("127.0.0.2", 40001)), b"early ") as sock:
            # the bytes after the header, exactly
            assert echo_once(sock, sent_before=b"early ") == b"early ping\n"
        wait_for(lambda: closes(caplog.records))
    assert "peer=127.0.0.2:40001 " in closes(caplog.records)[0].getMessage()
    counters = echo.counters.snapshot()
    assert counters["proxy_headers"] == 1 and counters["connections_total"] == 1
    assert counters["bytes_in"] == len(b"early ping\n")  # the header is not the client's


def test_a_header_split_into_single_bytes_is_read(echo):
    header = encode_v2(*claim("127.0.0.3"), tlvs=[(0x04, b"pad" * 5)])
    sock = socket.create_connection((LB, echo.port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with sock:
        for index in range(len(header)):
            sock.send(header[index:index + 1])
            time.sleep(0.002)
        assert echo_once(sock) == b"ping\n"
    assert echo.counters.snapshot()["proxy_headers"] == 1


def test_local_commands_are_served_as_the_load_balancer_itself(echo, caplog):
    with caplog.at_level(logging.INFO, "msgsrv.access"):
        with proxied(echo, encode_v2()) as sock:
            port = sock.getsockname()[1]
            assert echo_once(sock) == b"ping\n"
        wait_for(lambda: closes(caplog.records))
    assert "peer=127.0.0.1:%d " % port in closes(caplog.records)[0].getMessage()
    assert echo.counters.snapshot()["proxy_local"] == 1


@pytest.mark.parametrize("header, data, counter", [
    (b"", b"ping\n", "proxy_missing"),                      # a client straight to the port
    (encode_v1(*claim("127.0.0.2")), b"", "-v2"),           # v1 where only v2 is accepted
    (b"PROXY TCP4 127.0.0.02 127.0.0.1 1 2\r\n", b"", "proxy_malformed"),
    (encode_v2(*claim("127.0.0.2"))[:20], b"", "proxy_malformed"),  # then EOF
    (encode_v2(*claim("127.0.0.2"), tlvs=[(4, b"x" * 2000)]), b"", "proxy_malformed"),
])
def test_a_bad_header_closes_without_a_byte_logged_once_and_counted(start_service, caplog,
                                                                    header, data, counter):
    mode = "v2" if counter == "-v2" else "any"
    counter = "proxy_missing" if counter == "-v2" else counter
    server = start_service("echo", proxy_protocol=mode, proxy_trusted=LB)
    with caplog.at_level(logging.WARNING, "msgsrv.server"):
        sock = proxied(server, header, data)
        with contextlib.suppress(OSError):  # refused already (and reset): nothing to shut
            sock.shutdown(socket.SHUT_WR)
        with sock:
            assert recv_until_closed(sock) == b""
        wait_for(lambda: server.counters.snapshot().get("refused_" + counter))
    lines = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 1 and "127.0.0.1:" in lines[0].getMessage()
    assert server.counters.snapshot().get("connections_total", 0) == 0


def test_a_silent_or_slow_peer_is_closed_at_proxy_timeout(start_service, caplog):
    server = start_service("echo", proxy_timeout=0.3, **PROXIED)
    with caplog.at_level(logging.WARNING, "msgsrv.server"):
        for sent in (b"", b"PROXY TCP4 127.0.0.2"):
            started = time.monotonic()
            with proxied(server, sent) as sock:
                assert recv_until_closed(sock) == b""
            assert 0.25 < time.monotonic() - started < 2.0
    assert server.counters.snapshot()["refused_proxy_timeout"] == 2
    assert caplog.text.count("proxy_timeout") == 2


def test_an_untrusted_peer_is_refused_before_a_byte_is_read(start_service, caplog):
    server = start_service("echo", proxy_protocol="v2", proxy_trusted="127.0.0.9")
    with caplog.at_level(logging.INFO, "msgsrv.server"):
        with proxied(server, encode_v2(*claim("127.0.0.2")), b"ping\n") as sock:
            assert recv_until_closed(sock) == b""
    assert server.counters.snapshot()["refused_proxy_untrusted"] == 1
    assert "not in proxy_trusted" in caplog.text


def test_per_address_limits_count_the_claimed_client_not_the_balancer(start_service):
    server = start_service("tests.plugins:BlockingFramed", max_connections_per_ip=1,
                           **PROXIED)
    first = proxied(server, encode_v2(*claim("127.0.0.2", 1)))
    other = proxied(server, encode_v2(*claim("127.0.0.3", 2)))  # another client: admitted
    with first, other:
        wait_for(lambda: server.counters.snapshot().get("connections_total") == 2)
        with proxied(server, encode_v2(*claim("127.0.0.2", 3))) as refused:
            stream = FrameStream(refused)
            reply = stream.recv()
        assert reply.header["code"] == "busy"
        assert "max_connections_per_ip=1" in reply.header["message"]
        assert "127.0.0.2" in reply.header["message"]
    assert server.counters.snapshot()["refused_busy"] == 1
    wait_for(lambda: server.connection_count == 0 and not any(
        server.connections_from(ip) for ip in ("127.0.0.1", "127.0.0.2", "127.0.0.3")))


def test_access_rules_and_rate_limits_apply_to_the_claimed_client(start_service):
    server = start_service("echo", deny="127.0.0.66", rate_limit="2/60s", **PROXIED)
    with proxied(server, encode_v2(*claim("127.0.0.66")), b"x") as sock:
        assert recv_until_closed(sock) == b""
    for _ in range(2):
        with proxied(server, encode_v2(*claim("127.0.0.7"))) as sock:
            assert echo_once(sock) == b"ping\n"
    with proxied(server, encode_v2(*claim("127.0.0.7"))) as sock:
        assert recv_until_closed(sock) == b""
    with proxied(server, encode_v1(*claim("127.0.0.8"))) as sock:  # others are still served
        assert echo_once(sock) == b"ping\n"
    counters = server.counters.snapshot()
    assert counters["refused_access"] == 1 and counters["refused_rate"] == 1


def authenticate(sock, secret):
    stream = FrameStream(sock)
    stream.send(auth.answer_hello(stream.recv().header, "alice", secret))
    return stream.recv().header


def test_failed_authentications_penalise_and_are_audited_under_the_claimed_client(
        start_service, keys_file, caplog):  # noqa: F811
    server = start_service("tests.plugins:AuthedEcho", keys_file=keys_file,
                           auth_penalty_failures=1, auth_penalty_exempt="", **PROXIED)
    with caplog.at_level(logging.INFO):
        with proxied(server, encode_v2(*claim("127.0.0.5", 5555))) as sock:
            assert authenticate(sock, "wrong-wrong-wrong-wrong")["code"] == "auth-failed"
        with proxied(server, encode_v2(*claim("127.0.0.5", 5556))) as sock:
            assert FrameStream(sock).recv().header["code"] == "busy"  # penalised
        with proxied(server, encode_v2(*claim("127.0.0.6", 6666))) as sock:
            assert authenticate(sock, SECRET)["type"] == "authenticated"
    assert "failed authentication from 127.0.0.5:5555" in caplog.text
    assert "127.0.0.5 penalised" in caplog.text
    assert "127.0.0.6:6666 authenticated as alice" in caplog.text
    assert server.counters.snapshot()["refused_auth_penalty"] == 1


def test_the_header_comes_before_the_tls_handshake(start_service, certs):  # noqa: F811
    server = start_service("echo", tls_cert=certs["server.pem"], tls_key=certs["server.key"],
                           **PROXIED)
    context = ssl.create_default_context(cafile=certs["ca.pem"])
    with proxied(server, encode_v2(*claim("127.0.0.4"))) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            assert echo_once(sock, b"secret\n") == b"secret\n"
    with proxied(server, b"", b"\x16\x03\x01") as sock:  # TLS without the header
        assert recv_until_closed(sock) == b""
    counters = server.counters.snapshot()
    assert counters["proxy_headers"] == 1 and counters["refused_proxy_missing"] == 1


def test_thread_per_connection_handlers_get_the_claimed_client(start_service, caplog):
    server = start_service("tests.plugins:ShoutHandler", **PROXIED)
    with caplog.at_level(logging.INFO, "msgsrv.access"):
        with proxied(server, encode_v1(*claim("127.0.0.9", 999)), b"hey\n") as sock:
            assert echo_once(sock, b"", sent_before=b"hey\n") == b"HEY\n"
        with proxied(server, b"hey\n") as sock:
            assert recv_until_closed(sock) == b""
        wait_for(lambda: server.connection_count == 0)
    assert "peer=127.0.0.9:999 " in caplog.text
    assert server.counters.snapshot()["refused_proxy_missing"] == 1


def test_status_reports_the_mode_and_every_proxy_refusal_reason(echo, start_service):
    plain = start_service("echo")
    proxy_entry, plain_entry = collect([echo, plain], time.time())["services"]
    assert (proxy_entry["proxy_protocol"], plain_entry["proxy_protocol"]) == ("any", "off")
    assert proxy_entry["refused"]["proxy_untrusted"] == 0
    assert "proxy_timeout" in proxy_entry["refused"]
    assert "proxy_timeout" not in plain_entry["refused"]


@pytest.mark.parametrize("options, message", [
    ({"proxy_protocol": "v2"}, r"proxy_protocol = v2 needs proxy_trusted"),
    ({"proxy_protocol": "any", "proxy_trusted": "127.0.0.1", "transport": "udp"},
     r"proxy_protocol needs transport tcp"),
])
def test_settings_that_cannot_work_are_refused_at_load(options, message):
    with pytest.raises(ConfigError, match=r"\[service:svc\] " + message):
        make_server(service_config("echo", **options), bind_and_activate=False).server_close()


def test_frames_after_the_header_reach_the_handler_intact(start_service):
    server = start_service("status", **PROXIED)
    decoder = FrameDecoder()
    with proxied(server, encode_v2(*claim("127.0.0.2"))) as sock:
        while True:
            message = decoder.next_message()
            if message is not NEED_DATA:
                break
            decoder.feed(sock.recv(4096))
    assert message.header["type"] == "hello"


def test_a_reload_turns_the_header_on_for_new_connections_only(start_service):
    server = start_service("echo")
    with socket.create_connection((LB, server.port), timeout=5) as before:
        assert echo_once(before) == b"ping\n"
        server.reconfigure(service_config("echo", port=server.port, **PROXIED))
        assert echo_once(before) == b"ping\n"  # open connections keep what they started with
        with proxied(server, b"", b"ping\n") as direct:
            assert recv_until_closed(direct) == b""
        with proxied(server, encode_v1(*claim("127.0.0.2"))) as through:
            assert echo_once(through) == b"ping\n"
    assert server.counters.snapshot()["refused_proxy_missing"] == 1

