"""The frame codec, sans-IO: bytes in, messages out (and back).

A frame is a 4-byte big-endian header length, that many bytes of a UTF-8
JSON object (the header), then ``header["body_size"]`` bytes of body (none
when the key is absent).  Limits are checked on the length prefix and on
``body_size`` before a byte of the part they govern is kept.  Every malformed
input raises :class:`~msgsrv.wire.errors.ProtocolError` with one of the codes in
:data:`CODES`.  See docs/PROTOCOL.rst.
"""

import json
import struct
from typing import Any, Dict, NamedTuple

from .errors import ProtocolError

PREFIX = struct.Struct(">I")
DEFAULT_MAX_HEADER = 64 * 1024
DEFAULT_MAX_BODY = 1024 * 1024
#: The largest limits a receiver may be configured with (the framed services'
#: ``max_header`` and ``max_body`` settings): no msgsrv peer accepts more.
MAX_HEADER_CEILING = 16 << 20
MAX_BODY_CEILING = 1 << 30
#: ``encode`` limits for frames a server builds itself (replies, command output):
#: what the largest receiver accepts, so a sender never emits what it would refuse.
REPLY_LIMITS = {"max_header": MAX_HEADER_CEILING, "max_body": MAX_BODY_CEILING}
BODY_SIZE = "body_size"
#: Bytes one recv() call asks for, server and client (larger buffers are
#: mmap-allocated per call: measurably slower).
RECV_SIZE = 64 * 1024

#: code -> meaning, for every error this module raises.
CODES = {
    "too-large": "a header or body is longer than the receiver accepts",
    "bad-header": "the header is not a UTF-8 JSON object with a valid body_size",
    "truncated": "the connection ended in the middle of a frame",
}


class _NeedData:
    def __repr__(self):
        return "NEED_DATA"


#: Returned by :meth:`FrameDecoder.next_message` when more bytes are needed.
NEED_DATA = _NeedData()


def shown(value, limit=40):
    """A header value as error texts and logs show it: JSON (``true``, ``null``, ``5``),
    a string in single quotes, control characters escaped, cut to about ``limit``."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        text = json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, str):
        text = "'%s'" % text[1:-1]
    return text if len(text) <= limit else text[:limit] + "..."


class Message(NamedTuple):
    """One decoded frame: the header dict and the body bytes."""

    header: Dict[str, Any]
    body: bytes = b""

    @property
    def type(self):
        """The header's ``type`` field, or None."""
        return self.header.get("type")


def encode(header, body=b"", *, max_header=DEFAULT_MAX_HEADER, max_body=DEFAULT_MAX_BODY):
    """Return the frame bytes for ``header`` and ``body``.

    Sets ``body_size`` when there is a body.  Raises ProtocolError
    ``too-large`` when the receiver's limits (given here) would refuse it,
    and TypeError/ValueError when the header cannot be encoded as JSON.
    """
    if not isinstance(header, dict):
        raise TypeError("header must be a dict")
    if len(body) > max_body:
        raise ProtocolError("too-large", "body of %d bytes exceeds %d" % (len(body), max_body))
    if body:
        header = dict(header, **{BODY_SIZE: len(body)})
    elif BODY_SIZE in header:
        header = {k: v for k, v in header.items() if k != BODY_SIZE}
    data = json.dumps(header, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")
    if len(data) > max_header:
        raise ProtocolError("too-large", "header of %d bytes exceeds %d" % (len(data), max_header))
    return b"".join((PREFIX.pack(len(data)), data, body))


def error_header(code, message, **extra):
    """The header of an error frame: ``{"type": "error", "code", "message"}``."""
    header = {"type": "error", "code": code, "message": message}
    header.update(extra)
    return header


class FrameDecoder:
    """Incremental frame decoder.

    Call :meth:`feed` with whatever bytes arrived, then :meth:`next_message`
    until it returns :data:`NEED_DATA`.  After a protocol error the decoder
    is unusable (the stream position is lost); close the connection.
    """

    def __init__(self, max_header=DEFAULT_MAX_HEADER, max_body=DEFAULT_MAX_BODY):
        self.max_header = max_header
        self.max_body = max_body
        self._buffer = bytearray()
        self._header = None  # parsed header waiting for its body
        self._want = 0       # body bytes the pending header declares

    @property
    def buffered(self):
        """How many received bytes are held but not yet returned."""
        return len(self._buffer)

    @property
    def partial(self):
        """True while part of a frame has arrived but not all of it."""
        return bool(self._buffer) or self._header is not None

    def feed(self, data):
        """Append received bytes.  Checks the current frame's prefix at once."""
        self._buffer += data
        if self._header is None and len(self._buffer) >= PREFIX.size:
            self._check_prefix()

    def next_message(self):
        """Return the next complete :class:`Message`, or :data:`NEED_DATA`.

        Raises ProtocolError for an oversized or malformed frame.
        """
        if self._header is None:
            if len(self._buffer) < PREFIX.size:
                return NEED_DATA
            length = self._check_prefix()
            if len(self._buffer) < PREFIX.size + length:
                return NEED_DATA
            raw = bytes(self._buffer[PREFIX.size:PREFIX.size + length])
            del self._buffer[:PREFIX.size + length]
            self._header, self._want = _parse_header(raw, self.max_body)
        if len(self._buffer) < self._want:
            return NEED_DATA
        body = bytes(self._buffer[:self._want])
        del self._buffer[:self._want]
        message = Message(self._header, body)
        self._header, self._want = None, 0
        return message

    def take_buffered(self):
        """Remove and return the bytes held after the last returned message.

        Used when raw bytes (a file's content) follow a header on the wire.
        """
        if self._header is not None:
            raise RuntimeError("a frame is half-decoded; cannot switch to raw bytes")
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def eof(self):
        """The peer closed; raise ProtocolError ``truncated`` if a frame is partial."""
        if self._buffer or self._header is not None:
            raise ProtocolError("truncated", "connection closed in the middle of a frame")

    def _check_prefix(self):
        (length,) = PREFIX.unpack_from(self._buffer)
        if length > self.max_header:
            raise ProtocolError("too-large",
                                "header of %d bytes exceeds %d" % (length, self.max_header))
        if length < 2:
            raise ProtocolError("bad-header", "header length %d is too short" % length)
        return length


def _parse_header(raw, max_body):
    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ProtocolError("bad-header", "header is not valid UTF-8 JSON") from None
    if not isinstance(header, dict):
        raise ProtocolError("bad-header", "header must be a JSON object")
    want = header.get(BODY_SIZE, 0)
    if type(want) is not int or want < 0:
        raise ProtocolError("bad-header", "body_size must be a non-negative integer")
    if want > max_body:
        raise ProtocolError("too-large", "body of %d bytes exceeds %d" % (want, max_body))
    return header, want


def _refuse_constant(name):
    raise ValueError("%s is not JSON" % name)
