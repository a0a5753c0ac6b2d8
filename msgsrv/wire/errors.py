"""The msgsrv exception tree: one base class, a few leaves.

Wire-facing errors carry a short, stable ``code`` (see docs/PROTOCOL.rst) that
travels in error frames; the human sentence travels next to it.
"""


class MsgsrvError(Exception):
    """Base class of every error msgsrv raises on purpose."""

    code = "error"


class ConfigError(MsgsrvError, ValueError):
    """A configuration file or value breaks a declared rule."""

    code = "config"


class CheckFailed(ConfigError):
    """Start-up checks failed; ``problems`` lists every one (one line each)."""

    def __init__(self, problems):
        super().__init__("\n".join(problems))
        self.problems = list(problems)


class ProtocolError(MsgsrvError, ValueError):
    """The peer sent bytes that break the wire protocol."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


class ServiceBusy(ProtocolError):
    """A limit on concurrent work is reached: the request is refused with ``busy`` at once."""

    def __init__(self, message):
        super().__init__("busy", message)


class TableFull(ServiceBusy):
    """A shared table of the worker processes has no room for one more entry."""


class ServerError(MsgsrvError):
    """The server answered a request with an error frame or line."""

    def __init__(self, code, message):
        super().__init__("%s: %s" % (code, message))
        self.code = code
        self.message = message


class AuthError(ServerError):
    """The server refused our credentials (or we could not present any)."""


class ConnectionFailed(MsgsrvError, ConnectionError):
    """Could not connect, or the peer closed or reset the connection."""

    code = "closed"


class RequestTimeout(MsgsrvError, TimeoutError):
    """An operation did not complete within its timeout."""

    code = "timeout"


class TooSlow(RequestTimeout):
    """A transfer moved fewer bytes than its minimum rate over the rate window.

    ``receiving`` tells whether the peer was sending (it can still read an
    error frame) or receiving (raw data was flowing to it).
    """

    code = "too-slow"

    def __init__(self, message, receiving=False):
        super().__init__(message)
        self.message = message
        self.receiving = receiving


class AlreadyRunning(MsgsrvError, OSError):
    """Another daemon holds the pidfile lock."""

    code = "running"


__all__ = [
    "MsgsrvError", "ConfigError", "CheckFailed", "ProtocolError", "ServerError", "AuthError",
    "ServiceBusy", "TableFull", "ConnectionFailed", "RequestTimeout", "TooSlow", "AlreadyRunning",
]
