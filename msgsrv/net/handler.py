"""The handler contracts.

:class:`Handler` (TCP, served by the worker pool) is called per event:
``connection_made``, ``data_received``, ``eof_received``, ``timed_out``
(idle), the callbacks of its own timers (``self.conn.call_later``),
``connection_lost``.  Calls for one connection never overlap.  A call may
block inside ``self.conn.blocking(timeout)`` and then owns the connection
until it returns; otherwise it must return promptly.  ``blocking`` raises
``ServiceBusy`` when the pool has ``max_threads - workers`` calls blocked
already.

:class:`FramedHandler` adds the frame codec: ``message_received`` per frame,
``reply`` and ``reply_error``, and a blocking :class:`~msgsrv.wire.frame_stream.FrameStream`
for streaming bodies.

:class:`DatagramHandler` (UDP) runs inline, once per datagram.
"""

import contextlib
import logging
import socketserver

from msgsrv.ops.settings import Setting, seconds, size
from msgsrv.wire.errors import ConnectionFailed, ProtocolError, RequestTimeout, ServiceBusy, TooSlow
from msgsrv.wire.frame_stream import FrameStream
from msgsrv.wire.frames import (MAX_BODY_CEILING, MAX_HEADER_CEILING, NEED_DATA, REPLY_LIMITS,
                                FrameDecoder, encode, error_header, shown)
from .peer import format_peer
from .transfer_limits import PacedSocket, RateWatch

log = logging.getLogger("msgsrv.handler")


class Handler:
    """Base class of pool-served TCP handlers; one instance per connection.

    ``self.conn`` is the :class:`msgsrv.net.pool.Connection`, ``self.server``
    the service's server, ``self.service`` its service object (an instance of
    ``service_class``, shared by every connection and kept across reloads),
    ``self.options`` the service options as they were when the connection
    was accepted.
    """

    settings = ()
    #: The class of the service object (a :class:`msgsrv.net.service.Service`
    #: subclass; None: a plain Service, or the deprecated prepare_service hook).
    service_class = None
    #: True lets the pool serve a busy connection for a moment with blocking
    #: reads on one thread (faster round trips when few clients are busy).
    #: Only for handlers that send to their own connection alone.
    sticky = False

    def __init__(self, conn, server):
        self.conn = conn
        self.server = server
        self.service = server.service
        self.options = server.config.options

    @classmethod
    def prepare_service(cls, server):
        """Deprecated (use ``service_class``): called when the service is created
        (or reloaded) to load shared resources onto ``server``.

        On reload it sees the new ``server.config`` and its attribute writes
        are applied only if the whole reload is; raise ConfigError to refuse.
        """

    @classmethod
    def check_service(cls, service, global_options):
        """Check what the service object would load for ``service`` (its ServiceConfig),
        including what depends on the process that will serve it (who it runs as),
        changing nothing; raise ConfigError naming the service and the keys to fix.

        ``--check`` and every start run it first (:mod:`msgsrv.ops.preflight`); a
        path named by :meth:`creates` may be missing then.
        """

    @classmethod
    def creates(cls, service):
        """``(key, what)`` pairs: the settings naming paths the service object creates
        when missing (``--check`` says it would, after checking that it could)."""
        return ()

    @classmethod
    def start_notes(cls, service):
        """Lines ``--check`` prints as notes about ``service`` (its ServiceConfig): what a
        start will do that the operator should know (access it will require...)."""
        return ()

    @classmethod
    def release_service(cls, server):
        """Deprecated (use ``Service.close``): called once when the service has stopped."""

    @classmethod
    def refuse(cls, sock, code, reason):
        """Tell a refused client why, if the protocol has a way (best effort, never blocks)."""

    def connection_made(self):
        """The connection is ready; send a greeting here if the protocol has one."""

    def data_received(self, data):
        """Bytes arrived from the peer."""
        raise NotImplementedError

    def eof_received(self):
        """The peer shut down its sending side.  Return True to keep the connection open."""
        return False

    def timed_out(self, reason):
        """The idle timeout expired (``reason`` "idle timeout"; "deadline" for the
        deprecated ``conn.set_deadline``).  Timers of your own: ``conn.call_later``."""
        log.info("%s: %s %s, closing", self.server.name, format_peer(self.conn.address), reason)
        self.conn.abort(reason)

    def server_closing(self):
        """The server is shutting down; say goodbye if the protocol has a way.

        Runs in the stopping thread, possibly during another call of this
        handler: only send from here.  Then the pool closes the connection if
        it is idle; a call in progress may still send its reply
        (``conn.closing`` is true meanwhile) and the connection closes after it.
        """

    def connection_lost(self):
        """The connection is closed; release what this handler holds."""


class FramedHandler(Handler):
    """A handler speaking the frame protocol (docs/PROTOCOL.rst).

    Every frame must have a string ``type`` (else ``bad-request``).  ``body_types``
    names the request types that may carry a body: None (the default) lets any
    request carry one; a tuple refuses a body on any other type with ``bad-request``.
    """

    body_types = None

    settings = (
        Setting("max_header", size(64, MAX_HEADER_CEILING), "64K",
                "Largest frame header accepted (bytes of JSON)."),
        Setting("max_body", size(0, MAX_BODY_CEILING), "1M",
                "Largest frame body accepted (file data is streamed, not framed)."),
        Setting("io_timeout", seconds(0.1, 3600), "30",
                "Seconds a blocking transfer waits for the peer before giving up."),
        Setting("min_transfer_rate", size(0), "1K",
                "Bytes per second a blocking transfer must move, either way, averaged "
                "over transfer_rate_window; a slower one is aborted (too-slow). "
                "0 disables."),
        Setting("transfer_rate_window", seconds(1, 3600), "10",
                "Seconds of waiting on the peer over which min_transfer_rate is averaged "
                "(also the grace period at the start of a transfer)."),
        Setting("frame_timeout", seconds(0.1, 3600), "30",
                "Seconds a client may take to send one whole frame once it has begun "
                "(closes slow-drip clients)."),
    )

    def connection_made(self):
        self.decoder = FrameDecoder(self.options["max_header"], self.options["max_body"])
        self._held = False
        self._frame_timer = None

    @classmethod
    def refuse(cls, sock, code, reason):
        with contextlib.suppress(OSError):
            sock.send(encode(error_header(code, reason)))

    def data_received(self, data):
        try:
            self.decoder.feed(data)
        except ProtocolError as exc:
            self.fail(exc.code, exc.message)
            return
        self._drain()

    def _drain(self):
        try:
            while not self.conn.closing and not self._held:
                message = self.decoder.next_message()
                if message is NEED_DATA:
                    self._watch_partial_frame()
                    return
                self._handle(message)
        except ProtocolError as exc:
            self.fail(exc.code, exc.message)

    def _watch_partial_frame(self):
        # An absolute deadline for a begun frame: trickling a byte at a time
        # must not keep a connection (or a client's slot) forever.
        if self.decoder.partial:
            if self._frame_timer is None:
                self._frame_timer = self.conn.call_later(self.options["frame_timeout"],
                                                         self._frame_timed_out)
        elif self._frame_timer is not None:
            self._frame_timer.cancel()
            self._frame_timer = None

    def _frame_timed_out(self):
        self._frame_timer = None
        log.info("%s: %s frame not completed within %gs, closing", self.server.name,
                 format_peer(self.conn.address), self.options["frame_timeout"])
        self.reply_error("timeout", "frame not completed within %g seconds"
                         % self.options["frame_timeout"])
        self.conn.close("frame timeout")

    def hold(self):
        """Stop taking messages (buffered ones wait too) until release()."""
        self._held = True
        self.conn.pause_reading()

    def release(self):
        """Take messages again, starting with any already buffered."""
        self._held = False
        self.conn.resume_reading()
        self._drain()

    def _handle(self, message):
        try:
            self._check_frame(message)
            self.message_received(message)
        except ProtocolError as exc:
            self.reply_error(exc.code, exc.message)
        except TooSlow as exc:
            self._too_slow(exc)
        except (ConnectionFailed, RequestTimeout, OSError) as exc:
            log.info("%s: %s transfer ended: %s", self.server.name,
                     format_peer(self.conn.address), exc)
            self.conn.abort(str(exc))
        except Exception:
            log.exception("%s: handler error for %s", self.server.name,
                          format_peer(self.conn.address))
            self.server.counters.incr("errors")
            self.reply_error("internal", "internal server error (logged)")
            self.conn.close("handler error")

    def _check_frame(self, message):
        if not isinstance(message.type, str):
            raise ProtocolError("bad-request", "a frame needs a string 'type' (got %s)"
                                % shown(message.type))
        if message.body and self.body_types is not None and message.type not in self.body_types:
            raise ProtocolError("bad-request", "a %s frame takes no body (got %d bytes)"
                                % (shown(message.type), len(message.body)))

    def _too_slow(self, exc):
        # The peer reads an error frame only if it was the one sending.
        log.warning("%s: %s transfer too slow, closing: %s", self.server.name,
                    format_peer(self.conn.address), exc.message)
        self.server.counters.incr("transfers_too_slow")
        if not exc.receiving:
            self.conn.abort("too slow")
            return
        self.reply_error("too-slow", exc.message)
        self.conn.close("too slow")

    def eof_received(self):
        try:
            self.decoder.eof()
        except ProtocolError as exc:
            log.info("%s: %s %s", self.server.name, format_peer(self.conn.address), exc.message)
        return False

    def message_received(self, message):
        """One complete frame arrived.  Raise ProtocolError to answer with an error frame."""
        raise NotImplementedError

    def reply(self, header, body=b""):
        """Queue one frame for the peer (never blocks)."""
        return self.conn.send(encode(header, body, **REPLY_LIMITS))

    def reply_error(self, code, message, **extra):
        """Queue an error frame; the connection stays open."""
        return self.reply(error_header(code, message, **extra))

    def fail(self, code, message):
        """Protocol violation: one log line, an error frame, then close."""
        log.warning("%s: %s protocol error %s: %s", self.server.name,
                    format_peer(self.conn.address), code, message)
        self.reply_error(code, message)
        self.conn.close("protocol error: %s" % code)

    @contextlib.contextmanager
    def stream(self, timeout=None):
        """Within message_received: a blocking FrameStream sharing this decoder.

        Its socket is paced (:class:`~msgsrv.net.transfer_limits.PacedSocket`):
        ``RequestTimeout`` after ``timeout`` (default ``io_timeout``) seconds
        without progress, ``TooSlow`` below ``min_transfer_rate``; both end
        the connection (``too-slow`` error frame first when the peer was
        sending).  Raises ``ServiceBusy`` before anything when the pool has no
        thread to spare.
        """
        timeout = self.options["io_timeout"] if timeout is None else timeout
        watch = RateWatch(self.options["min_transfer_rate"], self.options["transfer_rate_window"],
                          timeout)
        with self.conn.blocking(timeout, wrap=lambda sock: PacedSocket(sock, watch)) as sock:
            yield FrameStream(sock, decoder=self.decoder)

    @contextlib.contextmanager
    def transfer(self, buffers=0):
        """:meth:`stream` for a transfer admitted by the service's TransferGate.

        ``buffers`` is the bytes of transfer buffers the block will hold.
        Raises ``ServiceBusy`` (answered ``busy``, the connection stays
        usable) before anything moves when ``max_transfers``,
        ``max_transfers_per_ip`` or ``transfer_buffer_budget`` is reached.
        """
        with self.admitted(buffers), self.stream() as stream:
            yield stream

    @contextlib.contextmanager
    def admitted(self, buffers=0):
        """Hold a transfer slot of the service's TransferGate while the block runs."""
        try:
            self.server.transfers.acquire(self.conn.address[0], buffers)
        except ServiceBusy as exc:
            self.server.counters.incr("transfers_refused")
            log.info("%s: %s transfer refused: %s", self.server.name,
                     format_peer(self.conn.address), exc.message)
            raise
        try:
            yield
        finally:
            self.server.transfers.release(self.conn.address[0], buffers)


class DatagramHandler(socketserver.BaseRequestHandler):
    """Base class of UDP handlers; runs inline, once per datagram.

    ``self.data`` is the datagram, ``self.reply(data)`` answers the sender.
    ``self.socket`` is the service's :class:`msgsrv.net.server.ReplySocket`:
    what it sends is counted (``replies``, ``bytes_out``) and limited per
    address (``reply_rate``).
    """

    settings = ()

    def setup(self):
        self.data, self.socket = self.request

    def reply(self, data):
        """Send one datagram back to the sender (dropped, as if lost, over ``reply_rate``)."""
        self.socket.sendto(data, self.client_address)
