"""The socketserver subclasses every service runs on, extended through their hooks.

:class:`TCPService` admits connections in ``verify_request`` (connection
limits, plus any checks added to ``admission_checks``) and hands them to a
:class:`~msgsrv.pool.WorkerPool` (msgsrv handlers) or to a thread of their
own (plain ``socketserver.BaseRequestHandler`` plugins).
:class:`UDPService` serves datagrams inline, never a thread per datagram.
"""

import collections
import logging
import socket
import socketserver
import sys
import threading
import time

from .handlers.base import Handler
from .pool import WorkerPool, format_peer

log = logging.getLogger("msgsrv.server")
access_log = logging.getLogger("msgsrv.access")

POLL_INTERVAL = 0.1  # serve_forever's shutdown latency


class Counters:
    """Thread-safe named counters (connections, refusals, bytes, errors...)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._values = collections.Counter()

    def incr(self, name, amount=1):
        """Add ``amount`` to counter ``name``."""
        with self._lock:
            self._values[name] += amount

    def snapshot(self):
        """A plain dict copy of every counter."""
        with self._lock:
            return dict(self._values)


def _family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class _ServiceMixin:
    """What TCP and UDP services share: config, counters, a serving thread."""

    def _init_service(self, config):
        self.config = config
        self.name = config.name
        self.counters = Counters()
        self.started = time.time()
        self.address_family = _family(config["host"])
        self._thread = None

    @property
    def port(self):
        """The bound port (useful when the config said 0)."""
        return self.server_address[1]

    def serve_in_thread(self):
        """Start serve_forever in a daemon thread and return it."""
        self._thread = threading.Thread(target=self.serve_forever, args=(POLL_INTERVAL,),
                                        name="%s-accept" % self.name, daemon=True)
        self._thread.start()
        return self._thread

    def stop_accepting(self):
        """Stop serve_forever (never call from its own thread) and close the listener."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()

    def handle_error(self, request, client_address):
        """Log a handler exception with its traceback; the server keeps serving."""
        exc = sys.exc_info()[1]
        self.counters.incr("errors")
        if isinstance(exc, socket.timeout):
            log.info("%s: %s idle timeout", self.name, format_peer(client_address))
        elif isinstance(exc, ConnectionError):
            log.info("%s: %s connection lost: %s", self.name, format_peer(client_address), exc)
        else:
            log.exception("%s: handler error for %s", self.name, format_peer(client_address))


class TCPService(_ServiceMixin, socketserver.ThreadingMixIn, socketserver.TCPServer):
    """A TCP service: limits, admission checks, pool or thread per connection."""

    allow_reuse_address = True
    daemon_threads = True
    block_on_close = False

    def __init__(self, config, bind_and_activate=True):
        self._init_service(config)
        self.request_queue_size = config["backlog"]
        self.pooled = issubclass(config.handler_class, Handler)
        self.admission_checks = [self._check_limits]
        self._lock = threading.Condition()
        self._admitted = {}  # socket -> (ip, monotonic time admitted)
        self._per_ip = collections.Counter()
        self.pool = None
        if self.pooled:
            config.handler_class.prepare_service(self)
            self.pool = WorkerPool(config.name, self._make_handler,
                                   workers=config["workers"], max_threads=config["max_threads"],
                                   max_pending_output=config["max_pending_output"],
                                   idle_timeout=config["idle_timeout"], on_close=self._pooled_closed)
        super().__init__(config.address, config.handler_class, bind_and_activate)

    def _make_handler(self, conn):
        return self.RequestHandlerClass(conn, self)

    def server_activate(self):
        super().server_activate()
        if self.pool is not None:
            self.pool.start()

    # -- admission ----------------------------------------------------------

    def verify_request(self, request, client_address):
        """Admit the connection or refuse it with a reason (told to the client and logged)."""
        ip = client_address[0]
        with self._lock:
            for check in self.admission_checks:
                refusal = check(ip)
                if refusal is not None:
                    break
            else:
                self._admitted[request] = ip
                self._per_ip[ip] += 1
                self.counters.incr("connections_total")
                return True
        code, reason = refusal
        self.counters.incr("refused_" + code.replace("-", "_"))
        log.warning("%s: refused %s: %s", self.name, format_peer(client_address), reason)
        if self.pooled:
            self.RequestHandlerClass.refuse(request, code, reason)
        return False

    def _check_limits(self, ip):
        if len(self._admitted) >= self.config["max_connections"]:
            return ("busy", "too many connections (max_connections=%d)"
                    % self.config["max_connections"])
        if self._per_ip[ip] >= self.config["max_connections_per_ip"]:
            return ("busy", "too many connections from %s (max_connections_per_ip=%d)"
                    % (ip, self.config["max_connections_per_ip"]))
        return None

    def _release(self, request):
        with self._lock:
            ip = self._admitted.pop(request, None)
            if ip is None:
                return False
            self._per_ip[ip] -= 1
            if not self._per_ip[ip]:
                del self._per_ip[ip]
            self._lock.notify_all()
            return True

    @property
    def connection_count(self):
        """Connections admitted and not yet closed."""
        with self._lock:
            return len(self._admitted)

    # -- serving ------------------------------------------------------------

    def process_request(self, request, client_address):
        """Hand an admitted connection to the pool, or to a thread of its own."""
        if self.pooled:
            self.pool.add(request, client_address)
            return
        request.settimeout(self.config["idle_timeout"] or None)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        """Close a thread-mode connection (or a refused one) and account for it."""
        if self._release(request):
            access_log.info("close service=%s peer=%s", self.name,
                            format_peer(_peername(request)))
        super().shutdown_request(request)

    def _pooled_closed(self, conn):
        self._release(conn.sock)
        self.counters.incr("bytes_in", conn.bytes_in)
        self.counters.incr("bytes_out", conn.bytes_out)
        access_log.info("close service=%s peer=%s duration=%.3f in=%d out=%d outcome=%s",
                        self.name, format_peer(conn.address), time.monotonic() - conn.opened,
                        conn.bytes_in, conn.bytes_out, (conn.reason or "closed").replace(" ", "-"))

    def stop(self, timeout):
        """Stop accepting, let running handlers finish within ``timeout``, close the rest."""
        self.stop_accepting()
        if self.pool is not None:
            self.pool.stop(timeout, notify=lambda conn: conn.handler.server_closing())
            return
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._admitted and time.monotonic() < deadline:
                self._lock.wait(min(0.05, max(0.0, deadline - time.monotonic())))
            leftovers = list(self._admitted)
        for request in leftovers:
            try:
                request.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _peername(sock):
    try:
        return sock.getpeername()
    except OSError:
        return "?"


class UDPService(_ServiceMixin, socketserver.UDPServer):
    """A UDP service: handlers run inline; oversized datagrams are logged and dropped."""

    allow_reuse_address = True

    def __init__(self, config, bind_and_activate=True):
        self._init_service(config)
        self.max_datagram = config["max_datagram"]
        self.max_packet_size = self.max_datagram + 1  # one more byte reveals truncation
        super().__init__(config.address, config.handler_class, bind_and_activate)

    def verify_request(self, request, client_address):
        """Drop (and log) a datagram larger than ``max_datagram``."""
        if len(request[0]) > self.max_datagram:
            self.counters.incr("refused_too_large")
            log.warning("%s: dropped datagram from %s larger than max_datagram=%d",
                        self.name, format_peer(client_address), self.max_datagram)
            return False
        return True

    def stop(self, timeout):
        """Stop serving (datagram handlers are inline: nothing else to wait for)."""
        self.stop_accepting()


def make_server(config):
    """Bind the server for one ServiceConfig (raises OSError if the address is taken)."""
    cls = UDPService if config.transport == "udp" else TCPService
    return cls(config)
