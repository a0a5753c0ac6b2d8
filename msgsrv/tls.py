"""TLS with the standard ``ssl`` module: contexts, and a pool connection that speaks TLS.

Server side, an accepted socket is wrapped without a handshake (no I/O in
the accept thread) and handed to the pool as a :class:`TLSConnection`.
The handshake is then driven by readiness like any other I/O: each event
calls ``do_handshake`` once and the connection waits for reading or writing
as OpenSSL asks.  So neither the accept thread nor a worker ever waits on a
slow or silent client; the connection's deadline (``tls_handshake_timeout``)
aborts a handshake that does not finish, and a plaintext client is closed as
soon as its first byte arrives (it is not 0x16, a handshake record).  The
handler sees nothing until the handshake is done: ``connection_made`` is its
first call.

The pool's :class:`~msgsrv.pool.Connection` code runs unchanged over a
:class:`NonBlockingTLS` socket, which reports OpenSSL's "want read/write" as
``BlockingIOError``, serializes OpenSSL calls (its objects are not safe for
concurrent use) and drains the decrypted bytes OpenSSL holds (``pending()``)
on every read.  Bytes that stay there anyway (a blocking section that read
part of a record) are invisible to epoll, so a connection holding some also
waits for writability, which fires at once.  Plaintext connections use
:class:`msgsrv.pool.Connection` and its fast paths unchanged.
"""

import logging
import select
import socket
import ssl
import threading

from .errors import ConfigError
from .pool import Connection, format_peer

log = logging.getLogger("msgsrv.tls")

_IN, _OUT, _QUIET = select.EPOLLIN, select.EPOLLOUT, select.EPOLLONESHOT
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


def _harden(context):
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0) | ssl.OP_NO_COMPRESSION
    return context


def server_context(cert, key="", client_ca=""):
    """An SSLContext for a server: TLS 1.2+, no renegotiation, client certs if ``client_ca``.

    Raises ConfigError naming the file that cannot be loaded.
    """
    context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
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


def client_context(ca_file=None, client_cert=None, client_key=None):
    """An SSLContext for a client: TLS 1.2+, server verified against ``ca_file``
    (the system CAs when None), presenting ``client_cert`` if given.

    Raises ConfigError naming the file that cannot be loaded.
    """
    try:
        context = _harden(ssl.create_default_context(cafile=ca_file))
        if client_cert:
            context.load_cert_chain(client_cert, client_key or None)
    except (OSError, ssl.SSLError) as exc:
        what = client_cert or ca_file
        raise ConfigError("TLS: cannot load %s: %s"
                          % (what, getattr(exc, "strerror", None) or exc)) from None
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
        """Wrap an accepted socket without doing any I/O; returns a NonBlockingTLS."""
        return NonBlockingTLS(self.context.wrap_socket(sock, server_side=True,
                                                       do_handshake_on_connect=False))

    def connection(self, pool, sock, address):
        """Connection factory for :meth:`msgsrv.pool.WorkerPool.add`."""
        return TLSConnection(pool, sock, address, self.handshake_timeout, self.on_failure)

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


class NonBlockingTLS:
    """An SSLSocket as the pool expects a non-blocking socket to behave.

    ``send`` and ``recv`` raise BlockingIOError when OpenSSL wants to read or
    write; ``want_write`` tells which way a read is waiting.  Everything else
    (``sendall``, ``recv_into``, ``settimeout``, ``getpeercert``...) is the
    SSLSocket's own, for blocking sections.
    """

    def __init__(self, sock):
        self._sock = sock
        self._lock = threading.Lock()
        self.want_write = False

    def __getattr__(self, name):
        return getattr(self._sock, name)

    def first_byte(self):
        """The client's first byte, peeked (OpenSSL still reads it), or None if none yet."""
        try:
            return peek_first_byte(self._sock)
        except OSError:
            return None  # the handshake reports it

    def do_handshake(self):
        """One handshake step; BlockingIOError until it is done."""
        with self._lock:
            self._call(self._sock.do_handshake)

    def send(self, data):
        """Send what fits now (all of ``data`` in blocking mode)."""
        # After SSLWantWriteError OpenSSL must be handed the same bytes again:
        # the unsent rest the caller keeps starts with exactly the refused chunk.
        view = memoryview(data)
        sent = 0
        with self._lock:
            try:
                while sent < len(view):
                    sent += self._call(self._sock.send, view[sent:sent + _WRITE_CHUNK])
            except BlockingIOError:
                if not sent:
                    raise
        return sent

    def recv(self, size):
        """Receive, including every decrypted byte OpenSSL already holds."""
        with self._lock:
            data = self._call(self._sock.recv, size)
            while data and self._sock.pending():
                data += self._sock.recv(self._sock.pending())
        return data

    def pending(self):
        """Decrypted bytes OpenSSL holds (0 while a read is under way: it takes them)."""
        if not self._lock.acquire(blocking=False):
            return 0
        try:
            return self._sock.pending()
        finally:
            self._lock.release()

    def _call(self, function, *args):
        try:
            result = function(*args)
        except _WOULD_BLOCK as exc:
            self.want_write = isinstance(exc, ssl.SSLWantWriteError)
            raise BlockingIOError(str(exc)) from None
        self.want_write = False
        return result


class _Handshaking:
    """Stands in for the handler until the handshake is done (the handler never
    sees a connection that failed its handshake)."""

    sticky = False

    def __init__(self, conn):
        self.conn = conn

    def timed_out(self, reason):
        self.conn.fail_handshake("handshake timeout")

    def server_closing(self):
        """Nothing to say: the client has not finished its handshake."""

    def connection_lost(self):
        """The real handler never started: nothing to release."""


class TLSConnection(Connection):
    """A :class:`msgsrv.pool.Connection` over a :class:`NonBlockingTLS` socket
    (from :meth:`ServerTLS.wrap`)."""

    def __init__(self, pool, sock, address, handshake_timeout, on_failure=None):
        self._handshaking = True
        self._first_seen = False
        self._shim = _Handshaking(self)
        self._handler = None
        super().__init__(pool, sock, address)
        self._on_failure = on_failure
        self.set_deadline(handshake_timeout)

    @property
    def handler(self):
        """The service's handler, or a stand-in while the handshake runs."""
        return self._shim if self._handshaking else self._handler

    @handler.setter
    def handler(self, value):
        self._handler = value

    def fail_handshake(self, reason, detail=None):
        """Abort a connection whose handshake failed; log (with ``detail``) and count it."""
        log.info("%s: %s TLS %s%s", self.pool.name, format_peer(self.address), reason,
                 "" if detail is None else ": " + detail)
        if self._on_failure is not None:
            self._on_failure(reason)
        self.abort("tls %s" % reason)

    def _serve(self, mask):
        if self._handshaking and not self._handshake():
            return
        if mask & _OUT and (self.sock.want_write or self.sock.pending()):
            mask |= _IN
        super()._serve(mask)

    def _handshake(self):
        if not self._first_seen and self._plaintext_client():
            return False
        try:
            self.sock.do_handshake()
        except BlockingIOError:
            return False
        except OSError as exc:
            self.fail_handshake("handshake failed: %s" % (getattr(exc, "reason", None) or exc))
            return False
        self.set_deadline(None)
        self._handshaking = False
        return True

    def _plaintext_client(self):
        """Close at once a client whose first byte cannot start a TLS handshake: OpenSSL
        would wait for a whole record header from it until the handshake deadline."""
        first = self.sock.first_byte()
        self._first_seen = first is not None
        if self._first_seen and not_tls(first):
            self.fail_handshake("refused plaintext", not_tls(first))
            return True
        return False

    def _update_mask_locked(self):
        if self._handshaking:
            mask = _OUT if self.sock.want_write else _IN
        else:
            waiting = self._out or self.sock.want_write or self.sock.pending()
            mask = _OUT if waiting else 0
            if (self._reading and not self._closing
                    and self._out_bytes < self.pool.max_pending_output):
                mask |= _IN
        if mask != self._mask:
            self._set_mask_locked(mask or _QUIET)
