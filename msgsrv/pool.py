"""The server core: connections parked in epoll, served by a small worker pool.

Every worker thread waits in ``epoll.poll`` on one shared epoll object.
Each connection's descriptor is registered with ``EPOLLONESHOT``, so a
readiness event goes to exactly one worker and the descriptor stays disarmed
until that worker re-arms it: a connection is never served by two threads at
once, and an idle connection costs no thread at all.  There is no hand-off
between an acceptor and the workers, so a round trip costs one wake-up.

A handler call may block (stream a file, wait for a child process) inside
:meth:`Connection.blocking`; while it does, the pool starts a replacement
worker (up to ``max_threads``) so the other connections keep being served,
and the surplus thread exits once the blocking call is over.

See docs/DESIGN.rst for the trade-offs.
"""

import collections
import contextlib
import logging
import os
import select
import socket
import threading
import time

log = logging.getLogger("msgsrv.pool")

RECV_SIZE = 256 * 1024
_IN, _OUT, _ONESHOT = select.EPOLLIN, select.EPOLLOUT, select.EPOLLONESHOT
_ERR = select.EPOLLERR | select.EPOLLHUP
_BATCH = 32          # events one worker takes from one poll
_POLL_TIMEOUT = 0.5  # seconds; bounds how late a deadline sweep can run
_COALESCE = 256 * 1024


class Connection:
    """One accepted TCP connection.  Thread-safe: any thread may send or close.

    Attributes a handler may read: ``address`` (peer), ``bytes_in``,
    ``bytes_out``, ``opened`` (monotonic time), ``reason`` (why it closed).
    """

    def __init__(self, pool, sock, address):
        sock.setblocking(False)
        self.pool = pool
        self.sock = sock
        self.fd = sock.fileno()
        self.address = address
        self.handler = None
        self.opened = self.last_active = time.monotonic()
        self.deadline = None
        self.bytes_in = self.bytes_out = 0
        self.reason = None
        self._lock = threading.Lock()
        self._out = collections.deque()
        self._out_bytes = 0
        self._busy = False
        self._started = False
        self._reading = True
        self._blocking = False
        self._closing = False
        self._aborting = False
        self._closed = False

    # -- what handlers call -------------------------------------------------

    @property
    def closing(self):
        """True once close() or abort() was called."""
        return self._closing

    @property
    def pending_output(self):
        """Bytes queued for sending (the peer has not taken them yet)."""
        return self._out_bytes

    def send(self, data, limit=None):
        """Queue ``data`` for the peer without ever blocking.

        Sends at once when the socket has room; the rest waits in this
        connection's queue.  With ``limit``, a queue that would grow past
        ``limit`` bytes aborts the connection ("send queue exceeded").
        Returns False when the connection is closing or was aborted.
        """
        with self._lock:
            if self._closing:
                return False
            if limit is not None and self._out_bytes + len(data) > limit:
                self._abort_locked("send queue exceeded")
                return False
            if not self._out and not self._blocking:
                data = self._send_now(data)
                if data is None:
                    return False
            if data:
                self._out.append(data)
                self._out_bytes += len(data)
                if not self._busy:
                    self._arm_locked()
        return True

    def close(self, reason="closed"):
        """Close after the queued output is sent (graceful)."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            self.reason = self.reason or reason
            if self._busy:
                return
            if self._out:
                self._arm_locked()
                return
            self._closed = True
            # connection_lost runs in a worker, never in the caller's thread
            # (which may hold locks of its own, e.g. a chat room's).
            self.pool._defer_close(self)

    def abort(self, reason="aborted"):
        """Close now, dropping queued output; unblocks a handler blocked on the socket."""
        with self._lock:
            self._abort_locked(reason)

    def pause_reading(self):
        """Stop delivering data until resume_reading() (back-pressure)."""
        with self._lock:
            self._reading = False

    def resume_reading(self):
        """Deliver data again after pause_reading()."""
        with self._lock:
            self._reading = True
            if not self._busy and not self._closing:
                self._arm_locked()

    def set_deadline(self, seconds):
        """Call ``handler.timed_out("deadline")`` if still open after ``seconds`` (None: never)."""
        self.deadline = None if seconds is None else time.monotonic() + seconds

    @contextlib.contextmanager
    def blocking(self, timeout):
        """Within a handler call: yield the socket in blocking mode with ``timeout``.

        Queued output is sent first.  While the block runs, the pool keeps
        other connections served by starting a replacement worker.
        """
        self.pool._enter_blocking()
        try:
            self._flush_blocking(timeout)
            self.sock.settimeout(timeout)
            yield self.sock
        finally:
            with self._lock:
                self._blocking = False
                if not self._closed:
                    self.sock.setblocking(False)
            self.pool._leave_blocking()

    # -- internals (called with the lock held where named *_locked) --------

    def _send_now(self, data):
        """Send what the socket takes now; return the rest, or None if it failed."""
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            return data
        except OSError as exc:
            self._abort_locked("send failed: %s" % (exc.strerror or exc))
            return None
        self.bytes_out += sent
        self.last_active = time.monotonic()
        return data[sent:] if sent < len(data) else b""

    def _abort_locked(self, reason):
        if self._closed:
            return
        self._closing = self._aborting = True
        self.reason = self.reason or reason
        self._out.clear()
        self._out_bytes = 0
        if self._busy:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            return
        self._closed = True
        self.pool._defer_close(self)

    def _arm_locked(self):
        mask = _ONESHOT
        if not self._started:
            mask |= _OUT
        if self._out:
            mask |= _OUT
        if self._reading and not self._closing and self._out_bytes < self.pool.max_pending_output:
            mask |= _IN
        with contextlib.suppress(OSError, ValueError):
            self.pool._epoll.modify(self.fd, mask)

    def _acquire(self):
        with self._lock:
            if self._busy or self._closed:
                return False
            self._busy = True
            return True

    def _release(self):
        with self._lock:
            self._busy = False
            if self._closed:
                return
            if self._aborting or (self._closing and not self._out):
                self._closed = True
            else:
                self._arm_locked()
                return
        self.pool._finish_close(self)

    def _serve(self, mask):
        if not self._started:
            self._started = True
            self.handler.connection_made()
        if mask & (_OUT | _ERR) and self._out:
            self._flush()
        if mask & (_IN | _ERR) and self._reading and not self._closing:
            self._read()

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
        try:
            data = self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self.abort("receive failed: %s" % (exc.strerror or exc))
            return
        self._received(data)

    def _received(self, data):
        if not data:
            self._reading = False
            if not self.handler.eof_received():
                self.close("closed by peer")
            return
        self.bytes_in += len(data)
        self.last_active = time.monotonic()
        self.handler.data_received(data)

    def _flush_blocking(self, timeout):
        with self._lock:
            self._blocking = True
            pending = b"".join(self._out)
            self._out.clear()
            self._out_bytes = 0
        if pending:
            self.sock.settimeout(timeout)
            self.sock.sendall(pending)
            self.bytes_out += len(pending)


class WorkerPool:
    """Serve :class:`Connection` objects with a bounded, self-adjusting set of threads.

    ``handler_factory(conn)`` builds the handler for each connection;
    ``on_close(conn)`` runs once per connection after it closed.
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
        self._epoll = select.epoll()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._epoll.register(self._wake_r, _IN)
        self._conns = {}
        self._conns_lock = threading.Lock()
        self._all_closed = threading.Condition(self._conns_lock)
        self._count_lock = threading.Lock()
        # One leader at a time polls and serves; the others wait here and take
        # over when a handler blocks.  The thread that just served keeps the
        # lead (no hand-off per event), which keeps round trips as cheap as a
        # single-threaded loop's.
        self._poll_lock = threading.Lock()
        self._threads = set()
        self._blocked = 0
        self._stopping = False
        self._deferred = collections.deque()
        self._next_sweep = 0.0
        self._sweep_lock = threading.Lock()
        self._local = threading.local()

    # -- public -------------------------------------------------------------

    def start(self):
        """Start the initial workers."""
        for _ in range(self.workers):
            self._spawn()

    def add(self, sock, address, connection_factory=Connection):
        """Adopt an accepted socket; its handler's connection_made runs in a worker.

        ``connection_factory(pool, sock, address)`` builds the Connection
        (msgsrv.tls passes one that speaks TLS).
        """
        conn = connection_factory(self, sock, address)
        conn.handler = self.handler_factory(conn)
        with self._conns_lock:
            self._conns[conn.fd] = conn
        self._epoll.register(conn.fd, _OUT | _ONESHOT)
        return conn

    def connections(self):
        """A snapshot list of the open connections."""
        with self._conns_lock:
            return list(self._conns.values())

    @property
    def thread_count(self):
        """How many worker threads are alive."""
        with self._count_lock:
            return len(self._threads)

    def stop(self, timeout, notify=None):
        """Close every connection gracefully, aborting what is left after ``timeout``.

        ``notify(conn)`` runs first for each connection (e.g. a goodbye line).
        Returns how many connections had to be aborted.
        """
        if self._stopping:
            return 0
        deadline = time.monotonic() + timeout
        for conn in self.connections():
            if notify is not None:
                notify(conn)
            conn.close("server shutdown")
        aborted = self._wait_closed(deadline)
        if aborted:
            for conn in self.connections():
                conn.abort("shutdown timeout")
            self._wait_closed(time.monotonic() + 2.0)
        self._stop_threads(deadline + 2.0)
        return aborted

    # -- worker threads -----------------------------------------------------

    def _spawn(self):
        thread = threading.Thread(target=self._run, name="%s-worker" % self.name, daemon=True)
        with self._count_lock:
            self._threads.add(thread)
        thread.start()

    def _run(self):
        local = self._local
        try:
            while not self._stopping and not self._surplus():
                self._poll_lock.acquire()
                local.leader = True
                try:
                    while local.leader and not self._stopping:
                        self._serve_once(local)
                finally:
                    self._step_down(local)
        finally:
            with self._count_lock:
                self._threads.discard(threading.current_thread())

    def _serve_once(self, local):
        if self._stopping:
            return
        local.pending = collections.deque(self._epoll.poll(_POLL_TIMEOUT, _BATCH))
        while local.pending:
            fd, mask = local.pending.popleft()
            if fd == self._wake_r:
                self._drain_wake_pipe()
            else:
                self._dispatch(fd, mask)
        if self._deferred:
            self._run_deferred()
        self._maybe_sweep()

    def _step_down(self, local):
        if getattr(local, "leader", False):
            local.leader = False
            self._poll_lock.release()

    def _dispatch(self, fd, mask):
        conn = self._conns.get(fd)
        if conn is None or not conn._acquire():
            return
        try:
            conn._serve(mask)
        except Exception:
            log.exception("%s: handler error for %s", self.name, format_peer(conn.address))
            conn.abort("handler error")
        finally:
            conn._release()

    def _surplus(self):
        with self._count_lock:
            if len(self._threads) - self._blocked > self.workers:
                self._threads.discard(threading.current_thread())
                return True
        return False

    def _enter_blocking(self):
        pending = getattr(self._local, "pending", None)
        while pending:
            self._rearm(pending.popleft()[0])
        self._step_down(self._local)
        with self._count_lock:
            self._blocked += 1
            spawn = (len(self._threads) - self._blocked < self.workers
                     and len(self._threads) < self.max_threads and not self._stopping)
        if spawn:
            self._spawn()

    def _leave_blocking(self):
        with self._count_lock:
            self._blocked -= 1

    def _rearm(self, fd):
        conn = self._conns.get(fd)
        if conn is not None:
            with conn._lock:
                if not conn._busy and not conn._closed:
                    conn._arm_locked()

    # -- closing ------------------------------------------------------------

    def _defer_close(self, conn):
        # Called with conn's lock held: finishing runs handler code, so a worker does it.
        self._deferred.append(conn)
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"c")

    def _run_deferred(self):
        while True:
            try:
                conn = self._deferred.popleft()
            except IndexError:
                return
            self._finish_close(conn)

    def _drain_wake_pipe(self):
        # While stopping the byte stays, so every worker wakes and exits.
        if not self._stopping:
            with contextlib.suppress(OSError):
                os.read(self._wake_r, 4096)

    def _finish_close(self, conn):
        with self._conns_lock:
            if self._conns.get(conn.fd) is not conn:
                return
            del self._conns[conn.fd]
        with contextlib.suppress(OSError, ValueError):
            self._epoll.unregister(conn.fd)
        try:
            conn.handler.connection_lost()
        except Exception:
            log.exception("%s: error in connection_lost for %s", self.name, format_peer(conn.address))
        conn.sock.close()
        if self.on_close is not None:
            self.on_close(conn)
        with self._conns_lock:
            if not self._conns:
                self._all_closed.notify_all()

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
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"s")
        for thread in list(self._threads):
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        self._epoll.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # -- deadlines ----------------------------------------------------------

    def _maybe_sweep(self):
        now = time.monotonic()
        if now < self._next_sweep or not self._sweep_lock.acquire(blocking=False):
            return
        try:
            self._next_sweep = now + _POLL_TIMEOUT
            for conn in self.connections():
                reason = self._expired(conn, now)
                if reason and conn._acquire():
                    try:
                        conn.handler.timed_out(reason)
                    except Exception:
                        log.exception("%s: error in timed_out", self.name)
                        conn.abort(reason)
                    finally:
                        conn._release()
        finally:
            self._sweep_lock.release()

    def _expired(self, conn, now):
        if conn.deadline is not None and now >= conn.deadline:
            conn.deadline = None
            return "deadline"
        if self.idle_timeout and now - conn.last_active >= self.idle_timeout:
            return "idle timeout"
        return None


def format_peer(address):
    """``host:port`` for an address tuple, ``str(address)`` otherwise."""
    if isinstance(address, tuple) and len(address) >= 2:
        return "%s:%s" % (address[0], address[1])
    return str(address)
