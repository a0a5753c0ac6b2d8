"""The web console's sans-IO parts without sockets: HTTP limits, WebSocket frames, page files,
logins, history.  Fed whole and one byte at a time; hypothesis for the HTTP reader."""

import base64
import hmac
import hashlib

import pytest

h11 = pytest.importorskip("h11")
wsproto = pytest.importorskip("wsproto")

from hypothesis import given, settings, strategies as st  # noqa: E402
from wsproto.connection import Connection as WsConnection, ConnectionType  # noqa: E402
from wsproto.events import (BytesMessage, CloseConnection, Ping, Pong,  # noqa: E402
                            TextMessage)

from msgsrv.wire import auth  # noqa: E402
from msgsrv.services.web import assets, dashboard, login  # noqa: E402
from msgsrv.services.web.http import (CLOSED, NEED_DATA, HttpConnection, HttpError,  # noqa: E402
                                      Limits)
from msgsrv.services.web.websocket import Closed, Message, WebSocket, accept  # noqa: E402

pytestmark = pytest.mark.timeout(30)

LIMITS = Limits(request_line=64, headers=256, body=32)
GET = b"GET /a%20b?x=1&y=2 HTTP/1.1\r\nHost: h:1\r\nX-Two: a\r\nX-Two: b\r\n\r\n"


def requests_of(data, chunks=None, limits=LIMITS):
    """Requests parsed from ``data`` fed whole (chunks None) or in ``chunks``-byte pieces,
    answered as they come; the HttpError status that ended it, or None."""
    conn, got = HttpConnection(limits), []
    pieces = [data] if chunks is None else [data[i:i + chunks] for i in range(0, len(data), chunks)]
    try:
        for piece in pieces + [b""]:
            conn.feed(piece)
            while True:
                request = conn.next_request()
                if request is NEED_DATA or request is CLOSED:
                    break
                got.append(request)
                conn.respond(204)
                if not conn.next_cycle():
                    return got, None
    except HttpError as exc:
        return got, exc.status
    return got, None


@pytest.mark.parametrize("chunks", [None, 1, 7])
def test_pipelined_requests_whole_and_byte_by_byte(chunks):
    post = b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
    got, status = requests_of(GET + post + GET, chunks)
    assert status is None
    assert [(r.method, r.path) for r in got] == [("GET", "/a b"), ("POST", "/p"), ("GET", "/a b")]
    assert got[0].query == {"x": "1", "y": "2"} and got[0].headers["x-two"] == "a, b"
    assert got[1].body == b"hello" and got[0].header("host") == "h:1"


@pytest.mark.parametrize("data, status", [
    (b"GET /" + b"a" * 80 + b" HTTP/1.1\r\nHost: h\r\n\r\n", 414),   # line complete, too long
    (b"GET /" + b"a" * 400, 414),                                      # no end of line yet
    (b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"a" * 300, 431),
    (b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"a" * 250 + b"\r\n\r\n", 431),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 33\r\n\r\n", 413),  # judged on the header
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n21\r\n" + b"x" * 33, 413),
    (b"GET / HTTP/1.1\r\n\r\n", 400),                                   # no Host
    (b"GET / HTTP/1.1\r\nHost: h\r\nBad Header: x\r\n\r\n", 400),
    (b"\x16\x03\x01\x02\x00", 400),                                     # a TLS hello
    (b"GET / HTTP/1.1\r\nHost: h\r\n", 400),                            # cut by EOF
])
@pytest.mark.parametrize("chunks", [None, 1])
def test_limits_and_malformed_requests_end_with_their_status(data, status, chunks):
    assert requests_of(data, chunks)[1] == status


def test_limits_at_the_boundary_are_served():
    target = b"/" + b"a" * (LIMITS.request_line - len("GET  HTTP/1.1\r\n") - 1)
    got, status = requests_of(b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n")
    assert status is None and len(got) == 1
    body = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 32\r\n\r\n" + b"b" * 32
    assert requests_of(body)[0][0].body == b"b" * 32


def test_error_response_and_head_and_close():
    conn = HttpConnection(LIMITS)
    conn.feed(b"HEAD / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    request = conn.next_request()
    out = conn.respond(200, [("Content-Type", "text/plain")], b"body")
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Length: 4\r\n" in out
    assert not out.endswith(b"body") and not conn.next_cycle() and request.method == "HEAD"
    conn = HttpConnection(LIMITS)
    conn.feed(b"GET /" + b"a" * 400)
    with pytest.raises(HttpError) as info:
        conn.next_request()
    out = conn.error_response(info.value)
    assert out.startswith(b"HTTP/1.1 414 URI Too Long\r\n") and b"Connection: close\r\n" in out


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.binary(max_size=400),
                 st.builds(lambda cut, junk: (GET * 3)[:cut] + junk,
                           st.integers(0, 3 * len(GET)), st.binary(max_size=40))),
       st.integers(1, 50))
def test_any_bytes_give_requests_or_a_status_the_same_whole_or_in_pieces(data, size):
    whole = requests_of(data)
    pieces = requests_of(data, size)
    assert [r.target for r in whole[0]] == [r.target for r in pieces[0]]
    assert whole[1] == pieces[1]
    assert whole[1] in (None, 400, 413, 414, 431, 501, 505)


# -- WebSocket ---------------------------------------------------------------------------

def upgrade_request(**headers):
    fields = {"host": "h", "upgrade": "websocket", "connection": "keep-alive, Upgrade",
              "sec-websocket-version": "13",
              "sec-websocket-key": base64.b64encode(b"k" * 16).decode()}
    fields.update({k.replace("_", "-"): v for k, v in headers.items()})
    text = "GET /ws/chat HTTP/1.1\r\n" + "".join("%s: %s\r\n" % kv for kv in fields.items()
                                                 if kv[1])
    conn = HttpConnection()
    conn.feed((text + "\r\n").encode())
    return conn.next_request()


def test_handshake_accepts_and_computes_the_accept_token():
    headers = dict(accept(upgrade_request()))
    expected = base64.b64encode(hashlib.sha1(base64.b64encode(b"k" * 16) +
                                             b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    assert headers["Sec-WebSocket-Accept"] == expected.decode()
    assert headers["Upgrade"] == "websocket"


@pytest.mark.parametrize("headers, status", [
    ({"upgrade": ""}, 426), ({"sec_websocket_version": "8"}, 426),
    ({"sec_websocket_key": "short"}, 400), ({"sec_websocket_key": ""}, 400),
])
def test_handshake_refusals(headers, status):
    with pytest.raises(HttpError) as info:
        accept(upgrade_request(**headers))
    assert info.value.status == status


def client():
    return WsConnection(ConnectionType.CLIENT)


def feed(ws, data, chunks=None):
    if chunks is None:
        return ws.feed(data)
    events = []
    for i in range(0, len(data), chunks):
        events += ws.feed(data[i:i + chunks])
    return events


@pytest.mark.parametrize("chunks", [None, 1])
def test_fragmented_messages_are_reassembled(chunks):
    peer, ws = client(), WebSocket(64)
    data = (peer.send(TextMessage(data="hel", message_finished=False)) +
            peer.send(Ping(b"p")) +  # a control frame between fragments
            peer.send(TextMessage(data="lo \u00e9", message_finished=True)) +
            peer.send(TextMessage(data="two")))
    assert feed(ws, data, chunks) == [Message("hello \u00e9"), Message("two")]
    peer.receive_data(ws.take_output())
    assert list(peer.events()) == [Pong(b"p")]


@pytest.mark.parametrize("chunks", [None, 1])
def test_oversize_message_closes_1009_even_in_fragments(chunks):
    peer, ws = client(), WebSocket(10)
    data = b"".join(peer.send(TextMessage(data="x" * 4, message_finished=False)) for _ in range(3))
    events = feed(ws, data, chunks)
    assert events == [Closed(1009, "message longer than 10 bytes")]
    peer.receive_data(ws.take_output())
    assert [e.code for e in peer.events()] == [1009]
    assert ws.feed(b"\x81\x80") == []  # nothing is read once closed


def test_message_at_the_limit_is_taken():
    peer, ws = client(), WebSocket(10)
    assert ws.feed(peer.send(TextMessage(data="\u00e9" * 5))) == [Message("\u00e9" * 5)]


@pytest.mark.parametrize("data, code", [
    (b"\x82\x81abcd\x00", 1003),                 # binary: text only
    (b"\x81\x05hello", 1002),                    # unmasked client frame
    (b"\xc1\x80abcd", 1002),                     # reserved bit, no extension
    (b"\x89\xfe\x00\x80" + b"\x00" * 132, 1002),  # control frame over 125 bytes
    (b"\x83\x80abcd", 1002),                     # reserved opcode
    (b"\x80\x80abcd", 1002),                     # continuation with nothing to continue
])
def test_protocol_errors_close_with_their_code(data, code):
    ws = WebSocket(64)
    events = ws.feed(data)
    assert [type(e) for e in events] == [Closed] and events[0].code == code
    assert ws.take_output()[:1] == b"\x88"  # our close frame
    assert not ws.open


def test_invalid_utf8_closes_1007():
    peer, ws = client(), WebSocket(64)
    frame = bytearray(peer.send(TextMessage(data="ab")))
    mask = frame[2:6]
    frame[6] = 0xff ^ mask[0]
    assert ws.feed(bytes(frame))[0].code == 1007


def test_peer_close_is_answered_with_its_code_and_our_close_is_acknowledged():
    peer, ws = client(), WebSocket(64)
    assert ws.feed(peer.send(CloseConnection(code=1001, reason="bye"))) == [Closed(1001, "bye")]
    peer.receive_data(ws.take_output())
    assert [(e.code, e.reason) for e in peer.events()] == [(1001, "bye")]
    peer, ws = client(), WebSocket(64)
    peer.receive_data(ws.close(1000, "quit"))
    assert [e.code for e in peer.events()] == [1000]
    assert ws.send_text("late") == b"" and ws.close() == b""
    assert ws.feed(peer.send(CloseConnection(code=1000))) == [Closed(1000, "")]
    assert ws.feed(b"") == []


def test_vanished_peer_is_1006_and_messages_are_sent_whole():
    peer, ws = client(), WebSocket(64)
    peer.receive_data(ws.send_text("hi \u00e9"))
    assert list(peer.events()) == [TextMessage(data="hi \u00e9")]
    assert ws.feed(b"") == [Closed(1006, "connection lost")]


def test_bytes_event_types_are_not_passed_on():
    peer, ws = client(), WebSocket(64)
    assert ws.feed(peer.send(Pong(b"x"))) == []
    assert isinstance(ws.feed(peer.send(BytesMessage(data=b"x")))[0], Closed)


# -- page files, logins, history -----------------------------------------------------------

def test_assets_have_types_versions_and_resolved_references():
    files = assets.load()
    page = files["dashboard.html"]
    assert page.content_type == "text/html; charset=utf-8"
    assert files["dashboard.js"].url.encode() in page.body and b"{{asset:" not in page.body
    script = files["dashboard.js"]
    assert script.content_type.startswith("text/javascript")
    assert script.cache_control(script.version) == assets.LONG_CACHE
    assert script.cache_control(None) == script.cache_control("old") == assets.REVALIDATE
    assert script.matches('"x", %s' % script.etag) and not script.matches('"x"')
    assert not any(b"http://" in f.body or b"https://" in f.body for f in files.values()
                   if not f.name.endswith(".svg"))  # nothing from elsewhere


def test_assets_refuse_unknown_types_and_missing_references(tmp_path):
    (tmp_path / "a.html").write_bytes(b"{{asset:gone.js}}")
    with pytest.raises(ValueError, match="missing file"):
        assets.load(str(tmp_path))
    (tmp_path / "a.html").unlink()
    (tmp_path / "x.exe").write_bytes(b"")
    with pytest.raises(ValueError, match="no content type"):
        assets.load(str(tmp_path))


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_login_proves_a_key_once_per_nonce_and_sessions_expire():
    keys = {"admin": b"s3cret-s3cret-s3cret"}
    clock = Clock()
    logins = login.Logins(lambda: keys, lifetime=60, max_sessions=2, clock=clock)
    nonce = logins.challenge()
    proof = auth.compute_proof(keys["admin"], nonce, "admin")
    assert logins.login("admin", nonce, "0" * 64) is None
    assert logins.login("admin", nonce, proof) is None  # the nonce was used up
    nonce = logins.challenge()
    token = logins.login("admin", nonce, auth.compute_proof(keys["admin"], nonce, "admin"))
    assert logins.identity(token) == "admin" and logins.identity("nope") is None
    nonce = logins.challenge()
    assert logins.login("nobody", nonce, auth.compute_proof(b"x", nonce, "nobody")) is None
    stale = logins.challenge()
    clock.now += login.CHALLENGE_SECONDS + 1
    assert logins.login("admin", stale, auth.compute_proof(keys["admin"], stale, "admin")) is None
    assert logins.identity(token) is None  # 61 s later: expired
    tokens = []
    for _ in range(3):
        nonce = logins.challenge()
        tokens.append(logins.login("admin", nonce,
                                   auth.compute_proof(keys["admin"], nonce, "admin")))
    assert logins.identity(tokens[0]) is None and logins.identity(tokens[2]) == "admin"
    logins.logout(tokens[2])
    assert logins.identity(tokens[2]) is None and logins.session_count == 1


def test_basic_credentials_and_cookies():
    logins = login.Logins(lambda: {"ops": b"secret-secret-16"}, 60, 10)
    good = "Basic " + base64.b64encode(b"ops:secret-secret-16").decode()
    assert logins.basic(good) == "ops"
    for bad in ("Basic " + base64.b64encode(b"ops:nope").decode(), "Basic !!", "Bearer x",
                "Basic " + base64.b64encode(b"other:secret-secret-16").decode()):
        assert logins.basic(bad) is None
    assert login.cookie_token("a=b; %s=tok; c=d" % login.COOKIE) == "tok"
    assert login.cookie_token("a=b") is None
    assert "HttpOnly; SameSite=Strict; Secure" in login.set_cookie("t", 60, True)
    assert login.set_cookie(None, 0, False).startswith(login.COOKIE + "=; Max-Age=0")


def test_the_proof_is_the_framed_services_hmac():
    nonce = "ab" * 32
    assert auth.compute_proof("secret", nonce, "n") == hmac.new(
        b"secret", b"msgsrv-auth-v1\0" + nonce.encode() + b"\0n", hashlib.sha256).hexdigest()


def test_history_keeps_a_window_and_never_goes_down():
    history = dashboard.History(window=3, interval=1)

    def doc(t, conns, bytes_in, state="running"):
        return {"started": 1000.0, "uptime": t, "services": [
            {"name": "a", "state": state, "connections": conns, "bytes_in": bytes_in,
             "bytes_out": 0}]}
    for t, conns, bytes_in in ((1, 1, 10), (2, 2, 5), (3, 0, 30), (4, 0, 40), (5, 3, 50)):
        history.add(doc(t, conns, bytes_in))
    samples = history.snapshot()["a"]
    assert [s[0] for s in samples] == [1002.0, 1003.0, 1004.0, 1005.0]
    assert [s[2] for s in samples] == [10, 30, 40, 50]  # the dip to 5 was clamped, then dropped
    history.add(doc(6, None, 0, state="disabled: x"))
    assert history.snapshot() == {}
