"""Blocking client library for msgsrv services (standard library only).

Every error is one of the :mod:`msgsrv.errors` classes: ConnectionFailed,
RequestTimeout, ProtocolError, ServerError (AuthError).
"""

from ..errors import (AuthError, ConnectionFailed, MsgsrvError, ProtocolError, RequestTimeout,
                      ServerError)
from .chat import ChatClient
from .command import CommandClient, Result
from .echo import EchoClient
from .files import FileClient, FileInfo, Transfer
from .fleet import Fleet, HostResult

__all__ = [
    "ChatClient", "EchoClient", "CommandClient", "Result", "FileClient", "FileInfo", "Transfer",
    "Fleet", "HostResult",
    "MsgsrvError", "ConnectionFailed", "RequestTimeout", "ProtocolError", "ServerError",
    "AuthError",
]
