"""A wire-level mutation fuzzer: mutated bytes against a running daemon's services.

Valid inputs of each protocol (frames, auth answers, raw bytes) are mutated
(bit flips, overwrites, truncations, splices of two inputs, repeated slices,
huge length prefixes, hostile ``body_size`` values) and sent on fresh
connections, several at once.  Each reply is checked against what the
protocol allows: no traceback ever reaches the wire, an echo is exact, a
framed reply is well-formed frames of known types with documented error
codes.  A :class:`Finding` names the input (seed and index) so it can be
replayed.  Use :func:`fuzz` with targets built by :func:`targets_for`.
"""

import collections
import concurrent.futures
import ipaddress
import json
import random
import re
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Callable, List

from msgsrv.wire import auth, frames as protocol
from msgsrv.services.chat import protocol as chatproto
from msgsrv.services.command import allowlist as commands
from msgsrv.services.files import protocol as fileproto
from msgsrv.net import proxy_protocol
from msgsrv.net.access import client_address
from msgsrv.wire.errors import ProtocolError
from msgsrv.wire.frames import NEED_DATA, FrameDecoder, encode
from tests.hostile.attackers import rst_close
from tests.hostile.targets import KEY_NAME, SECRET

#: Error codes a framed service may answer a hostile client with (``bad-request``: every
#: framed service answers a frame without a string type with it, docs/PROTOCOL.rst "Requests").
FRAMED_CODES = frozenset({"too-large", "bad-header", "truncated", "auth-failed", "timeout", "busy",
                          "bad-request"})
#: Header types a framed service may send (besides error).
FRAMED_TYPES = frozenset({"hello", "authenticated", "echo", "error"})
FILE_TYPES = FRAMED_TYPES | {"data", "end", "help", "listing", "ok", "ready", "stat"}
FILE_CODES = FRAMED_CODES | set(protocol.CODES) | set(fileproto.CODES)
FILE_SEEDS = (encode({"type": "put", "path": "f", "size": 4}) + b"abcd" + encode(
    {"type": "end", "sha256": "88d4266fd4e6338d13b845fcf289579d209c897823b9217da3e161936f031589"}),
              encode({"type": "get", "path": "f", "offset": 1}),
              encode({"type": "list", "path": ""}) + encode({"type": "stat", "path": "f"}),
              encode({"type": "rename", "path": "f", "to": "../g"}),
              encode({"type": "mkdir", "path": "d/e", "parents": True}))
COMMAND_TYPES = FRAMED_TYPES | {"commands", "started", "output", "exit"}
COMMAND_CODES = FRAMED_CODES | set(protocol.CODES) | set(commands.CODES) | {"exec-failed"}
COMMAND_SEEDS = (encode({"type": "run", "command": "echo", "args": ["a", "b"]}),
                 encode({"type": "run", "command": "cat", "args": []}, b"stdin") +
                 encode({"type": "list"}),
                 encode({"type": "run", "argv": ["echo", "x"]}))
STATUS_TYPES = FRAMED_TYPES | {"status"}
STATUS_SEEDS = (encode({"type": "status", "format": "json"}),
                encode({"type": "status", "format": "prometheus"}))
INTERESTING_LENGTHS = (0, 1, 2, 3, 63, 64, 65, 1023, 1024, 1025, 65535, 65536, 65537,
                       2**31 - 1, 2**31, 2**32 - 1)
INTERESTING_SIZES = (-1, -2**63, 0, 1, 2**31 - 1, 2**31, 2**32, 2**32 + 1, 2**63 - 1, 2**63,
                     2**64, 10**100, "1", "", None, True, 1.5, [], {}, "1e9")
INTERESTING_BYTES = b"\x00\xff\x7f\x80\"{}[]\\:,\n\r "
REPLY_LIMIT = 1 << 20


# -- mutations -----------------------------------------------------------------------

def flip_bits(data, rng, other):
    """Flip 1-8 random bits."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return bytes(data)


def overwrite(data, rng, other):
    """Overwrite 1-4 bytes with bytes that matter to JSON and framing."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if data:
            choices = INTERESTING_BYTES + bytes([rng.randrange(256)])
            data[rng.randrange(len(data))] = rng.choice(choices)
    return bytes(data)


def truncate(data, rng, other):
    """Cut the input at a random point."""
    return data[:rng.randrange(len(data) + 1)]


def splice(data, rng, other):
    """A prefix of this input joined to a suffix of another."""
    return data[:rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1):]


def repeat_slice(data, rng, other):
    """Repeat a random slice 2-50 times in place."""
    start = rng.randrange(len(data) + 1)
    end = rng.randrange(start, len(data) + 1)
    return data[:end] + data[start:end] * rng.randint(2, 50) + data[end:]


def insert_junk(data, rng, other):
    """Insert 1-64 random bytes."""
    at = rng.randrange(len(data) + 1)
    return data[:at] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))) + data[at:]


def huge_prefix(data, rng, other):
    """Replace the 4-byte length prefix with a boundary or huge value."""
    return struct.pack(">I", rng.choice(INTERESTING_LENGTHS)) + data[4:]


def hostile_body_size(data, rng, other):
    """Re-encode the first frame's header with a hostile ``body_size`` (prefix kept consistent)."""
    header = _first_header(data)
    if header is None:
        return flip_bits(data, rng, other)
    header["body_size"] = rng.choice(INTERESTING_SIZES)
    raw = json.dumps(header).encode()
    return struct.pack(">I", len(raw)) + raw + bytes(rng.randrange(256) for _ in range(8))


def nested_header(data, rng, other):
    """A header of deeply nested arrays or a long string (parser stress, within max_header)."""
    depth = rng.choice((10, 100, 1000, 5000))
    raw = rng.choice((b"[" * depth + b"]" * depth, b'{"a":"' + b"\\u0000" * depth + b'"}',
                      b'{"a":' * depth + b"1" + b"}" * depth))
    return struct.pack(">I", len(raw)) + raw


MUTATORS = (flip_bits, overwrite, truncate, splice, repeat_slice, insert_junk, huge_prefix,
            hostile_body_size, nested_header)


def _first_header(data):
    if len(data) < 4:
        return None
    (length,) = struct.unpack(">I", data[:4])
    try:
        header = json.loads(data[4:4 + length])
    except (ValueError, RecursionError):
        return None
    return header if isinstance(header, dict) else None


def mutate(data, rng, corpus):
    """Apply 1-3 random mutators to ``data`` (``corpus`` feeds splices)."""
    for _ in range(rng.randint(1, 3)):
        data = rng.choice(MUTATORS)(data, rng, rng.choice(corpus))
    return data


# -- targets -----------------------------------------------------------------------------

@dataclass
class Finding:
    """One input whose reply broke the protocol's promises."""

    target: str
    index: int
    problem: str
    data: bytes
    reply: bytes

    def __str__(self):
        return "%s #%d: %s\n  input %r\n  reply %r" % (
            self.target, self.index, self.problem, self.data[:300], self.reply[:300])


@dataclass
class Target:
    """A service and how to fuzz it.

    ``run(make_input, rng)`` opens a connection, builds the input with
    ``make_input(answer)`` (``answer`` is a correct auth answer for this
    connection, or b""), sends it and returns ``(problem or None, input, reply)``.
    ``corpus`` holds valid inputs to mutate and splice.
    """

    name: str
    run: Callable
    corpus: List[bytes]
    answers: bool = False  # make_input gets a correct auth answer worth mutating


def _send_then_read(sock, data, rng, reply_timeout, reset_share, limit=REPLY_LIMIT):
    """Send, then half-close and read to EOF (or reset at once); return (reply, how).

    ``how`` is eof, reset, we-reset, stalled or limit (``limit`` bytes read).
    """
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        return _read_rest(sock, reply_timeout, limit)[0], "reset"
    if rng.random() < reset_share:
        rst_close(sock)
        return b"", "we-reset"
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        return b"", "reset"
    return _read_rest(sock, reply_timeout, limit)


def _read_rest(sock, reply_timeout, limit):
    deadline = time.monotonic() + reply_timeout
    data = bytearray()
    while len(data) < limit:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return bytes(data), "stalled"
        except OSError:
            return bytes(data), "reset"
        if not chunk:
            return bytes(data), "eof"
        data += chunk
    return bytes(data), "limit"


def _traceback(reply):
    return "a traceback reached the wire" if b"Traceback" in reply else None


def stream_echo_target(address, reply_timeout=10.0):
    """Raw TCP echo: whatever is sent comes back exactly; a reset mid-way is harmless."""
    def run(make_input, rng):
        data = make_input(b"")
        with socket.create_connection(address, timeout=reply_timeout) as sock:
            # One byte more than was sent reveals an echo that adds bytes.
            reply, how = _send_then_read(sock, data, rng, reply_timeout, 0.2, len(data) + 1)
        if how == "we-reset":
            return None, data, reply
        if how != "eof":
            return "echo ended by %s instead of EOF" % how, data, reply
        if reply != data:
            return "echo differs (%d bytes back of %d)" % (len(reply), len(data)), data, reply
        return _traceback(reply), data, reply
    corpus = [b"ping\n", encode({"type": "ping"}), b"\x00" * 32, b"GET / HTTP/1.0\r\n\r\n"]
    return Target("echo", run, corpus)


def proxied_echo_target(address, max_header, reply_timeout=10.0):
    """Echo behind the PROXY protocol: after a valid header naming an allowed client
    (127.0.0.0/8, or LOCAL: the prober itself) the rest comes back exactly; after
    anything else, not a byte, and the connection closes."""
    def run(make_input, rng):
        data = make_input(b"")
        expected = _proxied_echo(data, max_header)
        with socket.create_connection(address, timeout=reply_timeout) as sock:
            reply, how = _send_then_read(sock, data, rng, reply_timeout, 0.2, len(expected) + 1)
        if how == "we-reset" or (how == "reset" and not expected and not reply):
            return None, data, reply  # a refused header is aborted: a reset is fine
        if how != "eof":
            return "ended by %s instead of EOF" % how, data, reply
        if reply != expected:
            return "%d bytes back, %d expected" % (len(reply), len(expected)), data, reply
        return None, data, reply
    claim = (("127.0.0.3", 5000), address)
    corpus = [proxy_protocol.encode_v2(*claim) + b"ping\n",
              proxy_protocol.encode_v1(*claim) + b"hello",
              proxy_protocol.encode_v2(tlvs=[(4, b"pad")]) + b"x" * 40,
              proxy_protocol.encode_v2(*claim, tlvs=[(1, b"h2"), (0xE0, b"\x00" * 9)]) + b"y",
              proxy_protocol.encode_v1(("::ffff:127.0.0.9", 1), ("::1", 2)) + b"z",
              proxy_protocol.encode_v1() + b"GET / HTTP/1.0\r\n\r\n"]
    return Target("echo-proxy", run, corpus)


def _proxied_echo(data, max_header):
    """What the proxied echo must send back for ``data`` (then EOF)."""
    decoder = proxy_protocol.ProxyHeaderDecoder(max_v2=max_header)
    try:
        header = decoder.feed(data)
    except proxy_protocol.ProxyHeaderError:
        return b""
    if header is proxy_protocol.NEED_DATA:
        return b""  # the header never completes: our half-close ends it
    if header.local or client_address(header.source[0]) in _LOOPBACK:
        return header.leftover
    return b""


_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


def datagram_echo_target(address, max_datagram, reply_timeout=2.0):
    """UDP echo: a datagram within max_datagram comes back exactly; a larger one is dropped."""
    def run(make_input, rng):
        data = make_input(b"")[:65507]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(reply_timeout)
            sock.sendto(data, address)
            try:
                reply = sock.recv(65536)
            except socket.timeout:
                reply = None
        if len(data) > max_datagram:
            return (None if reply is None else "an oversized datagram was answered"), data, b""
        if reply is None:
            return "no echo for a %d-byte datagram" % len(data), data, b""
        if reply != data:
            return "datagram echo differs", data, reply
        return _traceback(reply), data, reply
    corpus = [b"ping", b"x" * max_datagram, encode({"type": "ping"})]
    return Target("echo-udp", run, corpus)


def framed_target(name, address, *, authed, phase, reply_timeout=10.0, types=FRAMED_TYPES,
                  codes=FRAMED_CODES, seeds=()):
    """A framed service: mutated frames in ``phase`` "pre-auth" or "post-auth".

    Pre-auth inputs may be mutations of a correct answer to this connection's
    hello; post-auth inputs are mutated requests after a real handshake.
    Replies must be well-formed frames of ``types`` (header types besides
    error) with error ``codes``, and the service must close the connection
    after our half-close.  ``seeds`` adds the service's own valid requests
    to the generic seeds.
    """
    def run(make_input, rng):
        with socket.create_connection(address, timeout=reply_timeout) as sock:
            decoder, answer = FrameDecoder(), b""
            if authed:
                hello = _recv_frame(sock, decoder).header
                answer = encode(auth.answer_hello(hello, KEY_NAME, SECRET))
            if phase == "post-auth" and authed:
                sock.sendall(answer)
                if _recv_frame(sock, decoder).type != "authenticated":
                    return "a correct answer was refused", answer, b""
                answer = b""
            data = make_input(answer)
            reply, how = _send_then_read(sock, data, rng, reply_timeout, 0.15)
        if how == "we-reset":
            return None, data, reply
        if how == "stalled":
            return "no EOF within %gs after a half-close" % reply_timeout, data, reply
        problem = _traceback(reply) or check_frames(decoder, reply, whole=(how == "eof"),
                                                    types=types, codes=codes)
        return problem, data, reply
    corpus = [encode({"type": "ping"}), encode({"type": "put", "path": "a"}, b"body" * 10),
              encode({"type": "ping", "n": [1, 2, {"x": None}]}) + encode({"type": "b"})]
    corpus += list(seeds)
    return Target("%s/%s" % (name, phase), run, corpus, answers=(phase == "pre-auth" and authed))


def _checked_run(address, reply_timeout, check):
    """A Target's run: the input on a fresh connection, a half-close, then ``check(reply)``
    (None, or what is wrong with it) once the service closed."""
    def run(make_input, rng):
        with socket.create_connection(address, timeout=reply_timeout) as sock:
            data = make_input(b"")
            reply, how = _send_then_read(sock, data, rng, reply_timeout, 0.15)
        if how == "stalled":
            return "no EOF within %gs after a half-close" % reply_timeout, data, reply
        return _traceback(reply) or check(reply), data, reply
    return run


def chat_target(address, reply_timeout=10.0):
    """The chat line service: mutated lines after the welcome; every whole line back parses."""
    run = _checked_run(address, reply_timeout, _bad_chat_line)
    corpus = [b"/nick fuzz\n/join r\nhello\n", b"/me waves\n/msg fuzz hi\n/who\n/rooms\n",
              b"/quit bye\n", b"/part\r\n/help\n" + b"x" * 5000 + b"\n", b"\xff\xfe\x00\n"]
    return Target("chat", run, corpus)


#: Statuses the web console may answer a hostile request with (500 would be a bug).
WEB_STATUSES = frozenset({101, 200, 204, 303, 304, 400, 401, 403, 404, 405, 408, 413, 414, 421,
                          426, 429, 431, 501, 503, 505})


def _ws_frame(text, opcode=0x1, mask=b"\x01\x02\x03\x04"):
    payload = text.encode()
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


def _upgrade(path, host):
    return (b"GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: a2tra2tra2tra2tra2traw==\r\n"
            b"Origin: http://%s\r\n\r\n" % (path, host, host))


def web_target(address, reply_timeout=10.0):
    """The web console: mutated HTTP requests and WebSocket frames; every response before a
    switch to WebSocket is well-formed HTTP with a status the console documents."""
    host = b"%s:%d" % (address[0].encode(), address[1])
    run = _checked_run(address, reply_timeout, _bad_http)
    corpus = [b"GET / HTTP/1.1\r\nHost: %s\r\n\r\nGET /chat HTTP/1.1\r\nHost: %s\r\n\r\n"
              % (host, host),
              b"GET /static/console.css?v=1 HTTP/1.1\r\nHost: %s\r\nIf-None-Match: \"x\"\r\n\r\n"
              % host,
              b"POST /auth/login HTTP/1.1\r\nHost: %s\r\nContent-Length: 38\r\n\r\n"
              b'{"key":"a","nonce":"b","proof":"c"}   ' % host,
              b"GET /metrics HTTP/1.0\r\n\r\n",
              _upgrade(b"/ws/chat", host) + _ws_frame("fuzz") + _ws_frame("/join r")
              + _ws_frame("hello", 0x1) + _ws_frame("", 0x9) + _ws_frame("", 0x8),
              _upgrade(b"/ws/status", host) + _ws_frame("x" * 100)]
    return Target("web", run, corpus)


def _bad_http(reply):
    """None if ``reply`` is whole HTTP/1.1 responses (up to a switch to WebSocket)."""
    while reply:
        head, sep, rest = reply.partition(b"\r\n\r\n")
        match = re.match(rb"HTTP/1\.1 (\d{3}) [^\r\n]*", head)
        if not match:
            return "not an HTTP response: %r" % head[:80]
        status = int(match.group(1))
        if status not in WEB_STATUSES:
            return "undocumented status %d: %r" % (status, rest[:200])
        if status == 101 or not sep:
            return None  # WebSocket frames follow, or the reply was cut by a reset
        length = re.search(rb"(?i)\r\ncontent-length: (\d+)", head)
        reply = rest[int(length.group(1)) if length else 0:]
    return None


def _bad_chat_line(reply):
    for line in reply.split(b"\n")[:-1]:  # the last piece may be cut by a reset
        try:
            chatproto.parse_server_line(line)
        except ProtocolError as exc:
            return "a reply line outside the grammar (%s): %r" % (exc, line[:200])
    return None


def _recv_frame(sock, decoder):
    while True:
        message = decoder.next_message()
        if message is not NEED_DATA:
            return message
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a whole frame")
        decoder.feed(chunk)


def check_frames(decoder, reply, whole=True, types=FRAMED_TYPES, codes=FRAMED_CODES):
    """None if ``reply`` (fed to ``decoder``) is frames of ``types`` and error ``codes``.

    With ``whole`` the reply must end on a frame boundary (a graceful close).
    """
    try:
        decoder.feed(reply)
        while True:
            message = decoder.next_message()
            if message is NEED_DATA:
                break
            problem = _frame_problem(message.header, types, codes)
            if problem:
                return problem
            if not _skip_file_data(decoder, message.header):
                return None  # the reply ends inside a file's raw bytes (a transfer cut short)
        if whole:
            decoder.eof()
    except ProtocolError as exc:
        return "reply is not well-formed frames: %s" % exc
    return None


def _skip_file_data(decoder, header):
    """After a file service ``data`` frame, pass over the raw bytes that follow it.

    Returns False when the reply holds fewer of them than the header announced.
    """
    size, offset = header.get("size"), header.get("offset", 0)
    if header.get("type") != "data" or not isinstance(size, int) or not isinstance(offset, int):
        return True
    pending = decoder.take_buffered()
    count = max(0, size - offset)
    decoder.feed(pending[count:])
    return len(pending) >= count


def _frame_problem(header, types, codes):
    kind = header.get("type")
    if kind not in types and kind != "error":
        return "unexpected frame type %r" % (kind,)
    if kind == "error" and header.get("code") not in codes:
        return "undocumented error code %r: %s" % (header.get("code"), header.get("message"))
    return None


# -- the run -------------------------------------------------------------------------

@dataclass
class FuzzReport:
    """Counts of a fuzz run; ``findings`` lists inputs that broke a promise.

    ``codes`` counts the error codes framed services answered with.
    """

    seed: int
    sent: int = 0
    per_target: collections.Counter = field(default_factory=collections.Counter)
    codes: collections.Counter = field(default_factory=collections.Counter)
    health_checks: int = 0
    findings: List[Finding] = field(default_factory=list)
    seconds: float = 0.0


def fuzz(targets, *, count, budget, health, health_every=50, workers=24, seed=None):
    """Send up to ``count`` mutated inputs within ``budget`` seconds; return a FuzzReport.

    Inputs go round-robin to ``targets``, ``workers`` at a time.  ``health()``
    runs after every ``health_every`` inputs, while the next ones are in
    flight (it raises if a fresh client is not served).  Input ``i`` is
    derived from ``seed`` and ``i``, so a finding can be replayed.  Stops at
    the first finding.
    """
    seed = random.randrange(1 << 32) if seed is None else seed
    report = FuzzReport(seed)
    started = time.monotonic()
    indexes = iter(range(count))
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="fuzz") as pool:
        pending = set()
        while True:
            while len(pending) < workers and not report.findings \
                    and time.monotonic() - started < budget:
                index = next(indexes, None)
                if index is None:
                    break
                pending.add(pool.submit(_one, targets[index % len(targets)], seed, index))
            if not pending:
                break
            done, pending = concurrent.futures.wait(
                pending, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                _tally(report, future.result(), health, health_every)
    _check_health(report, health)
    report.seconds = time.monotonic() - started
    return report


def _tally(report, outcome, health, health_every):
    name, finding, reply = outcome
    report.sent += 1
    report.per_target[name] += 1
    report.codes.update(code.decode() for code in _CODE.findall(reply))
    if finding is not None:
        report.findings.append(finding)
    if report.sent % health_every == 0:
        _check_health(report, health)


def _check_health(report, health):
    health()
    report.health_checks += 1


_CODE = re.compile(rb'"code":"([a-z-]{1,40})"')


def _one(target, seed, index):
    rng = random.Random("%d/%d" % (seed, index))
    base = rng.choice(target.corpus)
    use_answer = target.answers and rng.random() < 0.7

    def make_input(answer):
        # Mutating this connection's own correct answer keeps inputs close to
        # valid, so the deeper paths of the handshake run too.
        start = answer + rng.choice((b"", base)) if use_answer and answer else base
        return mutate(start, rng, target.corpus)
    try:
        problem, data, reply = target.run(make_input, rng)
    except OSError as exc:
        problem, data, reply = "client socket error: %s" % exc, b"", b""
    finding = None if problem is None else Finding(target.name, index, problem, data, reply)
    return target.name, finding, reply


#: service name -> function(address, options) returning that service's Targets.
#: A new service joins the fuzzer with one row here.
TARGETS = {
    "echo": lambda address, options: [stream_echo_target(address)],
    "echo-proxy": lambda address, options: [
        proxied_echo_target(address, int(options.get("proxy_max_header", 512)))],
    "echo-udp": lambda address, options: [
        datagram_echo_target(address, int(options.get("max_datagram", 65507)))],
    "authed": lambda address, options: [
        framed_target("authed", address, authed=True, phase="pre-auth"),
        framed_target("authed", address, authed=True, phase="post-auth")],
    "file": lambda address, options: _framed_rows("file", address, authed=True,
                                                  types=FILE_TYPES, codes=FILE_CODES,
                                                  seeds=FILE_SEEDS),
    "command": lambda address, options: _framed_rows("command", address, authed=True,
                                                     types=COMMAND_TYPES, codes=COMMAND_CODES,
                                                     seeds=COMMAND_SEEDS),
    "status": lambda address, options: [
        framed_target("status", address, authed=False, phase="open", types=STATUS_TYPES,
                      codes=FRAMED_CODES, seeds=STATUS_SEEDS)],
    "chat": lambda address, options: [chat_target(address)],
    "web": lambda address, options: [web_target(address)],
}


def _framed_rows(name, address, **kwargs):
    return [framed_target(name, address, phase=phase, **kwargs)
            for phase in ("pre-auth", "post-auth")]


def targets_for(daemon, options_by_service=None):
    """The Targets for every service of a HostileDaemon that has a TARGETS row."""
    options_by_service = options_by_service or {}
    targets = []
    for name, address in sorted(daemon.addresses.items()):
        if name in TARGETS:
            targets += TARGETS[name](address, options_by_service.get(name, {}))
    return targets
