"""The one blocking read/write loop over a socket, for servers and clients.

:class:`FrameStream` sends and receives frames (see :mod:`msgsrv.wire.frames`)
and raw byte runs on a blocking socket with a timeout.  Socket-level
failures are translated once, here, into the msgsrv exception tree:
``ConnectionFailed`` (closed or reset), ``RequestTimeout`` (the socket
timeout expired) and ``ProtocolError`` (the peer broke the format).
"""

import contextlib
import socket

from .errors import (AuthError, ConnectionFailed, MsgsrvError, ProtocolError, RequestTimeout,
                     ServerError)
from .frames import DEFAULT_MAX_BODY, DEFAULT_MAX_HEADER, NEED_DATA, RECV_SIZE, FrameDecoder, encode

RAW_CHUNK = 1024 * 1024  # read_raw reuses one buffer, so it can be large


@contextlib.contextmanager
def translate_errors(what="connection"):
    """Turn socket timeouts and resets into RequestTimeout / ConnectionFailed.

    msgsrv's own errors (a paced socket's ``TooSlow``, a RequestTimeout, which on
    Python 3.9 is an OSError but not a socket.timeout...) pass unchanged.
    """
    try:
        yield
    except MsgsrvError:
        raise
    except socket.timeout:
        raise RequestTimeout("%s timed out" % what) from None
    except (ConnectionError, OSError) as exc:
        raise ConnectionFailed("%s failed: %s" % (what, exc.strerror or exc)) from None


class FrameStream:
    """Blocking frame I/O over a connected socket (which keeps its timeout)."""

    def __init__(self, sock, *, max_header=DEFAULT_MAX_HEADER, max_body=DEFAULT_MAX_BODY,
                 decoder=None):
        self.sock = sock
        self.decoder = decoder or FrameDecoder(max_header, max_body)

    def send(self, header, body=b""):
        """Send one frame.  Raises ProtocolError if the peer's limits would refuse it."""
        data = encode(header, body, max_header=self.decoder.max_header,
                      max_body=self.decoder.max_body)
        with translate_errors("send"):
            self.sock.sendall(data)

    def recv(self):
        """Receive one frame as a Message; raise ConnectionFailed at a clean EOF."""
        while True:
            message = self.decoder.next_message()
            if message is not NEED_DATA:
                return message
            with translate_errors("receive"):
                data = self.sock.recv(RECV_SIZE)
            if not data:
                self.decoder.eof()
                raise ConnectionFailed("connection closed by peer")
            self.decoder.feed(data)

    def read_raw(self, count, sink, chunk_size=RAW_CHUNK):
        """Read exactly ``count`` raw bytes, passing each chunk (a memoryview) to ``sink``.

        Bytes already buffered by the decoder come first.  Raises
        ConnectionFailed if the peer closes early.
        """
        pending = self.decoder.take_buffered()
        if pending:
            head, rest = pending[:count], pending[count:]
            sink(memoryview(head))
            count -= len(head)
            if rest:
                self.decoder.feed(rest)
        buffer = bytearray(min(chunk_size, max(count, 1)))
        view = memoryview(buffer)
        while count > 0:
            with translate_errors("receive"):
                got = self.sock.recv_into(view, min(count, len(buffer)))
            if not got:
                raise ConnectionFailed("connection closed with %d bytes still expected" % count)
            sink(view[:got])
            count -= got

    def send_raw(self, data):
        """Send raw bytes (no framing)."""
        with translate_errors("send"):
            self.sock.sendall(data)

    def send_file(self, file, offset, count):
        """Send ``count`` bytes of ``file`` from ``offset`` (zero-copy where possible)."""
        with translate_errors("send"):
            sent = self.sock.sendfile(file, offset, count)
        if sent != count:
            raise ConnectionFailed("file shrank while sending (%d of %d bytes)" % (sent, count))


def check_error(message):
    """Raise ServerError (AuthError for ``auth-failed``) if ``message`` is an error frame."""
    if message.type == "error":
        code = str(message.header.get("code", "error"))
        text = str(message.header.get("message", ""))
        raise (AuthError if code == "auth-failed" else ServerError)(code, text)
    return message


__all__ = ["FrameStream", "translate_errors", "check_error", "ProtocolError"]
