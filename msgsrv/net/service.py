"""The service object: what one ``[service:NAME]`` shares across its connections and reloads.

One :class:`Service` is created when a service starts and lives until it
stops; its handlers reach it as ``self.service``.  It holds the state that
must outlive a reload (the base class: the authentication penalty box and
the transfer gate; the built-in services add keys, chat state, run slots,
the file root...).  A reload is two-phase: :meth:`Service.prepare_reconfigure`
validates the new options and builds what they need without touching the
running service, and returns an *applier*; the daemon calls the appliers of
every service only once all of them were prepared, so a refused reload
changes nothing.  A handler class names its service class with
``service_class``; the guide is docs/PLUGINS.rst.

A service finds the other services of its daemon by name with
:meth:`Service.sibling` (the web console finds the chat service's state so).
"""

import logging
from types import MappingProxyType

from msgsrv.ops import shared
from msgsrv.wire.errors import ConfigError
from .access import penalty_box
from .handler import Handler
from .transfer_limits import TransferGate

log = logging.getLogger("msgsrv.service")

__all__ = ["Service", "chain", "create_service"]


def chain(*appliers):
    """One applier running ``appliers`` in order (each a function of no argument)."""
    def apply():
        for applier in appliers:
            applier()
    return apply


def _transfer_limits(config):
    return (config["max_transfers"], config["max_transfers_per_ip"],
            config["transfer_buffer_budget"])


class Service:
    """The state of one service, created once and kept across reloads.

    ``config`` is the :class:`~msgsrv.ops.config.ServiceConfig` in force,
    ``global_options`` the ``[msgsrv]`` options.  Subclasses create their
    lasting state in ``__init__`` (after calling it here) and extend
    :meth:`prepare_reconfigure`; both raise ConfigError naming the
    ``[service:NAME]`` key to fix.  Keys listed in ``fixed_keys`` cannot
    change on a running service: a reload changing one is refused.
    """

    #: Keys a reload may not change (the value in force stays until a restart).
    fixed_keys = ()

    @classmethod
    def serves_in_one_process(cls, config):
        """Whether the service ``config`` must run in one worker process only, when
        the daemon has several (``processes``): True when its state cannot be split
        between processes.  False by default: each worker has a service object of
        its own, and the built-in limits are shared between them."""
        return False

    def __init__(self, config, global_options):
        self.name = config.name
        self.config = config
        self.global_options = global_options
        self.penalties = penalty_box(self.name)  # the rules come with each reload
        self.transfers = TransferGate(*_transfer_limits(config),
                                      store=shared.store("transfers:" + self.name, self.name))
        #: The service's counters (shown by status), shared with its server.
        self.counters = None
        #: The running services this one can see: the daemon's
        #: :class:`~msgsrv.ops.running.Registry`, or a :class:`Solo`
        #: holding only its own server when that runs without a daemon.
        self.directory = None

    def sibling(self, name):
        """The service object of the running service called ``name`` in the same daemon,
        or None (not running, or this service runs without a daemon)."""
        if self.directory is None or not name:
            return None
        return self.directory.service(name)

    @property
    def where(self):
        """``[service:NAME]``, the prefix of this service's error messages."""
        return "[service:%s]" % self.name

    def prepare_reconfigure(self, config, global_options):
        """Check and build what ``config`` needs; return the function that applies it.

        Changes nothing itself; raises ConfigError (naming the key) when the
        new options cannot be applied live.  The applier must not fail.
        """
        for key in self.fixed_keys:
            if config[key] != self.config[key]:
                raise ConfigError("%s %s cannot change while the service runs (%s -> %s); "
                                  "restart the daemon to apply it"
                                  % (self.where, key, self.config[key], config[key]))
        limits = _transfer_limits(config)

        def apply():
            self.config, self.global_options = config, global_options
            self.transfers.tune(*limits)
        return apply

    def reconfigure(self, config, global_options):
        """Prepare and apply ``config`` at once (ConfigError: nothing changed)."""
        self.prepare_reconfigure(config, global_options)()

    def close(self):
        """The service has stopped: release what it holds open (root descriptors...)."""


class _Staged:
    """What a legacy ``prepare_service(server)`` sees on reload: the server with the
    new config, its attribute writes kept aside until the reload is applied."""

    def __init__(self, server, config, global_options):
        staged = {"config": config, "global_options": global_options}
        object.__setattr__(self, "_server", server)
        object.__setattr__(self, "staged", staged)

    def __getattr__(self, name):
        if name in self.staged:
            return self.staged[name]
        return getattr(self._server, name)

    def __setattr__(self, name, value):
        self.staged[name] = value


class LegacyService(Service):
    """Runs a handler's deprecated ``prepare_service(server)`` (state loaded onto the
    server) on start and, staged, on each reload; mixed into the handler's service
    class (see :func:`create_service`)."""

    def __init__(self, config, global_options, server, handler_class):
        super().__init__(config, global_options)
        self._server = server
        self._handler_class = handler_class
        handler_class.prepare_service(server)

    def prepare_reconfigure(self, config, global_options):
        base = super().prepare_reconfigure(config, global_options)
        view = _Staged(self._server, config, global_options)
        self._handler_class.prepare_service(view)
        changes = {name: value for name, value in view.staged.items()
                   if name not in ("config", "global_options")}

        def apply():
            base()
            for name, value in changes.items():
                setattr(self._server, name, value)
        return apply

    def close(self):
        super().close()
        self._handler_class.release_service(self._server)


_warned = set()


def _is_legacy(handler_class):
    if not issubclass(handler_class, Handler):
        return False
    return (handler_class.prepare_service.__func__ is not Handler.prepare_service.__func__
            or handler_class.release_service.__func__ is not Handler.release_service.__func__)


def create_service(config, global_options, server):
    """The service object for ``config``'s handler: its ``service_class`` (default
    :class:`Service`), or the deprecated ``prepare_service(server)`` hook.

    Raises ConfigError when the service refuses its options.
    """
    service = _new_service(config, global_options, server)
    service.counters = server.counters
    if service.directory is None:
        service.directory = Solo(server)
    return service


class Solo:
    """The directory of a server running without a daemon: that server alone (the daemon's
    is msgsrv.ops.running.Registry)."""

    disabled = MappingProxyType({})
    last_reload = None

    def __init__(self, server):
        self._server = server
        self.started = server.started

    def servers(self):
        """``[server]``."""
        return [self._server]

    def service(self, name):
        """The server's service object if it is called ``name``, else None."""
        return self._server.service if name == self._server.name else None


def _new_service(config, global_options, server):
    handler_class = config.handler_class
    service_class = getattr(handler_class, "service_class", None) or Service
    if not _is_legacy(handler_class):
        return service_class(config, global_options)
    if handler_class not in _warned:
        _warned.add(handler_class)
        log.warning("%s: %s.prepare_service(server) is deprecated (DeprecationWarning): "
                    "name a service class instead (service_class, docs/PLUGINS.rst); "
                    "it will be removed in the next release", config.name,
                    handler_class.__qualname__)
    if not issubclass(service_class, LegacyService):
        service_class = type("Legacy" + service_class.__name__, (LegacyService, service_class), {})
    return service_class(config, global_options, server, handler_class)
