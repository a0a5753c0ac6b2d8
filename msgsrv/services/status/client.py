"""StatusClient: ask a status service for the daemon's counters."""

import json

from msgsrv.client.base import DEFAULT_TIMEOUT, Client
from msgsrv.client.framed import DEFAULT_HELLO_TIMEOUT, open_framed
from msgsrv.wire.errors import ProtocolError
from msgsrv.wire.frame_stream import check_error


class StatusClient(Client):
    """A connection to a status service (no authentication).

    Raises ConnectionFailed, RequestTimeout, ProtocolError, ServerError;
    ``hello_timeout`` as for :func:`msgsrv.client.framed.open_framed`.
    """

    def __init__(self, host, port, *, timeout=DEFAULT_TIMEOUT, tls=False, ca_file=None,
                 client_cert=None, client_key=None, hello_timeout=DEFAULT_HELLO_TIMEOUT):
        self.sock, self.stream, self.hello = open_framed(
            host, port, timeout, hello_timeout=hello_timeout, max_body=64 << 20, tls=tls,
            ca_file=ca_file, client_cert=client_cert, client_key=client_key)

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
