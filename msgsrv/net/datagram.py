"""Datagram services must never reflect or loop: which datagrams are answered.

Three guards, each pure apart from an injectable clock or address test, used
by :class:`msgsrv.net.server.UDPService` for every UDP handler:

* :func:`source_refusal`: never answer a privileged source port (the classic
  echo <-> chargen loop, CERT VU#417980) or one of the daemon's own
  listening addresses (:class:`Listeners`);
* :class:`ReplyLimiter`: at most ``rate`` replies per second to one address
  (after a burst), in a table of bounded size, so a loop between two
  independent servers dies out and a spoofed victim gets little;
* :class:`DropLog`: which drops to log, so a flood is not a flood of lines.
"""

import collections
import socket
import time

from .access import TokenBucket, client_address

#: Seconds between two log lines about drops of one reason.
DROP_LOG_PERIOD = 60.0

#: Why a datagram is not answered: its counter (``refused_<counter>``) and the log text.
Drop = collections.namedtuple("Drop", "counter reason")

_WILDCARDS = ("", "0.0.0.0", "::")


def is_local_address(ip):
    """True if ``ip`` is an address of this host: loopback, or one a socket can bind.

    (With ``ip_nonlocal_bind`` every address binds: the guard then errs on
    the side of not answering.)
    """
    address = client_address(ip)
    if address.is_loopback:
        return True
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((str(address), 0))
    except OSError:
        return False
    return True


class Listeners:
    """The daemon's own listening addresses, as a test of a datagram's source.

    ``addresses`` are ``(host, port)`` pairs.  A source matches a specific
    listener when ip and port are equal; a wildcard listener (``0.0.0.0``,
    ``::``) when the port is equal and the ip is one of this host's
    (``is_local``, asked only for such ports; its answers are cached).
    """

    _CACHE_MAX = 1024

    def __init__(self, addresses, is_local=is_local_address):
        self.addresses = frozenset(addresses)
        self._exact = {(_normal(host), port) for host, port in self.addresses
                       if host not in _WILDCARDS}
        self._wildcard_ports = {port for host, port in self.addresses if host in _WILDCARDS}
        self.ports = frozenset(port for _, port in self.addresses)  # what match can match
        self._is_local = is_local
        self._local = {}

    def match(self, ip, port):
        """The listener address ``(ip, port)`` belongs to, or None."""
        if port not in self.ports:  # the fast path: nearly every datagram
            return None
        ip = _normal(ip)
        if (ip, port) in self._exact:
            return (ip, port)
        if port in self._wildcard_ports and self._local_ip(ip):
            return (ip, port)
        return None

    def _local_ip(self, ip):
        known = self._local.get(ip)
        if known is None:
            if len(self._local) >= self._CACHE_MAX:
                self._local.clear()
            known = self._local[ip] = bool(self._is_local(ip))
        return known


def _normal(ip):
    try:
        return str(client_address(ip))
    except ValueError:
        return ip


def source_refusal(ip, port, min_port, listeners):
    """None if a datagram from ``(ip, port)`` may be answered, else its :data:`Drop`.

    Refused: a source port below ``min_port`` (0 disables that rule; port 0
    itself cannot be answered and is always refused) and any source that
    ``listeners`` (a :class:`Listeners`) matches.
    """
    if port < min_port or port == 0:
        return Drop("privileged_port", "source port %d is below udp_min_source_port=%d"
                    % (port, min_port))
    if listeners.match(ip, port) is not None:
        return Drop("own_address", "the source is one of this daemon's own listeners")
    return None


class ReplyLimiter:
    """At most ``rate`` replies per second (a float) to one address after a burst of ``burst``.

    Keyed by ip alone (not ip and port): a victim or a looping server is
    one host whatever port the datagrams name.  The table holds at most
    ``max_sources`` addresses; beyond that the least recently answered one
    is forgotten (its next reply starts a full burst), so a flood of
    spoofed sources costs bounded memory.
    """

    def __init__(self, rate, burst, max_sources, clock=time.monotonic):
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self._clock = clock
        self._buckets = collections.OrderedDict()  # ip -> TokenBucket, least recent first

    @property
    def settings(self):
        """``(rate, burst, max_sources)``: equal settings keep the table across a reload."""
        return (self.rate, self.burst, self.max_sources)

    def allow(self, ip):
        """Count one reply to ``ip``; True if it may be sent."""
        bucket = self._buckets.get(ip)
        if bucket is None:
            if len(self._buckets) >= self.max_sources:
                self._buckets.popitem(last=False)
            bucket = self._buckets[ip] = TokenBucket(self.rate, self.burst, clock=self._clock)
        else:
            self._buckets.move_to_end(ip)
        return bucket.take() == 0.0

    def __len__(self):
        return len(self._buckets)


class DropLog:
    """Which drops to log: the first of a reason at once, then one count per ``period``.

    :meth:`first` says whether to log a drop in full; :meth:`due` returns
    the counts of drops kept quiet in periods that have ended.  At most one
    line per reason per period, whatever the flood.
    """

    def __init__(self, period=DROP_LOG_PERIOD, clock=time.monotonic):
        self.period = period
        self._clock = clock
        self._quiet = {}  # reason -> [period start, drops not logged]
        self._next_due = float("inf")

    def first(self, reason):
        """Count one drop of ``reason``; True if it is to be logged in full."""
        entry = self._quiet.get(reason)
        if entry is not None:
            entry[1] += 1
            return False
        now = self._clock()
        self._quiet[reason] = [now, 0]
        self._next_due = min(self._next_due, now + self.period)
        return True

    def due(self):
        """``[(reason, count, seconds)]``: drops not logged in the periods that ended.

        A reason quiet for a whole period is forgotten: its next drop is
        logged in full again.
        """
        now = self._clock()
        if now < self._next_due:
            return []
        result = []
        for reason, entry in list(self._quiet.items()):
            start, count = entry
            if now - start < self.period:
                continue
            if count:
                result.append((reason, count, now - start))
                self._quiet[reason] = [now, 0]
            else:
                del self._quiet[reason]
        self._next_due = min((start + self.period for start, _ in self._quiet.values()),
                             default=float("inf"))
        return result


__all__ = ["DROP_LOG_PERIOD", "Drop", "is_local_address", "Listeners", "source_refusal",
           "ReplyLimiter", "DropLog"]
