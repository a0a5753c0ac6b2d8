"""Connecting, with socket errors turned into the msgsrv exception tree."""

import socket
import ssl

from msgsrv.wire.errors import ConnectionFailed, ProtocolError, RequestTimeout
from msgsrv.wire.tls import client_context

DEFAULT_TIMEOUT = 10.0
DEFAULT_HELLO_TIMEOUT = 3.0  # a msgsrv server greets a client as soon as it accepts it


def printable(text):
    """``text`` with control characters escaped, so a server cannot drive the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def quote_greeting(data, limit=40):
    """What a peer sent first, for an error message: its first line, quoted, at
    most ``limit`` characters, control characters escaped; ``...`` marks a cut."""
    text = data.decode("utf-8", "backslashreplace")
    line = text.split("\n", 1)[0].rstrip("\r")
    shown = printable(line)
    cut = len(shown) > limit or len(line) < len(text.rstrip("\r\n"))
    return "'%s'" % (shown[:limit] + (" ..." if cut else ""))


def parse_address(text, default_port=None):
    """Split ``HOST:PORT`` (``[v6]:PORT`` for IPv6) into ``(host, port)``; ValueError if bad."""
    host, sep, port = text.rpartition(":")
    if not sep:
        if default_port is None:
            raise ValueError("address must be HOST:PORT (got %r)" % text)
        host, port = text, str(default_port)
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("port must be 1..65535 (got %r)" % port)
    return host, int(port)


def connect_tcp(host, port, timeout=DEFAULT_TIMEOUT, *, tls=False, ca_file=None,
                client_cert=None, client_key=None):
    """Open a TCP connection with ``timeout`` on every later operation too.

    With ``tls`` (implied by ``ca_file`` or ``client_cert``; may also be an
    ``ssl.SSLContext``) the connection is TLS 1.2+, the server's certificate
    is checked against ``ca_file`` (default: the system CAs) and ``host``,
    and ``client_cert``/``client_key`` are presented for mutual TLS.
    Raises ConnectionFailed (refused, unreachable, reset, TLS refused),
    RequestTimeout, or ConfigError (a certificate file cannot be loaded).
    """
    context = None
    if tls or ca_file or client_cert:
        context = tls if isinstance(tls, ssl.SSLContext) else client_context(
            ca_file, client_cert, client_key)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.timeout:
        raise RequestTimeout("connecting to %s:%d timed out" % (host, port)) from None
    except OSError as exc:
        raise ConnectionFailed("cannot connect to %s:%d: %s"
                               % (host, port, exc.strerror or exc)) from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock if context is None else _handshake(context, sock, host, port)


def _handshake(context, sock, host, port):
    try:
        return context.wrap_socket(sock, server_hostname=host)
    except socket.timeout:
        sock.close()
        raise RequestTimeout("TLS handshake with %s:%d timed out" % (host, port)) from None
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        raise ConnectionFailed("TLS: %s:%d certificate not trusted: %s"
                               % (host, port, exc.verify_message or exc.reason)) from None
    except OSError as exc:
        sock.close()
        raise ConnectionFailed("TLS handshake with %s:%d failed: %s"
                               % (host, port, getattr(exc, "reason", None) or exc)) from None


def hello_wait(hello_timeout, timeout):
    """Seconds to wait for a server's greeting: ``hello_timeout``, at most ``timeout``
    (either may be None: no limit of its own)."""
    limits = [t for t in (hello_timeout, timeout) if t is not None]
    return min(limits) if limits else None


def foreign_greeting(where, protocol, seen):
    """The ProtocolError ``not-msgsrv`` for a peer at ``where`` whose first bytes
    ``seen`` are not a greeting of ``protocol`` (a phrase: "the msgsrv frame protocol")."""
    return ProtocolError("not-msgsrv", "%s does not speak %s (it sent %s)"
                         % (where, protocol, quote_greeting(seen)))


def silent_peer(where, protocol, seen, wait):
    """The RequestTimeout for a peer that sent no (whole) greeting in ``wait`` seconds."""
    sent = "only " + quote_greeting(seen) if seen else "nothing"
    return RequestTimeout("%s sent %s within %.1f s of connecting: it does not speak %s, or "
                          "expects TLS, or is overloaded" % (where, sent, wait, protocol))


def open_udp(host, port, timeout=DEFAULT_TIMEOUT):
    """A UDP socket connected to ``(host, port)`` (replies from elsewhere are ignored)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.settimeout(timeout)
    try:
        sock.connect(address)
    except OSError as exc:
        sock.close()
        raise ConnectionFailed("cannot reach %s:%d: %s" % (host, port, exc.strerror)) from None
    return sock


class Client:
    """Base of the blocking clients: owns one socket; a context manager."""

    sock = None

    def close(self):
        """Close the connection (idempotent)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
