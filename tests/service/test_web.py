"""The web console over real sockets: pages and their headers, the status push, chat shared
with TCP clients, the WebSocket protocol (a wsproto client), limits, Origin and Host checks,
key login."""

import base64
import contextlib
import json
import re
import socket
import threading
import time

import pytest

pytest.importorskip("h11")
pytest.importorskip("wsproto")

from wsproto.events import CloseConnection, Ping, Pong, TextMessage, BytesMessage  # noqa: E402

from msgsrv.wire import auth  # noqa: E402
from msgsrv.ops.running import Registry  # noqa: E402
from tests.conftest import recv_until_closed, wait_for  # noqa: E402
from tests.hostile.targets import KEY_NAME, SECRET, write_keys_file  # noqa: E402
from tests.webclients import Console, LineClient, WsClient, http, raw  # noqa: E402

pytestmark = pytest.mark.timeout(30)

WEB = {"handler": "web", "chat": "chat", "request_timeout": "0.6", "keepalive_timeout": "0.6",
       "push_interval": "0.2", "max_message": "2K", "max_request_line": "512",
       "max_headers": "2K", "max_request_body": "1K"}
CHAT = {"handler": "chat", "max_line": "100", "line_rate": "0", "max_queue": "8K"}


@pytest.fixture(scope="module")
def console():
    running = Console({"echo": {"handler": "echo"}, "chat": CHAT, "web": WEB})
    yield running
    running.stop()


@pytest.fixture
def web(console):
    return console["web"].port


def test_pages_are_served_with_their_type_csp_and_cache_headers(web):
    page = http(web, "/")
    assert page.status == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe" not in csp
    assert page.headers["cache-control"] == "no-cache" and page.headers["etag"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["x-frame-options"] == "DENY"
    assert not re.findall(rb"<script(?![^>]*\bsrc=)|\son[a-z]+=", page.body)  # nothing inline
    url = page.body.split(b'<script src="')[1].split(b'"')[0].decode()
    script = http(web, url)
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert script.headers["cache-control"] == "public, max-age=31536000, immutable"
    again = http(web, url, headers=[("If-None-Match", script.headers["etag"])])
    assert (again.status, again.body) == (304, b"")
    assert http(web, url.split("?")[0] + "?v=old").headers["cache-control"] == "no-cache"
    assert http(web, "/", headers=[("If-None-Match", page.headers["etag"])]).status == 304
    head = http(web, "/chat", method="HEAD")
    assert head.status == 200 and head.body == b"" and int(head.headers["content-length"]) > 500
    for missing in ("/static/dashboard.html", "/static/nope.js", "/static/../handler.py", "/x"):
        assert http(web, missing).status == 404, missing
    assert http(web, "/", method="POST", headers=[("Content-Length", "0")]).status == 405


def test_metrics_and_status_json_are_the_status_plugins(web):
    metrics = http(web, "/metrics")
    assert metrics.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert b'msgsrv_connections{service="echo"}' in metrics.body
    for path in ("/status.json", "/status"):
        document = json.loads(http(web, path).body)
        assert [s["name"] for s in document["services"]] == ["echo", "chat", "web"]


def test_host_and_origin_are_checked(console, web):
    assert http(web, "/", host="evil.example:%d" % web).status == 421  # DNS rebinding
    assert http(web, "/", host="127.0.0.1:1").status == 421
    assert http(web, "/", host="localhost:%d" % web).status == 200
    refused = http(web, "/auth/challenge", method="POST", body=b"{}",
                   headers=[("Origin", "http://evil.example")])
    assert refused.status == 403
    assert http(web, "/auth/challenge", method="POST", body=b"{}",
                headers=[("Origin", "http://127.0.0.1:%d" % web)]).status == 200
    before = console["web"].counters.snapshot().get("refused_origin", 0)
    for origin in ("http://evil.example", "http://127.0.0.1:%d.evil.example" % web,
                   "https://127.0.0.1:%d" % web, "null"):
        socket_ = WsClient(web, "/ws/status", origin=origin)
        assert socket_.status == 403, origin
        socket_.close()
    assert console["web"].counters.snapshot()["refused_origin"] == before + 4


def test_dashboard_socket_sends_history_then_pushes_that_follow_connections(console, web):
    dashboard = WsClient(web, "/ws/status")
    assert dashboard.status == 101
    first = json.loads(dashboard.text())
    assert first["type"] == "history" and first["window"] == 300
    status = json.loads(dashboard.text())

    def echo_entry():
        while True:
            doc = json.loads(dashboard.text())
            entry = {s["name"]: s for s in doc["services"]}["echo"]
            return doc, entry
    assert status["type"] == "status"
    with socket.create_connection(("127.0.0.1", console["echo"].port)) as held:
        held.sendall(b"x" * 1000)
        assert held.recv(1000)
        wait_for(lambda: echo_entry()[1]["connections"] == 1, message="a push counting it")
        doc, entry = echo_entry()
        assert entry["max_connections"] == 1000 and entry["state"] == "running"
        assert entry["bytes_in"] >= 1000  # an open connection's bytes count already
        assert doc["threads"] > 1 and doc["processes"] == 1 and doc["reload"] is None
    wait_for(lambda: echo_entry()[1]["connections"] == 0, message="a push after it closed")
    assert console["web"].service.history.snapshot()["echo"]
    dashboard.send(CloseConnection(code=1000))
    assert dashboard.close_code() == 1000
    dashboard.close()


def test_websocket_protocol_fragments_ping_close_and_limits(web):
    chat = WsClient(web, "/ws/chat")
    assert chat.line().startswith("* welcome")
    chat.send(TextMessage(data="fr", message_finished=False))
    chat.send(Ping(b"are you there"))
    chat.send(TextMessage(data="ag", message_finished=True))
    assert chat.event() == Pong(b"are you there")
    assert chat.line() == "* nick * frag"
    chat.say("x" * 2049)  # over max_message
    assert chat.close_code() == 1009
    chat.close()
    binary = WsClient(web, "/ws/chat")
    binary.send(BytesMessage(data=b"nope"))
    assert binary.close_code() == 1003
    binary.close()
    polite = WsClient(web, "/ws/chat")
    polite.send(CloseConnection(code=1000, reason="bye"))
    assert polite.close_code() == 1000
    polite.close()
    assert WsClient(web, "/ws/nope").status == 404
    plain = http(web, "/ws/chat")
    assert plain.status == 426
    old = WsClient(web, "/ws/chat", headers=[("Sec-WebSocket-Version", "8")])
    assert old.status in (400, 426)


def test_browser_and_terminal_users_share_rooms_nicks_history_and_rules(console, web):
    tcp = LineClient(console["chat"].port, "bob")
    carol = LineClient(console["chat"].port, "carol")
    alice = WsClient(web, "/ws/chat")
    alice.say("alice")
    assert alice.line(lambda l: l.startswith("* join lobby")) == "* join lobby alice"
    tcp.line(lambda l: l == "* join lobby alice")
    for n in range(3):
        alice.say("from the browser %d" % n)
        tcp.send("from nc %d" % n)
    seen_by_bob = [tcp.line(lambda l: l.startswith("MSG lobby alice")) for _ in range(3)]
    seen_by_alice = [alice.line(lambda l: l.startswith("MSG lobby bob")) for _ in range(3)]
    assert seen_by_bob == ["MSG lobby alice from the browser %d" % n for n in range(3)]
    assert seen_by_alice == ["MSG lobby bob from nc %d" % n for n in range(3)]
    alice.say("/msg bob psst")
    assert tcp.line(lambda l: l.startswith("PRIV")) == "PRIV alice bob psst"
    assert alice.line(lambda l: l.startswith("PRIV")) == "PRIV alice bob psst"
    alice.say("/me waves")
    assert carol.line(lambda l: l.startswith(("ACT", "PRIV"))) == "ACT lobby alice waves"
    alice.say("y" * 101)  # over the chat's max_line: the chat's own error
    error = alice.line(lambda l: l.startswith("!"))
    assert error.startswith("! line-too-long line longer than 100")
    alice.say("bob")  # taken, case-insensitively too: the same nick rule
    alice.say("/nick BOB")
    assert alice.line(lambda l: l.startswith("!")).startswith("! nick-taken")
    late = WsClient(web, "/ws/chat")
    late.say("dave")
    history = [late.line(lambda l: l.startswith("HIST")).split(" ", 2)[2] for _ in range(6)]
    assert [h for h in history if "alice" in h] == seen_by_bob
    assert [h for h in history if "bob" in h] == seen_by_alice
    alice.send(CloseConnection(code=1001))  # the tab closes
    assert tcp.line(lambda l: l.startswith("* quit")) == "* quit alice closed by peer"
    for client in (alice, late, tcp, carol):
        client.close()
    assert console["chat"].counters.snapshot()["chat_lines"] >= 6


def test_a_browser_that_stops_reading_is_dropped_as_a_slow_consumer(console, web):
    stalled = WsClient(web, "/ws/chat", rcvbuf=4096)
    stalled.say("stuck")
    stalled.line(lambda l: l.startswith("* history-end"))
    talker = LineClient(console["chat"].port, "talker")
    quits = []

    def drain():  # the talker reads everything, as a live client does
        with contextlib.suppress(OSError):
            quits.append(talker.line(lambda l: l.startswith("* quit stuck")))
    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    deadline = time.monotonic() + 15
    while not quits and time.monotonic() < deadline:
        talker.sock.sendall((b"z" * 90 + b"\n") * 50)
    reader.join(5)
    assert quits == ["* quit stuck send queue exceeded"]
    assert console["chat"].counters.snapshot()["chat_send_queue_exceeded"] >= 1
    stalled.close()
    talker.close()


def test_request_limits_and_timeouts_over_the_wire(web):
    assert raw(web, b"GET /" + b"a" * 600 + b" HTTP/1.1\r\nHost: x\r\n\r\n").startswith(
        b"HTTP/1.1 414 ")
    assert raw(web, b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 3000).startswith(
        b"HTTP/1.1 431 ")
    big = b"POST /auth/login HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: 2000\r\n\r\n" % web
    assert raw(web, big).startswith(b"HTTP/1.1 413 ")
    assert raw(web, b"\x16\x03\x01\x00\x10hello").startswith(b"HTTP/1.1 400 ")
    started = time.monotonic()
    slow, silent = (socket.create_connection(("127.0.0.1", web), timeout=5) for _ in range(2))
    slow.sendall(b"GET / HTTP/1.1\r\nHost: x")
    assert recv_until_closed(slow).startswith(b"HTTP/1.1 408 ")  # request_timeout
    assert recv_until_closed(silent) == b""  # nothing sent: keepalive_timeout
    assert time.monotonic() - started < 3
    slow.close()
    silent.close()
    with socket.create_connection(("127.0.0.1", web), timeout=5) as sock:  # keep-alive
        request = b"GET /status.json HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % web
        sock.sendall(request * 2)
        got = b""
        while got.count(b"HTTP/1.1 200 OK") < 2:
            got += sock.recv(65536)


def test_the_chat_page_says_when_there_is_no_chat(tmp_path):
    alone = Console({"web": dict(WEB, chat="")})
    try:
        reply = WsClient(alone["web"].port, "/ws/chat")
        assert reply.status == 503 and b"no chat" in reply.body
        assert http(alone["web"].port, "/").status == 200
    finally:
        alone.stop()


def test_refused_connections_get_a_503_and_stop_closes_sockets_with_1001():
    small = Console({"web": dict(WEB, chat="", max_connections="1")})
    try:
        port = small["web"].port
        held = WsClient(port, "/ws/status")
        wait_for(lambda: small["web"].connection_count == 1)
        assert raw(port, b"").startswith(b"HTTP/1.1 503 Service Unavailable")
        held.text()
    finally:
        small.stop()
    assert held.close_code() == 1001
    held.close()


@pytest.fixture
def keyed(tmp_path):
    keys = write_keys_file(tmp_path / "web.keys")
    running = Console({"web": dict(WEB, chat="", auth="key", keys_file=keys)})
    yield running["web"].port
    running.stop()


def log_in(port, name=KEY_NAME, secret=SECRET):
    nonce = json.loads(http(port, "/auth/challenge", method="POST", body=b"{}").body)["nonce"]
    proof = auth.compute_proof(secret, nonce, name)
    return http(port, "/auth/login", method="POST",
                body=json.dumps({"key": name, "nonce": nonce, "proof": proof}).encode())


def test_key_login_opens_a_session_and_guards_every_page(keyed):
    page = http(keyed, "/")
    assert page.status == 303 and page.headers["location"] == "/login?next=/"
    metrics = http(keyed, "/metrics")
    assert metrics.status == 401 and metrics.headers["www-authenticate"].startswith("Basic")
    assert WsClient(keyed, "/ws/status").status == 401
    assert http(keyed, "/login").status == 200 and http(keyed, "/static/hmac.js?v=x").status == 200
    started = time.monotonic()
    assert log_in(keyed, secret="wrong-secret-0123456789").status == 403
    assert time.monotonic() - started >= auth.FAILURE_DELAY * 0.9  # guessing costs time
    ok = log_in(keyed)
    assert ok.status == 200 and json.loads(ok.body) == {"key": KEY_NAME}
    cookie = ok.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    session = [("Cookie", cookie.split(";")[0])]
    assert http(keyed, "/", headers=session).status == 200
    dashboard = WsClient(keyed, "/ws/status", headers=session)
    assert dashboard.status == 101 and json.loads(dashboard.text())["type"] == "history"
    dashboard.close()
    basic = [("Authorization", "Basic " + base64.b64encode(
        ("%s:%s" % (KEY_NAME, SECRET)).encode()).decode())]
    assert http(keyed, "/metrics", headers=basic).status == 200
    assert http(keyed, "/auth/logout", method="POST", body=b"{}", headers=session).status == 200
    assert http(keyed, "/", headers=session).status == 303


def test_a_reload_swaps_keys_and_limits_and_keeps_the_history(console, tmp_path):
    from tests.webclients import parse_config
    web = console["web"]
    keys = write_keys_file(tmp_path / "reload.keys")
    history = web.service.history
    new = parse_config({"chat": CHAT, "web": dict(WEB, auth="key", keys_file=keys,
                                                   push_interval="0.5")}).services[1]
    web.reconfigure(new)
    try:
        assert web.service.access_required and web.service.keys == {KEY_NAME: SECRET.encode()}
        assert web.service.history is history and history.interval == 0.5
        assert http(web.port, "/").status == 303
    finally:
        web.reconfigure(parse_config({"chat": CHAT, "web": WEB}).services[1])
    assert http(web.port, "/").status == 200


def test_siblings_are_found_by_name_through_the_registry(start_service):
    chat, web = start_service("echo", name="chat"), start_service("echo", name="web")
    assert web.service.sibling("web") is web.service  # alone: it sees itself only
    assert web.service.sibling("chat") is None
    registry = Registry()
    for server in (chat, web):
        registry.add(server)
    assert web.service.sibling("chat") is chat.service and web.service.sibling("x") is None
    assert web.service.directory is registry and web.service.sibling("") is None
    assert web.service.counters is web.counters
    registry.note_reload("accepted", "reconfigured: chat")
    assert registry.last_reload["outcome"] == "accepted"


def test_flood_control_is_the_chats_own():
    flooded = Console({"chat": dict(CHAT, line_rate="20", line_burst="2"),
                       "web": WEB})
    try:
        browser = WsClient(flooded["web"].port, "/ws/chat")
        browser.say("speedy")
        browser.line(lambda l: l.startswith("* history-end"))
        for n in range(4):
            browser.say("burst %d" % n)
        seen = [browser.line(lambda l: l.startswith(("MSG", "!"))) for _ in range(5)]
        assert [l for l in seen if l.startswith("!")] == [
            "! flood more than 20 lines per second: your lines are delayed"]
        assert [l for l in seen if l.startswith("MSG")] == [  # delayed, never dropped
            "MSG lobby speedy burst %d" % n for n in range(4)]
        assert flooded["chat"].counters.snapshot()["chat_flood_delayed"] == 1
        browser.close()
    finally:
        flooded.stop()
