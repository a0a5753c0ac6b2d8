"""Where a chat service keeps its state: the ``backend`` setting and its companions.

``backend = memory`` (the default) keeps rooms and nicknames in the process;
``backend = redis://HOST:PORT/DB`` (``rediss://`` for TLS) shares them with
every daemon using the same Redis (or Valkey) and key prefix, through
:mod:`msgsrv.services.chat.redis_store`.  This module only parses and
checks: the URL (a password in it is refused, so that it never sits in the
configuration text or a log line), where the password comes from (a file or
an environment variable), and that the optional ``redis`` package is there.
It imports nothing outside the standard library.
"""

import importlib
import os
import re
import stat
import urllib.parse
from dataclasses import dataclass
from typing import Optional

from ...wire.errors import ConfigError
from ...ops.settings import SecretError, Setting, seconds, size, text

__all__ = ["Backend", "backend", "SETTINGS", "check", "redis_password", "key_prefix"]

DEFAULT_PORT = 6379
_PASSWORD_HELP = ("put it in a file named by redis_password_file, or in an environment "
                  "variable named by redis_password_env")


@dataclass(frozen=True)
class Backend:
    """A parsed ``backend`` value: ``kind`` is ``memory`` or ``redis``."""

    kind: str
    host: Optional[str] = None
    port: int = DEFAULT_PORT
    db: int = 0
    tls: bool = False
    username: Optional[str] = None

    @property
    def shared(self):
        """True for a backend shared between processes (Redis)."""
        return self.kind == "redis"

    def __str__(self):
        if self.kind == "memory":
            return "memory"
        host = "[%s]" % self.host if ":" in self.host else self.host
        user = urllib.parse.quote(self.username, safe="") + "@" if self.username else ""
        return "%s://%s%s:%d/%d" % ("rediss" if self.tls else "redis", user, host, self.port,
                                    self.db)


MEMORY = Backend("memory")


def backend(value):
    """Parser for ``backend``: ``memory``, or ``redis://[USER@]HOST[:PORT][/DB]`` / ``rediss://``.

    Raises ValueError naming the rule; a password in the URL raises
    :class:`~msgsrv.ops.settings.SecretError`, whose message shows the URL without it.
    """
    value = value.strip()
    if value.lower() == "memory":
        return MEMORY
    parts = urllib.parse.urlsplit(value)
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss"):
        raise ValueError("must be memory, redis://HOST:PORT/DB or rediss://HOST:PORT/DB")
    if parts.password is not None:
        shown = value.replace(":" + parts.password + "@", ":***@", 1)
        raise SecretError("must not hold a password (%s)" % _PASSWORD_HELP, shown)
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or a fragment (?... or #...)")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("must have a port in 1..65535") from None
    host = parts.hostname
    if not host or not re.fullmatch(r"[A-Za-z0-9.:_-]+", host):
        raise ValueError("must name a host: redis://HOST:PORT/DB")
    db = parts.path.lstrip("/") or "0"
    if not re.fullmatch(r"\d{1,5}", db) or "/" in parts.path.lstrip("/"):
        raise ValueError("must end with a database number: redis://HOST:PORT/DB")
    username = urllib.parse.unquote(parts.username) if parts.username else None
    return Backend("redis", host, port or DEFAULT_PORT, int(db), scheme == "rediss", username)


def _env_name(value):
    value = value.strip()
    if value and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise ValueError("must be an environment variable name (letters, digits, _)")
    return value


def _prefix(value):
    value = value.strip()
    if value and not re.fullmatch(r"[A-Za-z0-9:._-]{1,100}", value):
        raise ValueError("must be 1..100 letters, digits and ':._-'")
    return value


SETTINGS = (
    Setting("backend", backend, "memory",
            "Where rooms, nicknames and history live: memory (this process) or "
            "redis://HOST:PORT/DB (rediss:// for TLS), shared by every daemon using the same "
            "Redis and redis_prefix (docs/CHAT.rst, \"Chat across daemons\"); redis needs "
            "pip install msgsrv[redis]. A password in the URL is refused."),
    Setting("redis_password_file", text, "",
            "File holding the Redis password (its first line); must not be readable by "
            "others. Empty: no password (or redis_password_env)."),
    Setting("redis_password_env", _env_name, "",
            "Name of an environment variable holding the Redis password (instead of "
            "redis_password_file)."),
    Setting("redis_ca_file", text, "",
            "rediss:// only: CA certificates (PEM) that sign the Redis server's certificate "
            "(empty: the system's)."),
    Setting("redis_prefix", _prefix, "",
            "Prefix of the Redis keys and channels (empty: msgsrv:chat:SERVICE); daemons "
            "with the same prefix share their rooms."),
    Setting("redis_timeout", seconds(0.1, 60), "2",
            "Seconds any Redis call may take (connecting included); past it the backend is "
            "unavailable and clients get ! unavailable until it answers again."),
    Setting("presence_ttl", seconds(1, 60), "10",
            "Seconds this daemon's presence lasts in Redis without a heartbeat (sent every "
            "third of it): the members of a daemon that died are announced as quit, and "
            "their nicks freed, within 4/3 of this."),
    Setting("redis_queue", size(65536, 1 << 30), "4M",
            "Bytes of chat events waiting to be written to Redis; past it a message is "
            "refused with ! busy."),
)

#: Settings that cannot change on a running service.
FIXED_KEYS = tuple(setting.name for setting in SETTINGS)


def key_prefix(options, service_name):
    """The prefix of every Redis key and channel of this service."""
    return options["redis_prefix"] or "msgsrv:chat:%s" % service_name


def check(options, where, environ=None):
    """Check what a start would need for ``options``' backend, changing nothing.

    Raises ConfigError (prefixed with ``where``) when the ``redis`` package is
    missing, the password cannot be read, or the CA file is not readable.
    """
    if not options["backend"].shared:
        return
    try:
        importlib.import_module("redis")  # only whether it is installed
    except ImportError:
        raise ConfigError("%s backend %s needs the Python package redis: pip install "
                          "msgsrv[redis]" % (where, options["backend"])) from None
    redis_password(options, where, environ)
    ca_file = options["redis_ca_file"]
    if ca_file and not os.access(ca_file, os.R_OK):
        raise ConfigError("%s redis_ca_file %s: not a readable file" % (where, ca_file))


def redis_password(options, where, environ=None):
    """The Redis password from ``redis_password_file`` or ``redis_password_env`` (or None).

    Raises ConfigError naming the key: both given, a file that cannot be read,
    is readable by others or is empty, a variable that is not set.
    """
    path, name = options["redis_password_file"], options["redis_password_env"]
    if path and name:
        raise ConfigError("%s redis_password_file and redis_password_env: give one of them"
                          % where)
    if name:
        value = (os.environ if environ is None else environ).get(name, "")
        if not value:
            raise ConfigError("%s redis_password_env %s: the environment variable is not set"
                              % (where, name))
        return value
    return _password_file(path, where) if path else None


def _password_file(path, where):
    try:
        with open(path, encoding="utf-8") as stream:
            mode = os.fstat(stream.fileno()).st_mode
            line = stream.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("%s redis_password_file %s: cannot read (%s)"
                          % (where, path, getattr(exc, "strerror", None) or exc)) from None
    if mode & 0o007:
        raise ConfigError("%s redis_password_file %s has mode %04o; it must not be readable "
                          "by others (fix: chmod o-rwx %s)" % (where, path, stat.S_IMODE(mode),
                                                               path))
    if not line:
        raise ConfigError("%s redis_password_file %s: the first line is empty" % (where, path))
    return line
