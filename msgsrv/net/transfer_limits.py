"""What a blocking transfer may cost: admission, a minimum rate, a buffer budget.

A slow peer must cost bounded memory and no unbounded thread
(docs/ROBUSTNESS.rst, "Slow transfers and the thread and buffer budget"):

* :class:`TransferGate` (one per service) admits a transfer only while the
  service runs fewer than ``max_transfers``, the client's address fewer
  than ``max_transfers_per_ip``, and the buffers it needs fit in what is left
  of ``transfer_buffer_budget``; otherwise the request is refused with
  ``busy`` at once, before any data moves.
* :class:`RateWatch` (sans-IO) is told each wait on the peer (seconds
  waited, bytes moved) and raises ``RequestTimeout`` when nothing moved for
  ``io_timeout`` seconds of waiting, ``TooSlow`` when fewer than
  ``min_transfer_rate`` bytes per second moved over the last
  ``transfer_rate_window`` seconds of waiting.  Only time spent waiting on the
  peer counts: the server's own disk and hashing time never does.
* :class:`PacedSocket` wraps a blocking socket so that every call waits in
  steps of at most :data:`STEP` seconds and reports each step to a RateWatch:
  a trickle that keeps each call alive is caught all the same.
"""

import collections
import contextlib
import os
import select
import socket
import time

from msgsrv.ops.shared import LocalStore
from msgsrv.wire.errors import RequestTimeout, ServiceBusy, TableFull, TooSlow
from .transport import is_plain_socket

STEP = 0.5                 # longest single wait on the peer: how often a stuck call is checked
SEND_CHUNK = 64 * 1024     # bytes per send() call: a TLS record group, accounted exactly
COPY_CHUNK = 64 * 1024     # file bytes read at once where sendfile() cannot be used (TLS)
_MARKS = 8                 # rate samples per window (the window is measured to 1/8th)


class RateWatch:
    """Whether a peer keeps moving bytes; fed with (seconds waited, bytes moved) steps.

    ``min_rate`` bytes/s (0: no rate check) averaged over the last ``window``
    seconds of waiting, checked once ``window`` seconds of waiting have
    passed; ``idle_limit`` seconds of waiting without a byte (None: never)
    raise ``RequestTimeout``.
    """

    def __init__(self, min_rate, window, idle_limit=None):
        self.min_rate = min_rate
        self.window = window
        self.idle_limit = idle_limit
        self.waited = 0.0
        self.moved = 0
        self._idle = 0.0
        self._marks = collections.deque([(0.0, 0)])

    def step(self, waited, moved, receiving=False):
        """Account one wait on the peer.

        Raises ``RequestTimeout`` (no progress for ``idle_limit``) or
        ``TooSlow`` (below ``min_rate`` over the window; ``receiving`` is
        passed on to it).
        """
        self.waited += waited
        self.moved += moved
        self._idle = 0.0 if moved else self._idle + waited
        if self.idle_limit is not None and self._idle >= self.idle_limit:
            raise RequestTimeout("no progress for %gs (io_timeout)" % self.idle_limit)
        if self.min_rate:
            self._check_rate(receiving)

    def _check_rate(self, receiving):
        if self.waited - self._marks[-1][0] >= self.window / _MARKS:
            self._marks.append((self.waited, self.moved))
        start = self.waited - self.window
        if start < 0:
            return  # the first window is the grace period
        while len(self._marks) > 1 and self._marks[1][0] <= start:
            self._marks.popleft()
        since, base = self._marks[0]
        rate = (self.moved - base) / max(self.waited - since, 1e-9)
        if rate < self.min_rate:
            raise TooSlow("%d bytes in the last %.1fs (%.0f bytes/s), below min_transfer_rate "
                          "%d bytes/s" % (self.moved - base, self.waited - since, rate,
                                          self.min_rate), receiving)


class PacedSocket:
    """A blocking socket whose peer is held to a :class:`RateWatch`.

    Offers what the blocking transfer code uses (``recv``, ``recv_into``,
    ``sendall``, ``sendfile``); each call waits on the peer in steps of at most
    ``step`` seconds and reports every step to ``watch``, which raises
    ``RequestTimeout`` or ``TooSlow``.  Other attributes are the wrapped
    socket's.  The wrapped socket's timeout is set to the step.
    """

    def __init__(self, sock, watch, step=STEP):
        self._sock = sock
        self.watch = watch
        self._step = min(step, watch.idle_limit or step)
        sock.settimeout(self._step)

    def __getattr__(self, name):
        return getattr(self._sock, name)

    def recv(self, size):
        """Receive up to ``size`` bytes (b"" at EOF)."""
        return self._wait(lambda: self._sock.recv(size), len, True)

    def recv_into(self, buffer, nbytes=0):
        """Receive into ``buffer``; return the count (0 at EOF)."""
        return self._wait(lambda: self._sock.recv_into(buffer, nbytes), int, True)

    def sendall(self, data):
        """Send every byte of ``data``."""
        view = memoryview(data).cast("B")
        sent = 0
        while sent < len(view):
            chunk = view[sent:sent + SEND_CHUNK]
            sent += self._wait(lambda: self._sock.send(chunk), int, False)

    def sendfile(self, file, offset=0, count=None):
        """Send ``count`` bytes of ``file`` from ``offset``; return how many were sent.

        Fewer than ``count`` only if the file ended first.  Zero-copy
        (``os.sendfile``) on a plain socket; read and sent on others (TLS).
        """
        if count is None:
            count = max(0, os.fstat(file.fileno()).st_size - offset)
        if not is_plain_socket(self._sock):
            return self._send_copy(file.fileno(), offset, count)
        return self._send_zero_copy(file.fileno(), offset, count)

    def _wait(self, call, size_of, receiving):
        while True:
            started = time.monotonic()
            try:
                result = call()
            except socket.timeout:
                self.watch.step(time.monotonic() - started, 0, receiving)
                continue
            self.watch.step(time.monotonic() - started, size_of(result), receiving)
            return result

    def _send_zero_copy(self, fd, offset, count):
        out = self._sock.fileno()  # non-blocking underneath: the socket has a timeout
        # A connection's Channel counts what it sends; a bare socket is sent on directly.
        send_once = getattr(self._sock, "sendfile_once", None) or (
            lambda fd, at, size: os.sendfile(out, fd, at, size))
        poller = select.poll()
        poller.register(out, select.POLLOUT)
        sent = 0
        while sent < count:
            started = time.monotonic()
            try:
                got = send_once(fd, offset + sent, count - sent)
            except BlockingIOError:
                poller.poll(self._step * 1000)
                self.watch.step(time.monotonic() - started, 0, False)
                continue
            if not got:
                break
            sent += got
            self.watch.step(time.monotonic() - started, got, False)
        return sent

    def _send_copy(self, fd, offset, count):
        sent = 0
        while sent < count:
            data = os.pread(fd, min(COPY_CHUNK, count - sent), offset + sent)
            if not data:
                break
            self.sendall(data)
            sent += len(data)
        return sent


class TransferGate:
    """Admission of one service's blocking transfers (thread-safe).

    ``max_transfers`` at once in the service, ``per_ip`` at once from one
    client address, and at most ``budget`` bytes of transfer buffers held
    together.  :meth:`tune` changes the limits of a running service
    (transfers already admitted keep their place).  The counts live in
    ``store`` (this process's by default; the worker processes' together when
    given their shared store).
    """

    def __init__(self, max_transfers, per_ip, budget, store=None):
        self._store = store if store is not None else LocalStore()
        self.tune(max_transfers, per_ip, budget)

    @property
    def active(self):
        """Transfers running now."""
        with self._store.locked():
            return self._store.total(_ACTIVE)

    @property
    def reserved(self):
        """Bytes of the budget held now."""
        with self._store.locked():
            return self._store.total(_RESERVED)

    def tune(self, max_transfers, per_ip, budget):
        """Apply new limits (on reload)."""
        with self._store.locked():
            self.max_transfers, self.per_ip, self.budget = max_transfers, per_ip, budget

    def acquire(self, ip, buffers=0):
        """Take a transfer slot for ``ip`` holding ``buffers`` bytes of the budget.

        Raises ``ServiceBusy`` at once when a limit is reached (``TableFull``,
        a ServiceBusy, when the shared table has no room for the address).
        """
        with self._store.locked():
            refusal = self._refusal(ip, buffers)
            if refusal is not None:
                raise ServiceBusy(refusal)
            self._change(ip, 1, buffers)

    def release(self, ip, buffers=0):
        """Give back what :meth:`acquire` took."""
        with self._store.locked():
            self._change(ip, -1, -buffers)

    def _change(self, ip, count, buffers):
        store = self._store
        store.add(("ip", ip), count)
        try:
            store.add(_ACTIVE, count)
            if buffers:
                store.add(_RESERVED, buffers)
        except TableFull:
            store.add(("ip", ip), -count)
            raise

    @contextlib.contextmanager
    def admit(self, ip, buffers=0):
        """Hold a transfer slot while the block runs (``ServiceBusy`` if refused)."""
        self.acquire(ip, buffers)
        try:
            yield
        finally:
            self.release(ip, buffers)

    def _refusal(self, ip, buffers):
        active, reserved = self._store.total(_ACTIVE), self._store.total(_RESERVED)
        if active >= self.max_transfers:
            return "%d transfers are running (max_transfers); try again later" % active
        from_ip = self._store.total(("ip", ip))
        if from_ip >= self.per_ip:
            return ("%d transfers from %s are running (max_transfers_per_ip); try again later"
                    % (from_ip, ip))
        if reserved + buffers > self.budget:
            return ("transfer buffers are spent (%d of transfer_buffer_budget %d bytes held); "
                    "try again later" % (reserved, self.budget))
        return None


_ACTIVE, _RESERVED = ("active",), ("reserved",)


__all__ = ["STEP", "RateWatch", "PacedSocket", "TransferGate"]
