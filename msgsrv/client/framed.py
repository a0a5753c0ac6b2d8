"""FramedClient: the frame protocol and authentication over one blocking connection."""

import os

from .. import auth
from ..errors import ConfigError, ProtocolError
from ..protocol import DEFAULT_MAX_BODY, DEFAULT_MAX_HEADER
from ..stream import FrameStream, check_error
from .base import DEFAULT_TIMEOUT, Client, connect_tcp

ENV_KEY, ENV_SECRET, ENV_KEYS_FILE = "MSGSRV_KEY", "MSGSRV_SECRET", "MSGSRV_KEYS_FILE"


def resolve_credentials(key_name=None, secret=None, keys_file=None, environ=None):
    """Return ``(name, secret)`` or ``(None, None)`` for anonymous.

    Sources, first match wins: the arguments; ``keys_file`` (the named key, or
    the only key in it); the environment variables MSGSRV_KEY, MSGSRV_SECRET
    and MSGSRV_KEYS_FILE.  Raises ConfigError if a name has no secret.
    """
    environ = os.environ if environ is None else environ
    key_name = key_name or environ.get(ENV_KEY)
    if secret is None and keys_file is None and ENV_SECRET in environ:
        secret = environ[ENV_SECRET]
    keys_file = keys_file or (None if secret is not None else environ.get(ENV_KEYS_FILE))
    if secret is None and keys_file:
        keys = auth.load_keys(keys_file)
        if key_name is None and len(keys) == 1:
            key_name = next(iter(keys))
        if key_name not in keys:
            raise ConfigError("%s: no key named %r" % (keys_file, key_name))
        secret = keys[key_name]
    if key_name and secret is None:
        raise ConfigError("key %r given without a secret (use --keys-file or %s)"
                          % (key_name, ENV_SECRET))
    return (key_name, secret) if key_name else (None, None)


class FramedClient(Client):
    """A connection to a framed service: hello, optional authentication, requests.

    Raises ConnectionFailed, RequestTimeout, ProtocolError, and ServerError /
    AuthError for error frames (``busy`` on connect, ``auth-failed``...).
    The TLS options are those of :func:`msgsrv.client.base.connect_tcp`.
    """

    def __init__(self, host, port, key_name=None, secret=None, *, keys_file=None,
                 timeout=DEFAULT_TIMEOUT, max_header=DEFAULT_MAX_HEADER, max_body=DEFAULT_MAX_BODY,
                 tls=False, ca_file=None, client_cert=None, client_key=None):
        self.timeout = timeout
        self.sock = connect_tcp(host, port, timeout, tls=tls, ca_file=ca_file,
                                client_cert=client_cert, client_key=client_key)
        try:
            self.stream = FrameStream(self.sock, max_header=max_header, max_body=max_body)
            self.hello = self.recv()
            if self.hello.type != "hello":
                raise ProtocolError("bad-hello", "expected a hello frame, got %r" % self.hello.type)
            name, secret = resolve_credentials(key_name, secret, keys_file)
            self.identity = self._authenticate(name, secret) if name else None
        except BaseException:
            self.close()
            raise

    def _authenticate(self, name, secret):
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
