"""The server core: connections parked in epoll, served by a small worker pool.

Connections are registered level-triggered in one epoll set.  A few worker
threads share it, but only one of them, the leader, polls and serves at a
time; it keeps the lead from one event to the next, so a round trip costs one
``epoll_wait`` and no thread hand-off, and the registered interest is changed
only when it must (output queued or drained, reading paused): an echo round
trip makes no ``epoll_ctl`` call.  An idle connection costs no thread.

A handler call may block (stream a file, wait for a child process) inside
:meth:`Connection.blocking`.  Entering it disarms that connection and gives
up the lead, so another worker polls and serves everyone else (a new worker
is started if none is free, up to ``max_threads``); the surplus thread exits
once the blocking call is over.  At most ``max_threads - workers`` calls
block at once (more get ``ServiceBusy``), so ``workers`` threads are always
left to poll and serve every other connection.

Bytes cross a connection through its transport (msgsrv.net.transport: plain,
or msgsrv.net.tls); handlers schedule their own timers with
:meth:`Connection.call_later`, run by the same sweep as the idle timeout.

See docs/DESIGN.rst for the trade-offs.
"""

import collections
import contextlib
import heapq
import logging
import os
import select
import socket
import struct
import threading
import time
import warnings

from msgsrv.wire.errors import ServiceBusy
from msgsrv.wire.frames import RECV_SIZE
from .peer import format_peer
from .transport import Channel, HandshakeRefused, PlainTransport

log = logging.getLogger("msgsrv.pool")

_IN, _OUT, _ONESHOT = select.EPOLLIN, select.EPOLLOUT, select.EPOLLONESHOT
_ERR = select.EPOLLERR | select.EPOLLHUP
# Interest of a connection that wants no event: HUP/ERR are always reported,
# so a one-shot registration reports at most one of them instead of spinning.
_QUIET = _ONESHOT
_BATCH = 128         # events one worker takes from one poll (fewer polls under load)
_POLL_TIMEOUT = 0.5  # seconds; bounds how late a timer can run
_COALESCE = 256 * 1024
# Direct serving (see WorkerPool._serve_directly): how long one session may
# last, and how long the peer may be quiet before it ends.
_DIRECT_SECONDS = 0.2
_DIRECT_QUIET = struct.pack("ll", 0, 50000)
_DIRECT_SEND = struct.pack("ll", 1, 0)
_NO_TIMEOUT = struct.pack("ll", 0, 0)
# Seconds stop() waits for aborted connections' handlers to return (a
# command run's process group is killed within this: msgsrv.services.command.process), then
# for idle worker threads to exit: stop ends within its timeout plus 1 s.
_ABORT_WAIT = 0.75
_THREAD_WAIT = 0.2
_COMPACT_AT = 1024  # cancelled timers in the heap before it may be compacted


class Timer:
    """A callback scheduled with :meth:`Connection.call_later`; ``cancel()`` it.

    It runs once, in a worker, with the connection acquired (never during
    another handler call of that connection), as late as the pool's sweep
    (at most ``_POLL_TIMEOUT`` seconds after ``due``); never after the
    connection closed or after ``cancel()``.
    """

    __slots__ = ("due", "conn", "callback", "cancelled", "queued", "soon")

    def __init__(self, due, conn, callback):
        self.due = due
        self.conn = conn
        self.callback = callback
        self.cancelled = False
        self.queued = False  # in the pool's heap (changed under its lock)
        self.soon = False    # of call_soon: retried at once when the connection was busy

    def __lt__(self, other):
        return self.due < other.due

    @property
    def active(self):
        """True until the timer ran or was cancelled."""
        return not self.cancelled

    def run(self):
        """Run the callback now unless cancelled (the pool calls this, connection acquired)."""
        if not self.cancelled:
            callback, self.callback = self.callback, None
            self.cancelled = True  # ran: cancel() is a no-op from now on
            callback()

    def cancel(self):
        """Never run the callback (no effect once it ran)."""
        if not self.cancelled:
            self.cancelled = True
            self.callback = None  # the handler need not outlive its connection
            self.conn.pool.timer_cancelled(self)


class Connection:
    """One accepted TCP connection over a transport.  Thread-safe: any thread may send or close.

    Attributes a handler may read: ``address`` (the peer, or the client a
    PROXY header named), ``bytes_in``, ``bytes_out`` (every byte moved,
    blocking sections included), ``opened`` (monotonic time), ``reason``
    (why it closed).

    Before the handler is attached, an optional ``preamble`` runs, then the
    transport's handshake, each with its own timer.  The preamble
    (msgsrv.net.proxy_stage: the PROXY header) has a ``timeout``;
    ``preamble.step(transport)`` runs on each readiness event and returns
    None until it is done, then the address the connection is known by;
    ``preamble.timed_out()`` runs when the timeout passes.  Either raises
    :class:`~msgsrv.transport.HandshakeRefused` to refuse the connection
    (the preamble has logged and counted it), and the connection aborts.

    The pool drives it through :meth:`acquire`, :meth:`serve`,
    :meth:`release`, :meth:`expire_idle` and the direct-serving pair
    (:meth:`can_serve_directly`, :meth:`serve_directly`); it calls the pool
    back through ``pool.set_interest``, ``pool.schedule``,
    ``pool.defer_close``, ``pool.finish_close`` and the ``*_blocking`` trio.
    """

    # Slots: attribute access on the per-event path is measurably cheaper.
    __slots__ = ("pool", "transport", "sock", "fd", "address", "handler", "opened", "last_active",
                 "bytes_in", "bytes_out", "_seen", "reason", "_recv", "_send", "_lock", "_out",
                 "_out_bytes", "_mask", "_busy", "_preamble", "_handshaking", "_started",
                 "_simple", "_fast", "_reading", "_blocking", "_closing", "_draining",
                 "_aborting", "_closed", "_timers", "_soon_waiting", "_deadline_timer",
                 "_handshake_timer", "_preamble_timer", "__weakref__")

    def __init__(self, pool, transport, address, preamble=None):
        transport.sock.setblocking(False)
        self.pool = pool
        self.transport = transport
        self.sock = transport.sock
        self.fd = self.sock.fileno()
        self.address = address
        self.handler = None
        self.opened = self.last_active = time.monotonic()
        self.bytes_in = self.bytes_out = 0
        self._seen = 0  # bytes_in + bytes_out at the last idle sweep
        self.reason = None
        self._recv, self._send = transport.recv, transport.send
        self._lock = threading.Lock()
        self._out = collections.deque()
        self._out_bytes = 0
        self._mask = _IN | _OUT  # as registered by WorkerPool.add
        self._busy = False
        # Before the handler: the preamble (a PROXY header), then the transport's handshake.
        self._preamble = preamble
        self._handshaking = transport.handshaking or preamble is not None
        self._started = False
        self._simple = False  # started, over a transport that holds nothing
        # on_event's short path applies: simple, registered for input alone,
        # reading, not closing.  Set only by _update_mask_locked; every change
        # of those conditions clears it (output queued is checked apart).
        self._fast = False
        self._reading = True
        self._blocking = False
        self._closing = False
        self._draining = None  # close_when_idle's reason while a handler call runs
        self._aborting = False
        self._closed = False
        self._timers = []  # of call_later, to cancel at close (ran or cancelled ones pruned)
        self._soon_waiting = False  # a call_soon timer found this connection busy
        self._deadline_timer = None
        self._handshake_timer = self._preamble_timer = None
        if preamble is not None:
            self._preamble_timer = self.call_later(preamble.timeout, self._preamble_timed_out)
        else:
            self._start_handshake_timer()

    # -- what handlers call -------------------------------------------------

    @property
    def closing(self):
        """True once close(), abort() or close_when_idle() was called: start no new request."""
        return self._closing or self._draining is not None

    @property
    def aborted(self):
        """True once abort() was called (queued output dropped, the socket shut down)."""
        return self._aborting

    @property
    def pending_output(self):
        """Bytes queued for sending (the peer has not taken them yet)."""
        return self._out_bytes

    @property
    def handler_attached(self):
        """True once the handler may be called (the transport's handshake is done)."""
        return not self._handshaking

    def send(self, data, limit=None):
        """Queue ``data`` for the peer without ever blocking.

        Sends at once when the transport has room; the rest waits in this
        connection's queue.  With ``limit``, a queue that would grow past
        ``limit`` bytes aborts the connection ("send queue exceeded").
        Returns False once close() or abort() was called.
        """
        lock = self._lock
        lock.acquire()  # not "with": on this hot path it costs half as much (CPython 3.11)
        try:
            if self._closing:
                return False
            if limit is not None and self._out_bytes + len(data) > limit:
                self._abort_locked("send queue exceeded")
                return False
            if not self._out and not self._blocking and not self._handshaking:
                # Fast path, inlined: most sends go straight out.
                send = self._send
                try:
                    sent = send(data)
                except BlockingIOError:
                    sent = 0
                except OSError as exc:
                    self._abort_locked("send failed: %s" % (exc.strerror or exc))
                    return False
                self.bytes_out += sent
                if sent == len(data):
                    return True
                data = data[sent:]
            self._out.append(data)
            self._out_bytes += len(data)
            if not self._busy:
                self._update_mask_locked()
            return True
        finally:
            lock.release()

    def close(self, reason="closed"):
        """Close after the queued output is sent (graceful)."""
        with self._lock:
            self._close_locked(reason)

    def close_when_idle(self, reason="closed"):
        """Close once the request in progress is answered (the server's graceful stop).

        An idle connection closes at once, as with close().  While a handler
        call runs (serving a request, or blocked in a transfer or a command),
        it may still send its reply; then no further data is read or served
        (``closing`` is true meanwhile) and the connection closes once the
        call has returned and the queued output is sent.  Returns True if
        the connection waits for such a call.
        """
        with self._lock:
            if self._closing or self._draining is not None:
                return False
            if self._busy:
                self._draining = reason
                self._fast = False
                return True
            self._close_locked(reason)
            return False

    def abort(self, reason="aborted"):
        """Close now, dropping queued output; unblocks a handler blocked on the socket."""
        with self._lock:
            self._abort_locked(reason)

    def pause_reading(self):
        """Stop delivering data until resume_reading() (back-pressure)."""
        with self._lock:
            self._reading = self._fast = False
            if not self._busy:
                self._update_mask_locked()

    def resume_reading(self):
        """Deliver data again after pause_reading()."""
        with self._lock:
            self._reading = True
            if not self._busy and not self._closing:
                self._update_mask_locked()

    def call_later(self, seconds, callback):
        """Run ``callback()`` in about ``seconds`` unless cancelled; return its :class:`Timer`.

        Timers are independent: each purpose (an authentication timeout, a
        delayed reply...) keeps its own handle and cancels only that one.
        The callback runs with the connection acquired, like ``data_received``;
        an exception it raises is logged and aborts the connection.
        """
        timer = Timer(time.monotonic() + seconds, self, callback)
        timers = self._timers
        if len(timers) >= 8:
            timers[:] = [t for t in timers if t.active]
        timers.append(timer)
        self.pool.schedule(timer)
        return timer

    def call_soon(self, callback):
        """From any thread: run ``callback()`` as soon as a worker can (acquired, like a timer).

        ``call_later(0, ...)`` that also wakes the pool's poll, and is retried
        as soon as a handler call running at that moment ends; returns the
        :class:`Timer`.  A shared backend's reply (another thread) resumes
        its connection this way.
        """
        timer = self.call_later(0, callback)
        timer.soon = True
        self.pool.wake()
        return timer

    def cancel_timers(self):
        """Cancel every timer of this connection (it closed: nothing may run for it)."""
        for timer in self._timers:
            timer.cancel()
        self._timers = []

    def set_deadline(self, seconds):
        """Deprecated (use :meth:`call_later`): one slot calling
        ``handler.timed_out("deadline")`` after ``seconds`` (None: cancel)."""
        warnings.warn("Connection.set_deadline is deprecated; use conn.call_later(seconds, "
                      "callback) and cancel the handle it returns", DeprecationWarning, 2)
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        if seconds is not None:
            self._deadline_timer = self.call_later(
                seconds, lambda: self.handler.timed_out("deadline"))

    @contextlib.contextmanager
    def blocking(self, timeout, wrap=None):
        """Within a handler call: yield the connection's socket in blocking mode with ``timeout``.

        What is yielded is a :class:`msgsrv.net.transport.Channel`: every byte
        moved through it counts in ``bytes_in``/``bytes_out`` (and as
        activity for the idle timeout).  ``wrap(channel)``, if given, returns
        what is yielded instead (a socket whose calls are paced, see
        msgsrv.net.transfer_limits); queued output is sent through it first.
        While the block runs, the pool keeps other connections served by
        starting a replacement worker.  Raises ``ServiceBusy`` at once,
        changing nothing, while ``max_blocking`` handler calls of the pool
        block already: the threads left always serve everyone else.
        """
        self.pool.reserve_blocking()
        try:
            with self._lock:
                self._blocking = True
                self._set_mask_locked(_QUIET)
            self.pool.enter_blocking()
            self.sock.settimeout(timeout)
            sock = Channel(self, self.transport.blocking_socket(), self.transport.zero_copy)
            if wrap is not None:
                sock = wrap(sock)
            self._flush_blocking(sock)
            yield sock
        finally:
            with self._lock:
                self._blocking = False
                if not self._closed:
                    self.sock.setblocking(False)
            self.pool.leave_blocking()

    # -- what the pool calls -------------------------------------------------

    def acquire(self):
        """Take the connection for one handler call; False if busy or closed."""
        with self._lock:
            if self._mask == _QUIET:
                self._mask = 0  # the one-shot registration fired: it is disarmed now
                self._fast = False
            if self._busy or self._closed:
                return False
            self._busy = True
            return True

    @property
    def closed(self):
        """True once the connection is closed for good (its timers are dropped)."""
        return self._closed

    def on_event(self, mask):
        """Serve one readiness event from the poll: acquire, serve, release in one call.

        The common request/response case (a plain transport registered for
        input alone, reading, nothing queued, not closing: ``_fast``) takes a
        short path: one receive, the handler, and a release that re-arms
        nothing because nothing changed.  Anything else goes through
        :meth:`serve` and :meth:`release`.  An exception from the handler is
        logged and aborts the connection.
        """
        lock = self._lock
        lock.acquire()  # not "with": on this hot path it costs half as much (CPython 3.11)
        try:
            if self._mask == _QUIET:
                self._mask = 0  # the one-shot registration fired: it is disarmed now
                self._fast = False
            if self._busy or self._closed:
                return
            self._busy = True
        finally:
            lock.release()
        released = False
        try:
            if mask == _IN and self._fast and not self._out:
                self._read()
                lock.acquire()
                try:
                    if self._fast and not self._out and not self._soon_waiting:
                        # nothing changed, nothing waits: nothing to re-arm
                        self._busy = False
                        released = True
                finally:
                    lock.release()
            else:
                self.serve(mask)
        except Exception:
            log.exception("%s: handler error for %s", self.pool.name, format_peer(self.address))
            self.abort("handler error")
        finally:
            if not released:
                self.release()

    def serve(self, mask):
        """Handle one readiness event (acquired): handshake, then output, then input."""
        if not self._started:
            if self._handshaking and not self._handshake():
                return
            self._started = True
            self._simple = not self.transport.buffers  # on_event's short path applies
            self.handler.connection_made()
        transport = self.transport
        if transport.buffers and mask & _OUT and (transport.wants_write or transport.pending()):
            mask |= _IN  # bytes epoll cannot see, or a read that waited for writability
        if mask & (_OUT | _ERR) and self._out:
            self._flush()
        if mask & (_IN | _ERR) and self._reading and not self.closing:
            self._read()

    def release(self):
        """End a handler call: re-arm the interest, or finish a close it started."""
        with self._lock:
            self._busy = False
            if self._closed:
                return
            if self._soon_waiting:
                self._soon_waiting = False
                self.pool.wake()  # a call_soon timer met this call: run it now, not later
            if self._draining is not None:
                # The request that was running is answered: finish as close() would.
                self._closing = True
                self._fast = False
                self.reason = self.reason or self._draining
            if self._aborting or (self._closing and not self._out):
                self._closed = True
            else:
                self._update_mask_locked()
                return
        self.pool.finish_close(self)

    def retry_soon(self):
        """A call_soon timer found this connection busy: wake the pool when the call ends."""
        with self._lock:
            busy = self._busy
            self._soon_waiting = busy
        if not busy:
            self.pool.wake()  # the call ended meanwhile

    def expire_idle(self, now, idle_timeout):
        """Idle sweep (not acquired): True if nothing moved for ``idle_timeout`` seconds.

        Bytes moved either way since the last sweep count as activity, so
        the hot paths never read the clock.
        """
        moved = self.bytes_in + self.bytes_out
        if moved != self._seen:
            self._seen = moved
            self.last_active = now
            return False
        return now - self.last_active >= idle_timeout

    def idle_timed_out(self, reason):
        """The idle timeout fired (acquired): the handler decides, once it is attached."""
        if self._preamble is not None:
            self._preamble_timed_out()
            return
        if self._handshaking:
            self._fail_handshake("handshake timeout")
            return
        self.handler.timed_out(reason)

    def quiet(self):
        """Disarm the registration (the pool serves this connection another way)."""
        with self._lock:
            self._set_mask_locked(_QUIET)

    def can_serve_directly(self):
        """True if a blocking-read session may serve this connection now (pool direct serving)."""
        return (self.handler.sticky and self._started and self._reading and not self._out
                and not self.closing and self.transport.direct)

    def serve_directly(self):
        """Serve this connection with blocking reads until it goes quiet.

        The kernel timeouts (SO_RCVTIMEO/SO_SNDTIMEO) bound every call, so
        the thread is back within ``_DIRECT_SECONDS`` plus one quiet period;
        it is back sooner, after the read in progress, once the pool's
        ``direct_wanted`` turns false (another connection got busy).
        """
        pool = self.pool
        sock = self.sock
        sock.setblocking(True)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _DIRECT_QUIET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _DIRECT_SEND)
        end = time.monotonic() + _DIRECT_SECONDS
        try:
            while self._read() and not self._out and not self.closing:
                if not pool.direct_wanted or time.monotonic() > end:
                    break
        finally:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _NO_TIMEOUT)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _NO_TIMEOUT)
            sock.setblocking(False)

    # -- internals (called with the lock held where named *_locked) --------

    def _handshake(self):
        if self._preamble is not None and not self._read_preamble(self._preamble.step,
                                                                  self.transport):
            return False
        try:
            done = self.transport.handshake()
        except HandshakeRefused as exc:
            self._fail_handshake(exc.reason, exc.detail)
            return False
        except OSError as exc:
            self._fail_handshake("handshake failed: %s" % (getattr(exc, "reason", None) or exc))
            return False
        if done:
            self._handshaking = False
            if self._handshake_timer is not None:
                self._handshake_timer.cancel()
        return done

    def _start_handshake_timer(self):
        if self.transport.handshaking:
            self._handshake_timer = self.call_later(self.transport.handshake_timeout,
                                                    self._handshake_timed_out)

    def _read_preamble(self, call, *args):
        """Run one preamble call; True once it is done (the address it names is this
        connection's from now on).  A refusal (logged by the preamble) aborts."""
        try:
            address = call(*args)
        except HandshakeRefused as exc:
            self.abort(exc.reason)
            return False
        if address is None:
            return False
        self._preamble_timer.cancel()
        self._preamble = None
        self.address = address
        self._start_handshake_timer()
        return True

    def _preamble_timed_out(self):
        if self._preamble is not None:
            self._read_preamble(self._preamble.timed_out)

    def _handshake_timed_out(self):
        if self._handshaking:
            self._fail_handshake("handshake timeout")

    def _fail_handshake(self, reason, detail=None):
        log.info("%s: %s TLS %s%s", self.pool.name, format_peer(self.address), reason,
                 "" if detail is None else ": " + detail)
        self.transport.handshake_failed(reason)
        self.abort("tls %s" % reason)

    def _close_locked(self, reason):
        if self._closing:
            return
        self._closing = True
        self._fast = False
        self.reason = self.reason or reason
        if self._busy:
            return
        if self._out:
            self._update_mask_locked()
            return
        self._closed = True
        # connection_lost runs in a worker, never in the caller's thread
        # (which may hold locks of its own, e.g. a chat room's).
        self.pool.defer_close(self)

    def _send_now(self, data):
        """Send what the transport takes now; return the rest, or None if it failed."""
        try:
            sent = self._send(data)
        except BlockingIOError:
            return data
        except OSError as exc:
            self._abort_locked("send failed: %s" % (exc.strerror or exc))
            return None
        self.bytes_out += sent
        return data[sent:] if sent < len(data) else b""

    def _abort_locked(self, reason):
        if self._closed:
            return
        self._closing = self._aborting = True
        self._fast = False
        self.reason = self.reason or reason
        self._out.clear()
        self._out_bytes = 0
        if self._busy:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            return
        self._closed = True
        self.pool.defer_close(self)

    def _update_mask_locked(self):
        transport = self.transport
        if self._handshaking:
            mask = _OUT if transport.wants_write else _IN
        else:
            waiting = (self._out or not self._started or transport.wants_write
                       or (transport.buffers and transport.pending()))
            mask = _OUT if waiting else 0
            if (self._reading and not self._closing
                    and self._out_bytes < self.pool.max_pending_output):
                mask |= _IN
        if mask != self._mask:
            self._set_mask_locked(mask or _QUIET)
        self._fast = (mask == _IN and self._simple and self._reading and not self._closing
                      and self._draining is None)

    def _set_mask_locked(self, mask):
        self._mask = mask
        self._fast = False
        self.pool.set_interest(self.fd, mask)

    def _flush(self):
        with self._lock:
            while self._out and not self._aborting:
                chunk = self._out.popleft()
                if self._out and len(chunk) < _COALESCE:
                    chunk = self._coalesce_locked(chunk)
                self._out_bytes -= len(chunk)
                rest = self._send_now(chunk)
                if rest:
                    self._out.appendleft(rest)
                    self._out_bytes += len(rest)
                    break

    def _coalesce_locked(self, first):
        parts, total = [first], len(first)
        while self._out and total + len(self._out[0]) <= _COALESCE:
            part = self._out.popleft()
            parts.append(part)
            total += len(part)
        return b"".join(parts)

    def _read(self):
        """Receive once; return True if the connection may have more to read."""
        recv = self._recv  # a local call is cheaper than a method lookup on an attribute
        try:
            data = recv(RECV_SIZE)
        except BlockingIOError:
            return False
        except OSError as exc:
            self.abort("receive failed: %s" % (exc.strerror or exc))
            return False
        if not data:
            self._reading = self._fast = False
            if not self.handler.eof_received():
                self.close("closed by peer")
            return False
        self.bytes_in += len(data)
        self.handler.data_received(data)
        return True

    def _flush_blocking(self, sock):
        with self._lock:
            pending = b"".join(self._out)
            self._out.clear()
            self._out_bytes = 0
        if pending:
            sock.sendall(pending)


class WorkerPool:
    """Serve :class:`Connection` objects with a bounded, self-adjusting set of threads.

    ``handler_factory(conn)`` builds the handler for each connection;
    ``on_close(conn)`` runs once per connection after it closed.  The epoll
    set and wake pipe exist from :meth:`start` to :meth:`stop` (or
    :meth:`close`): a pool that never started holds no descriptor.
    """

    def __init__(self, name, handler_factory, *, workers=4, max_threads=64,
                 max_pending_output=1 << 20, idle_timeout=0.0, on_close=None):
        self.name = name
        self.handler_factory = handler_factory
        self.workers = workers
        self.max_threads = max(max_threads, workers)
        self.max_pending_output = max_pending_output
        self.idle_timeout = idle_timeout
        self.on_close = on_close
        self._epoll = None
        self._wake_r = self._wake_w = None
        self._conns = {}
        self._conns_lock = threading.Lock()
        self._all_closed = threading.Condition(self._conns_lock)
        self._count_lock = threading.Lock()
        # One leader at a time polls and serves; the others wait here and take
        # over when a handler blocks.  The thread that just served keeps the
        # lead (no hand-off per event), which keeps round trips as cheap as a
        # single-threaded loop's.
        self._poll_lock = threading.Lock()
        self._leader = None
        self._threads = set()
        self._blocked = 0
        self._direct = 0
        # Direct serving is for a connection alone in its exchange: it starts
        # on the second poll in a row that found only that connection ready
        # (_lone_fd), and the leader ends it (direct_wanted = False, read by
        # Connection.serve_directly) as soon as it serves anything else.
        self.direct_wanted = False
        self._lone_fd = -1
        self.direct_sessions = 0  # started so far (a diagnostic)
        self._stopping = False
        self._deferred = collections.deque()
        self._next_idle_sweep = 0.0
        self._timers = []  # heap of Timer by due time
        self._timers_lock = threading.Lock()
        self._cancelled = 0  # cancelled timers still in the heap (approximate)

    # -- public -------------------------------------------------------------

    @property
    def running(self):
        """True from :meth:`start` until :meth:`stop` or :meth:`close`."""
        return self._epoll is not None and not self._epoll.closed

    def start(self):
        """Open the epoll set and wake pipe and start the initial workers (once)."""
        if self._epoll is not None:
            return
        self._epoll = select.epoll()
        try:
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_w, False)
            self._epoll.register(self._wake_r, _IN)
            for _ in range(self.workers):
                self._spawn()
        except BaseException:
            self.close()
            raise

    def add(self, sock, address, transport=None, preamble=None):
        """Adopt an accepted socket; its handler's connection_made runs in a worker.

        ``transport`` carries the bytes (default: a
        :class:`~msgsrv.net.transport.PlainTransport` over ``sock``; msgsrv.net.tls
        passes a TLS one whose handshake runs first).  ``preamble``, if given,
        reads what precedes even that (msgsrv.net.proxy_stage: a PROXY header),
        with its own deadline; see :class:`Connection`.
        """
        conn = Connection(self, transport or PlainTransport(sock), address, preamble)
        conn.handler = self.handler_factory(conn)
        with self._conns_lock:
            self._conns[conn.fd] = conn
        self._epoll.register(conn.fd, _IN | _OUT)
        return conn

    def connections(self):
        """A snapshot list of the open connections."""
        with self._conns_lock:
            return list(self._conns.values())

    @property
    def serving_directly(self):
        """Direct-serving sessions in progress (0 or 1; a diagnostic)."""
        return self._direct

    @property
    def thread_count(self):
        """How many worker threads are alive."""
        with self._count_lock:
            return len(self._threads)

    @property
    def timer_count(self):
        """Timers scheduled and not yet run (cancelled ones may linger until compacted)."""
        with self._timers_lock:
            return len(self._timers) - self._cancelled

    def stop(self, timeout, notify=None):
        """Close every connection gracefully, aborting what is left after ``timeout``.

        ``notify(conn)`` runs first for each connection whose handler is
        attached (e.g. a goodbye line).  Idle connections close at once; a
        request in progress may finish and send its reply within ``timeout``
        (:meth:`Connection.close_when_idle`).  Handlers still running
        ``_ABORT_WAIT`` seconds after the abort are abandoned (logged).
        Returns how many connections had to be aborted.
        """
        if self._stopping or not self.running:
            return 0
        started = time.monotonic()
        deadline = started + timeout
        conns = self.connections()
        busy = 0
        for conn in conns:
            if notify is not None and conn.handler_attached:
                notify(conn)
            busy += conn.close_when_idle("server shutdown")
        log.info("%s: stopping: %d connections, %d finishing a request (up to %gs)",
                 self.name, len(conns), busy, timeout)
        aborted = self._wait_closed(deadline)
        if aborted:
            for conn in self.connections():
                conn.abort("shutdown timeout")
            if self._wait_closed(time.monotonic() + _ABORT_WAIT):
                log.warning("%s: abandoned %d handler calls still running %gs after the "
                            "abort: %s", self.name, len(self._conns), _ABORT_WAIT,
                            ", ".join(format_peer(c.address) for c in self.connections()))
        log.info("%s: stopped in %.3fs, %d connections aborted", self.name,
                 time.monotonic() - started, aborted)
        self._stop_threads(time.monotonic() + _THREAD_WAIT)
        return aborted

    def close(self):
        """Release the pool's descriptors and let its threads go (no graceful stop)."""
        if not self.running:
            return
        for conn in self.connections():
            conn.abort("closed")
        self._stop_threads(time.monotonic() + _THREAD_WAIT)

    # -- the seam: what a Connection calls -----------------------------------

    def set_interest(self, fd, mask):
        """Change the epoll interest of a connection's descriptor."""
        with contextlib.suppress(OSError, ValueError):
            self._epoll.modify(fd, mask)

    def schedule(self, timer):
        """Add a :class:`Timer` to the heap the sweep runs."""
        with self._timers_lock:
            if self._cancelled > _COMPACT_AT and self._cancelled * 2 > len(self._timers):
                for dropped in self._timers:
                    dropped.queued = not dropped.cancelled
                self._timers = [t for t in self._timers if t.queued]
                heapq.heapify(self._timers)
                self._cancelled = 0
            timer.queued = True
            heapq.heappush(self._timers, timer)

    def timer_cancelled(self, timer):
        """``timer`` was cancelled (counted while in the heap, which is compacted now and then)."""
        with self._timers_lock:
            if timer.queued:
                self._cancelled += 1

    def wake(self):
        """Make the polling worker return now and run due timers (any thread)."""
        with contextlib.suppress(OSError, TypeError):
            os.write(self._wake_w, b"t")

    def defer_close(self, conn):
        """Called with ``conn``'s lock held: finishing runs handler code, so a worker does it."""
        self._deferred.append(conn)
        with contextlib.suppress(OSError, TypeError):
            os.write(self._wake_w, b"c")

    def finish_close(self, conn):
        """Forget a closed connection: its handler's connection_lost, then ``on_close``."""
        with self._conns_lock:
            if self._conns.get(conn.fd) is not conn:
                return
            del self._conns[conn.fd]
        with contextlib.suppress(OSError, ValueError):
            self._epoll.unregister(conn.fd)
        conn.cancel_timers()
        if conn.handler_attached:
            try:
                conn.handler.connection_lost()
            except Exception:
                log.exception("%s: error in connection_lost for %s", self.name,
                              format_peer(conn.address))
        conn.sock.close()
        if self.on_close is not None:
            self.on_close(conn)
        with self._conns_lock:
            if not self._conns:
                self._all_closed.notify_all()

    @property
    def max_blocking(self):
        """Handler calls that may block at once: ``max_threads - workers`` (at least 1)."""
        return max(self.max_threads - self.workers, 1)

    def reserve_blocking(self):
        """Count one more blocked handler call; ``ServiceBusy`` when ``max_blocking`` are."""
        with self._count_lock:
            if self._blocked >= self.max_blocking:
                raise ServiceBusy("%d requests of this service are blocked already "
                                  "(max_threads - workers); try again later" % self._blocked)
            self._blocked += 1

    def enter_blocking(self):
        """The calling worker blocks now: give up the lead, start a replacement if needed."""
        # The reservation made _blocked count this thread already; with at most
        # max_threads - workers blocked, a replacement always fits under max_threads.
        self._step_down(threading.current_thread())
        with self._count_lock:
            spawn = (len(self._threads) - self._blocked - self._direct < self.workers
                     and len(self._threads) < self.max_threads and not self._stopping)
        if spawn:
            self._spawn()

    def leave_blocking(self):
        """The blocked call is over (its thread exits if it is surplus)."""
        with self._count_lock:
            self._blocked -= 1

    # -- worker threads -----------------------------------------------------

    def _spawn(self):
        thread = threading.Thread(target=self._run, name="%s-worker" % self.name, daemon=True)
        with self._count_lock:
            self._threads.add(thread)
        thread.start()

    def _run(self):
        me = threading.current_thread()
        try:
            while not self._stopping and not self._surplus():
                self._poll_lock.acquire()
                self._leader = me
                try:
                    while self._leader is me and not self._stopping:
                        self._serve_once(me)
                finally:
                    self._step_down(me)
        finally:
            with self._count_lock:
                self._threads.discard(me)

    def _serve_once(self, me):
        events = self._epoll.poll(_POLL_TIMEOUT, _BATCH)
        if events:
            self.direct_wanted = False  # the leader has work: a direct session ends
        lone = events[0][0] if len(events) == 1 and events[0][1] == _IN else -1
        direct, self._lone_fd = (lone if lone == self._lone_fd else -1), lone
        get = self._conns.get
        for fd, mask in events:
            conn = get(fd)
            if conn is None:
                if fd == self._wake_r:
                    self._drain_wake_pipe()
            elif fd == direct and not self._direct and conn.can_serve_directly():
                self._dispatch(fd, mask, True)  # alone twice in a row: may be served directly
            else:
                conn.on_event(mask)
            if self._leader is not me:
                return  # a handler blocked; the new leader sees the rest (level-triggered)
        if self._deferred:
            self._run_deferred()
        self._sweep()

    def _step_down(self, me):
        if self._leader is me:
            self._leader = None
            self._poll_lock.release()

    def _dispatch(self, fd, mask, alone=False):
        conn = self._conns.get(fd)
        if conn is None or not conn.acquire():
            return
        try:
            conn.serve(mask)
            if alone and conn.can_serve_directly():
                self._serve_directly(conn)
        except Exception:
            log.exception("%s: handler error for %s", self.name, format_peer(conn.address))
            conn.abort("handler error")
        finally:
            conn.release()

    def _serve_directly(self, conn):
        """Let this thread serve one busy connection directly, handing on the lead.

        A connection found alone in two polls in a row is likely in a
        round-trip exchange with nobody else busy; blocking reads on it save
        the epoll_wait per round trip.  One session at a time (with two or
        more workers, so one is free to lead): with several busy connections
        the hand-offs between threads would cost more than they save.  A
        session ends when the peer is quiet, output backs up, time is up, or
        the leader serves another connection.
        """
        me = threading.current_thread()
        with self._count_lock:
            if self._direct or self.workers < 2 or self._stopping:
                return
            self._direct += 1
            self.direct_sessions += 1
            self.direct_wanted = True
            spawn = (len(self._threads) - self._blocked - self._direct < 1
                     and len(self._threads) < self.max_threads)
        conn.quiet()
        self._step_down(me)
        if spawn:
            self._spawn()
        try:
            conn.serve_directly()
        finally:
            with self._count_lock:
                self._direct -= 1

    def _surplus(self):
        with self._count_lock:
            if len(self._threads) - self._blocked > self.workers:
                self._threads.discard(threading.current_thread())
                return True
        return False

    # -- closing ------------------------------------------------------------

    def _run_deferred(self):
        while True:
            try:
                conn = self._deferred.popleft()
            except IndexError:
                return
            self.finish_close(conn)

    def _drain_wake_pipe(self):
        # While stopping the byte stays, so every worker wakes and exits.
        if not self._stopping:
            with contextlib.suppress(OSError):
                os.read(self._wake_r, 4096)

    def _wait_closed(self, deadline):
        with self._conns_lock:
            while self._conns:
                left = deadline - time.monotonic()
                if left <= 0:
                    return len(self._conns)
                self._all_closed.wait(min(left, 0.1))
        return 0

    def _stop_threads(self, deadline):
        self._stopping = True
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"s")
        for thread in list(self._threads):
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        if self._epoll is not None:
            self._epoll.close()  # kept: late calls from abandoned handlers get ValueError
        for fd in (self._wake_r, self._wake_w):
            if fd is not None:
                os.close(fd)
        self._wake_r = self._wake_w = None

    # -- timers and the idle sweep --------------------------------------------

    def _sweep(self):
        now = time.monotonic()
        timers = self._timers
        if timers and timers[0].due <= now:
            self._run_timers(now)
        if self.idle_timeout and now >= self._next_idle_sweep:
            # Idle limits are coarse (minutes): scanning every connection can be rarer.
            self._next_idle_sweep = now + max(_POLL_TIMEOUT, self.idle_timeout / 20)
            for conn in self.connections():
                if conn.expire_idle(now, self.idle_timeout):
                    self._expire(conn)

    def _run_timers(self, now):
        due = []
        with self._timers_lock:
            timers = self._timers
            while timers and timers[0].due <= now:
                timer = heapq.heappop(timers)
                timer.queued = False
                if timer.cancelled:
                    self._cancelled -= 1
                else:
                    due.append(timer)
        for timer in due:
            self._fire(timer, now)

    def _fire(self, timer, now):
        conn = timer.conn
        if not conn.acquire():
            if not conn.closed:  # busy (a handler call, a blocking section): try again soon
                timer.due = now if timer.soon else now + _POLL_TIMEOUT
                self.schedule(timer)
                if timer.soon:
                    conn.retry_soon()
            return
        self._call_acquired(conn, timer.run, "timer error", "handler error")

    def _expire(self, conn):
        if conn.acquire():
            self._call_acquired(conn, lambda: conn.idle_timed_out("idle timeout"),
                                "error in timed_out", "idle timeout")

    def _call_acquired(self, conn, call, what, reason):
        """Run ``call()`` for an acquired ``conn``; an exception is logged and aborts it."""
        try:
            call()
        except Exception:
            log.exception("%s: %s for %s", self.name, what, format_peer(conn.address))
            conn.abort(reason)
        finally:
            conn.release()
