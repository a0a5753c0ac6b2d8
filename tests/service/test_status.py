"""The status service: counters after known traffic, JSON, Prometheus, HTTP, the table."""

import json
import socket
import urllib.error
import urllib.request

import pytest

from msgsrv.services.status import report as status
from msgsrv.cli.client import main as client_main
from msgsrv.services.status.client import StatusClient
from msgsrv.wire.errors import ServerError
from msgsrv.ops.running import Registry
from msgsrv.wire.frame_stream import FrameStream, check_error
from tests.conftest import connect, recv_until_closed, wait_for

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def daemonish(start_service):
    """An echo service and a status service sharing a registry, as the daemon sets them up."""
    registry = Registry()
    echo = start_service("echo", name="echo", max_connections=1)
    stat = start_service("status", name="stat")
    for server in (echo, stat):
        registry.add(server)
    return echo, stat


def echo_round_trip(server, data):
    with connect(server) as sock:
        sock.sendall(data)
        got = b""
        while len(got) < len(data):
            got += sock.recv(100)
    wait_for(lambda: server.connection_count == 0)


def test_counters_follow_known_traffic(daemonish):
    echo, stat = daemonish
    with StatusClient("127.0.0.1", stat.port) as client:
        assert client.hello.header["service"] == "stat"
        before = {s["name"]: s for s in client.status()["services"]}
        assert before["echo"]["connections_total"] == 0
        echo_round_trip(echo, b"hello")
        echo_round_trip(echo, b"world!")
        held = connect(echo)
        wait_for(lambda: echo.connection_count == 1)
        with connect(echo) as refused:
            assert recv_until_closed(refused) == b""
        document = client.status()
        held.close()
    assert document["version"] and document["pid"] and document["uptime"] >= 0
    entry = document["services"][0]
    assert entry["connections"] == 1 and entry["connections_total"] == 3
    assert entry["bytes_in"] == entry["bytes_out"] == 11
    assert entry["refused"] == {"busy": 1, "access": 0, "rate": 0, "auth_penalty": 0, "tls": 0}
    assert entry["errors"] == 0 and entry["tls"] is False and entry["transport"] == "tcp"
    assert document["services"][1]["connections"] == 1  # this very request


def test_prometheus_text(daemonish):
    echo, stat = daemonish
    echo_round_trip(echo, b"abc")
    stat.counters.incr("chat_drops", 3)
    with StatusClient("127.0.0.1", stat.port) as client:
        text = client.metrics()
    assert "# TYPE msgsrv_connections_total counter" in text
    assert 'msgsrv_received_bytes_total{service="echo"} 3' in text
    assert 'msgsrv_refused_total{service="echo",reason="busy"} 0' in text
    assert 'msgsrv_handler_total{service="stat",name="chat_drops"} 3' in text
    assert text.endswith("\n")


def test_bad_requests_keep_the_connection(start_service):
    server = start_service("status")
    with StatusClient("127.0.0.1", server.port) as client:
        with pytest.raises(ServerError, match="bad-request: format must be one of json"):
            client.fetch("xml")
        client.stream.send({"type": "stats"})
        with pytest.raises(ServerError, match="expected a status request"):
            check_error(client.stream.recv())
        assert client.status()["services"][0]["name"] == "svc"


def test_default_format_setting(start_service):
    server = start_service("status", format="prometheus")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        stream = FrameStream(sock)
        assert stream.recv().type == "hello"
        stream.send({"type": "status"})
        reply = stream.recv()
    assert reply.header["format"] == "prometheus" and b"msgsrv_info" in reply.body


def test_http_metrics_and_status(start_service):
    server = start_service("msgsrv.services.status.handler:StatusHTTPHandler")
    base = "http://127.0.0.1:%d" % server.port
    with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert b"msgsrv_uptime_seconds" in response.read()
    # The server may not have seen the first request's close yet: wait for it, so
    # the status document below counts exactly the connection that asks for it.
    wait_for(lambda: server.connection_count == 0, message="the /metrics connection to close")
    with urllib.request.urlopen(base + "/", timeout=5) as response:
        document = json.loads(response.read())
    assert document["services"][0]["connections"] == 1
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(base + "/nope", timeout=5)
    assert caught.value.code == 404
    wait_for(lambda: server.counters.snapshot().get("requests") == 2)


def test_table_and_cli(daemonish, capsys):
    echo, stat = daemonish
    echo_round_trip(echo, b"xyz")
    address = "127.0.0.1:%d" % stat.port
    assert client_main(["status", address]) == 0
    table = capsys.readouterr().out
    assert table.startswith("msgsrv ") and "SERVICE" in table and "REFUSED" in table
    row = next(line for line in table.splitlines() if line.startswith("echo "))
    assert row.split()[3:7] == ["0", "1", "3", "3"]
    assert client_main(["status", address, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["services"][0]["bytes_in"] == 3
    assert client_main(["status", address, "--prometheus"]) == 0
    assert "msgsrv_info" in capsys.readouterr().out


def test_rendering_without_sockets():
    document = {"version": "9", "pid": 1, "started": 0, "uptime": 93784, "services": [
        {"name": "u", "handler": "echo", "transport": "udp", "address": "[::1]:7",
         "tls": False, "uptime": 1, "connections": None, "connections_total": 0,
         "bytes_in": 5, "bytes_out": 0, "errors": 0,
         "refused": {"busy": 0, "access": 2, "too_large": 1}, "counters": {"datagrams": 4}}]}
    table = status.format_table(document)
    assert "up 1d02h" in table and "  u: access=2 too_large=1 datagrams=4" in table
    assert "msgsrv_connections{" not in status.to_prometheus(document)
    assert [status.format_duration(s) for s in (5, 65, 3700)] == ["5s", "1m05s", "1h01m"]
    assert status.format_peer(("::1", 7, 0, 0)) == "[::1]:7"
    assert status.format_peer(("127.0.0.1", 7)) == "127.0.0.1:7"
    assert 'name="a\\"b"' in status.to_prometheus(dict(document, services=[
        dict(document["services"][0], counters={'a"b': 1})]))


def test_udp_replies_count_bytes_out(start_service, capsys):
    registry = Registry()
    udp = start_service("echo", name="uecho", transport="udp", reply_burst=2)
    stat = start_service("status", name="stat")
    for server in (udp, stat):
        registry.add(server)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        for payload in (b"abcd", b"efghij", b"dropped"):  # the third is over reply_burst
            sock.sendto(payload, ("127.0.0.1", udp.port))
        assert [sock.recv(100) for _ in range(2)] == [b"abcd", b"efghij"]
    wait_for(lambda: udp.counters.snapshot().get("refused_reply_rate") == 1)
    address = "127.0.0.1:%d" % stat.port
    assert client_main(["status", address]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith("uecho "))
    assert row.split()[1] == "udp" and row.split()[5:8] == ["17", "10", "0"]  # IN OUT ERRORS
    assert "  uecho: reply_rate=1 datagrams=3 replies=2" in table
    with StatusClient("127.0.0.1", stat.port) as client:
        text = client.metrics()
    assert 'msgsrv_sent_bytes_total{service="uecho"} 10' in text
    assert 'msgsrv_refused_total{service="uecho",reason="reply_rate"} 1' in text
    assert 'msgsrv_handler_total{service="uecho",name="replies"} 2' in text
