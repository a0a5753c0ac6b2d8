"""Blocking client library for msgsrv services (standard library only).

Every error is one of the :mod:`msgsrv.errors` classes: ConnectionFailed,
RequestTimeout, ProtocolError, ServerError (AuthError).
"""

from ..errors import (AuthError, ConnectionFailed, MsgsrvError, ProtocolError, RequestTimeout,
                      ServerError)
from .chat import ChatClient
from .echo import EchoClient

__all__ = [
    "ChatClient", "EchoClient",
    "MsgsrvError", "ConnectionFailed", "RequestTimeout", "ProtocolError", "ServerError",
    "AuthError",
]
