"""EchoClient: talk to an echo service over TCP or UDP."""

import selectors
import ssl

from msgsrv.client.base import DEFAULT_TIMEOUT, Client, connect_tcp, open_udp
from msgsrv.wire.errors import ConnectionFailed, ProtocolError, RequestTimeout
from msgsrv.wire.frame_stream import translate_errors

_CHUNK = 64 * 1024
_WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class EchoClient(Client):
    """A blocking echo client: ``echo(data)`` returns what the server sent back.

    Over TCP, sending and receiving are interleaved, so payloads of any size
    work without deadlock.  Over UDP one datagram goes out and one comes back.
    """

    def __init__(self, host, port, transport="tcp", timeout=DEFAULT_TIMEOUT, *, tls=False,
                 ca_file=None, client_cert=None, client_key=None):
        if transport not in ("tcp", "udp"):
            raise ValueError("transport must be tcp or udp (got %r)" % transport)
        self.transport = transport
        self.timeout = timeout
        if transport == "tcp":
            self.sock = connect_tcp(host, port, timeout, tls=tls, ca_file=ca_file,
                                    client_cert=client_cert, client_key=client_key)
        else:
            self.sock = open_udp(host, port, timeout)

    def echo(self, data):
        """Send ``data`` and return the echoed bytes.

        Raises ConnectionFailed if the server closes early, RequestTimeout if
        nothing moves for ``timeout`` seconds, ProtocolError if a UDP reply
        differs in size.
        """
        if self.sock is None:
            raise ConnectionFailed("client is closed")
        if self.transport == "udp":
            return self._echo_datagram(bytes(data))
        return self._echo_stream(memoryview(bytes(data)))

    def _echo_datagram(self, data):
        with translate_errors("echo"):
            self.sock.send(data)
            reply = self.sock.recv(max(len(data), 1) + 1)
        if len(reply) != len(data):
            raise ProtocolError("bad-reply", "sent %d bytes, got %d back" % (len(data), len(reply)))
        return reply

    def _echo_stream(self, data):
        received = bytearray()
        sent = 0
        with selectors.DefaultSelector() as selector, translate_errors("echo"):
            selector.register(self.sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
            self.sock.setblocking(False)
            try:
                while len(received) < len(data):
                    if not selector.select(self.timeout):
                        raise RequestTimeout("echo: no progress for %gs" % self.timeout)
                    sent = self._step(selector, data, sent, received)
            finally:
                self.sock.settimeout(self.timeout)
        return bytes(received)

    def _step(self, selector, data, sent, received):
        if sent < len(data):
            try:
                sent += self.sock.send(data[sent:sent + _CHUNK])
            except _WOULD_BLOCK:
                pass
            if sent == len(data):
                selector.modify(self.sock, selectors.EVENT_READ)
        try:
            chunk = self.sock.recv(_CHUNK)
            # TLS: decrypted bytes the selector cannot see must not be left behind.
            while chunk and getattr(self.sock, "pending", int)():
                chunk += self.sock.recv(self.sock.pending())
        except _WOULD_BLOCK:
            return sent
        if not chunk:
            raise ConnectionFailed("server closed after %d of %d bytes" % (len(received), len(data)))
        received += chunk
        return sent
