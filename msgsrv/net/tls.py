"""Server-side TLS with the standard ``ssl`` module: contexts, and a non-blocking TLS transport.

Server side, an accepted socket is wrapped without a handshake (no I/O in
the accept thread) and handed to the pool as a :class:`TLSTransport`
(the transport interface of msgsrv.net.transport).  The handshake is a state of
the pool's :class:`~msgsrv.net.pool.Connection`: each readiness event takes one
``do_handshake`` step and the connection waits for reading or writing as
OpenSSL asks.  So neither the accept thread nor a worker ever waits on a
slow or silent client; a timer (``tls_handshake_timeout``) aborts a
handshake that does not finish, and a plaintext client is closed as soon as
its first byte arrives (it is not 0x16, a handshake record).  The handler
sees nothing until the handshake is done: ``connection_made`` is its first
call.

The transport reports OpenSSL's "want read/write" as ``BlockingIOError``,
serializes OpenSSL calls (its objects are not safe for concurrent use) and
drains the decrypted bytes OpenSSL holds (``pending()``) on every read.
Bytes that stay there anyway (a blocking section that read part of a
record) are invisible to epoll, so a connection holding some also waits for
writability, which fires at once.
"""

import logging
import socket
import ssl
import threading

from msgsrv.wire.errors import ConfigError
from msgsrv.wire.tls import harden
from .transport import HandshakeRefused

log = logging.getLogger("msgsrv.tls")

_WRITE_CHUNK = 64 * 1024
_WOULD_BLOCK = (ssl.SSLWantReadError, ssl.SSLWantWriteError)
HANDSHAKE_RECORD = 0x16  # the first byte of every TLS client's first record


def not_tls(first):
    """Why a client whose first byte is ``first`` (an int) cannot be a TLS client, or None."""
    if first == HANDSHAKE_RECORD:
        return None
    shown = " %r" % chr(first) if 0x20 <= first < 0x7f else ""
    return "its first byte is %#04x%s, not 0x16 (a handshake record)" % (first, shown)


def peek_first_byte(sock):
    """The peer's first byte (an int), left in place for the TLS layer; None if none yet."""
    try:
        data = socket.socket.recv(sock, 1, socket.MSG_PEEK)  # under the SSLSocket's recv
    except (BlockingIOError, InterruptedError):
        return None
    return data[0] if data else None


def server_context(cert, key="", client_ca=""):
    """An SSLContext for a server: TLS 1.2+, no renegotiation, client certs if ``client_ca``.

    Raises ConfigError naming the file that cannot be loaded.
    """
    context = harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    try:
        context.load_cert_chain(cert, key or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("tls_cert/tls_key: cannot load %s: %s"
                          % (cert, getattr(exc, "strerror", None) or exc)) from None
    if client_ca:
        try:
            context.load_verify_locations(client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("tls_client_ca: cannot load %s: %s"
                              % (client_ca, getattr(exc, "strerror", None) or exc)) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class ServerTLS:
    """A service's TLS settings, loaded: wraps accepted sockets.

    ``on_failure(reason)`` is called for each failed or timed-out handshake.
    """

    def __init__(self, options, on_failure=None):
        self.context = server_context(options["tls_cert"], options["tls_key"],
                                      options["tls_client_ca"])
        self.handshake_timeout = options["tls_handshake_timeout"]
        self.on_failure = on_failure

    @classmethod
    def from_options(cls, options, on_failure=None):
        """A ServerTLS, or None when ``tls_cert`` is empty."""
        return cls(options, on_failure) if options["tls_cert"] else None

    def wrap(self, sock):
        """Wrap an accepted socket without doing any I/O; returns a :class:`TLSTransport`
        for :meth:`msgsrv.net.pool.WorkerPool.add` (its handshake still to run)."""
        wrapped = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return TLSTransport(wrapped, self.handshake_timeout, self.on_failure)

    def handshake_blocking(self, sock):
        """Thread-per-connection services: wrap and handshake within the timeout.

        Returns the SSLSocket (its timeout restored); raises OSError (ssl.SSLError,
        socket.timeout) if the handshake fails.
        """
        timeout = sock.gettimeout()
        sock.settimeout(self.handshake_timeout)
        first = peek_first_byte(sock)
        if first is not None and not_tls(first):
            raise OSError("refused plaintext: %s" % not_tls(first))
        wrapped = self.context.wrap_socket(sock, server_side=True)
        wrapped.settimeout(timeout)
        return wrapped


class TLSTransport:
    """Non-blocking TLS over an SSLSocket: the transport interface of msgsrv.net.transport.

    ``send`` and ``recv`` raise BlockingIOError when OpenSSL wants to read or
    write; ``wants_write`` tells which way the last call waits.  OpenSSL calls
    are serialized (its objects are not safe for concurrent use).  In a
    blocking section the transport itself is the socket: ``sendall``,
    ``recv_into``, ``settimeout``, ``getpeercert``... are the SSLSocket's own.
    """

    buffers = True   # decrypted bytes OpenSSL holds are invisible to epoll
    direct = False
    zero_copy = False

    def __init__(self, sock, handshake_timeout, on_failure=None):
        self.sock = sock
        self.handshake_timeout = handshake_timeout
        self.handshaking = True
        self.wants_write = False
        self._on_failure = on_failure
        self._lock = threading.Lock()
        self._first_seen = False

    def __getattr__(self, name):
        return getattr(self.sock, name)

    def handshake(self):
        """One handshake step: True once done, False while waiting; OSError if it failed
        (``HandshakeRefused`` at once for a plaintext client)."""
        if not self._first_seen and not self._client_spoke():
            return False  # nothing from the client yet, so nothing for OpenSSL to read either
        with self._lock:
            try:
                self._call(self.sock.do_handshake)
            except BlockingIOError:
                return False
        self.handshaking = False
        return True

    def _client_spoke(self):
        """Whether the client sent its first byte (or closed); refuse at once one whose
        first byte cannot start a TLS handshake: OpenSSL would wait for a whole record
        header from it until the handshake timeout.

        Only the very first byte can be judged: once OpenSSL has read the client's hello,
        the next bytes waiting are a later record (0x14, 0x17...).  So the handshake
        starts only after a byte was seen here, and this is never asked again.
        """
        try:
            data = socket.socket.recv(self.sock, 1, socket.MSG_PEEK)  # under the SSLSocket
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            data = b""  # the handshake reports it
        self._first_seen = True
        if data and not_tls(data[0]):
            raise HandshakeRefused("refused plaintext", not_tls(data[0]))
        return True

    def raw_recv(self, size, flags=0):
        """``recv`` on the kernel socket under the TLS layer (what precedes the handshake)."""
        return socket.socket.recv(self.sock, size, flags)

    def handshake_failed(self, reason):
        """Count a failed or timed-out handshake (the connection logs and aborts)."""
        if self._on_failure is not None:
            self._on_failure(reason)

    def blocking_socket(self):
        """This transport: its ``send``/``recv`` work in blocking mode too."""
        return self

    def send(self, data):
        """Send what fits now (all of ``data`` in blocking mode)."""
        # After SSLWantWriteError OpenSSL must be handed the same bytes again:
        # the unsent rest the caller keeps starts with exactly the refused chunk.
        view = memoryview(data)
        sent = 0
        with self._lock:
            try:
                while sent < len(view):
                    sent += self._call(self.sock.send, view[sent:sent + _WRITE_CHUNK])
            except BlockingIOError:
                if not sent:
                    raise
        return sent

    def recv(self, size):
        """Receive, including every decrypted byte OpenSSL already holds."""
        with self._lock:
            data = self._call(self.sock.recv, size)
            while data and self.sock.pending():
                data += self.sock.recv(self.sock.pending())
        return data

    def pending(self):
        """Decrypted bytes OpenSSL holds (0 while a read is under way: it takes them)."""
        if not self._lock.acquire(blocking=False):
            return 0
        try:
            return self.sock.pending()
        finally:
            self._lock.release()

    def _call(self, function, *args):
        try:
            result = function(*args)
        except _WOULD_BLOCK as exc:
            self.wants_write = isinstance(exc, ssl.SSLWantWriteError)
            raise BlockingIOError(str(exc)) from None
        self.wants_write = False
        return result
