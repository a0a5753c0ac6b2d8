"""Authentication for msgsrv's framed services: the keys file and an HMAC handshake.

The server greets with a fresh random nonce, the client answers with its key name
and HMAC-SHA256(secret, nonce and name), the server checks it in constant time.
Sans-IO: this module builds and checks header dicts; it never touches a socket and
never sleeps (the socket layer waits ``FAILURE_DELAY`` before a failure reply).
The wire format is specified in docs/PROTOCOL.rst ("Authentication").
"""

import hashlib
import hmac
import os
import re
import secrets
import shlex
import stat
from dataclasses import dataclass
from typing import Optional

from .errors import AuthError, ConfigError, ProtocolError, ServerError
from .frames import shown

SCHEME = "hmac-sha256"
FAILURE_DELAY = 0.5
MIN_SECRET_LENGTH = 16

_NAME_RULE = "key name must match [A-Za-z0-9_.@-]{1,64}"
_SECRET_RULE = "secret must be one token of at least %d characters" % MIN_SECRET_LENGTH
_NAME_RE = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")
_PROOF_CONTEXT = b"msgsrv-auth-v1\0"
_NONCE_BYTES = 32
# Unknown names are checked against this, so a miss costs the same HMAC as a hit.
_DUMMY_SECRET = secrets.token_bytes(32)
_RESERVED_HELLO_FIELDS = frozenset(("type", "auth", "nonce"))
_KEYS_FILE_HEADER = (
    "# msgsrv keys file: one 'NAME SECRET' line per client key.\n"
    "# NAME is the identity in logs and permissions; keep this file mode 0600.\n"
    "# Blank lines and lines starting with # are ignored.\n"
)


# --- the keys file ---------------------------------------------------------

def load_keys(path):
    """Read a keys file and return ``{name: secret_bytes}`` (secret = UTF-8 of the token).

    Raises ConfigError if the file is missing, unreadable, not a regular file,
    readable or writable by group or others, not UTF-8, defines a name twice or
    has a malformed line. Messages name the file, line and rule, never a secret.
    A file with no key lines gives an empty dict (nobody can authenticate).
    """
    path = os.fspath(path)
    keys, first_line = {}, {}
    for lineno, line in enumerate(_read_private_file(path).split("\n"), 1):
        entry = _parse_key_line(path, lineno, line)
        if entry is None:
            continue
        name, secret = entry
        if name in keys:
            rule = "duplicate key name %r (first defined on line %d)" % (name, first_line[name])
            raise _line_error(path, lineno, rule)
        keys[name], first_line[name] = secret.encode("utf-8"), lineno
    return keys


def ensure_keys_file(path, name="admin"):
    """Create a keys file holding one fresh key for ``name``, unless ``path`` exists.

    Missing parent directories are created with mode 0700; the file appears whole,
    with mode 0600 from its first byte. An existing path is never modified (its
    permissions are checked later by load_keys). Returns True if the file was
    created, False if it already existed. Raises ConfigError for an invalid name
    or when the directories or the file cannot be created.
    """
    path = os.fspath(path)
    text = _KEYS_FILE_HEADER + format_key_line(name, generate_secret()) + "\n"
    if os.path.lexists(path):
        return False
    try:
        _make_private_dirs(os.path.dirname(os.path.abspath(path)))
        return _create_exclusive(path, text)
    except OSError as exc:
        raise ConfigError("cannot create keys file %r: %s" % (path, exc.strerror or exc)) from None


def generate_secret():
    """Return a new random secret: 43 URL-safe characters (256 bits)."""
    return secrets.token_urlsafe(32)


def format_key_line(name, secret):
    """Return the keys-file line ``"NAME SECRET"`` (no newline).

    Raises ConfigError if the name or the secret breaks the keys-file rules.
    """
    problem = _name_problem(name) or _secret_problem(secret)
    if problem:
        raise ConfigError(problem)
    return "%s %s" % (name, secret)


def _read_private_file(path):
    fd = _open_keys_file(path)
    try:
        # Check the file we opened, not whatever the path may name a moment later.
        _check_private(path, os.fstat(fd))
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read()
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _line_error(path, data.count(b"\n", 0, exc.start) + 1, "not valid UTF-8") from None


def _open_keys_file(path):
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise ConfigError("keys file %r does not exist" % path) from None
    except OSError as exc:
        raise ConfigError("cannot open keys file %r: %s" % (path, exc.strerror)) from None


def _check_private(path, st):
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError("keys file %r is not a regular file" % path)
    if st.st_mode & 0o077:
        raise ConfigError(
            "keys file %r has mode %04o; it must not be readable or writable by group "
            "or others (fix: chmod 600 %s)" % (path, stat.S_IMODE(st.st_mode), shlex.quote(path)))


def _parse_key_line(path, lineno, line):
    """Return (name, secret) for a key line, None for a blank or comment line."""
    fields = line.split()
    if not fields or fields[0].startswith("#"):
        return None
    if len(fields) != 2:
        rule = "expected 'NAME SECRET' (2 fields, got %d)" % len(fields)
        raise _line_error(path, lineno, rule)
    problem = _name_problem(fields[0]) or _secret_problem(fields[1])
    if problem:
        raise _line_error(path, lineno, problem)
    return fields[0], fields[1]


def _name_problem(name):
    if isinstance(name, str) and _NAME_RE.fullmatch(name):
        return None
    return _NAME_RULE


def _secret_problem(secret):
    if isinstance(secret, str) and len(secret) >= MIN_SECRET_LENGTH and secret.split() == [secret]:
        return None
    return _SECRET_RULE


def _line_error(path, lineno, rule):
    return ConfigError("keys file %r, line %d: %s" % (path, lineno, rule))


def _make_private_dirs(directory):
    """Create ``directory`` and any missing ancestors, each with mode 0700."""
    missing = []
    while not os.path.isdir(directory):
        missing.append(directory)
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    for each in reversed(missing):
        try:
            os.mkdir(each, 0o700)
        except FileExistsError:
            if not os.path.isdir(each):
                raise


def _create_exclusive(path, text):
    """Write ``text`` to a private temp file, then hard-link it to ``path``.

    The link fails if ``path`` exists, so a racing creator never overwrites it,
    and a reader never sees a half-written file. Returns False on that race.
    """
    directory, base = os.path.split(path)
    tmp = os.path.join(directory, ".%s.%s.tmp" % (base, secrets.token_hex(6)))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)  # the umask may have dropped owner bits
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
    _fsync_directory(directory or ".")
    return True


def _fsync_directory(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- the handshake ---------------------------------------------------------

def compute_proof(secret, nonce, name):
    """Return the proof for ``name`` over ``nonce`` as 64 lowercase hex digits.

    proof = HMAC-SHA256(secret, b"msgsrv-auth-v1\\0" + nonce + b"\\0" + name).
    ``secret`` is bytes (a str counts as its UTF-8 bytes); ``nonce`` must be ASCII
    and ``name`` is UTF-8 encoded. Raises UnicodeEncodeError for a non-ASCII nonce.
    """
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    message = _PROOF_CONTEXT + nonce.encode("ascii") + b"\0" + name.encode("utf-8")
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def answer_hello(hello_header, name, secret):
    """Return the client's auth header answering the server's hello header.

    Raises ProtocolError("bad-hello", ...) if the hello is not a hello, offers
    another scheme, or its nonce is not 64 lowercase hex digits; ConfigError if
    ``name`` is not a valid key name.
    """
    nonce = _hello_nonce(hello_header)
    problem = _name_problem(name)
    if problem:
        raise ConfigError(problem)
    return {"type": "auth", "key": name, "proof": compute_proof(secret, nonce, name)}


def check_auth_reply(reply_header):
    """Return the key name the server confirmed in its reply to our auth header.

    Raises AuthError for an ``auth-failed`` error reply, ServerError for any other
    error reply, ProtocolError("bad-reply", ...) for anything else.
    """
    if isinstance(reply_header, dict) and reply_header.get("type") == "error":
        code, message = str(reply_header.get("code")), str(reply_header.get("message"))
        raise (AuthError if code == "auth-failed" else ServerError)(code, message)
    if (isinstance(reply_header, dict) and reply_header.get("type") == "authenticated"
            and isinstance(reply_header.get("key"), str)):
        return reply_header["key"]
    raise ProtocolError("bad-reply", "expected an authenticated or error header")


def _hello_nonce(hello):
    if not isinstance(hello, dict) or hello.get("type") != "hello":
        raise ProtocolError("bad-hello", "expected a hello header")
    if hello.get("auth") != SCHEME:
        raise ProtocolError("bad-hello", "server offers auth scheme %s, we speak %s"
                            % (shown(hello.get("auth")), SCHEME))
    nonce = hello.get("nonce")
    if not isinstance(nonce, str) or not _HEX64_RE.fullmatch(nonce):
        raise ProtocolError("bad-hello", "hello nonce must be 64 lowercase hex digits")
    return nonce


def _new_nonce():
    return secrets.token_bytes(_NONCE_BYTES).hex()


@dataclass(frozen=True)
class HandshakeResult:
    """What the server does after one auth header: send ``reply``, then go on.

    ``outcome`` is AUTHENTICATED (``identity`` is the key name), FAILED (the reply
    carries a new nonce for another try) or CLOSED (send the reply, then close).
    """

    AUTHENTICATED = "authenticated"
    FAILED = "failed"
    CLOSED = "closed"

    outcome: str
    reply: dict
    identity: Optional[str] = None


class ServerHandshake:
    """The server side of one connection's handshake, as a sans-IO state machine.

    ``keys`` is a ``{name: secret}`` dict or a zero-argument callable returning one;
    a callable is asked on every attempt, so a reload takes effect at once.
    ``extra`` adds fields (service name, version) to the hello header. Raises
    ValueError if max_failures < 1 or extra would replace type, auth or nonce.
    """

    def __init__(self, keys, *, max_failures=3, extra=None):
        if not isinstance(max_failures, int) or max_failures < 1:
            raise ValueError("max_failures must be an integer >= 1 (got %r)" % (max_failures,))
        extra = dict(extra or {})
        clash = sorted(_RESERVED_HELLO_FIELDS.intersection(extra))
        if clash:
            raise ValueError("extra hello fields may not replace %s" % ", ".join(clash))
        self._keys = keys if callable(keys) else (lambda: keys)
        self._max_failures = max_failures
        self._extra = extra
        self._nonce = _new_nonce()
        self._failures = 0
        self._identity = None
        self._closed = False

    @property
    def identity(self):
        """The authenticated key name, or None until authentication succeeds."""
        return self._identity

    @property
    def done(self):
        """True once authenticated or closed: no further auth header is accepted."""
        return self._identity is not None or self._closed

    def hello(self):
        """Return the hello header carrying the current nonce."""
        header = {"type": "hello", "auth": SCHEME, "nonce": self._nonce}
        header.update(self._extra)
        return header

    def receive(self, header):
        """Check one auth header from the client and return a HandshakeResult.

        Any malformed or wrong header is a failure reported in the result, never
        an exception. Raises RuntimeError only if called after ``done``.
        """
        if self.done:
            raise RuntimeError("handshake already finished")
        name = self._verify(header)
        if name is None:
            return self._fail()
        self._identity = name
        reply = {"type": "authenticated", "key": name}
        return HandshakeResult(HandshakeResult.AUTHENTICATED, reply, name)

    def _verify(self, header):
        """Return the key name that ``header`` proves against the current nonce, or None."""
        fields = _auth_fields(header)
        if fields is None:
            return None
        name, proof = fields
        secret = self._keys().get(name)
        expected = compute_proof(_DUMMY_SECRET if secret is None else secret, self._nonce, name)
        matched = hmac.compare_digest(expected, proof)
        return name if matched and secret is not None else None

    def _fail(self):
        # A new nonce on every failure: a proof captured earlier never verifies again.
        self._failures += 1
        self._nonce = _new_nonce()
        if self._failures >= self._max_failures:
            self._closed = True
            reply = _auth_failed("authentication failed; too many attempts")
            return HandshakeResult(HandshakeResult.CLOSED, reply)
        reply = dict(_auth_failed("authentication failed"), nonce=self._nonce)
        return HandshakeResult(HandshakeResult.FAILED, reply)


def _auth_fields(header):
    """Return (name, proof) from a well-formed auth header, or None."""
    if not isinstance(header, dict) or header.get("type") != "auth":
        return None
    name, proof = header.get("key"), header.get("proof")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        return None
    if not isinstance(proof, str) or not _HEX64_RE.fullmatch(proof):
        return None
    return name, proof


def _auth_failed(message):
    return {"type": "error", "code": "auth-failed", "message": message}


__all__ = [
    "SCHEME", "FAILURE_DELAY", "MIN_SECRET_LENGTH",
    "load_keys", "ensure_keys_file", "generate_secret", "format_key_line",
    "compute_proof", "answer_hello", "check_auth_reply",
    "HandshakeResult", "ServerHandshake",
]
