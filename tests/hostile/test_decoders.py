"""Every decoder that reads network bytes, driven by one table of properties.

For each row of DECODERS, with hypothesis:

* arbitrary (and near-valid) input raises only the row's documented errors,
  and feeding it whole, one byte at a time or in random chunks gives the
  same outcome (events delivered, then the error if any);
* after every feed, the bytes held never exceed the row's bound (the limit
  plus one header);
* valid input round-trips: encode -> decode in any chunking gives it back.

tests/unit/test_protocol.py, test_chatproto.py and test_auth.py hold the
example-based tests of these modules and a few fixed-count properties; this
table is what the long campaign (``MSGSRV_CAMPAIGN=long``, 100,000 examples
per property and decoder) drives.  A new decoder joins by adding a row; the
file and command request checks (msgsrv/services/files/protocol.py, msgsrv/services/command/allowlist.py)
run behind the frame decoder as the services run them.
"""

import ipaddress
from dataclasses import dataclass
from typing import Callable

import pytest
from hypothesis import given, strategies as st

from msgsrv.wire import auth
from msgsrv.services.command import allowlist as commands
from msgsrv.services.files import protocol as fileproto
from msgsrv.services.chat.protocol import (
    ERRORS as CHAT_ERRORS, NOTICES, Action, ChatError, Error, History, Line, LineReader,
    LineTooLong, Message as ChatMessage, Notice, Private, clean_text, format_event, parse_line,
    parse_server_line,
)
from msgsrv.services.command.allowlist import CommandTable
from msgsrv.net import proxy_protocol
from msgsrv.wire.errors import AuthError, ProtocolError, ServerError
from msgsrv.wire.frames import CODES as FRAME_CODES, NEED_DATA, PREFIX, FrameDecoder, Message, encode
from tests.conftest import service_config
from tests.hostile import campaign

pytestmark = pytest.mark.timeout(campaign.timeout(120))


# -- feeding -----------------------------------------------------------------------

def split(data, cuts):
    """``data`` cut at the given offsets (sorted, clipped), as a list of chunks."""
    points = sorted({min(max(c, 0), len(data)) for c in cuts})
    edges = [0] + points + [len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:]) if b > a]


def splittings(data, cuts):
    """The same bytes whole, one byte at a time, and in random chunks."""
    return {"whole": [data], "bytewise": [data[i:i + 1] for i in range(len(data))],
            "random": split(data, cuts)}


# -- rows: each decode(chunks) returns an outcome; raising anything is a failure --------

FRAME_LIMITS = dict(max_header=64, max_body=128)
FRAME_BOUND = PREFIX.size + FRAME_LIMITS["max_header"] + FRAME_LIMITS["max_body"]


def decode_frames(chunks):
    """Messages delivered, then the ProtocolError code that ended the stream (or None)."""
    messages = []
    code = _feed_frames(FrameDecoder(**FRAME_LIMITS), chunks, messages.append, FRAME_BOUND)
    return messages, code


def _feed_frames(decoder, chunks, deliver, bound):
    """Feed ``chunks``, delivering messages; return the code of the error that ended it."""
    try:
        for chunk in chunks:
            decoder.feed(chunk)
            _drain(decoder, deliver)
            assert decoder.buffered <= bound, decoder.buffered
        decoder.eof()
    except ProtocolError as exc:
        assert exc.code in FRAME_CODES, exc.code
        return exc.code
    return None


def _drain(decoder, deliver):
    # Deliver each message as it comes: those before a bad frame count too.
    while True:
        message = decoder.next_message()
        if message is NEED_DATA:
            return
        deliver(message)


CHAT_MAX_LINE = 16


def decode_chat_lines(chunks):
    """The chat service's reading: LineReader events, each line parsed as a command."""
    reader, events = LineReader(CHAT_MAX_LINE), []
    for chunk in chunks:
        events += [_chat_command(event) for event in reader.feed(chunk)]
        assert reader.buffered <= CHAT_MAX_LINE + 1, reader.buffered
    return events + [_chat_command(event) for event in reader.eof()], None


def _chat_command(event):
    if isinstance(event, LineTooLong):
        return ("line-too-long",)
    assert isinstance(event, Line) and event.text == clean_text(event.text)
    try:
        return ("command", parse_line(event.text))
    except ChatError as exc:
        assert exc.code in CHAT_ERRORS, exc.code
        return ("refused", exc.code)


SERVER_LINE_MAX = 256


def decode_server_lines(chunks):
    """The chat client's reading: server lines parsed into events, bad ones named bad-line."""
    reader, events = LineReader(SERVER_LINE_MAX), []
    for chunk in chunks:
        events += [_server_event(event) for event in reader.feed(chunk)]
        assert reader.buffered <= SERVER_LINE_MAX + 1
    return events + [_server_event(event) for event in reader.eof()], None


def _server_event(event):
    if isinstance(event, LineTooLong):
        return ("line-too-long",)
    try:
        return ("event", parse_server_line(event.text))
    except ProtocolError as exc:
        assert exc.code == "bad-line", exc.code
        return ("bad-line",)


KEYS = {"alice": b"alice-secret-0123456789"}
AUTH_LIMITS = dict(max_header=512, max_body=64)


def decode_auth(chunks):
    """The server handshake fed from frames: attempt outcomes until done, then the frame error."""
    handshake = auth.ServerHandshake(KEYS, max_failures=3)
    outcomes = []

    def deliver(message):
        if not handshake.done:
            outcomes.append(_attempt(handshake, message))
    code = _feed_frames(FrameDecoder(**AUTH_LIMITS), chunks, deliver,
                        PREFIX.size + AUTH_LIMITS["max_header"] + AUTH_LIMITS["max_body"])
    return outcomes, code


def _attempt(handshake, message):
    result = handshake.receive(message.header)
    assert result.outcome != auth.HandshakeResult.AUTHENTICATED, "arbitrary bytes authenticated"
    assert result.reply["code"] == "auth-failed"
    return result.outcome  # the reply's nonce is fresh each time, so only the outcome compares


PROXY_MAX_V2 = 128
PROXY_BOUND = max(proxy_protocol.V1_MAX, PROXY_MAX_V2)


def decode_proxy_header(chunks):
    """The PROXY header stage's reading: the header, then every byte after it (whatever
    the chunking, the client's bytes arrive intact); or the error code."""
    decoder = proxy_protocol.ProxyHeaderDecoder(max_v2=PROXY_MAX_V2)
    try:
        for index, chunk in enumerate(chunks):
            result = decoder.feed(chunk)
            assert decoder.buffered <= PROXY_BOUND, decoder.buffered
            if result is not proxy_protocol.NEED_DATA:
                rest = result.leftover + b"".join(chunks[index + 1:])
                return [(result.version, result.command, result.source, result.destination,
                         result.tlvs, result.size), rest], None
        decoder.eof()
    except proxy_protocol.ProxyHeaderError as exc:
        assert exc.code in proxy_protocol.CODES, exc.code
        return [], exc.code
    raise AssertionError("eof() returned without a header")


# Request validation behind the frame decoder: each delivered header is checked as the
# service checks it, and the outcome (the checked request or the refusal code) compared.

def _request_decoder(check, codes):
    def decode(chunks):
        outcomes = []

        def deliver(message):
            try:
                outcomes.append(("ok", check(message.header, len(message.body))))
            except ProtocolError as exc:
                assert exc.code in codes, exc.code
                outcomes.append(("refused", exc.code))
        code = _feed_frames(FrameDecoder(**REQUEST_LIMITS), chunks, deliver, REQUEST_BOUND)
        return outcomes, code
    return decode


REQUEST_LIMITS = dict(max_header=256, max_body=64)
REQUEST_BOUND = PREFIX.size + REQUEST_LIMITS["max_header"] + REQUEST_LIMITS["max_body"]


def check_file_request(header, _body_size):
    operation, args = fileproto.check_request(header)
    return operation.name, args


COMMANDS = CommandTable.from_options(service_config(
    "command", keys_file="/nonexistent", **{"command.echo": "echo {words*}",
                                            "command.cat": "cat"}).options, "", environ={})


def check_command_request(header, body_size):
    plan = COMMANDS.plan(header, "alice", body_size)
    return plan.name, tuple(plan.argv)


decode_file_requests = _request_decoder(check_file_request, set(fileproto.CODES))
decode_command_requests = _request_decoder(check_command_request, set(commands.CODES))


# -- valid inputs for the round trips -----------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8)
frame_headers = st.dictionaries(st.text(max_size=6).filter(lambda k: k != "body_size"),
                                json_values, max_size=4)


def _fits(header, body):
    try:
        encode(header, body, **FRAME_LIMITS)
    except ProtocolError:
        return False
    return True


frames = st.lists(st.tuples(frame_headers, st.binary(max_size=128)).filter(lambda f: _fits(*f)),
                  max_size=4)


def frames_round_trip(case, cuts):
    data = b"".join(encode(h, b, **FRAME_LIMITS) for h, b in case)
    expected = [Message(dict(h, **({"body_size": len(b)} if b else {})), b) for h, b in case]
    for chunks in splittings(data, cuts).values():
        assert decode_frames(chunks) == (expected, None)


chat_texts = st.text(max_size=16).map(clean_text).filter(
    lambda t: len(t.encode()) <= CHAT_MAX_LINE)
chat_streams = st.lists(st.tuples(chat_texts, st.sampled_from([b"\n", b"\r\n"])), max_size=6)


def chat_round_trip(case, cuts):
    data = b"".join(text.encode() + eol for text, eol in case)
    expected = [_chat_command(Line(text)) for text, _ in case]
    for chunks in splittings(data, cuts).values():
        assert decode_chat_lines(chunks) == (expected, None)


nicks = st.from_regex(r"\A[A-Za-z][A-Za-z0-9_\-\[\]{}^|]{0,31}\Z")
rooms = st.from_regex(r"\A[A-Za-z0-9_\-.]{0,31}[A-Za-z0-9_\-]\Z")
texts = st.text(max_size=40).map(clean_text)
tokens = st.from_regex(r"\A[!-~]{1,12}\Z")


def _notice(kind):
    spec = NOTICES[kind]
    fields = st.lists(tokens, min_size=len(spec.fields), max_size=len(spec.fields))
    if spec.rest == "tokens":
        return st.builds(lambda f, more: Notice(kind, tuple(f + more)), fields,
                         st.lists(tokens, max_size=3))
    text = texts if spec.rest == "text" else st.just("")
    return st.builds(lambda f, t: Notice(kind, tuple(f), t), fields, text)


room_events = st.builds(ChatMessage, rooms, nicks, texts) | st.builds(Action, rooms, nicks, texts)
server_events = (room_events | st.builds(Private, nicks, nicks, texts)
                 | st.builds(History, st.integers(0, 10**12).map(lambda ms: ms / 1000),
                             room_events)
                 | st.sampled_from(sorted(NOTICES)).flatmap(_notice)
                 | st.builds(Error, st.from_regex(r"\A[a-z][a-z0-9-]{0,12}\Z"), texts))


def server_lines_round_trip(case, cuts):
    # Events whose line fits the reader's limit come back equal; longer ones are refused.
    lines = [format_event(event) for event in case]
    expected = [("event", e) if len(line) <= SERVER_LINE_MAX + 1 else ("line-too-long",)
                for e, line in zip(case, lines)]
    for chunks in splittings(b"".join(lines), cuts).values():
        assert decode_server_lines(chunks) == (expected, None)


proxy_hosts = st.one_of(
    st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)).map(
        lambda pair: tuple(str(ipaddress.IPv4Address(n)) for n in pair)),
    st.tuples(st.integers(0, 2**128 - 1), st.integers(0, 2**128 - 1)).map(
        lambda pair: tuple(str(ipaddress.IPv6Address(n)) for n in pair)))
proxy_cases = st.tuples(
    st.sampled_from([1, 2]), proxy_hosts, st.tuples(st.integers(0, 65535), st.integers(0, 65535)),
    st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=12)), max_size=3),
    st.booleans(), st.binary(max_size=40))


def _proxy_bytes(case):
    version, hosts, ports, tlvs, local, rest = case
    source, destination = (hosts[0], ports[0]), (hosts[1], ports[1])
    if version == 1:
        header = proxy_protocol.encode_v1(*(() if local else (source, destination)))
    else:
        header = proxy_protocol.encode_v2(*((None, None) if local else (source, destination)),
                                          tlvs=tlvs)
    return header, rest


def proxy_round_trip(case, cuts):
    version, hosts, ports, tlvs, local, rest = case
    header, rest = _proxy_bytes(case)
    addresses = (None, None) if local else ((hosts[0], ports[0]), (hosts[1], ports[1]))
    kept_tlvs = () if local or version == 1 else tuple(tlvs)
    expected = ([(version, "local" if local and version == 2 else "proxy") + addresses
                 + (kept_tlvs, len(header)), rest], None)
    for chunks in splittings(header + rest, cuts).values():
        assert decode_proxy_header(chunks) == expected


file_paths = st.text(max_size=12)
sizes = st.integers(0, fileproto.MAX_SIZE)
file_requests = st.one_of(
    st.fixed_dictionaries({"type": st.just("get"), "path": file_paths, "offset": sizes}),
    st.fixed_dictionaries({"type": st.just("put"), "path": file_paths, "size": sizes,
                           "overwrite": st.booleans()}),
    st.fixed_dictionaries({"type": st.just("rename"), "path": file_paths, "to": file_paths}),
    st.fixed_dictionaries({"type": st.sampled_from(["stat", "list", "delete", "mkdir", "help"]),
                           "path": file_paths}),
).filter(lambda h: _fits(h, b""))


def _requests_round_trip(decode, expected_of, bodies=False):
    def round_trip(case, cuts):
        data = b"".join(encode(h, b"", **REQUEST_LIMITS) for h in case)
        expected = [("ok", expected_of(h)) for h in case]
        for chunks in splittings(data, cuts).values():
            assert decode(chunks) == (expected, None)
    return round_trip


def _file_expected(header):
    operation = fileproto.OPERATIONS[header["type"]]
    return operation.name, {arg.name: header.get(arg.name, arg.default) for arg in operation.args}


command_words = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,10}\Z")
command_requests = st.builds(lambda args: {"type": "run", "command": "echo", "args": args},
                             st.lists(command_words, max_size=4)).filter(lambda h: _fits(h, b""))


def _command_expected(header):
    return "echo", (COMMANDS.commands["echo"].argv(header["args"])[0],) + tuple(header["args"])


key_names = st.from_regex(r"\A[A-Za-z0-9_.@-]{1,64}\Z")
secrets = st.from_regex(r"\A[!-~]{16,64}\Z")


def auth_round_trip(case, cuts):
    name, secret, request = case
    for how in ("whole", "bytewise", "random"):
        handshake = auth.ServerHandshake({name: secret.encode()})
        stream = _valid_auth_stream(handshake.hello(), name, secret, request)
        decoder, delivered = FrameDecoder(**AUTH_LIMITS), []
        for chunk in splittings(stream, cuts)[how]:
            decoder.feed(chunk)
            _drain(decoder, delivered.append)
        decoder.eof()
        result = handshake.receive(delivered[0].header)
        assert result.outcome == auth.HandshakeResult.AUTHENTICATED and result.identity == name
        assert auth.check_auth_reply(result.reply) == name
        assert delivered[1:] == [Message(request)]


def _valid_auth_stream(hello, name, secret, request):
    return (encode(auth.answer_hello(hello, name, secret), **AUTH_LIMITS)
            + encode(request, **AUTH_LIMITS))


auth_cases = st.tuples(key_names, secrets, st.fixed_dictionaries({"type": st.text(max_size=8)}))


# The web console's HTTP reader and WebSocket (the web extra; left out without it).

try:
    from msgsrv.services.web import http as web_http, websocket as web_socket
    from wsproto.connection import Connection as WsConnection, ConnectionType
    from wsproto.events import TextMessage
except ImportError:
    web_http = None

WEB_LIMITS = dict(request_line=128, headers=256, body=64)
WEB_STATUSES = {400, 413, 414, 431, 501, 505}


def decode_http_requests(chunks):
    """Requests parsed and answered as they come, then the status that ended the stream."""
    conn, outcomes = web_http.HttpConnection(web_http.Limits(**WEB_LIMITS)), []
    bound = WEB_LIMITS["request_line"] + WEB_LIMITS["headers"] + WEB_LIMITS["body"]
    try:
        for chunk in list(chunks) + [b""]:
            conn.feed(chunk)
            assert conn.buffered <= bound + len(chunk), conn.buffered
            while True:
                request = conn.next_request()
                if request is web_http.NEED_DATA or request is web_http.CLOSED:
                    break
                outcomes.append((request.method, request.target, request.body))
                conn.respond(204)
                if not conn.next_cycle():
                    return outcomes, "closed"
    except web_http.HttpError as exc:
        assert exc.status in WEB_STATUSES, exc.status
        return outcomes, exc.status
    return outcomes, None


http_requests = st.lists(st.tuples(
    st.sampled_from(["GET", "POST"]), st.from_regex(r"\A/[a-z0-9./?=&-]{0,40}\Z"),
    st.binary(max_size=64)), max_size=4)


def _http_bytes(case):
    return b"".join(b"%s %s HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s"
                    % (method.encode(), target.encode(), len(body), body)
                    for method, target, body in case)


def http_round_trip(case, cuts):
    expected = [(method, target, body) for method, target, body in case]
    for chunks in splittings(_http_bytes(case), cuts).values():
        assert decode_http_requests(chunks) == (expected, None)


WS_MAX = 64


def decode_websocket(chunks):
    """Whole messages and the close the WebSocket ends with."""
    ws, events = web_socket.WebSocket(WS_MAX), []
    for chunk in list(chunks) + [b""]:
        events += ws.feed(chunk)
    return events, None


ws_messages = st.lists(st.tuples(st.text(max_size=20).filter(
    lambda t: len(t.encode()) <= WS_MAX), st.integers(1, 4)), max_size=4)


def _ws_bytes(case):
    peer, data = WsConnection(ConnectionType.CLIENT), b""
    for text, parts in case:  # each message in ``parts`` fragments
        size = max(1, -(-len(text) // parts))
        pieces = [text[i:i + size] for i in range(0, len(text), size)] or [""]
        for index, piece in enumerate(pieces):
            data += peer.send(TextMessage(data=piece, message_finished=index == len(pieces) - 1))
    return data


def websocket_round_trip(case, cuts):
    expected = [web_socket.Message(text) for text, _ in case]
    expected.append(web_socket.Closed(1006, "connection lost"))
    for chunks in splittings(_ws_bytes(case), cuts).values():
        assert decode_websocket(chunks) == (expected, None)


@dataclass(frozen=True)
class DecoderRow:
    """One decoder: how to run it, a valid-case strategy and its round-trip check."""

    name: str
    decode: Callable
    cases: object  # hypothesis strategy of valid cases
    round_trip: Callable
    sample: Callable  # case -> valid bytes to mutate (near-valid hostile input)
    max_bytes: int = 600  # longest hostile input (fed one byte at a time too)


def _auth_sample(case):
    hello = {"type": "hello", "auth": auth.SCHEME, "nonce": "0" * 64}
    return _valid_auth_stream(hello, *case)


DECODERS = [
    DecoderRow("frame", decode_frames, frames, frames_round_trip,
               lambda case: b"".join(encode(h, b, **FRAME_LIMITS) for h, b in case)),
    DecoderRow("chat-lines", decode_chat_lines, chat_streams, chat_round_trip,
               lambda case: b"".join(text.encode() + eol for text, eol in case)),
    DecoderRow("chat-server-lines", decode_server_lines,
               st.lists(server_events, max_size=5),
               server_lines_round_trip, lambda case: b"".join(map(format_event, case))),
    DecoderRow("auth", decode_auth, auth_cases, auth_round_trip, _auth_sample),
    DecoderRow("proxy-header", decode_proxy_header, proxy_cases, proxy_round_trip,
               lambda case: b"".join(_proxy_bytes(case))),
    DecoderRow("file-requests", decode_file_requests, st.lists(file_requests, max_size=4),
               _requests_round_trip(decode_file_requests, _file_expected),
               lambda case: b"".join(encode(h, **REQUEST_LIMITS) for h in case)),
    DecoderRow("command-requests", decode_command_requests, st.lists(command_requests, max_size=4),
               _requests_round_trip(decode_command_requests, _command_expected),
               lambda case: b"".join(encode(h, **REQUEST_LIMITS) for h in case)),
]
if web_http is not None:
    DECODERS += [
        # h11 and wsproto cost more per byte fed: shorter inputs keep the short run short.
        DecoderRow("web-http", decode_http_requests, http_requests, http_round_trip, _http_bytes,
                   max_bytes=300),
        DecoderRow("web-websocket", decode_websocket, ws_messages, websocket_round_trip,
                   _ws_bytes, max_bytes=200),
    ]
IDS = [row.name for row in DECODERS]


@st.composite
def hostile_bytes(draw, row):
    """Arbitrary bytes, or a valid input of ``row`` with random edits and cuts."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=row.max_bytes))
    data = bytearray(row.sample(draw(row.cases))[:row.max_bytes])
    for _ in range(draw(st.integers(0, 4))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut] if draw(st.booleans()) else data)


@pytest.mark.parametrize("row", DECODERS, ids=IDS)
@campaign.examples(100)
@given(data=st.data())
def test_hostile_input_gives_documented_errors_however_split(row, data):
    stream = data.draw(hostile_bytes(row), label="stream")
    cuts = data.draw(st.lists(st.integers(0, 600), max_size=30), label="cuts")
    outcomes = {how: row.decode(chunks) for how, chunks in splittings(stream, cuts).items()}
    assert outcomes["whole"] == outcomes["bytewise"] == outcomes["random"]


@pytest.mark.parametrize("row", DECODERS, ids=IDS)
@campaign.examples(50)
@given(data=st.data())
def test_valid_input_round_trips_however_split(row, data):
    case = data.draw(row.cases, label="case")
    cuts = data.draw(st.lists(st.integers(0, 600), max_size=30), label="cuts")
    row.round_trip(case, cuts)


# -- the client side of the handshake reads server headers too ------------------------

headers = json_values | st.dictionaries(st.sampled_from(["type", "auth", "nonce", "key", "code",
                                                         "message"]), json_values)


@campaign.examples(150)
@given(headers)
def test_client_handshake_refuses_any_hostile_header_with_a_documented_error(header):
    try:
        auth.answer_hello(header, "alice", "alice-secret-0123456789")
    except ProtocolError as exc:
        assert exc.code == "bad-hello"
    try:
        auth.check_auth_reply(header)
    except AuthError as exc:
        assert exc.code == "auth-failed"
    except ServerError:
        pass
    except ProtocolError as exc:
        assert exc.code == "bad-reply"
