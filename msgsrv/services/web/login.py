"""Key login for the web console: the HMAC challenge of msgsrv.wire.auth, then a session cookie.

The login page asks for a challenge (a fresh nonce, single use, valid
``CHALLENGE_SECONDS``), computes ``proof = HMAC-SHA256(secret, ...)`` in the
browser exactly as msgsrv.wire.auth.compute_proof does, and posts the key name,
the nonce and the proof: the secret never crosses the wire.  A good proof
opens a session: a random token in an ``HttpOnly; SameSite=Strict`` cookie
(``Secure`` over TLS), valid ``session_lifetime`` seconds.  Scripts (a
Prometheus scraper) may send HTTP Basic credentials (key name, secret)
instead; over anything but loopback, only with TLS.  No sockets here.
"""

import base64
import binascii
import collections
import hmac
import secrets
import threading
import time

from msgsrv.wire import auth

CHALLENGE_SECONDS = 60.0
MAX_CHALLENGES = 1024  # outstanding at once; the oldest is dropped first
COOKIE = "msgsrv_session"
_DUMMY_SECRET = secrets.token_bytes(32)  # unknown names cost the same HMAC as known ones


class Logins:
    """The challenges and sessions of one web service; thread-safe and bounded.

    ``keys()`` returns the current ``{name: secret}`` (a reload swaps it);
    ``lifetime`` is the seconds a session lasts, ``max_sessions`` how many are
    kept (the oldest goes first).
    """

    def __init__(self, keys, lifetime, max_sessions, clock=time.monotonic):
        self._keys = keys
        self.lifetime = lifetime
        self.max_sessions = max_sessions
        self._clock = clock
        self._lock = threading.Lock()
        self._challenges = collections.OrderedDict()  # nonce -> expiry
        self._sessions = collections.OrderedDict()  # token -> (name, expiry)

    def tune(self, lifetime, max_sessions):
        """Apply reloaded limits (sessions opened before keep their expiry)."""
        with self._lock:
            self.lifetime, self.max_sessions = lifetime, max_sessions
            self._trim(self._sessions, max_sessions)

    def challenge(self):
        """A fresh nonce (64 hex digits) to prove a key over."""
        nonce = secrets.token_hex(32)
        with self._lock:
            self._challenges[nonce] = self._clock() + CHALLENGE_SECONDS
            self._trim(self._challenges, MAX_CHALLENGES)
        return nonce

    def login(self, name, nonce, proof):
        """A session token when ``proof`` proves key ``name`` over an outstanding ``nonce``,
        else None.  The nonce is used up either way."""
        with self._lock:
            expiry = self._challenges.pop(nonce, None) if isinstance(nonce, str) else None
        if not (isinstance(name, str) and isinstance(proof, str)) or expiry is None \
                or expiry < self._clock() or not self._proves(name, nonce, proof):
            return None
        return self._open(name)

    def basic(self, header):
        """The key name proved by an ``Authorization: Basic`` header value, or None."""
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            name, sep, secret = base64.b64decode(encoded.strip(), validate=True).decode(
                "utf-8").partition(":")
        except (binascii.Error, ValueError):
            return None
        known = self._keys().get(name)
        matched = hmac.compare_digest(known or _DUMMY_SECRET, secret.encode("utf-8"))
        return name if sep and matched and known is not None else None

    def _proves(self, name, nonce, proof):
        known = self._keys().get(name)
        try:
            expected = auth.compute_proof(known or _DUMMY_SECRET, nonce, name)
        except UnicodeEncodeError:
            return False
        return hmac.compare_digest(expected, proof.lower()) and known is not None

    def _open(self, name):
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._sessions[token] = (name, self._clock() + self.lifetime)
            self._trim(self._sessions, self.max_sessions)
        return token

    def identity(self, token):
        """The key name of the session ``token``, or None (unknown or expired)."""
        with self._lock:
            entry = self._sessions.get(token)
            if entry is None:
                return None
            if entry[1] < self._clock():
                del self._sessions[token]
                return None
            return entry[0]

    def logout(self, token):
        """End the session ``token`` (no effect if unknown)."""
        with self._lock:
            self._sessions.pop(token, None)

    @property
    def session_count(self):
        """Sessions kept (some may have expired unnoticed)."""
        with self._lock:
            return len(self._sessions)

    def _trim(self, table, limit):
        now = self._clock()
        for key in [key for key, value in table.items()
                    if (value[1] if isinstance(value, tuple) else value) < now]:
            del table[key]
        while len(table) > limit:
            table.popitem(last=False)


def cookie_token(header):
    """The session token in a ``Cookie`` header value, or None."""
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE and value:
            return value
    return None


def set_cookie(token, lifetime, secure):
    """The ``Set-Cookie`` value opening (or, with ``token`` None, ending) a session."""
    attributes = "Path=/; HttpOnly; SameSite=Strict" + ("; Secure" if secure else "")
    if token is None:
        return "%s=; Max-Age=0; %s" % (COOKIE, attributes)
    return "%s=%s; Max-Age=%d; %s" % (COOKIE, token, int(lifetime), attributes)
