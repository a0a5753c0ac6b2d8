"""FramedClient: the frame protocol and authentication over one blocking connection."""

import os
import time
from typing import NamedTuple

from msgsrv.wire import auth
from msgsrv.wire.errors import ConfigError, ConnectionFailed, ProtocolError, RequestTimeout
from msgsrv.wire.frame_stream import RECV_SIZE, FrameStream, check_error, translate_errors
from msgsrv.wire.frames import DEFAULT_MAX_BODY, DEFAULT_MAX_HEADER, NEED_DATA
from .base import (DEFAULT_HELLO_TIMEOUT, DEFAULT_TIMEOUT, Client, connect_tcp, foreign_greeting,
                   hello_wait, silent_peer)

ENV_KEY, ENV_SECRET, ENV_KEYS_FILE = "MSGSRV_KEY", "MSGSRV_SECRET", "MSGSRV_KEYS_FILE"
_PROTOCOL = "the msgsrv frame protocol"
_KEPT_GREETING = 160         # bytes of the first ones kept to quote in an error
_SHOWN_KEYS = 8              # key names listed in an error


class OptionNames(NamedTuple):
    """How error messages name the credential options (Python keywords or CLI flags)."""

    key: str
    secret: str
    keys_file: str


PYTHON_NAMES = OptionNames("key_name=", "secret=", "keys_file=")
CLI_NAMES = OptionNames("--key", "MSGSRV_SECRET", "--keys-file")


def resolve_credentials(key_name=None, secret=None, keys_file=None, environ=None, *,
                        names=PYTHON_NAMES):
    """Return ``(name, secret)`` or ``(None, None)`` for anonymous.

    Sources, first match wins: the arguments; ``keys_file`` (the named key, or
    the only key in it); the environment variables MSGSRV_KEY, MSGSRV_SECRET
    and MSGSRV_KEYS_FILE.  Raises ConfigError if a name has no secret, or if
    the keys file holds several keys and none is named; messages name the
    options as ``names`` spells them.
    """
    environ = os.environ if environ is None else environ
    key_name = key_name or environ.get(ENV_KEY)
    if secret is None and keys_file is None and ENV_SECRET in environ:
        secret = environ[ENV_SECRET]
    keys_file = keys_file or (None if secret is not None else environ.get(ENV_KEYS_FILE))
    if secret is None and keys_file:
        key_name, secret = _key_from_file(keys_file, key_name, names)
    if key_name and secret is None:
        raise ConfigError("key %r given without a secret: give %s (or %s, or %s)"
                          % (key_name, names.keys_file, ENV_KEYS_FILE, names.secret))
    return (key_name, secret) if key_name else (None, None)


def _key_from_file(path, key_name, names):
    keys = auth.load_keys(path)
    held = ", ".join(sorted(keys)[:_SHOWN_KEYS]) + (", ..." if len(keys) > _SHOWN_KEYS else "")
    if not keys:
        raise ConfigError("the keys file %s holds no keys" % path)
    if key_name is None:
        if len(keys) > 1:
            raise ConfigError("the keys file %s holds several keys (%s): choose one with %s "
                              "(or %s)" % (path, held, names.key, ENV_KEY))
        key_name = next(iter(keys))
    if key_name not in keys:
        raise ConfigError("the keys file %s has no key named %r (it holds: %s)"
                          % (path, key_name, held))
    return key_name, keys[key_name]


def open_framed(host, port, timeout=DEFAULT_TIMEOUT, *, hello_timeout=DEFAULT_HELLO_TIMEOUT,
                max_header=DEFAULT_MAX_HEADER, max_body=DEFAULT_MAX_BODY, **tls):
    """Connect and read the server's hello; return ``(sock, stream, hello)``.

    ``tls`` are the TLS options of :func:`msgsrv.client.base.connect_tcp`.
    A peer that sends something other than a msgsrv frame raises
    ``ProtocolError("not-msgsrv")`` as soon as its first bytes show it; one
    that sends nothing for ``hello_timeout`` seconds (at most ``timeout``)
    raises RequestTimeout.  An error frame instead of the hello (``busy``...)
    raises ServerError.
    """
    sock = connect_tcp(host, port, timeout, **tls)
    try:
        stream = FrameStream(sock, max_header=max_header, max_body=max_body)
        reader = _HelloReader(sock, stream.decoder, "%s:%d" % (host, port))
        hello = check_error(reader.read(hello_wait(hello_timeout, timeout)))
        if hello.type != "hello":
            raise ProtocolError("bad-hello", "expected a hello frame, got %r" % hello.type)
        sock.settimeout(timeout)
    except BaseException:
        sock.close()
        raise
    return sock, stream, hello


class _HelloReader:
    """Reads the first frame, keeping what arrived to show when it is not msgsrv."""

    def __init__(self, sock, decoder, where):
        self.sock = sock
        self.decoder = decoder
        self.where = where
        self.seen = b""

    def read(self, wait):
        """The first frame, within ``wait`` seconds (None: the socket's timeout)."""
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            try:
                message = self.decoder.next_message()
            except ProtocolError:
                raise self._foreign() from None
            if message is not NEED_DATA:
                if not isinstance(message.type, str):
                    raise self._foreign()
                return message
            self._receive(deadline, wait)

    def _receive(self, deadline, wait):
        if deadline is not None:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            with translate_errors("receive"):
                data = self.sock.recv(RECV_SIZE)
        except RequestTimeout:
            if deadline is None:
                raise
            raise silent_peer(self.where, _PROTOCOL, self.seen, wait) from None
        if not data:
            if self.seen:
                raise self._foreign()
            raise ConnectionFailed("%s closed the connection before sending a hello"
                                   % self.where)
        if len(self.seen) < _KEPT_GREETING:
            self.seen += data[:_KEPT_GREETING]
        try:
            self.decoder.feed(data)
        except ProtocolError:
            raise self._foreign() from None

    def _foreign(self):
        return foreign_greeting(self.where, _PROTOCOL, self.seen)


class FramedClient(Client):
    """A connection to a framed service: hello, optional authentication, requests.

    Raises ConnectionFailed, RequestTimeout, ProtocolError, and ServerError /
    AuthError for error frames (``busy`` on connect, ``auth-failed``...).
    The TLS options are those of :func:`msgsrv.client.base.connect_tcp`;
    ``hello_timeout`` is how long a server may stay silent after connecting
    (see :func:`open_framed`).
    """

    def __init__(self, host, port, key_name=None, secret=None, *, keys_file=None,
                 timeout=DEFAULT_TIMEOUT, max_header=DEFAULT_MAX_HEADER, max_body=DEFAULT_MAX_BODY,
                 tls=False, ca_file=None, client_cert=None, client_key=None,
                 hello_timeout=DEFAULT_HELLO_TIMEOUT):
        self.timeout = timeout
        self.where = "%s:%d" % (host, port)
        self.sock, self.stream, self.hello = open_framed(
            host, port, timeout, hello_timeout=hello_timeout, max_header=max_header,
            max_body=max_body, tls=tls, ca_file=ca_file, client_cert=client_cert,
            client_key=client_key)
        try:
            name, secret = resolve_credentials(key_name, secret, keys_file)
            self.identity = self._authenticate(name, secret) if name else None
        except BaseException:
            self.close()
            raise

    def _authenticate(self, name, secret):
        if "auth" not in self.hello.header:
            raise ProtocolError("bad-hello", "%s does not authenticate clients (its hello offers "
                                             "no auth scheme): is it a status service?"
                                % self.where)
        self.stream.send(auth.answer_hello(self.hello.header, name, secret))
        return auth.check_auth_reply(self.stream.recv().header)

    def send(self, header, body=b""):
        """Send one frame."""
        self.stream.send(header, body)

    def recv(self):
        """Receive one frame; error frames raise ServerError (AuthError for auth-failed)."""
        return check_error(self.stream.recv())

    def request(self, header, body=b""):
        """Send one request and return its reply (raising on an error reply)."""
        self.send(header, body)
        return self.recv()
