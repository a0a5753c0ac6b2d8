"""Blocking client library for msgsrv services (standard library only).

Every error is one of the :mod:`msgsrv.wire.errors` classes: ConnectionFailed,
RequestTimeout, ProtocolError, ServerError (AuthError).

Each service's client lives in its own package (``msgsrv.services.chat.client``
...), next to the protocol it speaks; this package re-exports them.  They are
imported on first use, so ``import msgsrv.client`` stays cheap and a service
client can build on :mod:`msgsrv.client.base` and :mod:`msgsrv.client.framed`
without an import cycle.  Nothing here imports server-side code.
"""

import importlib

from msgsrv.wire.errors import (AuthError, ConnectionFailed, MsgsrvError, ProtocolError,
                                RequestTimeout, ServerError)

# exported name -> the module that defines it
_CLIENTS = {
    "ChatClient": "msgsrv.services.chat.client",
    "CommandClient": "msgsrv.services.command.client",
    "Result": "msgsrv.services.command.client",
    "EchoClient": "msgsrv.services.echo.client",
    "FileClient": "msgsrv.services.files.client",
    "FileInfo": "msgsrv.services.files.client",
    "Transfer": "msgsrv.services.files.client",
    "StatusClient": "msgsrv.services.status.client",
    "Fleet": "msgsrv.client.fleet",
    "HostResult": "msgsrv.client.fleet",
}

__all__ = [
    "ChatClient", "EchoClient", "CommandClient", "Result", "FileClient", "FileInfo", "Transfer",
    "StatusClient", "Fleet", "HostResult", "MsgsrvError", "ConnectionFailed", "RequestTimeout",
    "ProtocolError", "ServerError", "AuthError",
]


def __getattr__(name):
    module = _CLIENTS.get(name)
    if module is None:
        raise AttributeError("module %r has no attribute %r" % (__name__, name))
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_CLIENTS))
