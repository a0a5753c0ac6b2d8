"""Reading the PROXY header off a connection: a service's policy and one connection's stage.

:class:`ProxyPolicy` is a TCP service's ``proxy_*`` settings, loaded.  With
it, every connection must come from a ``proxy_trusted`` peer (the load
balancer; anyone else is refused at accept, before a byte is read) and start
with a header.  The specification forbids guessing whether a header is
there, so one port serves either proxied clients or direct ones, never both.

:class:`ProxyStage` reads one connection's header through the socket under
any TLS layer (the header precedes the TLS handshake), with the sans-IO
:class:`~msgsrv.net.proxy_protocol.ProxyHeaderDecoder`: it peeks, decodes,
and takes off the socket exactly the header's bytes, so what follows (the
client's bytes, or its TLS hello) is left for the transport.  The pool runs
it as a connection's preamble (non-blocking, :meth:`ProxyStage.step`, its
own ``proxy_timeout`` timer); thread-per-connection services call
:meth:`ProxyStage.read_blocking`.  Once decoded, the service's
``proxy_admit`` runs the per-address admission on the claimed client;
failures are logged once and counted by the service (``proxy_refused``).
"""

import socket
import time

from msgsrv.wire.errors import ConfigError
from .proxy_protocol import NEED_DATA, ProxyHeaderDecoder, ProxyHeaderError
from .transport import HandshakeRefused

_VERSIONS = {"v1": (1,), "v2": (2,), "any": (1, 2)}


class ProxyPolicy:
    """A TCP service's PROXY protocol settings: accepted versions, trusted peers,
    the header's deadline and size bound."""

    def __init__(self, mode, trusted, timeout, max_header):
        self.mode = mode
        self.versions = _VERSIONS[mode]
        self.trusted = tuple(trusted)
        self.timeout = timeout
        self.max_header = max_header

    @classmethod
    def from_options(cls, where, options):
        """The policy of a service's options, or None with ``proxy_protocol = off``.

        Raises ConfigError (prefixed ``where``) when no peer is trusted: every
        connection would be refused.
        """
        mode = options["proxy_protocol"]
        if mode == "off":
            return None
        if not options["proxy_trusted"]:
            raise ConfigError("%s proxy_protocol = %s needs proxy_trusted (the addresses of "
                              "the load balancers that send the header)" % (where, mode))
        return cls(mode, options["proxy_trusted"], options["proxy_timeout"],
                   options["proxy_max_header"])

    def trusts(self, address):
        """True if ``address`` (an ``ipaddress`` object) may send a PROXY header."""
        return any(address in network for network in self.trusted)


class ProxyStage:
    """One connection's PROXY header, read and admitted (a pool connection's preamble).

    ``server`` provides ``proxy_admit(key, peer, header)`` (returns the address
    to serve the connection under, or raises HandshakeRefused) and
    ``proxy_refused(peer, counter, reason)`` (logs once, counts).
    """

    def __init__(self, policy, server, key, peer):
        self.timeout = policy.timeout
        self.policy = policy
        self._server = server
        self._key = key
        self._peer = peer
        self._decoder = ProxyHeaderDecoder(policy.versions, policy.max_header)

    def step(self, transport):
        """Read what has arrived (non-blocking); None while the header is incomplete,
        else the address to serve under.  Raises HandshakeRefused (logged, counted)."""
        try:
            header = self._advance(transport.raw_recv)
        except (BlockingIOError, InterruptedError):
            return None
        return self._admit(header)

    def read_blocking(self, sock):
        """Read the header from a blocking socket within ``proxy_timeout``; return the
        address to serve under.  Raises HandshakeRefused (logged, counted)."""
        deadline = time.monotonic() + self.timeout
        saved = sock.gettimeout()

        def recv(size, flags=0):
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("PROXY header deadline")
            sock.settimeout(left)
            return sock.recv(size, flags)
        try:
            header = self._advance(recv)
        except socket.timeout:
            self.timed_out()
        finally:
            sock.settimeout(saved)
        return self._admit(header)

    def timed_out(self):
        """The deadline passed: raises HandshakeRefused (logged, counted)."""
        self._refuse("proxy_timeout", "no complete PROXY header within %gs (proxy_timeout)"
                     % self.timeout)

    def _advance(self, recv):
        # Peek, decode, then take exactly the header's bytes off the socket: what
        # follows stays there for the transport (a TLS hello) or the handler.
        decoder = self._decoder
        while True:
            peeked, lost = _peek(recv, max(decoder.wanted, 1))
            try:
                result = decoder.feed(peeked) if peeked else decoder.eof()
            except ProxyHeaderError as exc:
                self._refuse(exc.code.replace("-", "_"), exc.message + lost)
            _discard(recv, len(peeked) - (0 if result is NEED_DATA else len(result.leftover)))
            if result is not NEED_DATA:
                return result

    def _admit(self, header):
        return self._server.proxy_admit(self._key, self._peer, header)

    def _refuse(self, counter, reason):
        self._server.proxy_refused(self._peer, counter, reason)
        raise HandshakeRefused(counter.replace("_", " "), reason)


def _peek(recv, size):
    """``(bytes, "")`` waiting on the socket, up to ``size``, left there; ``(b"", why)``
    when it was reset (taken as an end of stream).  BlockingIOError, timeouts pass."""
    try:
        return recv(size, socket.MSG_PEEK), ""
    except (BlockingIOError, InterruptedError, socket.timeout):
        raise
    except OSError as exc:
        return b"", " (%s)" % (exc.strerror or exc)


def _discard(recv, count):
    """Take ``count`` bytes already peeked off the socket (they are there: no wait)."""
    while count > 0:
        taken = len(recv(count))
        if not taken:
            return
        count -= taken


__all__ = ["ProxyPolicy", "ProxyStage"]
