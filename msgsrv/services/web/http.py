"""HTTP/1.1 for the web console, sans-IO, on h11: bytes in, whole requests out, responses back.

:class:`HttpConnection` wraps one server-side ``h11.Connection`` and adds the
console's limits: the request line, the header block and the body are
bounded (``414``, ``431``, ``413``), the body's declared length is checked
before a byte of it is kept, and nothing is ever held beyond those limits
plus one received chunk.  Every way a client can break HTTP becomes one
:class:`HttpError` carrying the status to answer with.  No sockets here.
"""

import urllib.parse
from dataclasses import dataclass, field
from typing import Dict

import h11

from msgsrv.wire.errors import ProtocolError

#: What :meth:`HttpConnection.next_request` returns when it needs more bytes.
NEED_DATA = h11.NEED_DATA
#: What it returns once the peer closed between two requests.
CLOSED = h11.ConnectionClosed
_REQUEST_LINE_SLACK = len(" HTTP/1.1\r\n")
REASONS = {200: "OK", 101: "Switching Protocols", 204: "No Content", 303: "See Other",
           304: "Not Modified", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
           411: "Length Required", 413: "Content Too Large", 414: "URI Too Long",
           421: "Misdirected Request", 426: "Upgrade Required", 429: "Too Many Requests",
           431: "Request Header Fields Too Large", 500: "Internal Server Error",
           501: "Not Implemented", 503: "Service Unavailable", 505: "HTTP Version Not Supported"}


class HttpError(ProtocolError):
    """A request the console refuses: answered with ``status``, then the connection closes."""

    def __init__(self, status, message):
        super().__init__("http-%d" % status, message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """Bytes one request may take: its request line, its header block, its body."""

    request_line: int = 8192
    headers: int = 16384
    body: int = 16384


@dataclass
class Request:
    """One complete request.  ``headers`` maps lower-case names to values (repeats
    joined with ``", "``); ``path`` is the target without its query, percent-decoded."""

    method: str
    target: str
    path: str
    query: Dict[str, str]
    headers: Dict[str, str]
    http_version: str
    body: bytes = b""
    upgrade: bool = False

    def header(self, name, default=""):
        """The value of header ``name`` (lower case), or ``default``."""
        return self.headers.get(name, default)

    def tokens(self, name):
        """The comma-separated tokens of header ``name``, lower case."""
        return _tokens(self.header(name))


@dataclass
class _Pending:
    request: Request
    body: bytearray = field(default_factory=bytearray)


class HttpConnection:
    """The server side of one HTTP/1.1 connection.

    Feed received bytes with :meth:`feed` (``b""`` at EOF), take requests with
    :meth:`next_request`, answer each with :meth:`respond` (or switch to
    another protocol with :meth:`switch_protocol`), then call
    :meth:`next_cycle` before taking the next.  Raises :class:`HttpError`.
    """

    def __init__(self, limits=Limits()):
        self.limits = limits
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=(
            limits.request_line + limits.headers))
        self._pending = None
        self._head_request = False

    @property
    def in_request(self):
        """True while a request has begun arriving and is not complete yet."""
        if self._pending is not None:
            return True
        return self._h11.their_state is h11.IDLE and bool(self._h11.trailing_data[0])

    @property
    def buffered(self):
        """Bytes held: the unparsed input plus the body gathered so far."""
        held = len(self._h11.trailing_data[0])
        return held + (len(self._pending.body) if self._pending is not None else 0)

    def feed(self, data):
        """Take bytes received from the peer (``b""``: the peer closed its side)."""
        if self._h11.their_state is not h11.ERROR:
            self._h11.receive_data(bytes(data))

    def next_request(self):
        """The next complete :class:`Request`, :data:`NEED_DATA`, or :data:`CLOSED`.

        Raises HttpError (status 400, 408, 413, 414, 431, 505...) for a request
        that breaks HTTP or a limit; the connection must then close after the
        error response (:meth:`error_response`).
        """
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise self._error_of(exc) from None
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return NEED_DATA
            if isinstance(event, h11.ConnectionClosed):
                return CLOSED
            if isinstance(event, h11.Request):
                self._pending = _Pending(self._checked(event))
            elif isinstance(event, h11.Data):
                self._gather(event.data)
            elif isinstance(event, h11.EndOfMessage):
                pending, self._pending = self._pending, None
                pending.request.body = bytes(pending.body)
                return pending.request

    def _error_of(self, exc):
        if exc.error_status_hint != 431:
            return HttpError(exc.error_status_hint, str(exc) or "malformed request")
        first_line = self._h11.trailing_data[0].split(b"\n", 1)
        if len(first_line) == 1 or len(first_line[0]) > self.limits.request_line:
            return HttpError(414, "request line longer than %d bytes" % self.limits.request_line)
        return HttpError(431, "header block longer than %d bytes" % self.limits.headers)

    def _checked(self, event):
        target = event.target.decode("ascii", "replace")
        method = event.method.decode("ascii", "replace")
        if len(method) + 1 + len(target) + _REQUEST_LINE_SLACK > self.limits.request_line:
            raise HttpError(414, "request line longer than %d bytes" % self.limits.request_line)
        if sum(len(name) + len(value) + 4 for name, value in event.headers) > self.limits.headers:
            raise HttpError(431, "header block longer than %d bytes" % self.limits.headers)
        headers = {}
        for name, value in event.headers:
            key = name.decode("ascii").lower()
            text = value.decode("latin-1")
            headers[key] = headers[key] + ", " + text if key in headers else text
        self._check_length(headers)
        path, _, query = target.partition("?")
        self._head_request = method == "HEAD"
        return Request(method, target, urllib.parse.unquote(path),
                       dict(urllib.parse.parse_qsl(query)), headers,
                       event.http_version.decode("ascii"),
                       upgrade="upgrade" in _tokens(headers.get("connection", "")))

    def _check_length(self, headers):
        declared = headers.get("content-length")
        if declared is not None and not declared.isdigit():
            raise HttpError(400, "bad Content-Length %r" % declared[:40])
        if declared is not None and int(declared) > self.limits.body:
            raise HttpError(413, "body of %s bytes is over the limit of %d"
                            % (declared, self.limits.body))

    def _gather(self, data):
        body = self._pending.body
        if len(body) + len(data) > self.limits.body:
            raise HttpError(413, "body over the limit of %d bytes" % self.limits.body)
        body += data

    def respond(self, status, headers=(), body=b"", close=False):
        """The bytes of a whole response: ``headers`` (name, value) pairs and ``body``
        (left out of the bytes, not of Content-Length, for a HEAD request).  With
        ``close`` (or when the client asked for it) the connection must close after it."""
        headers = list(headers) + [("Content-Length", str(len(body)))]
        if close:
            headers.append(("Connection", "close"))
        out = self._h11.send(h11.Response(status_code=status, headers=headers,
                                          reason=REASONS.get(status, "")))
        if body and not self._head_request:
            out += self._h11.send(h11.Data(data=body))
        return out + self._h11.send(h11.EndOfMessage())

    def error_response(self, error, headers=()):
        """The response to an :class:`HttpError` (``Connection: close``), or ``b""`` when
        a response can no longer be sent on this connection."""
        if self._h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return b""
        body = ("%d %s: %s\n" % (error.status, REASONS.get(error.status, ""),
                                 error.message)).encode("utf-8", "replace")
        try:
            return self.respond(error.status, list(headers) + [
                ("Content-Type", "text/plain; charset=utf-8")], body, close=True)
        except h11.LocalProtocolError:
            return b""

    def switch_protocol(self, headers):
        """Accept the client's ``Upgrade``: the ``101`` response's bytes.  The bytes the
        client sent after its request are :attr:`trailing_data` from then on."""
        return self._h11.send(h11.InformationalResponse(status_code=101, headers=list(headers)))

    @property
    def trailing_data(self):
        """Bytes received and not parsed (after a protocol switch: the new protocol's)."""
        return self._h11.trailing_data[0]

    def next_cycle(self):
        """After a response: get ready for the next request.  False when the connection
        must close instead (the client or the response asked for it)."""
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
            self._head_request = False
            return True
        return False


def _tokens(value):
    return {token.strip().lower() for token in value.split(",") if token.strip()}
