"""WebSocket (RFC 6455) for the web console, sans-IO, on wsproto.

:func:`accept` checks an upgrade request and returns the ``101`` headers;
:class:`WebSocket` is the connection after it: bytes in, whole text messages
out (reassembled from fragments, never longer than ``max_message`` bytes),
pings answered, the closing handshake done.  Every way a client breaks the
protocol ends in a close frame with the RFC's code.  No extensions are
offered (no compression, so no compression bombs).  No sockets here.
"""

import base64
import binascii
from dataclasses import dataclass

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.utilities import LocalProtocolError, generate_accept_token

from .http import HttpError

NORMAL, GOING_AWAY, PROTOCOL_ERROR, UNSUPPORTED_DATA = 1000, 1001, 1002, 1003
POLICY_VIOLATION, TOO_BIG, INTERNAL_ERROR = 1008, 1009, 1011
VERSION = "13"
INVALID_DATA = 1007
# Reasons told however the bytes were split (wsproto's name the offset in the chunk).
_REASONS = {INVALID_DATA: "text message is not valid UTF-8"}


def accept(request):
    """The headers of the ``101`` answering ``request`` (an http.Request asking to
    upgrade to a WebSocket); raises HttpError 400, or 426 for another version."""
    if request.method != "GET":
        raise HttpError(400, "a WebSocket handshake is a GET request")
    if request.tokens("upgrade") != {"websocket"} or not request.upgrade:
        raise HttpError(426, "this path speaks WebSocket only (Upgrade: websocket)")
    if request.header("sec-websocket-version") != VERSION:
        raise HttpError(426, "WebSocket version %s only" % VERSION)
    key = request.header("sec-websocket-key").strip()
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        raise HttpError(400, "Sec-WebSocket-Key must be 16 bytes in base64")
    return [("Upgrade", "websocket"), ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", generate_accept_token(key.encode("ascii")).decode("ascii"))]


@dataclass(frozen=True)
class Message:
    """One whole text message from the peer."""

    text: str


@dataclass(frozen=True)
class Closed:
    """The WebSocket is closed: the peer's close (or the close we sent because of what
    it sent) with ``code`` and ``reason``.  Nothing more is read or sent."""

    code: int
    reason: str


class WebSocket:
    """The server side of one WebSocket after the handshake.

    :meth:`feed` takes received bytes and returns events (:class:`Message`,
    then at most one :class:`Closed`); what must go back to the peer (pongs,
    the close reply) waits in :meth:`take_output`.  :meth:`send_text` and
    :meth:`close` return the bytes of a frame.  Not thread-safe: one caller
    at a time (msgsrv.services.web.sockets holds a lock).
    """

    def __init__(self, max_message):
        self.max_message = max_message
        self._ws = Connection(ConnectionType.SERVER)
        self._parts = []
        self._size = 0
        self._output = bytearray()
        self.closed = None  # the Closed event, once closed

    @property
    def open(self):
        """True until a close frame was sent or received."""
        return self._ws.state is ConnectionState.OPEN

    def feed(self, data):
        """Events from received ``data`` (``b""``: the peer vanished without a close)."""
        if self.closed is not None:
            return []
        if not data:
            self._ws.receive_data(None)
            return [self._close_now(1006, "connection lost", send=False)]
        self._ws.receive_data(bytes(data))
        events = []
        for event in self._ws.events():
            result = self._handle(event)
            if result is not None:
                events.append(result)
                if isinstance(result, Closed):
                    break
        return events

    def _handle(self, event):
        if isinstance(event, TextMessage):
            return self._part(event)
        if isinstance(event, Ping):
            self._output += self._ws.send(event.response())
            return None
        if isinstance(event, CloseConnection):
            state = self._ws.state
            if state is ConnectionState.OPEN:  # wsproto found a protocol error
                reason = _REASONS.get(event.code) or event.reason or "protocol error"
                return self._close_now(event.code, reason)
            if state is ConnectionState.REMOTE_CLOSING:
                self._output += self._ws.send(event.response())
            self.closed = Closed(event.code, event.reason or "")  # else: the reply to ours
            return self.closed
        if isinstance(event, BytesMessage):
            return self._close_now(UNSUPPORTED_DATA, "text messages only")
        return None  # a Pong

    def _part(self, event):
        self._size += len(event.data.encode("utf-8"))
        if self._size > self.max_message:
            return self._close_now(TOO_BIG, "message longer than %d bytes" % self.max_message)
        self._parts.append(event.data)
        if not event.message_finished:
            return None
        text = "".join(self._parts)
        self._parts, self._size = [], 0
        return Message(text)

    def _close_now(self, code, reason, send=True):
        if send:
            self._output += self.close(code, reason)
        self.closed = Closed(code, reason)
        self._parts = []
        return self.closed

    def take_output(self):
        """The bytes the peer must get because of what it sent (pongs, close replies)."""
        out, self._output = bytes(self._output), bytearray()
        return out

    def send_text(self, text):
        """The frame of one text message, or ``b""`` once closing."""
        if not self.open:
            return b""
        return self._ws.send(TextMessage(data=text))

    def close(self, code=NORMAL, reason=""):
        """The close frame with ``code`` and ``reason`` (``b""`` if one was sent already)."""
        try:
            return self._ws.send(CloseConnection(code=code, reason=reason[:100]))
        except LocalProtocolError:
            return b""
