"""The stable import point for plugin authors: everything a service needs, by one name.

A plugin is a handler class named in a service section as
``handler = package.module:Class`` (docs/PLUGINS.rst).  Import what it builds
on from here, not from the modules that define it: those may move, these
names stay.  The built-in services (:mod:`msgsrv.services`) import from here
too, so each is written the way a plugin would be.
"""

from msgsrv.net.access import TokenBucket
from msgsrv.net.authenticated import AuthedService, AuthenticatedHandler
from msgsrv.net.handler import DatagramHandler, FramedHandler, Handler
from msgsrv.net.peer import format_peer
from msgsrv.net.service import Service, chain
from msgsrv.ops.settings import (Setting, boolean, choice, integer, networks, octal_mode, seconds,
                                 size, text, word_list)
from msgsrv.wire.errors import (ConfigError, ConnectionFailed, MsgsrvError, ProtocolError,
                                RequestTimeout, ServiceBusy, TooSlow)
from msgsrv.wire.frames import REPLY_LIMITS, encode, shown

__all__ = [
    # handlers: one per connection (pooled, framed, authenticated) or per datagram
    "Handler", "FramedHandler", "AuthenticatedHandler", "DatagramHandler",
    # the service object: state one [service:NAME] keeps across connections and reloads
    "Service", "AuthedService", "chain",
    # declared settings and their parsers
    "Setting", "boolean", "choice", "integer", "networks", "octal_mode", "seconds", "size",
    "text", "word_list",
    # errors: ProtocolError(code, text) becomes an error reply; ConfigError refuses a config
    "MsgsrvError", "ConfigError", "ProtocolError", "ServiceBusy", "RequestTimeout", "TooSlow",
    "ConnectionFailed",
    # flood control: TokenBucket(rate, burst).take() -> 0.0 or seconds to wait
    "TokenBucket",
    # frames (REPLY_LIMITS: encode() limits for frames a server builds) and text
    "encode", "REPLY_LIMITS", "shown", "format_peer",
]
