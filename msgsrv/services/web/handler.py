"""The web console service (``handler = web``): its settings, service object and handler.

This module imports with the standard library alone, so that the daemon can
read the service's settings (and leave an ``optional`` service out) when
the ``web`` extra is not installed; what needs h11 and wsproto is imported
by the service object, which exists only once they are there.

The :class:`WebService` holds what every browser of the service shares: the
page files, the keys and login sessions, the status history and the
sampler thread that pushes a status document to every dashboard once per
``push_interval``.  Each connection's :class:`WebHandler` is HTTP/1.1 until
a request upgrades it to a WebSocket (msgsrv.services.web.exchange).
"""

import contextlib
import ipaddress
import json
import logging
import re
import threading

from msgsrv.net.authenticated import KEYS_FILE, check_keys_file, load_service_keys
from msgsrv.plugin import (ConfigError, Handler, Service, Setting, chain, choice, integer,
                           seconds, size, word_list)
from msgsrv.services.chat.handler import ChatService

log = logging.getLogger("msgsrv.web")

AUTH_MODES = ("auto", "key", "none")


def service_name(value):
    """Parser for the name of another service of the file (empty: none)."""
    value = value.strip()
    if not re.fullmatch(r"[A-Za-z0-9_.-]{0,64}", value):
        raise ValueError("must be the name of a [service:NAME] section, or empty")
    return value


def host_names(value):
    """Parser for a list of Host header values (``name`` or ``name:port``), lower case."""
    return tuple(word.lower() for word in word_list(value))


SETTINGS = (
    Setting("chat", service_name, "chat",
            "The chat service whose rooms, nicks and history /chat joins, by its "
            "[service:NAME] (empty: no chat page)."),
    Setting("auth", choice(*AUTH_MODES), "auto",
            "Who may use the pages: auto (a key from keys_file when host is not a loopback "
            "address, anyone otherwise), key (always a key), none (anyone; refused on a "
            "host that is not loopback)."),
    KEYS_FILE,
    Setting("session_lifetime", seconds(60, 86400 * 30), "43200",
            "Seconds a login lasts."),
    Setting("max_sessions", integer(1, 1000000), "1000",
            "Logins kept at once (the oldest is dropped first)."),
    Setting("allowed_hosts", host_names, "",
            "Host header values accepted (name or name:port; empty: on a loopback host, "
            "its loopback names with the service's port, which defeats DNS rebinding; "
            "elsewhere any)."),
    Setting("max_request_line", size(256, 1 << 20), "8K",
            "Longest request line (method, target, version), bytes; longer: 414."),
    Setting("max_headers", size(1024, 1 << 20), "16K",
            "Largest header block of a request, bytes; larger: 431."),
    Setting("max_request_body", size(0, 1 << 20), "16K",
            "Largest request body (a login form), bytes; larger: 413, checked on "
            "Content-Length before the body is read."),
    Setting("max_message", size(1024, 16 << 20), "64K",
            "Largest WebSocket message from a browser, bytes (after reassembling "
            "fragments); larger: close code 1009. Chat lines are limited by the chat "
            "service's max_line as well."),
    Setting("max_push_queue", size(4096, 1 << 30), "1M",
            "Bytes of status pushes waiting for one browser before it is disconnected "
            "(chat sessions use the chat service's max_queue)."),
    Setting("request_timeout", seconds(0.5, 3600), "10",
            "Seconds a client has to send a whole request once it began one; then 408."),
    Setting("keepalive_timeout", seconds(0.5, 3600), "15",
            "Seconds an HTTP connection may wait for its next request (or its first)."),
    Setting("push_interval", seconds(0.2, 60), "1",
            "Seconds between two status pushes to the dashboards."),
    Setting("chart_window", seconds(10, 86400), "300",
            "Seconds of history the dashboard's charts show."),
)


def is_loopback(host):
    """True when the listen address ``host`` is a loopback address (or ``localhost``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def access_required(config):
    """True when the pages of the service ``config`` need a key.  Raises ConfigError for
    ``auth = none`` on a host that is not loopback."""
    mode = config["auth"]
    if mode == "none" and not is_loopback(config["host"]):
        raise ConfigError("[service:%s] auth = none is refused on host %s, which is not a "
                          "loopback address: use auth = auto or key" % (config.name,
                                                                       config["host"]))
    return mode == "key" or (mode == "auto" and not is_loopback(config["host"]))


class WebService(Service):
    """What every browser of one web service shares, kept across reloads (logins, the
    history); the sampler thread runs from start to :meth:`close`."""

    def __init__(self, config, global_options):
        super().__init__(config, global_options)
        from . import assets, dashboard, login, sockets  # the h11/wsproto side is there now
        self._dashboard = dashboard
        self.access_required = access_required(config)
        self.keys = load_service_keys(config) if self.access_required else {}
        self.assets = assets.load()
        self.logins = login.Logins(lambda: self.keys, config["session_lifetime"],
                                   config["max_sessions"])
        self.history = dashboard.History(config["chart_window"], config["push_interval"])
        self.pushes = sockets.Pushes()
        self.latest = None  # the last status push (JSON text), sent first to a new dashboard
        self._stopping = threading.Event()
        self._sampler = threading.Thread(target=self._sample_loop, name="%s-sampler" % self.name,
                                         daemon=True)
        self._sampler.start()

    def prepare_reconfigure(self, config, global_options):
        required = access_required(config)
        keys = load_service_keys(config) if required else {}

        def apply():
            self.access_required, self.keys = required, keys
            self.logins.tune(config["session_lifetime"], config["max_sessions"])
            self.history.tune(config["chart_window"], config["push_interval"])
        return chain(super().prepare_reconfigure(config, global_options), apply)

    def _sample_loop(self):
        while not self._stopping.wait(self.config["push_interval"]):
            try:
                self.sample()
            except Exception:  # never let the dashboards stop for good
                log.exception("%s: status sample failed", self.name)

    def sample(self):
        """Take one status sample of every service and push it to every dashboard."""
        if self.directory is None:
            return
        doc = self._dashboard.document(self.directory)
        self.history.add(doc)
        self.latest = json.dumps(dict(doc, type="status"), separators=(",", ":"))
        self.pushes.send(self.latest, self.config["max_push_queue"])

    def close(self):
        """Stop the sampler."""
        super().close()
        self._stopping.set()
        if self._sampler is not threading.current_thread():
            self._sampler.join(2.0)


class WebHandler(Handler):
    """One browser connection: HTTP/1.1 requests, then perhaps one WebSocket."""

    settings = SETTINGS
    service_class = WebService
    requires = ("h11", "wsproto")
    extra = "web"
    siblings = (("chat", ChatService),)

    def __init__(self, conn, server):
        super().__init__(conn, server)
        from .exchange import Exchange
        self.exchange = Exchange(self)

    @classmethod
    def check_service(cls, service, global_options):
        """auth = none only on loopback; a keys file that is needed must load."""
        if access_required(service):
            check_keys_file(service)

    @classmethod
    def creates(cls, service):
        if not access_required(service):
            return ()
        return (("keys_file", "keys file with one random key 'admin':"),)

    @classmethod
    def start_notes(cls, service):
        if not access_required(service):
            return ()
        notes = ["every page needs a key from keys_file %s (auth = %s%s)"
                 % (service["keys_file"], service["auth"],
                    ", host %s is not loopback" % service["host"]
                    if not is_loopback(service["host"]) else "")]
        if not service["tls_cert"] and not is_loopback(service["host"]):
            notes.append("without tls_cert, session cookies cross the network in clear: "
                         "set tls_cert and tls_key")
        return notes

    @classmethod
    def refuse(cls, sock, code, reason):
        body = ("503 Service Unavailable: %s\n" % reason).encode("utf-8", "replace")
        with contextlib.suppress(OSError):
            sock.send(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; "
                      b"charset=utf-8\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                      % (len(body), body))

    def connection_made(self):
        self.exchange.connection_made()

    def data_received(self, data):
        self.exchange.data_received(data)

    def eof_received(self):
        return self.exchange.eof_received()

    def timed_out(self, reason):
        if not self.exchange.timed_out(reason):
            super().timed_out(reason)

    def server_closing(self):
        self.exchange.server_closing()

    def connection_lost(self):
        self.exchange.connection_lost()
