"""The chat service: rooms, nicknames, private messages and history over UTF-8 lines.

The wire format is specified in docs/PROTOCOL.rst ("Chat protocol") and
implemented sans-IO in :mod:`msgsrv.services.chat.protocol`; the shared state lives in
:class:`msgsrv.services.chat.state.ChatState` (one per service).  This module is the
glue: bytes from the pool become lines, lines become commands, commands
become deliveries, and deliveries are sent once the state's lock is released.

Slow consumers: every send goes through ``conn.send(data, limit=max_queue)``,
which writes straight to the socket when it has room and queues otherwise; a
client with more than ``max_queue`` bytes waiting is disconnected ("send
queue exceeded", logged) and nobody else waits for it.

Flood control: each connection has a token bucket (``line_rate`` lines per
second after a burst of ``line_burst``).  A line over the rate is *delayed*,
not dropped: reading from that client pauses until the bucket refills (its
unread bytes wait in the kernel, so TCP slows it down), and it is told once
per ``FLOOD_WARNING_INTERVAL`` with ``! flood``.  Other clients are served
meanwhile.
"""

import functools
import logging
import re
import time

from msgsrv.plugin import Handler, Service, Setting, TokenBucket, chain, format_peer, integer, size
from . import backend
from .protocol import (ChatError, LineReader, LineTooLong, check_nick, format_error,
                       format_help, format_notice, parse_line)
from .state import LOBBY, ChatState, Outbox, Pending, deliver

log = logging.getLogger("msgsrv.chat")

FLOOD_WARNING_INTERVAL = 30.0  # seconds between two ``! flood`` warnings to one client
_FLUSH_AT = 64 * 1024  # bytes gathered before a batch is sent mid-chunk
_NEED_NICK = frozenset({"join", "leave", "msg", "me"})


def word(text):
    """Parser for one word: no spaces, no control characters."""
    value = text.strip()
    if not re.fullmatch(r"[^\s\x00-\x1f\x7f-\x9f]+", value):
        raise ValueError("must be one word (no spaces)")
    return value


class ChatService(Service):
    """A chat service's shared state (``chat``, a ChatStore), kept across reloads:
    a reload changes its limits, never its sessions, rooms, nicks or history.

    ``backend = memory`` makes a ``store_class`` (ChatState); a ``redis://``
    backend a :class:`~msgsrv.services.chat.redis_store.RedisChatStore`,
    which connects in the background.
    """

    store_class = ChatState
    fixed_keys = backend.FIXED_KEYS

    @classmethod
    def serves_in_one_process(cls, config):
        """True with the memory backend: the in-process chat state cannot be split, so
        with several worker processes the chat service runs in worker 0 only.  A
        shared backend (Redis) serves from every worker, as from several daemons."""
        return not config["backend"].shared

    def __init__(self, config, global_options):
        super().__init__(config, global_options)
        self.chat = self._create_store(config)

    def _create_store(self, config):
        if not config["backend"].shared:
            return self.store_class(history=config["history"], max_joined=config["max_joined"])
        backend.check(config.options, self.where)
        from .redis_store import RedisChatStore
        return RedisChatStore(config.options, config.name)

    def close(self):
        super().close()
        self.chat.close()

    def prepare_reconfigure(self, config, global_options):
        limits = config["history"], config["max_joined"]
        return chain(super().prepare_reconfigure(config, global_options),
                     lambda: self.chat.configure(*limits))

    def open_session(self, conn):
        """A chat session of this service over ``conn``, carried by another service (the
        web console): the same rules, limits and counters as a TCP client of this one.

        ``conn`` offers what a pool Connection offers a handler: ``send(data,
        limit)``, ``close(reason)``, ``abort(reason)``, ``pause_reading()``,
        ``resume_reading()``, ``call_later(seconds, callback)``, ``closing``,
        ``address`` and ``reason``.  The caller drives the returned
        :class:`ChatHandler` as the pool would (``connection_made``,
        ``data_received`` with the client's lines, ``eof_received``,
        ``timed_out``, ``connection_lost``).
        """
        return ChatHandler(conn, _SessionSite(self))


class _SessionSite:
    """What a ChatHandler reads of its server, for a session carried by another service."""

    def __init__(self, service):
        self.service = service
        self.name = service.name
        self.config = service.config
        self.counters = service.counters


class ChatHandler(Handler):
    """One chat client: greeting, nickname, commands, room messages, flood control."""

    settings = (
        Setting("max_line", size(64, 1 << 20), "4096",
                "Longest line a client may send (bytes, without the line end); a longer "
                "line is answered with an error and discarded."),
        Setting("history", integer(0, 100000), "50",
                "Messages each room keeps and replays to a client that joins it."),
        Setting("max_queue", size(4096, 1 << 30), "256K",
                "Bytes of output waiting for one client before it is disconnected "
                "(\"send queue exceeded\")."),
        Setting("line_rate", integer(0, 1000000), "10",
                "Lines per second a client may send once its burst is spent; faster "
                "lines are delayed (0: no limit)."),
        Setting("line_burst", integer(1, 1000000), "20",
                "Lines a client may send at once before line_rate applies."),
        Setting("max_joined", integer(1, 10000), "20", "Rooms one client may be in at once."),
        Setting("server_name", word, "msgsrv", "Name the greeting shows (one word)."),
    ) + backend.SETTINGS

    service_class = ChatService

    @classmethod
    def check_service(cls, service, global_options):
        """A shared backend needs the ``redis`` package and a readable password."""
        backend.check(service.options, "[service:%s]" % service.name)

    def __init__(self, conn, server):
        super().__init__(conn, server)
        self.state = self.service.chat
        self.member = self.state.new_member(conn)
        self.limit = self.options["max_queue"]
        # A shared store sends the room lines itself; replies go out at once, in order with them.
        flush_at = 0 if self.state.shared else min(_FLUSH_AT, self.limit // 4)
        self.outbox = Outbox(self.limit, flush_at, functools.partial(self.state.send, self.member))
        self.reader = LineReader(self.options["max_line"])
        rate = self.options["line_rate"]
        self.bucket = TokenBucket(rate, self.options["line_burst"]) if rate else None
        self._raw, self._pos = b"", 0  # a received chunk and how far it was handled
        self._paused = False
        self._warned_at = None
        self._quitting = False
        self._flood_timer = None
        self._pending = None  # (Pending, then): a store answer awaited before the next line
        self._armed = None    # the Pending whose completion resumes this handler

    # -- pool events ----------------------------------------------------------

    def connection_made(self):
        self._reply(format_notice("welcome", self.options["server_name"],
                                  "type a nickname (or /nick NAME) to start; /help lists "
                                  "the commands"))
        self.outbox.flush()

    def data_received(self, data):
        if self._pos < len(self._raw):
            data = self._raw[self._pos:] + data
        self._raw, self._pos = data, 0
        self._pump()

    def eof_received(self):
        for event in self.reader.eof():
            self._handle(event)
        self.outbox.flush()
        return False

    def timed_out(self, reason):
        if self.conn.closing:
            self.conn.abort(reason)
            return
        log.info("%s: %s %s, closing", self.server.name, self._who(), reason)
        self._quit("%s (no activity for %gs)" % (reason, self.options["idle_timeout"]))
        self.outbox.flush()
        self.conn.close(reason)

    def server_closing(self):
        # May run in the stopping thread, concurrently with a worker: send only.
        self.state.closing = True
        self.conn.send(format_notice("shutdown", "the server is shutting down"), limit=self.limit)

    def connection_lost(self):
        reason = self.conn.reason or "connection closed"
        if reason == "send queue exceeded":
            self.server.counters.incr("chat_send_queue_exceeded")
            log.warning("%s: %s disconnected: send queue exceeded (max_queue=%d bytes)",
                        self.server.name, self._who(), self.limit)
        deliver(self.state.quit(self.member, reason), self.limit)

    # -- reading lines under the rate limit -------------------------------------

    def _pump(self):
        raw, view, handled = self._raw, memoryview(self._raw), 0
        while not self._quitting and self._settled() and self._pos < len(raw):
            end = raw.find(b"\n", self._pos) + 1
            if end and not self._may_take():
                break
            events = self.reader.feed(view[self._pos:end or len(raw)])
            self._pos = end or len(raw)
            for event in events:
                self._handle(event)
            handled += bool(end)
        self.outbox.flush()
        self.server.counters.incr("chat_lines", handled)
        self._after_pump()

    def _may_take(self):
        if self.bucket is None:
            return True
        wait = self.bucket.take()
        if not wait:
            return True
        self._throttle(wait)
        return False

    def _pause(self):
        if not self._paused:
            self._paused = True
            self.conn.pause_reading()

    def _throttle(self, wait):
        self._pause()
        if self._flood_timer is not None:
            self._flood_timer.cancel()
        self._flood_timer = self.conn.call_later(wait, self._flood_delay_over)
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= FLOOD_WARNING_INTERVAL:
            self._warned_at = now
            self.server.counters.incr("chat_flood_delayed")
            log.info("%s: %s sends faster than %d lines/s; delaying its lines",
                     self.server.name, self._who(), self.options["line_rate"])
            self._reply(format_error("flood", "more than %d lines per second: your lines "
                                              "are delayed" % self.options["line_rate"]))

    def _flood_delay_over(self):
        self._flood_timer = None
        if not self.conn.closing:
            self._pump()

    def _after_pump(self):
        if self._quitting:
            self.conn.close("quit")
            return
        if self._pending is not None:
            self._wait_for(self._pending[0])
            return
        if self._pos < len(self._raw):
            return  # delayed: the flood timer resumes
        self._raw, self._pos = b"", 0
        if self._paused:
            self._paused = False
            self.conn.resume_reading()

    # -- answers that come later (a shared store) ---------------------------------

    def _await(self, result, then=None):
        """Send a store call's deliveries (or answer line), then run ``then()``; a
        Pending result holds the next lines until it is done (:meth:`_settled`)."""
        if isinstance(result, Pending):
            self._pending = (result, then)
            return
        if isinstance(result, bytes):  # a question's answer: one line for this client
            result = [(self.member.own, result)]
        self.outbox.add(result)
        if then is not None:
            then()

    def _settled(self):
        """True unless a store answer is still awaited; one that came is handled now."""
        while self._pending is not None:
            pending, then = self._pending
            if not pending.done:
                return False
            self._pending = None
            try:
                if pending.error is not None:
                    raise pending.error
                self._await(pending.deliveries, then)
            except ChatError as exc:
                self._reply(format_error(exc.code, exc.message))
        return True

    def _wait_for(self, pending):
        """Read nothing more until ``pending`` is done, then go on (in a worker)."""
        self._pause()
        if self._armed is not pending:
            self._armed = pending
            pending.when_done(lambda: self.conn.call_soon(self._answered))

    def _answered(self):
        if not self.conn.closing:
            self._pump()

    # -- commands ---------------------------------------------------------------

    def _handle(self, event):
        try:
            if isinstance(event, LineTooLong):
                raise ChatError("line-too-long", "line longer than %d bytes discarded"
                                % event.limit)
            command = parse_line(event.text)
            if self.member.nick is None and command.name in _NEED_NICK:
                raise ChatError("no-nick", "choose a nickname first: /nick NAME")
            getattr(self, "_do_" + command.name)(*command.args)
        except ChatError as exc:
            self._reply(format_error(exc.code, exc.message))

    def _reply(self, line):
        self.outbox.add([(self.member.own, line)])

    def _do_noop(self):
        pass

    def _do_say(self, text):
        if self.member.nick is None:
            self._do_nick(check_nick(text.strip()))  # before a nick, a line is the nick
            return
        self._await(self.state.say(self.member, text))

    def _do_me(self, text):
        self._await(self.state.say(self.member, text, action=True))

    def _do_nick(self, name):
        first = self.member.nick is None
        self._await(self.state.set_nick(self.member, name), self._named if first else None)

    def _named(self):
        log.info("%s: %s is %s", self.server.name, format_peer(self.conn.address),
                 self.member.nick)
        self._await(self.state.join(self.member, LOBBY))

    def _do_join(self, room):
        self._await(self.state.join(self.member, room))

    def _do_leave(self, room=None):
        self._await(self.state.leave(self.member, room))

    def _do_msg(self, nick, text):
        self._await(self.state.private(self.member, nick, text))

    def _do_who(self, room=None):
        self._await(self.state.who(self.member, room))

    def _do_rooms(self):
        self._await(self.state.rooms())

    def _do_help(self):
        self._reply(format_help())

    def _do_quit(self, reason=None):
        self._quit(reason or "quit")
        self._quitting = True

    def _quit(self, reason):
        """Tell this client, then everyone sharing a room, that it leaves; free the nick."""
        self._reply(format_notice("quit", self.member.nick or "*", reason))
        self.outbox.add(self.state.quit(self.member, reason))

    def _who(self):
        peer = format_peer(self.conn.address)
        return "%s (%s)" % (peer, self.member.nick) if self.member.nick else peer
