"""Transports: the one layer that knows how bytes cross a connection's socket.

A :class:`~msgsrv.net.pool.Connection` talks to its transport through a small
interface, the same for a plain socket and for non-blocking TLS
(:class:`msgsrv.net.tls.TLSTransport`):

``recv(size)`` / ``send(data)``
    Non-blocking; ``BlockingIOError`` when nothing can move now.
``handshaking`` / ``handshake()``
    True while a handshake is under way; each ``handshake()`` call takes one
    step and returns True once it is done (False: wait for the next event);
    OSError when it failed (:class:`HandshakeRefused` names the reason).
    ``handshake_timeout`` bounds it; ``handshake_failed(reason)`` is told
    of every failure (to count it).
``wants_write``
    The last call waits for writability rather than readability.
``buffers`` / ``pending()``
    ``buffers`` is True when the transport may hold received bytes that
    epoll cannot see; ``pending()`` counts them.
``direct`` / ``zero_copy``
    May be served with blocking reads on one thread (pool "direct serving");
    ``os.sendfile`` works on its descriptor.
``blocking_socket()``
    What a blocking section uses (``sendall``, ``recv_into``, timeouts).
``raw_recv(size, flags=0)``
    Non-blocking ``recv`` on the kernel socket beneath any TLS layer (with
    ``MSG_PEEK`` too): what precedes the handshake, such as a PROXY header.

Plain sockets bind ``recv`` and ``send`` to the socket's own methods, so the
connection's hot path makes no extra Python call.  :class:`Channel` is what
``Connection.blocking()`` yields: it counts every byte a blocking section
moves on the connection, so handlers never do their own accounting.
"""

import os
import socket


class HandshakeRefused(OSError):
    """A transport (or a connection's preamble) refuses its peer before the handler is
    attached; ``reason`` is what it is counted and closed as, ``detail`` (or None) what
    the log line adds."""

    def __init__(self, reason, detail=None):
        super().__init__(reason if detail is None else "%s: %s" % (reason, detail))
        self.reason, self.detail = reason, detail


class PlainTransport:
    """A plain TCP socket: no handshake, nothing buffered above the kernel."""

    handshaking = False
    handshake_timeout = None
    wants_write = False
    buffers = False
    direct = True
    zero_copy = True

    def __init__(self, sock):
        self.sock = sock
        self.recv = self.raw_recv = sock.recv
        self.send = sock.send

    @staticmethod
    def pending():
        """Nothing is ever held above the kernel."""
        return 0

    @staticmethod
    def handshake():
        """No handshake: done at once."""
        return True

    def handshake_failed(self, reason):
        """Never called: a plain transport has no handshake."""

    def blocking_socket(self):
        """The socket itself."""
        return self.sock


class Channel:
    """A connection's socket in blocking mode, counting what moves (``Connection.blocking``).

    Offers ``recv``, ``recv_into``, ``send``, ``sendall`` and ``sendfile_once``
    (one ``os.sendfile`` step, zero-copy transports only); each moved byte is
    added to the connection's ``bytes_in`` / ``bytes_out``, which is also
    what the idle timeout sees as activity.  Other attributes (``settimeout``,
    ``fileno``, ``setblocking``, ``getpeercert``...) are the socket's.
    """

    def __init__(self, conn, sock, zero_copy):
        self._conn = conn
        self._sock = sock
        self.zero_copy = zero_copy

    def __getattr__(self, name):
        return getattr(self._sock, name)

    def recv(self, size, *flags):
        """Receive up to ``size`` bytes (b"" at EOF)."""
        data = self._sock.recv(size, *flags)
        self._conn.bytes_in += len(data)
        return data

    def recv_into(self, buffer, nbytes=0, *flags):
        """Receive into ``buffer``; return the count (0 at EOF)."""
        count = self._sock.recv_into(buffer, nbytes, *flags)
        self._conn.bytes_in += count
        return count

    def send(self, data, *flags):
        """Send what the socket takes; return the count."""
        sent = self._sock.send(data, *flags)
        self._conn.bytes_out += sent
        return sent

    def sendall(self, data):
        """Send every byte of ``data`` (each accepted chunk is counted as it goes)."""
        view = memoryview(data).cast("B")
        sent = 0
        while sent < len(view):
            sent += self.send(view[sent:])

    def sendfile_once(self, fd, offset, count):
        """One ``os.sendfile`` call from ``fd``; return the count (BlockingIOError as usual)."""
        sent = os.sendfile(self._sock.fileno(), fd, offset, count)
        self._conn.bytes_out += sent
        return sent


def is_plain_socket(sock):
    """True for a kernel socket object on which zero-copy sendfile works."""
    return getattr(sock, "zero_copy", type(sock) is socket.socket)
