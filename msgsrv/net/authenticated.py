"""AuthenticatedHandler: a FramedHandler that runs the HMAC handshake first.

On connect the server sends the hello frame (docs/PROTOCOL.rst,
"Authentication"); every request before a successful ``auth`` is treated as
an attempt.  A failed attempt is answered after ``auth.FAILURE_DELAY``
seconds (the connection is held, no thread sleeps), and the connection
closes after ``max_auth_failures``.  Each failure also counts against the
client's address (the service's ``auth_penalty_*`` settings): a penalised
address is refused at admission, and an attempt on a connection it opened
before is answered ``busy`` and closed without being checked.  The
handshake must finish within ``auth_timeout``.  Subclasses implement
``request_received(message)`` and may allow anonymous requests by
overriding ``anonymous_allowed()``.
"""

import logging
import os

from msgsrv import __version__
from msgsrv.ops.settings import Setting, integer, seconds, text
from msgsrv.wire import auth
from msgsrv.wire.errors import ConfigError
from .access import penalty_message
from .handler import FramedHandler
from .peer import format_peer
from .service import Service, chain

log = logging.getLogger("msgsrv.auth")


#: The setting naming a service's keys file (every service that authenticates has it).
KEYS_FILE = Setting("keys_file", text, "var/keys/msgsrv.keys",
                    "File of NAME SECRET lines (mode 0600). Created with one random key "
                    "'admin' if missing; relative paths are from the working directory.")


def load_service_keys(config):
    """The keys of the ServiceConfig ``config``'s ``keys_file``, which is created (logged)
    if missing; raises ConfigError naming the service and the key."""
    path = config["keys_file"]
    try:
        if auth.ensure_keys_file(path):
            log.warning("%s: created keys file %s with key 'admin' (mode 0600); "
                        "clients use that name and the secret in the file", config.name, path)
        return auth.load_keys(path)
    except ConfigError as exc:
        raise ConfigError("[service:%s] keys_file: %s" % (config.name, exc)) from None


def check_keys_file(service):
    """An existing keys file of ``service`` must load (modes, format); ConfigError if not.
    A missing one is fine: the service creates it."""
    path = service["keys_file"]
    if os.path.lexists(path):
        try:
            auth.load_keys(path)
        except ConfigError as exc:
            raise ConfigError("[service:%s] keys_file: %s" % (service.name, exc)) from None


class AuthedService(Service):
    """A service with a keys file: ``keys`` (name -> secret), swapped on reload.

    Subclasses extend :meth:`prepare_keyed`, which gets the new keys too.
    """

    def __init__(self, config, global_options):
        super().__init__(config, global_options)
        self.keys = self.load_keys(config)

    def load_keys(self, config):
        """Create the keys file if missing (logged), then return its keys
        (ConfigError naming ``keys_file``)."""
        return load_service_keys(config)

    def prepare_reconfigure(self, config, global_options):
        keys = self.load_keys(config)
        return chain(super().prepare_reconfigure(config, global_options),
                     self.prepare_keyed(config, global_options, keys),
                     lambda: setattr(self, "keys", keys))

    def prepare_keyed(self, config, global_options, keys):
        """Phase one of a reload for what depends on the new ``keys``: the applier."""
        return lambda: None


class AuthenticatedHandler(FramedHandler):
    """Base class of services that need to know who is asking."""

    service_class = AuthedService

    settings = FramedHandler.settings + (
        KEYS_FILE,
        Setting("auth_timeout", seconds(0.1, 3600), "10",
                "Seconds a client has to authenticate after connecting."),
        Setting("max_auth_failures", integer(1, 100), "3",
                "Failed attempts before the connection is closed."),
    )

    @classmethod
    def check_service(cls, service, global_options):
        """An existing keys file must load (modes, format); a missing one is created."""
        check_keys_file(service)

    @classmethod
    def creates(cls, service):
        return (("keys_file", "keys file with one random key 'admin':"),)

    def anonymous_allowed(self):
        """True if requests without authentication are served (identity None)."""
        return False

    def connection_made(self):
        super().connection_made()
        self.identity = None
        self.authenticated = False
        self._pending_failure = None
        self.handshake = auth.ServerHandshake(
            lambda: self.service.keys, max_failures=self.options["max_auth_failures"],
            extra={"service": self.server.name, "version": __version__,
                   "anonymous": self.anonymous_allowed()})
        self.reply(self.handshake.hello())
        # Failing must not buy a client more time: one timer for the whole handshake.
        self._auth_timer = self.conn.call_later(self.options["auth_timeout"],
                                                self._auth_timed_out)

    def message_received(self, message):
        if self.authenticated:
            return self.request_received(message)
        if message.type != "auth" and self.anonymous_allowed():
            self._accept(None)
            return self.request_received(message)
        return self._attempt(message)

    def request_received(self, message):
        """A request from an authenticated (or allowed anonymous) client."""
        raise NotImplementedError

    def _accept(self, identity):
        self.authenticated = True
        self.identity = identity
        self._auth_timer.cancel()

    def _attempt(self, message):
        left = self.server.auth_penalty_left(self.conn.address)
        if left is not None:
            self._penalised(left)
            return
        result = self.handshake.receive(message.header)
        if result.outcome == auth.HandshakeResult.AUTHENTICATED:
            self._accept(result.identity)
            log.info("%s: %s authenticated as %s", self.server.name,
                     format_peer(self.conn.address), result.identity)
            self.reply(result.reply)
            return
        key = message.header.get("key")
        log.warning("%s: failed authentication from %s (key %r)", self.server.name,
                    format_peer(self.conn.address), key if isinstance(key, str) else None)
        self.server.auth_failed(self.conn.address)
        self._pending_failure = result
        self.hold()
        self.conn.call_later(auth.FAILURE_DELAY, self._answer_failure)

    def _penalised(self, left):
        # Not checked: a connection opened before the penalty gets no more guesses.
        self.server.counters.incr("refused_auth_penalty")
        log.debug("%s: %s attempt during an authentication penalty", self.server.name,
                  format_peer(self.conn.address))
        self.reply_error("busy", penalty_message(left))
        self.conn.close("auth penalty")

    def _answer_failure(self):
        """The failed-attempt delay is over: answer it, then read on (or close)."""
        result, self._pending_failure = self._pending_failure, None
        if result is None or self.conn.closing:
            return
        self.reply(result.reply)
        if result.outcome == auth.HandshakeResult.CLOSED:
            self.conn.close("authentication failed")
            return
        if self._auth_timer.active:
            self.release()

    def _auth_timed_out(self):
        if self._pending_failure is not None:
            self._pending_failure = None  # its answer would come after the timeout's
        self.reply_error("timeout", "authentication took too long")
        log.info("%s: %s did not authenticate in time", self.server.name,
                 format_peer(self.conn.address))
        self.conn.close("auth timeout")
