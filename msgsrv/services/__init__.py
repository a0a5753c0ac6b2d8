"""The built-in services, one package each, and how a handler name is resolved.

:data:`BUILTIN` maps each built-in name to its handler classes; any other name
is a plugin, ``package.module:Class`` (docs/PLUGINS.rst).  Each built-in
service is written the way a plugin is, on :mod:`msgsrv.plugin`.

A handler is one of:

* a :class:`msgsrv.net.handler.Handler` subclass: served by the selector
  and worker pool (TCP only; idle connections cost no thread);
* a :class:`msgsrv.net.handler.DatagramHandler` subclass (UDP only);
* any plain ``socketserver.BaseRequestHandler`` subclass: served
  thread-per-connection on TCP, inline per datagram on UDP.

A handler class may declare ``settings``: a tuple of
:class:`msgsrv.ops.settings.Setting` for its own keys; ``requires``, the modules
it needs beyond the standard library, and ``extra``, the ``pip install
msgsrv[EXTRA]`` that brings them (its module must import without them);
``siblings``, ``(key, service class)`` pairs: settings naming another
service of the same file that must have that kind of service object.
"""

import importlib
import socketserver

# name -> transport -> "module:Class"; imported only when a config uses it.
BUILTIN = {
    "echo": {"tcp": "msgsrv.services.echo.handler:EchoHandler",
             "udp": "msgsrv.services.echo.handler:EchoDatagramHandler"},
    "chat": {"tcp": "msgsrv.services.chat.handler:ChatHandler"},
    "command": {"tcp": "msgsrv.services.command.handler:CommandHandler"},
    "file": {"tcp": "msgsrv.services.files.handler:FileHandler"},
    "status": {"tcp": "msgsrv.services.status.handler:StatusHandler"},
    "web": {"tcp": "msgsrv.services.web.handler:WebHandler"},
}


def resolve(spec, transport):
    """Return the handler class for ``spec`` on ``transport``.

    Raises ValueError (unknown name, wrong transport, not a handler class) or
    ImportError (the plugin module cannot be imported).
    """
    if ":" not in spec:
        by_transport = BUILTIN.get(spec)
        if by_transport is None:
            raise ValueError("must be one of %s or package.module:Class (got %r)"
                             % (", ".join(sorted(BUILTIN)), spec))
        if transport not in by_transport:
            raise ValueError("%r does not support transport %s (supports: %s)"
                             % (spec, transport, ", ".join(by_transport)))
        spec = by_transport[transport]
    cls = _import(spec)
    _check_transport(spec, cls, transport)
    return cls


def _import(spec):
    module_name, _, class_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError("cannot import %r (%s)" % (module_name, exc)) from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise ValueError("%r has no class %r" % (module_name, class_name))
    return cls


def supported_transports(cls):
    """The transports a handler class can serve."""
    from msgsrv.net.handler import DatagramHandler, Handler
    if issubclass(cls, Handler):
        return ("tcp",)
    if issubclass(cls, DatagramHandler):
        return ("udp",)
    if issubclass(cls, socketserver.BaseRequestHandler):
        return ("tcp", "udp")
    return ()


def _check_transport(spec, cls, transport):
    transports = supported_transports(cls)
    if not transports:
        raise ValueError("%r is not a msgsrv Handler, DatagramHandler or "
                         "socketserver.BaseRequestHandler subclass" % spec)
    if transport not in transports:
        raise ValueError("%r does not support transport %s (supports: %s)"
                         % (spec, transport, ", ".join(transports)))


def missing_requirement(cls):
    """Why ``cls`` cannot run here (``needs pip install msgsrv[web]``), or None when every
    module it ``requires`` imports."""
    for name in getattr(cls, "requires", ()):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            extra = getattr(cls, "extra", None)
            if extra:
                return "needs pip install msgsrv[%s]" % extra
            return "needs the Python module %s (%s)" % (name, exc)
    return None


def declared_settings(cls):
    """The handler's own settings (``cls.settings``), or an empty tuple."""
    return tuple(getattr(cls, "settings", ()))
