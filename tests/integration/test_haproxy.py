"""msgsrv behind a real HAProxy in tcp mode with ``send-proxy-v2`` (docs/SCALING.rst).

HAProxy runs on free loopback ports with its own config in tmp_path; msgsrv
services run in-process and trust 127.0.0.1 (HAProxy's source address) to
send PROXY headers.  Clients bind source addresses of 127.0.0.0/8 other than
127.0.0.1, so the address msgsrv sees can only have come from the header.
"""

import logging
import os
import socket
import ssl
import subprocess

import pytest

from tests.conftest import ROOT, wait_for
from tests.integration.conftest import require_program
from tests.integration.haproxy import HAProxy
from tests.service.test_tls import certs  # noqa: F401  (throwaway certificates, module scope)

pytestmark = pytest.mark.timeout(60)

BEHIND_HAPROXY = dict(proxy_protocol="v2", proxy_trusted="127.0.0.1")

SECTION = """
frontend {name}
    bind 127.0.0.1:{port}
    default_backend {name}_servers

backend {name}_servers
{lines}    server msgsrv 127.0.0.1:{server_port} send-proxy-v2{options}
"""


@pytest.fixture
def haproxy(tmp_path):
    """Factory: haproxy(name=(server, server line options, backend lines), ...) -> a
    running HAProxy with one frontend per name; stopped (by PID) at teardown."""
    program = require_program("haproxy")
    running = []

    def start(**backends):
        def sections(ports):
            return "".join(SECTION.format(name=name, port=ports[name], server_port=server.port,
                                          options=options, lines=lines)
                           for name, (server, options, lines) in backends.items())
        proxy = HAProxy(program, tmp_path, backends, sections)
        running.append(proxy)
        return proxy.start()
    yield start
    for proxy in running:
        proxy.stop()


def client(address, source):
    """A TCP connection to ``address`` from the loopback address ``source``."""
    return socket.create_connection(address, timeout=5, source_address=(source, 0))


def echo_once(sock, data=b"ping\n"):
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(4096)
        if not chunk:
            return got
        got += chunk
    return got


def test_a_client_through_haproxy_is_logged_with_its_own_address_and_port(start_service,
                                                                          haproxy, caplog):
    server = start_service("echo", **BEHIND_HAPROXY)
    proxy = haproxy(echo=(server, "", ""))
    with caplog.at_level(logging.INFO, "msgsrv.access"):
        with client(proxy.address("echo"), "127.0.0.2") as sock:
            port = sock.getsockname()[1]
            assert echo_once(sock) == b"ping\n"
        wait_for(lambda: "peer=127.0.0.2:%d " % port in caplog.text,
                 message="the access log line of the client")
    counters = server.counters.snapshot()
    assert counters["proxy_headers"] == 1 and counters["connections_total"] == 1


def test_per_address_limits_apply_to_the_client_haproxy_names(start_service, haproxy):
    server = start_service("echo", max_connections_per_ip=2, **BEHIND_HAPROXY)
    proxy = haproxy(echo=(server, "", ""))
    address = proxy.address("echo")
    first, second = client(address, "127.0.0.3"), client(address, "127.0.0.3")
    with first, second:
        assert echo_once(first) == echo_once(second) == b"ping\n"
        with client(address, "127.0.0.3") as third:
            assert echo_once(third) == b""  # msgsrv refused it; HAProxy closed our side
        with client(address, "127.0.0.4") as other:
            assert echo_once(other) == b"ping\n"
    counters = server.counters.snapshot()
    assert counters["refused_busy"] == 1 and counters["connections_total"] == 3


def test_tls_passes_through_haproxy_to_msgsrv(start_service, haproxy, certs, caplog):  # noqa: F811
    server = start_service("echo", tls_cert=certs["server.pem"], tls_key=certs["server.key"],
                           **BEHIND_HAPROXY)
    proxy = haproxy(tls=(server, "", ""))
    context = ssl.create_default_context(cafile=certs["ca.pem"])
    with caplog.at_level(logging.INFO, "msgsrv.access"):
        with client(proxy.address("tls"), "127.0.0.5") as raw:
            port = raw.getsockname()[1]
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                assert sock.version() in ("TLSv1.2", "TLSv1.3")
                assert echo_once(sock, b"secret\n") == b"secret\n"
        wait_for(lambda: "peer=127.0.0.5:%d " % port in caplog.text,
                 message="the access log line of the TLS client")
    assert server.counters.snapshot().get("refused_tls", 0) == 0


def test_haproxy_health_checks_see_the_status_service_and_mark_a_stopped_daemon_down(
        start_service, haproxy):
    server = start_service("status", **BEHIND_HAPROXY)
    # The check sends a LOCAL header (send-proxy-v2 applies to checks) and expects the
    # status service's hello frame: only a msgsrv that read the header passes.
    check = "\n".join(["    option tcp-check", "    tcp-check expect string hello", ""])
    proxy = haproxy(status=(server, " check inter 200ms fall 1 rise 1", check))
    # L7OK: the expect matched (HAProxy counts servers UP before their first check).
    proxy.wait_status("status_servers", "msgsrv", "UP", "L7OK")
    assert server.counters.snapshot()["proxy_local"] >= 1
    with client(proxy.address("status"), "127.0.0.6") as sock:
        assert b'"type":"hello"' in sock.recv(4096)
    server.stop(1.0)
    proxy.wait_status("status_servers", "msgsrv", "DOWN", "L4CON")  # connection refused


def test_the_reference_deployment_haproxy_cfg_is_valid():
    """conf/examples/scaling/haproxy.cfg (docs/SCALING.rst shows it: tests/unit/test_scaling_examples)."""
    program = require_program("haproxy")
    path = os.path.join(ROOT, "conf", "examples", "scaling", "haproxy.cfg")
    checked = subprocess.run([program, "-c", "-f", path], capture_output=True, text=True,
                             timeout=20)
    assert checked.returncode == 0, checked.stdout + checked.stderr
