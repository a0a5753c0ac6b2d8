"""StatusClient: ask a status service for the daemon's counters."""

import json

from ..errors import ProtocolError
from ..stream import FrameStream, check_error
from .base import DEFAULT_TIMEOUT, Client, connect_tcp


class StatusClient(Client):
    """A connection to a status service (no authentication).

    Raises ConnectionFailed, RequestTimeout, ProtocolError, ServerError.
    """

    def __init__(self, host, port, *, timeout=DEFAULT_TIMEOUT, tls=False, ca_file=None,
                 client_cert=None, client_key=None):
        self.sock = connect_tcp(host, port, timeout, tls=tls, ca_file=ca_file,
                                client_cert=client_cert, client_key=client_key)
        try:
            self.stream = FrameStream(self.sock, max_body=64 << 20)
            self.hello = check_error(self.stream.recv())
            if self.hello.type != "hello":
                raise ProtocolError("bad-hello", "expected a hello frame, got %r" % self.hello.type)
        except BaseException:
            self.close()
            raise

    def fetch(self, fmt="json"):
        """The status as bytes in format ``fmt`` (json or prometheus)."""
        self.stream.send({"type": "status", "format": fmt})
        reply = check_error(self.stream.recv())
        if reply.type != "status":
            raise ProtocolError("bad-reply", "expected a status reply, got %r" % reply.type)
        return reply.body

    def status(self):
        """The status document (a dict; see docs/PROTOCOL.rst, "Status service")."""
        try:
            return json.loads(self.fetch("json"))
        except ValueError:
            raise ProtocolError("bad-reply", "status body is not JSON") from None

    def metrics(self):
        """The status in Prometheus text format."""
        return self.fetch("prometheus").decode("utf-8")
