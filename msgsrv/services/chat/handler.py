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

import logging
import re
import time

from msgsrv.plugin import Handler, Service, Setting, chain, format_peer, integer, size
from .protocol import (ChatError, LineReader, LineTooLong, TokenBucket, check_nick, format_error,
                       format_help, format_notice, parse_line)
from .state import LOBBY, ChatState, Member, deliver

log = logging.getLogger("msgsrv.chat")

FLOOD_WARNING_INTERVAL = 30.0  # seconds between two ``! flood`` warnings to one client
_FLUSH_AT = 64 * 1024          # bytes gathered before a batch is sent mid-chunk
_NEED_NICK = frozenset({"join", "leave", "msg", "me"})


def word(text):
    """Parser for one word: no spaces, no control characters."""
    value = text.strip()
    if not re.fullmatch(r"[^\s\x00-\x1f\x7f-\x9f]+", value):
        raise ValueError("must be one word (no spaces)")
    return value


class Outbox:
    """Deliveries gathered while one batch of lines is handled, then sent together.

    Adjacent deliveries to the same targets (the same tuple object: a room's
    member tuple, a member's ``own``) are joined, so the lines of one chunk
    go to each member in one send.  A batch is sent once it holds
    ``flush_at`` bytes, and at the end of each chunk.
    """

    def __init__(self, limit, flush_at=_FLUSH_AT):
        self.limit = limit
        self.flush_at = flush_at
        self._items = []
        self._size = 0

    def add(self, deliveries):
        """Queue ``(targets, data)`` pairs (see msgsrv.services.chat.state)."""
        for targets, data in deliveries:
            if self._items and self._items[-1][0] is targets:
                self._items[-1][1].append(data)
            else:
                self._items.append((targets, [data]))
            self._size += len(data)
        if self._size >= self.flush_at:
            self.flush()

    def flush(self):
        """Send everything queued (never blocks)."""
        items, self._items, self._size = self._items, [], 0
        deliver([(targets, b"".join(parts)) for targets, parts in items], self.limit)


class ChatService(Service):
    """A chat service's shared state (``chat``, a ChatStore), kept across reloads:
    a reload changes its limits, never its sessions, rooms, nicks or history."""

    store_class = ChatState

    @classmethod
    def serves_in_one_process(cls, config):
        """True: the in-process chat state cannot be split, so with several worker
        processes the chat service runs in worker 0 only."""
        return True

    def __init__(self, config, global_options):
        super().__init__(config, global_options)
        self.chat = self.store_class(history=config["history"], max_joined=config["max_joined"])

    def prepare_reconfigure(self, config, global_options):
        limits = config["history"], config["max_joined"]
        return chain(super().prepare_reconfigure(config, global_options),
                     lambda: self.chat.configure(*limits))


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
    )

    service_class = ChatService

    def __init__(self, conn, server):
        super().__init__(conn, server)
        self.state = self.service.chat
        self.member = Member(conn)
        self.limit = self.options["max_queue"]
        self.outbox = Outbox(self.limit, min(_FLUSH_AT, self.limit // 4))
        self.reader = LineReader(self.options["max_line"])
        rate = self.options["line_rate"]
        self.bucket = TokenBucket(rate, self.options["line_burst"]) if rate else None
        self._raw, self._pos = b"", 0  # a received chunk and how far it was handled
        self._paused = False
        self._warned_at = None
        self._quitting = False
        self._flood_timer = None

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
        while self._pos < len(raw) and not self._quitting:
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

    def _throttle(self, wait):
        if not self._paused:
            self._paused = True
            self.conn.pause_reading()
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
        if self._pos < len(self._raw):
            return  # delayed: the flood timer resumes
        self._raw, self._pos = b"", 0
        if self._paused:
            self._paused = False
            self.conn.resume_reading()

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
        self.outbox.add(self.state.say(self.member, text))

    def _do_me(self, text):
        self.outbox.add(self.state.say(self.member, text, action=True))

    def _do_nick(self, name):
        first = self.member.nick is None
        self.outbox.add(self.state.set_nick(self.member, name))
        if first:
            log.info("%s: %s is %s", self.server.name, format_peer(self.conn.address), name)
            self.outbox.add(self.state.join(self.member, LOBBY))

    def _do_join(self, room):
        self.outbox.add(self.state.join(self.member, room))

    def _do_leave(self, room=None):
        self.outbox.add(self.state.leave(self.member, room))

    def _do_msg(self, nick, text):
        self.outbox.add(self.state.private(self.member, nick, text))

    def _do_who(self, room=None):
        self._reply(self.state.who(self.member, room))

    def _do_rooms(self):
        self._reply(self.state.rooms())

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
