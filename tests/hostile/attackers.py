"""Misbehaving clients: abrupt resets, tiny receivers, slowloris, and a fresh-client latency probe."""

import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

_LINGER_RESET = struct.pack("ii", 1, 0)


def rst_close(sock):
    """Close ``sock`` with a TCP reset (SO_LINGER on, timeout 0) instead of a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass  # already dead: a plain close is all that is left
    sock.close()


def open_tcp(address, timeout=5.0):
    """A connected TCP socket with a timeout (fails the caller with OSError)."""
    return socket.create_connection(address, timeout=timeout)


def tiny_receiver(address, timeout=10.0):
    """A connected TCP socket whose receive buffer is as small as the kernel allows."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(timeout)
    sock.connect(address)
    return sock


# -- slowloris ------------------------------------------------------------------

@dataclass
class _Drip:
    sock: socket.socket
    opened: float
    position: int = 0
    received: bytearray = field(default_factory=bytearray)


@dataclass
class SlowlorisResult:
    """What a slowloris run saw.

    ``lifetimes`` are the seconds each server-closed connection lived (from
    the end of its prelude); ``survivor_ages`` those of the connections still
    open when the run ended (then reset by us); ``finished`` counts
    connections whose script ran out (the script was too short for the run:
    the attack was not a slowloris any more).
    ``replies`` holds what the server sent on each closed connection.
    """

    opened: int = 0
    lifetimes: List[float] = field(default_factory=list)
    replies: List[bytes] = field(default_factory=list)
    survivor_ages: List[float] = field(default_factory=list)
    finished: int = 0
    bytes_sent: int = 0


class Slowloris:
    """``count`` connections, each sending one byte of ``script`` every ``interval`` s.

    ``prelude(sock)`` runs first on each new connection (e.g. authenticate),
    blocking.  With ``sustain`` a connection the server closes is replaced, so
    ``count`` stay open until ``duration`` ends; without it the run ends when
    all are closed or at ``duration``.  Run it with ``start()``/``join()``
    (a background thread) or ``run()``.  Survivors are reset at the end.
    """

    def __init__(self, address, count, script, *, interval=0.2, duration=5.0,
                 prelude: Optional[Callable] = None, sustain=False):
        self.address = address
        self.count = count
        self.script = script
        self.interval = interval
        self.duration = duration
        self.prelude = prelude
        self.sustain = sustain
        self.result = SlowlorisResult()
        self._selector = selectors.DefaultSelector()
        self._thread = None
        self.error = None

    def start(self):
        """Open the connections, then drip in a background thread."""
        for _ in range(self.count):
            self._open()
        self._thread = threading.Thread(target=self._run_guarded, name="slowloris", daemon=True)
        self._thread.start()
        return self

    def join(self):
        """Wait for the run to end; return the SlowlorisResult (re-raises a driver error)."""
        self._thread.join(self.duration + 30)
        if self.error is not None:
            raise self.error
        return self.result

    def run(self):
        """Open, drip until done, return the SlowlorisResult."""
        return self.start().join()

    def _open(self):
        sock = open_tcp(self.address)
        if self.prelude is not None:
            self.prelude(sock)
        sock.setblocking(False)
        self._selector.register(sock, selectors.EVENT_READ, _Drip(sock, time.monotonic()))
        self.result.opened += 1

    def _run_guarded(self):
        try:
            self._run()
        except BaseException as exc:  # reported to the test by join()
            self.error = exc
        finally:
            self._reset_survivors()

    def _run(self):
        end = time.monotonic() + self.duration
        next_drip = time.monotonic() + self.interval
        while self._selector.get_map() and time.monotonic() < end:
            timeout = max(0.0, min(next_drip, end) - time.monotonic())
            for key, _ in self._selector.select(timeout):
                self._readable(key.data)
            if time.monotonic() >= next_drip:
                next_drip += self.interval
                for key in list(self._selector.get_map().values()):
                    self._drip(key.data)

    def _readable(self, drip):
        try:
            data = drip.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            drip.received += data
            return
        self._closed_by_server(drip)

    def _closed_by_server(self, drip):
        self.result.lifetimes.append(time.monotonic() - drip.opened)
        self.result.replies.append(bytes(drip.received))
        self._selector.unregister(drip.sock)
        drip.sock.close()
        if self.sustain:
            self._open()

    def _drip(self, drip):
        if drip.position >= len(self.script):
            self.result.finished += 1
            return
        try:
            drip.sock.send(self.script[drip.position:drip.position + 1])
        except OSError:
            return  # reset by the server: the read side reports it
        drip.position += 1
        self.result.bytes_sent += 1

    def _reset_survivors(self):
        now = time.monotonic()
        for key in list(self._selector.get_map().values()):
            self.result.survivor_ages.append(now - key.data.opened)
            self._selector.unregister(key.fileobj)
            rst_close(key.fileobj)
        self._selector.close()


# -- fresh-client latency ----------------------------------------------------------

class Latencies:
    """Latency samples in seconds, with percentiles."""

    def __init__(self, samples):
        self.samples = sorted(samples)

    def percentile(self, fraction):
        """The sample at ``fraction`` (0..1) of the sorted list (nearest rank)."""
        if not self.samples:
            raise ValueError("no samples")
        index = min(len(self.samples) - 1, max(0, int(round(fraction * len(self.samples))) - 1))
        return self.samples[index]

    @property
    def p50(self):
        """The median, in seconds."""
        return self.percentile(0.50)

    @property
    def p99(self):
        """The 99th percentile, in seconds."""
        return self.percentile(0.99)

    def describe(self):
        """``n=.. p50=..ms p99=..ms max=..ms``."""
        return "n=%d p50=%.1fms p99=%.1fms max=%.1fms" % (
            len(self.samples), self.p50 * 1000, self.p99 * 1000, self.samples[-1] * 1000)


def measure_latency(call, duration, minimum=20, pause=0.005):
    """Time ``call()`` repeatedly for ``duration`` s (at least ``minimum`` calls).

    ``pause`` seconds between calls keep the probe from being a load of its own.
    """
    samples = []
    end = time.monotonic() + duration
    while time.monotonic() < end or len(samples) < minimum:
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
        time.sleep(pause)
    return Latencies(samples)


# -- spoofed datagrams --------------------------------------------------------------

class SpoofedUDP:
    """IPv4 UDP datagrams claiming any source address, sent through a raw socket.

    Needs root or CAP_NET_RAW: the constructor raises PermissionError
    otherwise.  A context manager; ``send`` may be called many times.
    """

    def __init__(self):
        self._raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
        self._raw.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)

    def send(self, source, destination, payload):
        """One datagram from ``source`` to ``destination`` (``(ip, port)`` pairs)."""
        udp = struct.pack("!HHHH", source[1], destination[1], 8 + len(payload), 0) + payload
        # Linux fills in the IP checksum; a UDP checksum of 0 means none (IPv4).
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP,
                         0, socket.inet_aton(source[0]), socket.inet_aton(destination[0]))
        self._raw.sendto(ip + udp, (destination[0], 0))

    def close(self):
        """Close the raw socket."""
        self._raw.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
