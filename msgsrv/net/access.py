"""Who may connect: allow/deny address rules, a per-address connection rate limit
and a per-source penalty for failed authentications; the token bucket they,
the UDP reply limit and the chat's flood control share.

All are pure (no sockets, an injectable clock) and answer for one client
address at a time; :class:`msgsrv.net.server.TCPService` consults them in its
admission checks before a connection gets a handler.
"""

import collections
import ipaddress
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Tuple

from msgsrv.ops import shared
from msgsrv.wire.errors import TableFull

log = logging.getLogger("msgsrv.access")


def client_address(text):
    """The ``ipaddress`` object for a peer address string (IPv4-mapped IPv6 as IPv4).

    Raises ValueError for text that is not an IP address.
    """
    address = ipaddress.ip_address(text.split("%", 1)[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


class TokenBucket:
    """Flood control: ``burst`` takes at once, refilled at ``rate`` tokens per second.

    Raises ValueError unless ``rate`` is a positive finite number and
    ``burst`` is at least 1. ``clock`` returns seconds (monotonic).
    """

    # Float refills can land a hair under a whole token after an exact wait.
    _EPSILON = 1e-9

    def __init__(self, rate, burst, clock=time.monotonic):
        if not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0):
            raise ValueError("'rate' must be a positive number of tokens per second "
                             "(got %r)" % (rate,))
        if not (isinstance(burst, (int, float)) and math.isfinite(burst) and burst >= 1):
            raise ValueError("'burst' must be a number >= 1 (got %r)" % (burst,))
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()

    def take(self):
        """Take one token and return 0.0, or take none and return the seconds until one is due."""
        self._tokens, self._stamp, wait = bucket_take(self._tokens, self._stamp, self._clock(),
                                                      self.rate, self.burst)
        return wait


def bucket_take(tokens, stamp, now, rate, burst):
    """One take from a bucket that held ``tokens`` at time ``stamp``, refilled at ``rate``
    per second up to ``burst``: ``(tokens, stamp, wait)`` after it, ``wait`` 0.0 when
    a token was taken, else the seconds until one is due (nothing taken)."""
    if now > stamp:  # no min()/max() calls: this runs per datagram
        tokens += (now - stamp) * rate
        if tokens > burst:
            tokens = burst
        stamp = now
    if tokens >= 1 - TokenBucket._EPSILON:
        return (tokens - 1 if tokens > 1 else 0.0), stamp, 0.0
    return tokens, stamp, (1 - tokens) / rate


class AccessRules:
    """Allow and deny lists of networks: deny wins; each non-empty allow list must match.

    ``allow_lists`` holds one list per level (global, service), so a service
    can narrow what the global list allows but never widen it.
    """

    def __init__(self, allow_lists=(), deny=()):
        self.allow_lists = tuple(tuple(networks) for networks in allow_lists if networks)
        self.deny = tuple(deny)

    @classmethod
    def from_options(cls, service_options, global_options=None):
        """Rules from a service's ``allow``/``deny`` plus the global ones (if given)."""
        global_options = global_options or {}
        return cls((global_options.get("allow", ()), service_options.get("allow", ())),
                   tuple(global_options.get("deny", ())) + tuple(service_options.get("deny", ())))

    def __bool__(self):
        return bool(self.allow_lists or self.deny)

    def refusal(self, ip):
        """None if ``ip`` (a string) may connect, else the reason it may not."""
        try:
            address = client_address(ip)
        except ValueError:
            return "not an IP address"
        for network in self.deny:
            if address in network:
                return "address is in deny %s" % network
        for networks in self.allow_lists:
            if not any(address in network for network in networks):
                return "address is not in allow"
        return None


class RateLimiter:
    """At most ``rate.count`` new connections per ``rate.per`` seconds from one address.

    An address over the limit is refused for ``penalty`` seconds (xinetd's
    ``cps``, but per address rather than for the whole service).  Memory
    stays bounded: addresses quiet for a whole window are forgotten.  The
    buckets live in ``store`` (a :class:`msgsrv.ops.shared.LocalStore` by
    default; shared by the worker processes of one daemon when given theirs).
    """

    def __init__(self, rate, penalty, clock=time.monotonic, store=None):
        self.rate = rate
        self.penalty = penalty
        self._clock = clock
        self._store = store if store is not None else shared.LocalStore()
        self._next_prune = 1024
        self._full_warned = False

    def check(self, ip):
        """Count one connection from ``ip``; return None if allowed.

        Otherwise return ``(seconds_left, started)``: ``started`` is True only
        for the connection that began the penalty (log that one, not the flood).
        """
        key = ("ip", ip)
        with self._store.locked():
            now = self._clock()
            record = self._store.get(key)
            if record is None:
                tokens, stamp, until = float(self.rate.count), now, 0.0
            else:
                tokens, stamp, until = record[:3]
                if now < until:
                    return (until - now, False)
            tokens, stamp, wait = bucket_take(tokens, stamp, now, self.rate.count / self.rate.per,
                                              self.rate.count)
            verdict = None if wait == 0.0 else (self.penalty, True)
            until = 0.0 if verdict is None else now + self.penalty
            self._save(key, (tokens, stamp, until), now)
            return verdict

    def _save(self, key, record, now):
        if self._store.record_count() >= self._next_prune:
            self._prune(now)
        try:
            self._store.put(key, record)
            return
        except TableFull as exc:
            self._prune(now)
            reason = exc
        try:
            self._store.put(key, record)
        except TableFull:
            if not self._full_warned:  # admitted untracked: the table is for every address
                self._full_warned = True
                log.warning("rate_limit: new addresses are not limited: %s", reason)

    def _prune(self, now):
        # A bucket quiet for a whole window is full again: forgetting it changes nothing.
        per = self.rate.per
        self._store.prune(lambda record: now - record[1] < per or record[2] > now)
        self._next_prune = max(1024, 2 * self._store.record_count())

    def __len__(self):
        return self._store.record_count()


#: IPv6 sources are penalised per /64: one host commonly holds a whole /64.
IPV6_SOURCE_PREFIX = 64


def source_key(ip):
    """The text that names a client's source for penalties: its IPv4 address, or
    the /64 network of an IPv6 address.  Raises ValueError if ``ip`` is not an IP."""
    return _source_of(client_address(ip))


def _source_of(address):
    if address.version == 4:
        return str(address)
    return str(ipaddress.ip_network((address, IPV6_SOURCE_PREFIX), strict=False))


def penalty_message(seconds_left):
    """What a penalised client is told (and the log says)."""
    return "too many failed authentications from this address, refused for %.1fs more" \
        % seconds_left


@dataclass(frozen=True)
class PenaltyRules:
    """When a source is penalised: ``failures`` failed authentications within
    ``window`` seconds of the first one refuse it for ``time`` seconds, doubled for
    each repeat up to ``max_time``; ``exempt`` networks never are; at most
    ``max_sources`` sources are remembered.  ``failures`` 0: off."""

    failures: int = 0
    window: float = 60.0
    time: float = 60.0
    max_time: float = 600.0
    exempt: Tuple = ()
    max_sources: int = 65536

    @classmethod
    def from_options(cls, options):
        """The rules of a service's ``auth_penalty_*`` settings."""
        return cls(options["auth_penalty_failures"], options["auth_penalty_window"],
                   options["auth_penalty_time"],
                   max(options["auth_penalty_max"], options["auth_penalty_time"]),
                   tuple(options["auth_penalty_exempt"]), options["auth_penalty_sources"])

    def key(self, ip):
        """The source key of ``ip``, or None when it is never penalised (off, exempt,
        not an IP address)."""
        if not self.failures:
            return None
        try:
            address = client_address(ip)
        except ValueError:
            return None
        if any(address in network for network in self.exempt):
            return None
        return _source_of(address)


class _Source:
    """One source's record: failures counted since ``start``, penalty end, repeats."""

    __slots__ = ("count", "start", "until", "strikes")

    def __init__(self, now):
        self.count, self.start, self.until, self.strikes = 0, now, 0.0, 0

    @classmethod
    def from_record(cls, record):
        """A _Source from a stored ``(count, start, until, strikes)``."""
        entry = cls(0.0)
        entry.count, entry.start, entry.until, entry.strikes = record[:4]
        return entry

    def forgettable(self, now, rules):
        """True once nothing here matters: the count's window and the repeat memory
        (``max_time`` after the penalty ended) are both over."""
        return now - self.start >= rules.window and now >= self.until + rules.max_time


def _count_failure(entry, now, rules):
    """Count one failure in ``entry`` (a _Source) at ``now``; the seconds of the penalty
    it starts, or None."""
    if entry.until > now:
        return None
    if now - entry.start >= rules.window:
        entry.count, entry.start = 0, now
    entry.count += 1
    if entry.count < rules.failures:
        return None
    if now >= entry.until + rules.max_time:
        entry.strikes = 0
    entry.strikes += 1
    seconds = min(rules.time * 2 ** min(entry.strikes - 1, 32), rules.max_time)
    entry.until, entry.count, entry.start = now + seconds, 0, now
    return seconds


class PenaltyBox:
    """Failed authentications per source, and the sources refused for them.

    Thread-safe; one per service, kept across reloads (the rules are passed
    with each call, so a reload changes them at once).  Memory is bounded:
    at most ``rules.max_sources`` sources, the one that failed least
    recently forgotten first; sources nothing is known against any more
    are pruned as the table grows.
    """

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._sources = collections.OrderedDict()  # key -> _Source, least recent first
        self._next_prune = 1024

    def check(self, ip, rules):
        """Seconds ``ip`` is still refused for, or None."""
        if not self._sources:  # nobody ever failed: skip parsing the address
            return None
        key = rules.key(ip)
        if key is None:
            return None
        with self._lock:
            entry = self._sources.get(key)
            left = entry.until - self._clock() if entry is not None else 0.0
        return left if left > 0 else None

    def failed(self, ip, rules):
        """Count one failed authentication from ``ip``.

        Returns ``(source, seconds)`` when this failure starts a penalty of
        that many seconds for ``source`` (log that, once), else None.
        Failures of an already penalised source are not counted.
        """
        key = rules.key(ip)
        if key is None:
            return None
        with self._lock:
            now = self._clock()
            seconds = _count_failure(self._entry(key, now, rules), now, rules)
        return None if seconds is None else (key, seconds)

    def _entry(self, key, now, rules):
        entry = self._sources.pop(key, None)
        if entry is None:
            entry = _Source(now)
            if len(self._sources) >= self._next_prune:
                self._prune(now, rules)
            while len(self._sources) >= rules.max_sources:
                self._sources.popitem(last=False)
        self._sources[key] = entry
        return entry

    def _prune(self, now, rules):
        for key in [k for k, e in self._sources.items() if e.forgettable(now, rules)]:
            del self._sources[key]
        self._next_prune = max(1024, 2 * len(self._sources))

    def __len__(self):
        with self._lock:
            return len(self._sources)


class SharedPenaltyBox(PenaltyBox):
    """A PenaltyBox whose sources live in a store shared by the worker processes.

    The same rules and answers; the bound is the shared table's
    (``shared_addresses``): when it is full, sources nothing is known against
    any more are pruned, and if that is not enough a new source is not
    counted (logged once) rather than another forgotten.
    """

    def __init__(self, store, clock=time.monotonic):
        super().__init__(clock)
        self._store = store
        self._full_warned = False

    def check(self, ip, rules):
        """Seconds ``ip`` is still refused for, or None."""
        with self._store.locked():
            latest = self._store.get(_LATEST)
            if latest is None or latest[0] <= self._clock():
                return None  # no penalty runs: skip parsing the address
            key = rules.key(ip)
            record = self._store.get((key,)) if key is not None else None
            left = record[2] - self._clock() if record is not None else 0.0
        return left if left > 0 else None

    def failed(self, ip, rules):
        """Count one failed authentication from ``ip`` (see PenaltyBox.failed)."""
        key = rules.key(ip)
        if key is None:
            return None
        with self._store.locked():
            now = self._clock()
            record = self._store.get((key,))
            entry = _Source(now) if record is None else _Source.from_record(record)
            seconds = _count_failure(entry, now, rules)
            self._save((key,), (entry.count, entry.start, entry.until, entry.strikes), now,
                       rules)
            if seconds is not None:
                latest = self._store.get(_LATEST)
                if latest is None or latest[0] < entry.until:
                    self._save(_LATEST, (entry.until,), now, rules)
        return None if seconds is None else (key, seconds)

    def _save(self, key, record, now, rules):
        for attempt in range(2):
            try:
                self._store.put(key, record)
                return
            except TableFull as exc:
                if attempt:
                    if not self._full_warned:
                        self._full_warned = True
                        log.warning("auth_penalty: new sources are not counted: %s", exc)
                    return
                # values[1] (a source's start) is 0.0 only in the one-value _LATEST record.
                self._store.prune(lambda values: values[1] == 0.0 or not _Source.from_record(
                    values).forgettable(now, rules))

    def __len__(self):
        return self._store.record_count()


_LATEST = ("latest",)  # a SharedPenaltyBox's record of when its last penalty ends


def penalty_box(service_name):
    """The penalty box of a service: shared by the worker processes of a daemon that
    has several, else a PenaltyBox of this process."""
    if shared.current() is None:
        return PenaltyBox()
    return SharedPenaltyBox(shared.store("penalties:" + service_name, group=service_name))
