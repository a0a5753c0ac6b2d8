"""The socketserver subclasses every service runs on, extended through their hooks.

:class:`TCPService` admits connections in ``verify_request`` (access rules,
authentication penalty, rate limit, connection limits, plus any checks added to
``admission_checks`` or ``connection_checks``; behind a load balancer the
checks of the client's address wait for its PROXY header, ``proxy_admit``)
and hands them to a :class:`~msgsrv.net.pool.WorkerPool`
(msgsrv handlers) or to a thread of their own (plain
``socketserver.BaseRequestHandler`` plugins), through TLS when configured.
Its ``service`` (a :class:`msgsrv.net.service.Service`, created once) holds the
state its handlers share and that outlives reloads, among it the
``transfers`` gate admitting their blocking transfers.
:class:`UDPService` serves datagrams inline, never a thread per datagram.
Both can be reconfigured in place on reload, in two phases
(:meth:`prepare_reconfigure`, then the applier it returns).
"""

import collections
import logging
import socket
import socketserver
import struct
import sys
import threading
import time

from msgsrv.wire.errors import ConfigError
from .access import AccessRules, PenaltyRules, RateLimiter, client_address, penalty_message
from .datagram import Drop, DropLog, Listeners, ReplyLimiter, source_refusal
from msgsrv.ops import shared
from msgsrv.wire.errors import TableFull
from .handler import Handler
from .peer import format_peer
from .pool import WorkerPool
from .proxy_stage import ProxyPolicy, ProxyStage
from .service import create_service
from .tls import ServerTLS
from .transport import HandshakeRefused

log = logging.getLogger("msgsrv.server")
access_log = logging.getLogger("msgsrv.access")

POLL_INTERVAL = 0.1  # serve_forever's shutdown latency


class Counters:
    """Thread-safe named counters (connections, refusals, bytes, errors...).

    ``incr``/``incr2``/``update`` may be called from any thread.  A hot path
    that runs in one thread takes a :meth:`tally` instead: a plain dict only
    that thread adds to, without a lock; ``snapshot`` includes it.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._values = collections.Counter()
        self._tallies = []

    # acquire()/release() rather than "with": cheaper per call (CPython 3.11).

    def incr(self, name, amount=1):
        """Add ``amount`` to counter ``name``."""
        lock = self._lock
        lock.acquire()
        try:
            self._values[name] += amount
        finally:
            lock.release()

    def incr2(self, name, amount, other, other_amount):
        """Add ``amount`` to ``name`` and ``other_amount`` to ``other`` at once."""
        lock = self._lock
        lock.acquire()
        try:
            values = self._values
            values[name] += amount
            values[other] += other_amount
        finally:
            lock.release()

    def update(self, amounts):
        """Add several amounts at once (``{name: amount}``)."""
        with self._lock:
            values = self._values
            for name, amount in amounts.items():  # Counter.update's type checks cost more
                values[name] += amount

    def tally(self, names):
        """A dict of ``names`` (all 0) for ONE thread to add to (``tally[name] += n``)."""
        tally = dict.fromkeys(names, 0)
        with self._lock:
            self._tallies.append(tally)
        return tally

    def snapshot(self):
        """A plain dict copy of every counter (tallies included; zeros left out)."""
        with self._lock:
            values = dict(self._values)
            tallies = [dict(tally) for tally in self._tallies]  # each copy is atomic
        for tally in tallies:
            for name, amount in tally.items():
                if amount:
                    values[name] = values.get(name, 0) + amount
        return values


#: Why a connection was refused: the counter (``refused_<counter>``), the
#: wire code told to framed clients (None: close without a word), the log
#: text and level.
Refusal = collections.namedtuple("Refusal", "counter code reason level")


_ALL = ("all",)  # the key of a service's connection count


class _Admitted:
    """An admitted connection: its client address, when it was admitted, the address
    it counts under in the per-address limit (None until a PROXY header names it)
    and the PROXY policy it was admitted under (None: no header)."""

    __slots__ = ("address", "opened", "counted", "proxy")

    def __init__(self, address, opened, counted, proxy):
        self.address, self.opened, self.counted, self.proxy = address, opened, counted, proxy


def _family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class _ServiceMixin:
    """What TCP and UDP services share: config, counters, a serving thread.

    ``registry`` is the daemon's :class:`msgsrv.ops.running.Registry` (None for
    a server started on its own); ``global_options`` the ``[msgsrv]`` options.
    """

    def _init_service(self, config, global_options):
        self.config = config
        self.global_options = global_options or {}
        self.name = config.name
        self.counters = Counters()
        self.started = time.time()
        self.registry = None
        self.address_family = _family(config["host"])
        self.access = AccessRules.from_options(config.options, self.global_options)
        self._thread = None

    def prepare_reconfigure(self, config, global_options=None):
        """Check a reloaded configuration of this service (same address, transport,
        handler) and return the function that applies it.

        Changes nothing: raises ConfigError if the new settings cannot be
        loaded or applied live.  Once applied, new connections get the new
        options, limits, access rules, TLS files and what the service object
        swaps (keys...); open connections keep what they started with, and
        the service object keeps its lasting state (sessions, running commands).
        """
        global_options = global_options or {}
        policy = self._load_policy(config, global_options)
        service = self._prepare_service(config, global_options)

        def apply():
            self.config, self.global_options = config, global_options
            service()
            self._apply_policy(policy)
            self._tune(config)
        return apply

    def reconfigure(self, config, global_options=None):
        """Check and apply a reloaded configuration at once (ConfigError: nothing changed)."""
        self.prepare_reconfigure(config, global_options)()

    def _load_policy(self, config, global_options):
        return AccessRules.from_options(config.options, global_options)

    def _apply_policy(self, policy):
        self.access = policy

    def _prepare_service(self, config, global_options):
        """Phase one of the service object's reload: its applier."""
        return lambda: None

    def _tune(self, config):
        """Apply the settings that take effect on a running service."""

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

    def stop_accepting(self, timeout=None):
        """Stop serve_forever (never call from its own thread) and close the listener.

        With ``timeout``, gives up waiting for the serving thread after that
        many seconds (a UDP handler that never returns) and returns False.
        """
        thread, self._thread = self._thread, None
        stopped = True
        if thread is not None:
            # shutdown() waits for serve_forever without a timeout: wait here instead.
            threading.Thread(target=self.shutdown, name="%s-shutdown" % self.name,
                             daemon=True).start()
            thread.join(timeout)
            stopped = not thread.is_alive()
        self._close_listener()
        return stopped

    def _close_listener(self):
        self.server_close()

    def adopt(self, sock):
        """Serve ``sock``, bound (and listening) by the master of several worker
        processes, instead of binding; call before ``server_activate``.

        The socket is made non-blocking: another worker may take the connection
        or datagram first, and accept or receive must then fail, not wait.
        """
        self.socket.close()
        self.socket = sock
        self.server_address = sock.getsockname()
        sock.setblocking(False)

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


class TCPService(_ServiceMixin, socketserver.TCPServer):
    """A TCP service: limits and admission checks, then the hand-off of its kind.

    ``TCPService(config, ...)`` builds the kind the handler needs, chosen
    once: :class:`PooledTCPService` for msgsrv handlers
    (:class:`~msgsrv.net.handler.Handler`), :class:`ThreadedTCPService`
    (a thread per connection) for plain ``socketserver`` handlers.
    """

    allow_reuse_address = True
    pooled = False

    def __new__(cls, config, *args, **kwargs):
        if cls is TCPService:
            pooled = issubclass(config.handler_class, Handler)
            cls = PooledTCPService if pooled else ThreadedTCPService
        return super().__new__(cls)

    def __init__(self, config, bind_and_activate=True, global_options=None):
        self._init_service(config, global_options)
        self.request_queue_size = config["backlog"]
        #: Checks of the client's address (with PROXY: the address its header names).
        self.admission_checks = [self._check_access, self._check_penalty, self._check_rate,
                                 self._check_per_ip]
        #: Checks of the connection itself, whoever it comes from.
        self.connection_checks = [self._check_total]
        self._lock = threading.Condition()
        self._admitted = {}  # socket -> _Admitted
        # Connections counted against max_connections(_per_ip): by this process, or
        # by every worker process of the daemon (msgsrv.ops.shared).
        self._counts = shared.store("connections:" + config.name, group=config.name)
        self.rate = self.tls = self.proxy = None
        self._apply_policy(self._load_policy(config, self.global_options))
        # Created before the bind: a failed bind calls server_close, which releases it.
        self._released = False
        self.service = create_service(config, self.global_options, self)
        self.penalties, self.transfers = self.service.penalties, self.service.transfers
        super().__init__(config.address, config.handler_class, bind_and_activate)

    def _prepare_service(self, config, global_options):
        return self.service.prepare_reconfigure(config, global_options)

    def _release_service(self):
        if not self._released:
            self._released = True
            self.service.close()

    def _load_policy(self, config, global_options):
        rate = None
        if config["rate_limit"] is not None:
            rate = self.rate
            if rate is None or (rate.rate, rate.penalty) != (config["rate_limit"],
                                                             config["rate_penalty"]):
                rate = RateLimiter(config["rate_limit"], config["rate_penalty"],
                                   store=shared.store("rate:" + config.name, group=config.name))
        tls, proxy = check_transport_options(config, self._tls_failed)
        return (AccessRules.from_options(config.options, global_options), rate, tls,
                PenaltyRules.from_options(config.options), proxy)

    def _apply_policy(self, policy):
        self.access, self.rate, self.tls, self.penalty_rules, self.proxy = policy

    def _tls_failed(self, reason):
        self.counters.incr("refused_tls")

    # -- admission ----------------------------------------------------------

    def verify_request(self, request, client_address):
        """Admit the connection or refuse it: counted, logged, told to the client if
        the protocol has a way (never over TLS, where the client expects a handshake).

        With ``proxy_protocol`` on, only a ``proxy_trusted`` peer is admitted here
        (and counted against ``max_connections``); the checks of the client's
        address wait for the header that names it (:meth:`proxy_admit`).
        """
        proxy = self.proxy
        with self._lock, self._counts.locked():
            if proxy is None:
                refusal = self._first_refusal(self.admission_checks + self.connection_checks,
                                              client_address[0])
            else:
                refusal = self._first_refusal(
                    [lambda ip: self._check_proxy_peer(ip, proxy)] + self.connection_checks,
                    client_address[0])
            counted = client_address[0] if proxy is None else None
            if refusal is None:
                refusal = self._hold(_ALL)
                if refusal is None and counted is not None:
                    refusal = self._count_admitted(counted)
                    if refusal is not None:
                        self._counts.add(_ALL, -1)
            if refusal is None:
                self._admitted[request] = _Admitted(client_address, time.monotonic(), counted,
                                                    proxy)
                return True
        self._refused(request, client_address, refusal)
        return False

    @staticmethod
    def _first_refusal(checks, ip):
        for check in checks:
            refusal = check(ip)
            if refusal is not None:
                return refusal
        return None

    def _count_admitted(self, ip):
        """Count a connection from ``ip`` against max_connections_per_ip (None), or the
        Refusal when the shared table has no room for the address."""
        refusal = self._hold(("ip", ip))
        if refusal is None:
            self.counters.incr("connections_total")
        return refusal

    def _hold(self, key):
        try:
            self._counts.add(key, 1)
        except TableFull as exc:
            return Refusal("busy", "busy", str(exc), logging.WARNING)
        return None

    def _refused(self, request, address, refusal):
        self.counters.incr("refused_" + refusal.counter)
        log.log(refusal.level, "%s: refused %s: %s", self.name, format_peer(address),
                refusal.reason)
        if refusal.code and self.tls is None:
            self._tell_refused(request, refusal)

    # -- PROXY protocol: the stage's two calls back (msgsrv.net.proxy_stage) -------

    def proxy_admit(self, key, peer, header):
        """The PROXY ``header`` of the connection ``key`` from ``peer`` is in: run the
        checks of the client it names (the peer itself for LOCAL and UNKNOWN headers)
        and return the address to serve it under.  Raises HandshakeRefused, logged
        and counted as at accept, when the client is refused."""
        address = peer if header.local else header.source
        self.counters.incr("proxy_local" if header.local else "proxy_headers")
        with self._lock, self._counts.locked():
            refusal = self._first_refusal(self.admission_checks, address[0])
            entry = self._admitted.get(key)
            if refusal is None and entry is not None:
                refusal = self._count_admitted(address[0])
            if refusal is None and entry is not None:
                entry.address, entry.counted = address, address[0]
                return address
        if refusal is None:  # the connection was released meanwhile (server closing)
            raise HandshakeRefused("closed")
        self._refused(key, address, refusal)
        raise HandshakeRefused("refused " + refusal.counter, refusal.reason)

    def proxy_refused(self, peer, counter, reason):
        """Count (``refused_<counter>``) and log a connection from ``peer`` refused for
        its PROXY header (missing, malformed, too slow)."""
        self.counters.incr("refused_" + counter)
        log.warning("%s: refused %s: %s", self.name, format_peer(peer), reason)

    def _proxy_stage(self, key, peer):
        """The PROXY header stage of an admitted connection, or None if it needs none."""
        with self._lock:
            entry = self._admitted.get(key)
        if entry is None or entry.proxy is None:
            return None
        return ProxyStage(entry.proxy, self, key, peer)

    def _tell_refused(self, request, refusal):
        """Tell a refused client why, where the handler's protocol has a way."""

    def _check_proxy_peer(self, ip, proxy):
        try:
            trusted = proxy.trusts(client_address(ip))
        except ValueError:
            trusted = False
        if trusted:
            return None
        return Refusal("proxy_untrusted", None, "not in proxy_trusted (proxy_protocol = %s: "
                       "connections come through the load balancers only)" % proxy.mode,
                       logging.INFO)

    def _check_access(self, ip):
        reason = self.access.refusal(ip) if self.access else None
        if reason is None:
            return None
        return Refusal("access", None, reason, logging.INFO)

    def _check_rate(self, ip):
        verdict = self.rate.check(ip) if self.rate is not None else None
        if verdict is None:
            return None
        left, started = verdict
        return Refusal("rate", "busy", "over rate_limit=%s, refused for %.1fs more"
                       % (self.rate.rate, left), logging.WARNING if started else logging.DEBUG)

    def _check_penalty(self, ip):
        left = self.penalties.check(ip, self.penalty_rules)
        if left is None:
            return None
        # Logged when the penalty started (auth_failed), not per refused connection.
        return Refusal("auth_penalty", "busy", penalty_message(left), logging.DEBUG)

    def auth_penalty_left(self, address):
        """Seconds the client ``address`` is still refused for failed authentications,
        or None."""
        return self.penalties.check(address[0], self.penalty_rules)

    def auth_failed(self, address):
        """Count one failed authentication from ``address``; a penalty it starts is
        counted (``auth_penalties``) and logged once."""
        self.counters.incr("auth_failures")
        started = self.penalties.failed(address[0], self.penalty_rules)
        if started is None:
            return
        source, seconds = started
        rules = self.penalty_rules
        self.counters.incr("auth_penalties")
        log.warning("%s: %s penalised: %d failed authentications within %gs, refused for "
                    "%gs (auth_penalty_*)", self.name, source, rules.failures, rules.window,
                    seconds)

    def _check_total(self, ip):
        if self._counts.total(_ALL) >= self.config["max_connections"]:
            return Refusal("busy", "busy", "too many connections (max_connections=%d)"
                           % self.config["max_connections"], logging.WARNING)
        return None

    def _check_per_ip(self, ip):
        if self._counts.total(("ip", ip)) >= self.config["max_connections_per_ip"]:
            return Refusal("busy", "busy", "too many connections from %s "
                           "(max_connections_per_ip=%d)"
                           % (ip, self.config["max_connections_per_ip"]), logging.WARNING)
        return None

    def _release(self, request):
        """Forget an admitted connection; return its _Admitted entry or None."""
        with self._lock:
            entry = self._admitted.pop(request, None)
            if entry is None:
                return None
            with self._counts.locked():
                self._counts.add(_ALL, -1)
                if entry.counted is not None:
                    self._counts.add(("ip", entry.counted), -1)
            self._lock.notify_all()
            return entry

    def _rekey(self, old, new):
        # TLS wraps the accepted socket in a new object: account for it under that.
        with self._lock:
            self._admitted[new] = self._admitted.pop(old)

    def connections_from(self, ip):
        """Connections counted against ``max_connections_per_ip`` for ``ip`` (by every
        worker process of the daemon, when it has several)."""
        with self._counts.locked():
            return self._counts.total(("ip", ip))

    @property
    def connection_count(self):
        """Connections admitted and not yet closed."""
        with self._lock:
            return len(self._admitted)

    def shutdown_request(self, request):
        """Close a thread-mode connection (or a refused one) and account for it."""
        entry = self._release(request)
        if entry is not None:
            access_log.info("close service=%s peer=%s duration=%.3f in=- out=- outcome=closed",
                            self.name, format_peer(entry.address),
                            time.monotonic() - entry.opened)
        super().shutdown_request(request)


class PooledTCPService(TCPService):
    """A TCP service whose msgsrv handler is served by a :class:`~msgsrv.net.pool.WorkerPool`."""

    pooled = True

    def __init__(self, config, bind_and_activate=True, global_options=None):
        # The pool holds no descriptor until server_activate starts it, and a
        # failed bind calls server_close: nothing is left open.
        self.pool = WorkerPool(config.name, self._make_handler,
                               workers=config["workers"], max_threads=config["max_threads"],
                               max_pending_output=config["max_pending_output"],
                               idle_timeout=config["idle_timeout"], on_close=self._pooled_closed)
        super().__init__(config, bind_and_activate, global_options)

    def _tune(self, config):
        self.pool.max_threads = max(config["max_threads"], self.pool.workers)
        self.pool.max_pending_output = config["max_pending_output"]
        self.pool.idle_timeout = config["idle_timeout"]

    def _make_handler(self, conn):
        return self.RequestHandlerClass(conn, self)

    def server_activate(self):
        super().server_activate()
        self.pool.start()

    def server_close(self):
        """Close the listener, release the pool (its connections aborted if any are left)
        and what the service object holds (``Service.close``)."""
        super().server_close()
        self.pool.close()
        self._release_service()

    def _close_listener(self):
        socketserver.TCPServer.server_close(self)

    def _tell_refused(self, request, refusal):
        self.RequestHandlerClass.refuse(request, refusal.code, refusal.reason)

    def process_request(self, request, client_address):
        """Hand an admitted connection to the pool (its TLS handshake runs there)."""
        transport = None
        if self.tls is not None:
            transport = self.tls.wrap(request)
            self._rekey(request, transport.sock)
        key = request if transport is None else transport.sock
        self.pool.add(request, client_address, transport, self._proxy_stage(key, client_address))

    def _pooled_closed(self, conn):
        self._release(conn.sock)
        self.counters.update({"bytes_in": conn.bytes_in, "bytes_out": conn.bytes_out})
        access_log.info("close service=%s peer=%s duration=%.3f in=%d out=%d outcome=%s",
                        self.name, format_peer(conn.address), time.monotonic() - conn.opened,
                        conn.bytes_in, conn.bytes_out, (conn.reason or "closed").replace(" ", "-"))

    def stop(self, timeout):
        """Stop accepting, let running handlers finish within ``timeout``, close the rest."""
        self.stop_accepting()
        self.pool.stop(timeout, notify=lambda conn: conn.handler.server_closing())
        self._release_service()

    def abort_connections(self, reason="aborted"):
        """Close every open connection now, dropping queued output (quick stop)."""
        for conn in self.pool.connections():
            conn.abort(reason)


class ThreadedTCPService(socketserver.ThreadingMixIn, TCPService):
    """A TCP service running a plain ``socketserver`` handler, one thread per connection.

    ``max_threads`` bounds those threads: a connection over it is refused
    (``refused_busy``), like one over ``max_connections``.
    """

    daemon_threads = True
    block_on_close = False

    def __init__(self, config, bind_and_activate=True, global_options=None):
        super().__init__(config, bind_and_activate, global_options)
        self.connection_checks.append(self._check_threads)

    def _check_threads(self, ip):
        if len(self._admitted) >= self.config["max_threads"]:
            return Refusal("busy", None, "all %d threads serve connections (max_threads=%d)"
                           % (len(self._admitted), self.config["max_threads"]),
                           logging.WARNING)
        return None

    def process_request(self, request, client_address):
        """Start the connection's own thread."""
        request.settimeout(self.config["idle_timeout"] or None)
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        """The PROXY header and the TLS handshake (if any) run here, in the connection's
        own thread."""
        stage = self._proxy_stage(request, client_address)
        if stage is not None:
            try:
                client_address = stage.read_blocking(request)
            except HandshakeRefused:
                self.shutdown_request(request)
                return
        tls = self.tls
        if tls is not None:
            try:
                wrapped = tls.handshake_blocking(request)
            except OSError as exc:
                log.info("%s: %s TLS handshake failed: %s", self.name,
                         format_peer(client_address), getattr(exc, "reason", None) or exc)
                self._tls_failed(exc)
                self.shutdown_request(request)
                return
            self._rekey(request, wrapped)
            request = wrapped
        super().process_request_thread(request, client_address)

    def stop(self, timeout):
        """Stop accepting, let running handlers finish within ``timeout``, close the rest."""
        self.stop_accepting()
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._admitted and time.monotonic() < deadline:
                self._lock.wait(min(0.05, max(0.0, deadline - time.monotonic())))
        self.abort_connections("shutdown timeout")
        self._release_service()

    def abort_connections(self, reason="aborted"):
        """Shut every open connection's socket down now (quick stop)."""
        with self._lock:
            leftovers = list(self._admitted)
        for request in leftovers:
            try:
                request.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class ReplySocket:
    """The service socket as UDP handlers see it (``self.request[1]``).

    ``sendto`` goes through :meth:`UDPService.send_reply`: limited per
    destination address and counted; anything else is the socket's own.
    """

    def __init__(self, server):
        self._server = server
        self._send_reply = server.send_reply

    def sendto(self, data, *flags_and_address):
        """``sendto(data, address)`` or ``sendto(data, flags, address)``, as on a socket."""
        return self._send_reply(data, flags_and_address)

    def __getattr__(self, name):
        return getattr(self._server.socket, name)


class UDPService(_ServiceMixin, socketserver.UDPServer):
    """A UDP service: handlers run inline; datagrams that must not be answered
    (refused address, privileged source port, the daemon's own listener, too
    large) are dropped and replies are limited per address (msgsrv.net.datagram)."""

    allow_reuse_address = True

    def __init__(self, config, bind_and_activate=True, global_options=None):
        self._init_service(config, global_options)
        self.replies = None
        self.drops = DropLog()
        self._listeners, self._listeners_of = None, ()  # () is never a registry's answer
        self._running = None  # (sender, monotonic start) of the handler running now
        self._serving, self._served, self._serving_thread = False, threading.Event(), None
        # Counted by the serving thread alone, without a lock (Counters.tally).
        self._tally = self.counters.tally(("datagrams", "bytes_in", "replies", "bytes_out"))
        self._apply_policy(self._load_policy(config, self.global_options))
        self._tune(config)
        super().__init__(config.address, config.handler_class, bind_and_activate)
        self._reply_socket = ReplySocket(self)

    def _load_policy(self, config, global_options):
        check_transport_options(config)
        replies = None
        if config["reply_rate"] is not None:
            settings = (config["reply_rate"].count / config["reply_rate"].per,
                        config["reply_burst"], config["reply_sources_max"])
            replies = self.replies
            if replies is None or replies.settings != settings:
                replies = ReplyLimiter(*settings)
        return super()._load_policy(config, global_options), replies

    def _apply_policy(self, policy):
        self.access, self.replies = policy
        self._refusal = self.access.refusal if self.access else None

    def _tune(self, config):
        self.max_datagram = config["max_datagram"]
        self.max_packet_size = self.max_datagram + 1  # one more byte reveals truncation
        self.min_source_port = config["udp_min_source_port"]

    def get_request(self):
        """Receive one datagram; handlers get the counting :class:`ReplySocket`."""
        (data, _), client_address = super().get_request()
        return (data, self._reply_socket), client_address

    def serve_forever(self, poll_interval=0.5):
        """Serve datagrams until :meth:`shutdown`, with two system calls a datagram.

        socketserver's loop polls before each datagram: three system calls
        and its selector's Python.  This one blocks in ``recvfrom``, bounded
        by the kernel receive timeout ``poll_interval`` (the shutdown
        latency), and runs the same hooks: ``verify_request``, the handler
        class (``finish_request``), ``handle_error``, and ``service_actions``
        at every receive timeout and every 64 datagrams.  A UDP request needs
        no ``shutdown_request``.
        """
        self._serving, self._serving_thread = True, threading.get_ident()
        self._served.clear()
        sock = self.socket
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(poll_interval))
        recvfrom, reply_socket, tally, count = sock.recvfrom, self._reply_socket, self._tally, 0
        try:
            while self._serving:
                try:
                    data, address = recvfrom(self.max_packet_size)
                except (BlockingIOError, InterruptedError):  # the receive timeout: idle
                    self.service_actions()
                    continue
                except OSError:
                    continue  # what socketserver does too (get_request failed)
                request = (data, reply_socket)
                if self.verify_request(request, address):
                    tally["datagrams"] += 1
                    tally["bytes_in"] += len(data)
                    self._running = (address, time.monotonic())
                    try:
                        self.RequestHandlerClass(request, address, self)
                    except Exception:
                        self.handle_error(request, address)
                    self._running = None
                count += 1
                if count == 64:
                    count = 0
                    self.service_actions()
        finally:
            self._served.set()

    def shutdown(self):
        """Stop :meth:`serve_forever` and wait until it has returned."""
        self._serving = False
        self._served.wait()

    def verify_request(self, request, client_address):
        """Drop a datagram from a refused address (logged at DEBUG), or one that must
        not be answered or is larger than ``max_datagram`` (counted, logged once per
        period and reason)."""
        ip, port = client_address[0], client_address[1]
        refusal = self._refusal
        if refusal is not None:
            reason = refusal(ip)
            if reason is not None:
                self.counters.incr("refused_access")
                log.debug("%s: dropped datagram from %s: %s", self.name,
                          format_peer(client_address), reason)
                return False
        # The usual datagram needs one set lookup here; source_refusal says why not.
        listeners = self.own_listeners()
        drop = None
        if port < self.min_source_port or port == 0 or port in listeners.ports:
            drop = source_refusal(ip, port, self.min_source_port, listeners)
        if drop is None and len(request[0]) > self.max_datagram:
            drop = Drop("too_large", "larger than max_datagram=%d" % self.max_datagram)
        if drop is not None:
            self._drop(drop, "datagram from", client_address)
            return False
        return True

    def own_listeners(self):
        """The daemon's UDP listeners (this server's own address when it runs alone)."""
        registered = self.registry.addresses("udp") if self.registry is not None else None
        if registered is not self._listeners_of:  # the registry changed (or first datagram)
            self._listeners_of = registered
            self._listeners = Listeners((registered or frozenset())
                                        | {tuple(self.server_address[:2])})
        return self._listeners

    def send_reply(self, data, flags_and_address):
        """Send a handler's datagram unless its destination is over ``reply_rate``
        (dropped as if lost: counted, logged once per period); count it."""
        address = flags_and_address[-1]
        replies = self.replies
        if replies is not None and not replies.allow(address[0]):
            self._drop(Drop("reply_rate", "over reply_rate=%s (reply_burst=%d) for %s"
                            % (self.config["reply_rate"], replies.burst, address[0])),
                       "reply to", address)
            return len(data)
        sent = self.socket.sendto(data, *flags_and_address)
        if threading.get_ident() == self._serving_thread:
            tally = self._tally
            tally["replies"] += 1
            tally["bytes_out"] += sent
        else:  # a handler's own thread
            self.counters.incr2("replies", 1, "bytes_out", sent)
        return sent

    def _drop(self, drop, what, address):
        self.counters.incr("refused_" + drop.counter)
        if self.drops.first(drop.counter):
            log.warning("%s: dropped %s %s: %s (further drops of refused_%s are logged "
                        "once per %gs)", self.name, what, format_peer(address), drop.reason,
                        drop.counter, self.drops.period)

    def service_actions(self):
        """Between datagrams: log the drops kept quiet in the period that ended."""
        for counter, count, seconds in self.drops.due():
            log.warning("%s: dropped %d more (refused_%s) in the last %.0fs", self.name,
                        count, counter, seconds)

    def stop(self, timeout):
        """Stop serving within ``timeout``: a handler still running then is abandoned
        (logged with the service, the handler and the datagram's sender)."""
        if self.stop_accepting(timeout):
            return
        running = self._running
        peer, since = running if running is not None else ("?", time.monotonic())
        log.error("%s: stop: handler %s.%s still running after %gs (datagram from %s, "
                  "%.1fs ago): abandoned", self.name, self.RequestHandlerClass.__module__,
                  self.RequestHandlerClass.__qualname__, timeout, format_peer(peer),
                  time.monotonic() - since)

    def abort_connections(self, reason="aborted"):
        """Nothing to abort: UDP has no connections."""


def _timeval(seconds):
    """``seconds`` as the ``struct timeval`` that SO_RCVTIMEO takes."""
    return struct.pack("ll", int(seconds), int(seconds % 1 * 1e6))


def check_transport_options(config, on_tls_failure=None):
    """Load what the transport of the service ``config`` needs: ``(tls, proxy)``, its
    ServerTLS (TCP with ``tls_cert``; else None) and its PROXY protocol ProxyPolicy
    (None when off).  Raises ConfigError naming the service when the TLS files
    cannot be loaded, TLS or PROXY headers are asked of a UDP service, or
    ``proxy_protocol`` is on with no ``proxy_trusted`` peer."""
    where = "[service:%s]" % config.name
    if config.transport == "udp":
        for key, what in (("tls_cert", "TLS"), ("tls_client_ca", "TLS"),
                          ("proxy_protocol", "the PROXY protocol")):
            if config[key] and config[key] != "off":
                raise ConfigError("%s %s needs transport tcp (%s over UDP is not supported)"
                                  % (where, key, what))
        return None, None
    proxy = ProxyPolicy.from_options(where, config.options)
    try:
        return ServerTLS.from_options(config.options, on_tls_failure), proxy
    except ConfigError as exc:
        raise ConfigError("%s %s" % (where, exc)) from None


def listen_error(config, exc):
    """The OSError that says the service ``config`` cannot listen, and why."""
    return OSError("[service:%s] cannot listen on %s: %s"
                   % (config.name, format_peer(config["host"], config["port"]),
                      exc.strerror or exc))


def open_listener(config, reuse_port=False, port=None):
    """A socket bound to the address of the service ``config`` (listening, for TCP),
    as its server would bind it: for the master of several worker processes.

    With ``reuse_port`` it is one of several bound to the same address
    (``SO_REUSEPORT``: the kernel spreads connections over them); ``port``
    replaces the configured one (the port the first of them got for port 0).
    Raises the OSError of :func:`listen_error`.
    """
    kind = socket.SOCK_DGRAM if config.transport == "udp" else socket.SOCK_STREAM
    sock = socket.socket(_family(config["host"]), kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # allow_reuse_address
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((config["host"], config["port"] if port is None else port))
        if kind == socket.SOCK_STREAM:
            sock.listen(config["backlog"])
    except OSError as exc:
        sock.close()
        raise listen_error(config, exc) from None
    return sock


def make_server(config, bind_and_activate=True, global_options=None):
    """Create the server for one ServiceConfig and (by default) bind it.

    ``global_options`` (the ``[msgsrv]`` options) adds the global access
    rules.  Raises OSError if the address is taken, ConfigError if the
    handler's service object or the TLS files refuse.
    """
    cls = UDPService if config.transport == "udp" else TCPService
    return cls(config, bind_and_activate, global_options)
