"""TLS with the standard ``ssl`` module: contexts, and a pool connection that speaks TLS.

Server side, an accepted socket is wrapped without a handshake (no I/O in
the accept thread) and handed to the pool as a :class:`TLSConnection`.
The handshake is then driven by readiness like any other I/O: each event
calls ``do_handshake`` once, under the connection's lock, and re-arms epoll
for reading or writing as OpenSSL asks.  So neither the accept thread nor a
worker ever waits on a slow or silent client; the connection's deadline
(``tls_handshake_timeout``) aborts a handshake that does not finish, and a
plaintext client fails at its first bytes.  The handler sees nothing until
the handshake is done: ``connection_made`` is its first call.

After the handshake, OpenSSL may hold decrypted bytes that epoll cannot
see (``pending()``); a read drains them, and a connection with pending bytes
is armed for writability too, which fires at once, so none are stranded
(e.g. after a blocking section that read only part of a record).  OpenSSL
objects are not safe for concurrent use, so reads, writes and the handshake
of one connection all run under its lock.  Plaintext connections use
:class:`msgsrv.pool.Connection` unchanged.
"""

import contextlib
import logging
import select
import ssl
import time

from .errors import ConfigError
from .pool import RECV_SIZE, Connection, format_peer

log = logging.getLogger("msgsrv.tls")

_IN, _OUT, _ONESHOT = select.EPOLLIN, select.EPOLLOUT, select.EPOLLONESHOT
_WRITE_CHUNK = 64 * 1024
_WOULD_BLOCK = (ssl.SSLWantReadError, ssl.SSLWantWriteError)


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
        """Wrap an accepted socket without doing any I/O."""
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)

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
        wrapped = self.context.wrap_socket(sock, server_side=True)
        wrapped.settimeout(timeout)
        return wrapped


class _Handshaking:
    """Stands in for the handler until the handshake is done (the handler never
    sees a connection that failed its handshake)."""

    def __init__(self, conn):
        self.conn = conn

    def timed_out(self, reason):
        self.conn.fail_handshake("handshake timeout")

    def server_closing(self):
        """Nothing to say: the client has not finished its handshake."""

    def connection_lost(self):
        """The real handler never started: nothing to release."""


class TLSConnection(Connection):
    """A :class:`msgsrv.pool.Connection` over a non-blocking SSLSocket."""

    def __init__(self, pool, sock, address, handshake_timeout, on_failure=None):
        self._handshaking = True
        self._want_write = False
        self._shim = _Handshaking(self)
        self._handler = None
        super().__init__(pool, sock, address)
        self.deadline = time.monotonic() + handshake_timeout
        self._on_failure = on_failure

    @property
    def handler(self):
        """The service's handler, or a stand-in while the handshake runs."""
        return self._shim if self._handshaking else self._handler

    @handler.setter
    def handler(self, value):
        self._handler = value

    def fail_handshake(self, reason):
        """Abort a connection whose handshake failed; log and count it."""
        log.info("%s: %s TLS %s", self.pool.name, format_peer(self.address), reason)
        if self._on_failure is not None:
            self._on_failure(reason)
        self.abort("tls %s" % reason)

    def _serve(self, mask):
        if self._handshaking and not self._handshake():
            return
        if mask & _OUT and (self._want_write or self.sock.pending()):
            mask |= _IN
        super()._serve(mask)

    def _handshake(self):
        with self._lock:
            try:
                self.sock.do_handshake()
            except _WOULD_BLOCK as exc:
                self._want_write = isinstance(exc, ssl.SSLWantWriteError)
                return False
            except OSError as exc:
                failure = "handshake failed: %s" % (getattr(exc, "reason", None) or exc)
            else:
                self._handshaking = self._want_write = False
                self.deadline = None
                return True
        self.fail_handshake(failure)
        return False

    def _read(self):
        with self._lock:
            try:
                data = self._recv_all()
            except _WOULD_BLOCK as exc:
                self._want_write = isinstance(exc, ssl.SSLWantWriteError)
                return
            except OSError as exc:
                self._abort_locked("receive failed: %s" % (getattr(exc, "reason", None) or exc))
                return
            self._want_write = False
        self._received(data)

    def _recv_all(self):
        data = self.sock.recv(RECV_SIZE)
        while data and self.sock.pending():
            data += self.sock.recv(self.sock.pending())
        return data

    def _send_now(self, data):
        # After SSLWantWriteError OpenSSL must be handed the same bytes again:
        # the unsent rest starts with exactly the chunk that was refused.
        view = memoryview(data)
        sent = 0
        try:
            while sent < len(view):
                sent += self.sock.send(view[sent:sent + _WRITE_CHUNK])
        except _WOULD_BLOCK:
            pass
        except OSError as exc:
            self._abort_locked("send failed: %s" % (getattr(exc, "reason", None) or exc))
            return None
        self.bytes_out += sent
        self.last_active = time.monotonic()
        return bytes(view[sent:]) if sent < len(view) else b""

    def _arm_locked(self):
        if self._handshaking:
            mask = _OUT if self._want_write else _IN
        else:
            ready = self._want_write or self._out or self.sock.pending()
            mask = _OUT if ready else 0
            if (self._reading and not self._closing
                    and self._out_bytes < self.pool.max_pending_output):
                mask |= _IN
        with contextlib.suppress(OSError, ValueError):
            self.pool._epoll.modify(self.fd, mask | _ONESHOT)
