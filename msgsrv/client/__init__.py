"""Blocking client library for msgsrv services (standard library only).

Every error is one of the :mod:`msgsrv.errors` classes: ConnectionFailed,
RequestTimeout, ProtocolError, ServerError (AuthError).
"""

from ..errors import (AuthError, ConnectionFailed, MsgsrvError, ProtocolError, RequestTimeout,
                      ServerError)
from .command import CommandClient, Result
from .echo import EchoClient

__all__ = [
    "EchoClient", "CommandClient", "Result",
    "MsgsrvError", "ConnectionFailed", "RequestTimeout", "ProtocolError", "ServerError",
    "AuthError",
]
