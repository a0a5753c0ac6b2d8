"""Who may connect: allow/deny address rules and a per-address connection rate limit.

Both are pure (no sockets, an injectable clock) and answer for one client
address at a time; :class:`msgsrv.server.TCPService` consults them in its
admission checks before a connection gets a handler.
"""

import ipaddress
import time

from .chatproto import TokenBucket


def client_address(text):
    """The ``ipaddress`` object for a peer address string (IPv4-mapped IPv6 as IPv4).

    Raises ValueError for text that is not an IP address.
    """
    address = ipaddress.ip_address(text.split("%", 1)[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


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
    stays bounded: addresses quiet for a whole window are forgotten.
    """

    def __init__(self, rate, penalty, clock=time.monotonic):
        self.rate = rate
        self.penalty = penalty
        self._clock = clock
        self._sources = {}   # ip -> (TokenBucket, last seen)
        self._blocked = {}   # ip -> monotonic time the penalty ends
        self._next_prune = 1024

    def check(self, ip):
        """Count one connection from ``ip``; return None if allowed.

        Otherwise return ``(seconds_left, started)``: ``started`` is True only
        for the connection that began the penalty (log that one, not the flood).
        """
        now = self._clock()
        until = self._blocked.get(ip)
        if until is not None:
            if now < until:
                return (until - now, False)
            del self._blocked[ip]
        bucket = self._bucket(ip, now)
        if bucket.take() == 0.0:
            return None
        self._blocked[ip] = now + self.penalty
        return (self.penalty, True)

    def _bucket(self, ip, now):
        entry = self._sources.get(ip)
        bucket = entry[0] if entry else TokenBucket(self.rate.count / self.rate.per,
                                                    self.rate.count, clock=self._clock)
        self._sources[ip] = (bucket, now)
        if len(self._sources) >= self._next_prune:
            self._prune(now)
        return bucket

    def _prune(self, now):
        # A bucket quiet for a whole window is full again: forgetting it changes nothing.
        self._sources = {ip: entry for ip, entry in self._sources.items()
                         if now - entry[1] < self.rate.per}
        self._blocked = {ip: until for ip, until in self._blocked.items() if until > now}
        self._next_prune = max(1024, 2 * len(self._sources))

    def __len__(self):
        return len(self._sources)
