"""The status service: counters of every service the daemon runs, on request.

:class:`StatusHandler` (built-in name ``status``) speaks frames: a hello on
connect, then ``{"type": "status"}`` requests answered with the JSON
document (or Prometheus text) as the body.  :class:`StatusHTTPHandler`
serves the same over HTTP with the standard library's ``http.server``
(``GET /metrics``, ``GET /status``) for monitoring systems to scrape.
See docs/PROTOCOL.rst, "Status service".
"""

import http.server
import logging

from msgsrv import __version__
from msgsrv.plugin import FramedHandler, ProtocolError, Setting, choice, shown
from . import report

log = logging.getLogger("msgsrv.status")

FORMAT = Setting("format", choice(*report.FORMATS), "json",
                 "Answer format when a request names none: json or prometheus.")
CONTENT_TYPES = {"json": "application/json",
                  "prometheus": "text/plain; version=0.0.4; charset=utf-8"}


def render(server, fmt):
    """The status of every service ``server`` can see, as bytes in format ``fmt``."""
    document = report.document_for(server)
    if fmt == "prometheus":
        return report.to_prometheus(document).encode("utf-8")
    return report.to_json(document)


class StatusHandler(FramedHandler):
    """Framed status requests; no authentication (keep it on loopback or use allow)."""

    body_types = ()

    settings = FramedHandler.settings + (FORMAT,)

    def connection_made(self):
        super().connection_made()
        self.reply({"type": "hello", "service": self.server.name, "version": __version__,
                    "anonymous": True})

    def message_received(self, message):
        if message.type != "status":
            raise ProtocolError("bad-request", "expected a status request (got %s)"
                                % shown(message.type))
        fmt = message.header.get("format")
        fmt = self.options["format"] if fmt is None else fmt  # null: the default, as absent
        if fmt not in report.FORMATS:
            raise ProtocolError("bad-request", "format must be one of %s (got %s)"
                                % (", ".join(report.FORMATS), shown(fmt)))
        body = render(self.server, fmt)
        self.server.counters.incr("requests")
        self.reply({"type": "status", "format": fmt}, body)


class StatusHTTPHandler(http.server.BaseHTTPRequestHandler):
    """HTTP status: ``/metrics`` (Prometheus), ``/status`` (JSON), ``/`` (``format``).

    A plain socketserver handler, so msgsrv serves it thread-per-connection
    with the service's limits, access rules and TLS.
    """

    settings = (FORMAT,)
    server_version = "msgsrv/" + __version__
    _PATHS = {"/metrics": "prometheus", "/status": "json"}

    def do_GET(self):
        """Answer one status request."""
        path = self.path.split("?", 1)[0]
        fmt = self._PATHS.get(path) or (self.server.config["format"] if path == "/" else None)
        if fmt is None:
            self.send_error(404, "try /metrics or /status")
            return
        body = render(self.server, fmt)
        self.server.counters.incr("requests")
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPES[fmt])
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        log.debug("%s: %s %s", self.server.name, self.address_string(), format % args)
