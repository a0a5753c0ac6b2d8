"""Boundary tables: every limit exactly at, one over, far over, and malformed.

Frame and datagram limits run against the daemon subprocess, whose RSS is
sampled throughout (a declared 2^63-byte body must not allocate anything);
connection limits run in-process, where the admission counters can be read.
"""

import contextlib
import json
import socket
import struct
import time

import pytest

from msgsrv.client.framed import FramedClient
from msgsrv.wire.errors import ServerError
from msgsrv.wire.frames import NEED_DATA, FrameDecoder
from tests.conftest import wait_for
from tests.hostile import campaign
from tests.hostile.procwatch import PeakRSS
from tests.hostile.targets import (
    KEY_NAME, SECRET, SERVICES, TCP_SERVICES, Refused, running_daemon, service_options,
    write_keys_file,
)

pytestmark = pytest.mark.timeout(campaign.timeout(60))

MAX_HEADER, MAX_BODY = 1024, 4096
FRAME_OVERRIDES = {"authed": {"max_header": str(MAX_HEADER), "max_body": str(MAX_BODY)},
                   "echo-udp": {"max_datagram": "60000"}}
RSS_JUMP_KIB = 16 * 1024


def header_of_length(length, **fields):
    """A JSON header (bytes) of exactly ``length`` bytes, padded in a string field."""
    base = dict({"type": "x"}, **fields, pad="")
    raw = json.dumps(base, separators=(",", ":")).encode()
    base["pad"] = "a" * (length - len(raw))
    raw = json.dumps(base, separators=(",", ":")).encode()
    assert len(raw) == length
    return raw


def frame(raw_header, body=b""):
    return struct.pack(">I", len(raw_header)) + raw_header + body


def prefix_only(length):
    return struct.pack(">I", length) + b"{"


def body_size(value):
    return frame(json.dumps({"type": "x", "body_size": value}).encode(), b"xx")


# (name, bytes, expected): "served" = an echo reply and the connection stays
# open; a code = that error frame, then the connection closes.
FRAME_TABLE = [
    ("header at limit", frame(header_of_length(MAX_HEADER)), "served"),
    ("header one over", frame(header_of_length(MAX_HEADER + 1)), "too-large"),
    ("body at limit", frame(b'{"type":"x","body_size":%d}' % MAX_BODY, b"b" * MAX_BODY), "served"),
    ("body one over", body_size(MAX_BODY + 1), "too-large"),
    ("prefix 2^31", prefix_only(2**31), "too-large"),
    ("prefix 2^32-1", prefix_only(2**32 - 1), "too-large"),
    ("prefix 0", prefix_only(0), "bad-header"),
    ("prefix 1", struct.pack(">I", 1) + b"{", "bad-header"),
    ("body_size 2^31", body_size(2**31), "too-large"),
    ("body_size 2^32", body_size(2**32), "too-large"),
    ("body_size 2^63-1", body_size(2**63 - 1), "too-large"),
    ("body_size 2^63", body_size(2**63), "too-large"),
    ("body_size 2^64", body_size(2**64), "too-large"),
    ("body_size 10^400", frame(b'{"body_size":1' + b"0" * 400 + b"}"), "too-large"),
    ("body_size -1", body_size(-1), "bad-header"),
    ("body_size -2^63", body_size(-2**63), "bad-header"),
    ("body_size '10'", body_size("10"), "bad-header"),
    ("body_size ''", body_size(""), "bad-header"),
    ("body_size null", body_size(None), "bad-header"),
    ("body_size 1.5", body_size(1.5), "bad-header"),
    ("body_size 1e9", frame(b'{"body_size":1e9}'), "bad-header"),
    ("body_size true", body_size(True), "bad-header"),
    ("body_size []", body_size([]), "bad-header"),
    ("header not JSON", frame(b"{nope}"), "bad-header"),
    ("header a JSON list", frame(b"[1,2]"), "bad-header"),
    ("header NaN", frame(b'{"a":NaN}'), "bad-header"),
]


def _recv_frames(sock, decoder, want_close, timeout=5.0):
    """Frames received until one arrives (or, with want_close, until EOF)."""
    frames, deadline = [], time.monotonic() + timeout
    while True:
        message = decoder.next_message()
        if message is not NEED_DATA:
            frames.append(message)
            if not want_close:
                return frames, False
            continue
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return frames, True
        if not chunk:
            decoder.eof()
            return frames, True
        decoder.feed(chunk)


@pytest.fixture(scope="module")
def frame_daemon(tmp_path_factory):
    """One daemon for the whole table (its RSS is watched across every row)."""
    with running_daemon(tmp_path_factory.mktemp("boundaries"), ["authed", "echo-udp", "echo"],
                        overrides=FRAME_OVERRIDES) as daemon:
        daemon.ping_all()
        with PeakRSS(daemon.probe) as peak:
            daemon.baseline = daemon.probe.snapshot()
            daemon.peak = peak
            yield daemon


@pytest.mark.parametrize("phase", ["post-auth", "pre-auth"])
@pytest.mark.parametrize("name, data, expected", FRAME_TABLE, ids=[row[0] for row in FRAME_TABLE])
def test_frame_limits(frame_daemon, phase, name, data, expected):
    host, port = frame_daemon.address("authed")
    if phase == "post-auth":
        client = FramedClient(host, port, KEY_NAME, SECRET, timeout=5)
        sock, decoder = client.sock, client.stream.decoder
    else:
        sock, decoder = socket.create_connection((host, port), timeout=5), FrameDecoder()
        assert _recv_frames(sock, decoder, False)[0][0].type == "hello"
    with sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused while we were still sending: the reply is what counts
        frames, closed = _recv_frames(sock, decoder, want_close=(expected != "served"))
    if expected == "served":
        # Before authentication an accepted frame counts as a (failed) attempt.
        want = ("echo", None) if phase == "post-auth" else ("error", "auth-failed")
        assert (frames[0].type, frames[0].header.get("code")) == want and not closed
    else:
        assert [m.header.get("code") for m in frames] == [expected] and closed
    frame_daemon.assert_alive()
    assert frame_daemon.peak.peak_kib - frame_daemon.baseline.rss_kib < RSS_JUMP_KIB


def test_frame_table_left_the_daemon_small_and_clean(frame_daemon):
    frame_daemon.ping_all()
    growth = frame_daemon.peak.peak_kib - frame_daemon.baseline.rss_kib
    assert growth < RSS_JUMP_KIB
    frame_daemon.assert_clean_log()
    campaign.record("frame-boundaries", rows=len(FRAME_TABLE) * 2, rss_peak_growth_kib=growth)


DATAGRAM_TABLE = [(0, True), (1, True), (60000, True), (60001, False), (65507, False)]


@pytest.mark.parametrize("size, echoed", DATAGRAM_TABLE)
def test_datagram_limit(frame_daemon, size, echoed):
    address = frame_daemon.address("echo-udp")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.0 if not echoed else 5.0)
        payload = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
        sock.sendto(payload, address)
        if echoed:
            assert sock.recv(65536) == payload
            return
        with pytest.raises(socket.timeout):
            sock.recv(65536)
        sock.sendto(b"after", address)  # the drop harmed nothing
        assert sock.recv(100) == b"after"
    wait_for(lambda: "larger than max_datagram=60000" in frame_daemon.log)


def test_datagram_over_the_ipv4_maximum_cannot_even_be_sent(frame_daemon):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        with pytest.raises(OSError):
            sock.sendto(b"x" * 65508, frame_daemon.address("echo-udp"))


# -- connection limits, per TCP service ------------------------------------------------------

LIMIT = 4


@pytest.mark.parametrize("limit", ["max_connections", "max_connections_per_ip"])
@pytest.mark.parametrize("service", TCP_SERVICES)
def test_connection_limit_exact_and_one_over(start_service, tmp_path, service, limit):
    options = service_options(service, write_keys_file(tmp_path / "keys"), **{limit: LIMIT})
    server = start_service(options.pop("handler"), **options)
    address = ("127.0.0.1", server.port)
    spec = SERVICES[service]
    held = [spec.session(address) for _ in range(LIMIT)]  # exactly at the limit: all served
    try:
        with pytest.raises((Refused, ServerError, ConnectionError, socket.timeout)) as info:
            spec.session(address).close()
        if isinstance(info.value, ServerError):
            assert info.value.code == "busy"
        assert server.counters.snapshot()["refused_busy"] == 1
        held.pop().close()
        wait_for(lambda: server.connection_count == LIMIT - 1, message="the slot to free")
        held.append(spec.session(address))  # a freed slot is usable again
    finally:
        for client in held:
            client.close()
    wait_for(lambda: server.connection_count == 0 and not server.connections_from("127.0.0.1"),
             message="every admission released")


# -- echo output cap -----------------------------------------------------------------------

def test_echo_output_cap_bounds_daemon_memory_for_a_client_that_never_reads(frame_daemon):
    """A writer that never reads: the daemon stops reading it; its RSS stays put."""
    sock = socket.create_connection(frame_daemon.address("echo"), timeout=5)
    sock.setblocking(False)
    chunk, sent, stalled_since = b"x" * 65536, 0, None
    before = frame_daemon.probe.snapshot().rss_kib
    with PeakRSS(frame_daemon.probe) as peak:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and sent < 256 << 20:
            try:
                sent += sock.send(chunk)
                stalled_since = None
            except BlockingIOError:
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since > 0.5:
                    break
                time.sleep(0.01)
    assert stalled_since is not None, "the daemon kept reading %d bytes" % sent
    growth = peak.peak_kib - before
    assert growth < 8 * 1024, "RSS grew %d KiB while %d bytes were pushed" % (growth, sent)
    sock.setblocking(True)
    sock.settimeout(10)
    received = 0
    sock.shutdown(socket.SHUT_WR)
    while True:
        data = sock.recv(1 << 20)
        if not data:
            break
        received += len(data)
    sock.close()
    assert received == sent  # nothing lost once the reader reads
    campaign.record("echo-output-cap", pushed_before_stall=sent, rss_growth_kib=growth)


# -- the web console: HTTP and WebSocket limits -------------------------------------------

WEB_LIMITS = {"max_request_line": "512", "max_headers": "1K", "max_request_body": "256",
              "max_message": "1K", "chat": "chat", "allowed_hosts": "127.0.0.1"}
_HOST = b"Host: 127.0.0.1\r\n"


def http_line(length):
    """A GET /status.json whose request line is ``length`` bytes (CRLF included)."""
    target = b"/status.json?pad="
    target += b"p" * (length - len(b"GET  HTTP/1.1\r\n") - len(target))
    return b"GET %s HTTP/1.1\r\n%s\r\n" % (target, _HOST)


def http_headers(total):
    """A GET whose header block counts ``total`` bytes (each header: name, value, 4)."""
    pad = total - (len("Host") + len("127.0.0.1") + 4) - (len("X-Pad") + 4)
    return b"GET /status.json HTTP/1.1\r\n%sX-Pad: %s\r\n\r\n" % (_HOST, b"h" * pad)


def http_body(size, declared=None):
    declared = str(size).encode() if declared is None else declared
    return (b"POST /auth/challenge HTTP/1.1\r\n%sContent-Length: %s\r\n\r\n"
            % (_HOST, declared)) + b" " * size


def ws_frame(payload, opcode=0x1, fin=True, length=None):
    """A masked client frame (``length`` overrides the declared payload length)."""
    length = len(payload) if length is None else length
    first = bytes([(0x80 if fin else 0) | opcode])
    if length < 126:
        head = first + bytes([0x80 | length])
    elif length < 1 << 16:
        head = first + bytes([0x80 | 126]) + struct.pack(">H", length)
    else:
        head = first + bytes([0x80 | 127]) + struct.pack(">Q", length)
    return head + b"\0\0\0\0" + payload  # a zero mask: the payload as is


UPGRADE = (b"GET /ws/chat HTTP/1.1\r\n" + _HOST + b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: a2tra2tra2tra2tra2traw==\r\n\r\n")

# (name, bytes, expected): an HTTP status, or for a WebSocket "served" (a chat reply, still
# open) or the close code.
WEB_TABLE = [
    ("request line at limit", http_line(512), 200),
    ("request line one over", http_line(513), 414),
    ("request line far over", http_line(100000), 414),
    ("header block at limit", http_headers(1024), 200),
    ("header block one over", http_headers(1025), 431),
    ("header block far over", http_headers(100000), 431),
    ("body at limit", http_body(256), 200),
    ("body one over", http_body(257), 413),
    ("Content-Length 2^63", http_body(0, b"9223372036854775808"), 413),
    ("Content-Length -1", http_body(0, b"-1"), 400),
    ("Content-Length 1e3", http_body(0, b"1e3"), 400),
    ("chunk size 2^64-1", b"POST /auth/challenge HTTP/1.1\r\n" + _HOST +
     b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n" + b"x" * 300, 413),
    ("ws message at limit", UPGRADE + ws_frame(b"m" * 1024), "served"),
    ("ws message one over", UPGRADE + ws_frame(b"m" * 1025), 1009),
    ("ws fragments over", UPGRADE + ws_frame(b"f" * 400, fin=False) +
     ws_frame(b"f" * 400, 0x0, fin=False) + ws_frame(b"f" * 400, 0x0), 1009),
    ("ws declares 2^63-1", UPGRADE + ws_frame(b"d" * 2000, length=2**63 - 1), 1009),
    ("ws control frame 126", UPGRADE + ws_frame(b"c" * 126, opcode=0x9), 1002),
    ("ws binary", UPGRADE + ws_frame(b"b", opcode=0x2), 1003),
]


@pytest.fixture(scope="module")
def web_daemon(tmp_path_factory):
    with running_daemon(tmp_path_factory.mktemp("web-boundaries"), ["chat", "web"],
                        overrides={"web": WEB_LIMITS}) as daemon:
        daemon.ping_all()
        with PeakRSS(daemon.probe) as peak:
            daemon.baseline = daemon.probe.snapshot()
            daemon.peak = peak
            yield daemon


def _web_outcome(sock, data):
    with contextlib.suppress(OSError):
        sock.sendall(data)
    reply = b""
    while b"\r\n\r\n" not in reply:
        chunk = sock.recv(65536)
        if not chunk:
            break
        reply += chunk
    status = int(reply[9:12])
    if status != 101:
        return status
    frames = reply.partition(b"\r\n\r\n")[2]
    while True:
        while len(frames) >= 4:
            opcode, length, start = frames[0] & 0x0f, frames[1] & 0x7f, 2
            if length == 126:  # server frames are unmasked; none here needs 8 length bytes
                length, start = struct.unpack(">H", frames[2:4])[0], 4
            if len(frames) < start + length:
                break
            if opcode == 0x8:
                return struct.unpack(">H", frames[start:start + 2])[0]
            if frames[start:start + length].startswith(b"! bad-nick"):
                return "served"
            frames = frames[start + length:]
        chunk = sock.recv(65536)
        if not chunk:
            return "closed without a close frame"
        frames += chunk


@pytest.mark.parametrize("name, data, expected", WEB_TABLE, ids=[row[0] for row in WEB_TABLE])
def test_web_limits(web_daemon, name, data, expected):
    with socket.create_connection(web_daemon.address("web"), timeout=5) as sock:
        assert _web_outcome(sock, data) == expected
    web_daemon.assert_alive()
    assert web_daemon.peak.peak_kib - web_daemon.baseline.rss_kib < RSS_JUMP_KIB


def test_web_table_left_the_daemon_small_and_clean(web_daemon):
    web_daemon.ping_all()
    web_daemon.assert_clean_log()
    campaign.record("web-boundaries", rows=len(WEB_TABLE),
                    rss_peak_growth_kib=web_daemon.peak.peak_kib - web_daemon.baseline.rss_kib)
