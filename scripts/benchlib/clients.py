"""Client-side socket loops that generate load; they run inside load processes.

One selector drives many non-blocking sockets, so a single process keeps a
thousand connections busy without a thread each and the generator is not the
bottleneck. Every loop ends at a deadline; none closes the sockets it was
given (the caller owns them).

Times: ``start_at``/``end_at`` are ``time.monotonic()`` values shared by all
load processes (system-wide on Linux); latencies use ``time.perf_counter()``.
The loops start ``warmup`` seconds before ``start_at`` and record only the
round trips whose ping left at or after it (the C generator does the same).
"""

import array
import errno
import math
import os
import selectors
import socket
import threading
import time

HOST = "127.0.0.1"
RECV_SIZE = 262144
_PATTERN = bytes(range(256))
_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE


def make_payload(size):
    """Return ``size`` bytes of a repeating 0..255 pattern (echo mix-ups show as mismatches)."""
    return (_PATTERN * (size // len(_PATTERN) + 1))[:size]


def sleep_until(moment):
    """Sleep until ``time.monotonic()`` reaches ``moment`` (returns at once if it has)."""
    delay = moment - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def _perf_time(moment):
    """Return the ``time.perf_counter()`` reading at monotonic time ``moment``."""
    return time.perf_counter() + (moment - time.monotonic())


class _WindowCpu:
    """This process's CPU seconds from the start of the measured window (``mark`` it often)."""

    def __init__(self, clock0):
        self.clock0 = clock0
        self.cpu0 = None

    def mark(self, now):
        """Take the starting reading at the first call at or after the window's start."""
        if self.cpu0 is None and now >= self.clock0:
            self.cpu0 = _own_cpu()

    def used(self):
        """CPU seconds since the starting reading (0.0 if the window never started)."""
        return 0.0 if self.cpu0 is None else _own_cpu() - self.cpu0


def _own_cpu():
    times = os.times()
    return times.user + times.system


def open_connections(port, count, deadline):
    """Open ``count`` TCP connections to 127.0.0.1:port at once, without blocking.

    Returns (sockets, failures, seconds): the established non-blocking sockets
    (TCP_NODELAY set, so a 64 KiB tail is not held back by Nagle), how many
    could not be opened or were still pending at ``deadline`` (monotonic), and
    the seconds until the last one was established.
    """
    sel = selectors.DefaultSelector()
    started = time.perf_counter()
    established, elapsed = [], 0.0
    failures = _start_connects(sel, port, count)
    try:
        while sel.get_map() and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=max(0.0, min(0.1, deadline - time.monotonic()))):
                sel.unregister(key.fileobj)
                if key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    established.append(key.fileobj)
                    elapsed = time.perf_counter() - started
                else:
                    key.fileobj.close()
                    failures += 1
    finally:
        for key in list(sel.get_map().values()):
            key.fileobj.close()
            failures += 1
        sel.close()
    return established, failures, elapsed


def _start_connects(sel, port, count):
    failures = 0
    for _ in range(count):
        sock = _start_connect(port)
        if sock is None:
            failures += 1
        else:
            sel.register(sock, _WRITE)
    return failures


def open_served(port, count, deadline, batch=None):
    """Open connections that the server has really accepted: each echoes one byte.

    A connect() completes as soon as the kernel answers, even while the
    server's accept queue overflows; a 1-byte echo proves the server holds the
    connection. With ``batch`` set, connections are opened and checked
    ``batch`` at a time (so a small listen backlog is not overrun); with None,
    all at once. Returns (sockets, failures, connect_s, served_s): the checked
    sockets, how many failed, the seconds until the last connect() completed,
    and the seconds until the last check completed.
    """
    started = time.perf_counter()
    served, failures, connect_s = [], 0, 0.0
    while len(served) + failures < count and time.monotonic() < deadline:
        wanted = count - len(served) - failures
        socks, failed, _ = open_connections(port, min(batch or wanted, wanted), deadline)
        connect_s = time.perf_counter() - started
        good = _check_echo(socks, deadline)
        served.extend(good)
        failures += failed + len(socks) - len(good)
    return served, count - len(served), connect_s, time.perf_counter() - started


def _check_echo(socks, deadline):
    check = PingPong(socks, b"!", time.monotonic(), deadline, max_rounds=1).run()
    good = [sock for sock, rounds in zip(socks, check["per_conn"]) if rounds == 1]
    for sock, rounds in zip(socks, check["per_conn"]):
        if rounds != 1:
            sock.close()
    return good


def _start_connect(port):
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    except OSError:
        return None  # out of file descriptors: counted as a failure
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    err = sock.connect_ex((HOST, port))
    if err not in (0, errno.EINPROGRESS):
        sock.close()
        return None
    return sock


class _Conn:
    __slots__ = ("sock", "unsent", "received", "started", "rounds", "last_second",
                 "writing", "alive")

    def __init__(self, sock):
        self.sock = sock
        self.unsent = b""
        self.received = bytearray()
        self.started = None
        self.rounds = 0
        self.last_second = -1
        self.writing = False
        self.alive = True


class PingPong:
    """Ping-pong on many TCP connections: send the payload, wait for all of it, repeat.

    From ``warmup`` seconds before ``start_at`` until ``end_at`` each
    connection runs round trips back to back (or until ``max_rounds`` recorded
    ones when given); those sent before ``start_at`` are not recorded.
    ``run`` returns a summary dict:
    rounds, latencies (array of seconds), per_conn (round trips per
    connection), per_second (connections with at least one round trip in each
    whole second), errors (closed/reset/wrong bytes), seconds (measured
    window), oldest_pending (age in seconds of the oldest unanswered ping)
    and cpu_s (this process's CPU seconds over the window).
    """

    def __init__(self, socks, payload, start_at, end_at, max_rounds=None, warmup=0.0):
        self.conns = [_Conn(sock) for sock in socks]
        self.payload = payload
        self.start_at, self.end_at = start_at, end_at
        self.max_rounds = max_rounds
        self.warmup = warmup
        self.latencies = array.array("d")
        self.buckets = [0] * max(1, math.ceil(end_at - start_at))
        self.errors = 0
        self.active = len(self.conns)
        self.sel = selectors.DefaultSelector()

    def run(self):
        """Run the round trips until the window ends; return the summary dict."""
        for conn in self.conns:
            self.sel.register(conn.sock, _READ, conn)
        sleep_until(self.start_at - self.warmup)
        self.clock0 = _perf_time(self.start_at)
        self.cpu = _WindowCpu(self.clock0)
        self.end = self.clock0 + (self.end_at - self.start_at)
        try:
            for conn in self.conns:
                self._send_next(conn)
            self._loop()
            return self._summary(time.perf_counter())
        finally:
            self.sel.close()

    def _loop(self):
        now = time.perf_counter()
        while self.active and now < self.end:
            for key, mask in self.sel.select(timeout=min(0.05, self.end - now)):
                conn = key.data
                if mask & _READ:
                    self._read(conn)
                if conn.alive and mask & _WRITE:
                    self._write(conn)
            now = time.perf_counter()
            self.cpu.mark(now)

    def _send_next(self, conn):
        conn.unsent = memoryview(self.payload)
        del conn.received[:]
        conn.started = time.perf_counter()
        self._write(conn)

    def _write(self, conn):
        try:
            sent = conn.sock.send(conn.unsent)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._fail(conn)
            return
        conn.unsent = conn.unsent[sent:]
        wants_write = len(conn.unsent) > 0
        if wants_write != conn.writing:
            conn.writing = wants_write
            self.sel.modify(conn.sock, _READ | (_WRITE if wants_write else 0), conn)

    def _read(self, conn):
        try:
            data = conn.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._fail(conn)
            return
        conn.received += data
        if len(conn.received) < len(self.payload):
            return
        if conn.received != self.payload:
            self._fail(conn)
            return
        self._complete(conn)

    def _complete(self, conn):
        now = time.perf_counter()
        recorded = self.clock0 <= conn.started and now <= self.end
        if recorded:
            self.latencies.append(now - conn.started)
        conn.started = None
        if not recorded:
            if now < self.end:
                self._send_next(conn)
            return
        conn.rounds += 1
        second = int(now - self.clock0)
        if second != conn.last_second and second < len(self.buckets):
            self.buckets[second] += 1
            conn.last_second = second
        if self.max_rounds is not None and conn.rounds >= self.max_rounds:
            self._retire(conn)
        elif now < self.end:
            self._send_next(conn)

    def _fail(self, conn):
        self.errors += 1
        self._retire(conn)

    def _retire(self, conn):
        if conn.alive:
            conn.alive = False
            self.active -= 1
            self.sel.unregister(conn.sock)

    def _summary(self, now):
        waiting = [now - conn.started for conn in self.conns
                   if conn.alive and conn.started is not None]
        return {
            "rounds": len(self.latencies),
            "latencies": self.latencies,
            "per_conn": [conn.rounds for conn in self.conns],
            "per_second": self.buckets,
            "errors": self.errors,
            "seconds": now - self.clock0,
            "cpu_s": self.cpu.used(),
            "oldest_pending": max(waiting) if waiting else None,
        }


class _UdpClient:
    __slots__ = ("sock", "seq", "expected", "started", "deadline")

    def __init__(self, sock):
        self.sock = sock
        self.seq = 0
        self.expected = None
        self.started = 0.0
        self.deadline = 0.0


class UdpPingPong:
    """Datagram ping-pong: each client sends one datagram, waits for its echo, repeats.

    A reply that does not arrive within ``reply_timeout`` seconds counts as a
    loss and the client moves on; a late reply to an earlier datagram is told
    apart by its sequence number and counted as stale. ``run`` returns a dict
    with rounds, latencies, losses, stale, errors and seconds. The sockets are
    the caller's (connected, non-blocking UDP sockets).
    """

    def __init__(self, socks, size, start_at, end_at, reply_timeout, warmup=0.0):
        self.clients = [_UdpClient(sock) for sock in socks]
        self.filler = make_payload(max(0, size - 8))
        self.start_at, self.end_at = start_at, end_at
        self.reply_timeout = reply_timeout
        self.warmup = warmup
        self.latencies = array.array("d")
        self.losses = self.stale = self.errors = 0
        self.sel = selectors.DefaultSelector()

    def run(self):
        """Run until the window ends; return the summary dict."""
        for client in self.clients:
            self.sel.register(client.sock, _READ, client)
        sleep_until(self.start_at - self.warmup)
        clock0 = self.clock0 = _perf_time(self.start_at)
        self.cpu = _WindowCpu(clock0)
        end = clock0 + (self.end_at - self.start_at)
        try:
            for client in self.clients:
                self._send(client)
            self._loop(end)
        finally:
            self.sel.close()
        return {"rounds": len(self.latencies), "latencies": self.latencies,
                "losses": self.losses, "stale": self.stale, "errors": self.errors,
                "seconds": time.perf_counter() - clock0, "cpu_s": self.cpu.used()}

    def _loop(self, end):
        now = time.perf_counter()
        while now < end:
            self.cpu.mark(now)
            nearest = min(client.deadline for client in self.clients)
            timeout = max(0.0, min(0.05, end - now, nearest - now))
            for key, _ in self.sel.select(timeout=timeout):
                self._drain(key.data)
            now = time.perf_counter()
            for client in self.clients:
                if client.deadline <= now:
                    self.losses += client.started >= self.clock0
                    self._send(client)

    def _send(self, client):
        client.seq += 1
        client.expected = client.seq.to_bytes(8, "big") + self.filler
        client.started = time.perf_counter()
        client.deadline = client.started + self.reply_timeout
        try:
            client.sock.send(client.expected)
        except BlockingIOError:
            pass  # socket buffer full: shows up as a loss at the deadline
        except OSError:
            self.errors += 1

    def _drain(self, client):
        for _ in range(64):
            try:
                data = client.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:  # e.g. ICMP port unreachable reported on a connected socket
                self.errors += 1
                continue
            if data != client.expected:
                self.stale += 1
                continue
            if client.started >= self.clock0:
                self.latencies.append(time.perf_counter() - client.started)
            self._send(client)


class Repeat:
    """One thread per call of ``calls``, each calling it again and again from
    ``start_at`` until ``end_at``; :meth:`run` returns the results as PingPong does
    (latencies of the calls that returned True; errors: the others, and raises)."""

    def __init__(self, calls, start_at, end_at):
        self.calls = calls
        self.start_at, self.end_at = start_at, end_at
        self.latencies, self.errors = [], 0
        self._lock = threading.Lock()

    def run(self):
        """Run the calls until ``end_at``; return the result dict."""
        threads = [threading.Thread(target=self._loop, args=(call,)) for call in self.calls]
        sleep_until(self.start_at)
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = max(1e-9, min(time.monotonic(), self.end_at) - self.start_at)
        return {"latencies": self.latencies, "errors": self.errors, "seconds": seconds}

    def _loop(self, call):
        latencies, errors = [], 0
        while time.monotonic() < self.end_at:
            started = time.perf_counter()
            try:
                ok = call()
            except Exception:  # noqa: BLE001 - counted as an error, the loop goes on
                ok = False
            if ok:
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1
        with self._lock:
            self.latencies += latencies
            self.errors += errors


def one_connection(port, payload=b"x" * 64):
    """Connect, have ``payload`` echoed once, close; True if it came back whole."""
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.sendall(payload)
        received = b""
        while len(received) < len(payload):
            chunk = sock.recv(len(payload) - len(received))
            if not chunk:
                return False
            received += chunk
        return received == payload
