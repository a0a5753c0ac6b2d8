"""ChatClient: a blocking client for the chat service (docs/PROTOCOL.rst, "Chat protocol").

How answers are matched to commands: the server handles one connection's
lines in order and answers every command, either with a confirmation line
or with exactly one ``!`` error.  Each method here sends one command and
reads until its confirmation (your own ``MSG`` for :meth:`~ChatClient.say`,
``* join`` and ``* history-end`` for :meth:`~ChatClient.join`, the
``* who`` notice for :meth:`~ChatClient.who`...).  An error read meanwhile
is that command's answer and is raised as :class:`~msgsrv.wire.errors.ServerError`;
everything else read meanwhile (other people's messages, history) is kept,
in order, for :meth:`~ChatClient.recv`.  ``! flood`` is only a warning (the
line is delayed, not refused), so a waiting method skips it.

One thread may use the methods; an interactive program may instead read with
:meth:`~ChatClient.recv` in one thread and write with
:meth:`~ChatClient.send_line` in another (not the waiting methods).
"""

import collections
import select
import socket
import threading
import time

from msgsrv.client.base import (DEFAULT_HELLO_TIMEOUT, DEFAULT_TIMEOUT, Client, connect_tcp,
                                foreign_greeting, hello_wait, silent_peer)
from msgsrv.wire.errors import ConnectionFailed, ProtocolError, RequestTimeout, ServerError
from msgsrv.wire.frame_stream import translate_errors
from msgsrv.wire.frames import RECV_SIZE
from .protocol import (Action, ChatError, Error, LineReader, LineTooLong, Message, Notice, Private,
                       check_nick, check_room, nick_key, parse_server_line, room_key)

MAX_SERVER_LINE = 1 << 20  # a /who of a big room is one long line
_PROTOCOL = "the msgsrv chat protocol"
_GREETINGS = (b"* welcome ", b"! ")  # the first line is the welcome or a refusal
_KEPT_GREETING = 160


def _checked(check, value):
    try:
        return check(value)
    except ChatError as exc:
        raise ValueError(exc.message) from None


def _one_line(text):
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text must be a non-blank string (got %r)" % (text,))
    if "\n" in text or "\r" in text:
        raise ValueError("text must be one line (no line breaks)")
    return text


class ChatClient(Client):
    """A connection to a chat service under one nickname, in ``lobby`` to start with.

    Connecting reads the greeting, sets ``nick`` and waits for the lobby join;
    the lobby's history is then waiting in :meth:`recv`.  Every method waits
    at most ``timeout`` seconds for its answer (RequestTimeout).  While
    waiting for events, a blank line (ignored by the server) is sent after
    ``keepalive`` seconds without sending, so a quiet room does not hit the
    server's idle timeout (None: never).  A server that sends no welcome
    within ``hello_timeout`` seconds raises RequestTimeout, one whose first
    bytes cannot start it ``ProtocolError("not-msgsrv")`` at once.

    Raises ConnectionFailed, RequestTimeout, ProtocolError (a line outside
    the grammar), ServerError (``nick-taken``, ``bad-nick``, ``busy``...) and
    ValueError for arguments that cannot be sent (line breaks, bad names).
    """

    def __init__(self, host, port, nick, timeout=DEFAULT_TIMEOUT, keepalive=60.0, *,
                 hello_timeout=DEFAULT_HELLO_TIMEOUT):
        self.nick = _checked(check_nick, nick)
        self.timeout = timeout
        self.keepalive = keepalive
        self.rooms_joined = []
        self.server_name = None
        self._reader = LineReader(MAX_SERVER_LINE)
        self._events = collections.deque()  # parsed, not yet looked at
        self._inbox = collections.deque()   # looked at by a method, kept for recv
        self._send_lock = threading.Lock()
        self._closed_by_server = False
        self._where = "%s:%d" % (host, port)
        self._greeting = b""  # the first bytes, until they are known to start a greeting
        self.sock = connect_tcp(host, port, timeout)
        self._last_sent = time.monotonic()
        try:
            self._start(hello_wait(hello_timeout, timeout))
        except BaseException:
            self.close()
            raise

    def _start(self, wait):
        try:
            welcome = self._read_event(self._deadline(wait))
        except RequestTimeout:
            raise silent_peer(self._where, _PROTOCOL, self._greeting or b"", wait) from None
        if isinstance(welcome, Error):
            raise ServerError(welcome.code, welcome.message)
        if not (isinstance(welcome, Notice) and welcome.kind == "welcome"):
            raise ProtocolError("bad-hello", "expected a '* welcome' line, got %r" % (welcome,))
        self.server_name = welcome.fields[0]
        notice = self._command("/nick " + self.nick, lambda e: self._is_notice(e, "nick", 0, "*")
                               and self._mine(e.fields[1]))
        self.nick = notice.fields[1]
        self._await_join("lobby")

    # -- the commands ---------------------------------------------------------

    @property
    def room(self):
        """The current room (the one joined last and not left), or None."""
        return self.rooms_joined[-1] if self.rooms_joined else None

    def join(self, room):
        """Join ``room`` (created if new) and make it current; return its name as the server shows it.

        Its history is then waiting in :meth:`recv` as History events.
        """
        room = _checked(check_room, room)
        self._send("/join " + room)
        return self._await_join(room)

    def leave(self, room=None):
        """Leave ``room`` (default: the current room); return its name."""
        if room is not None:
            room = _checked(check_room, room)
        line = "/leave" if room is None else "/leave " + room
        notice = self._command(line, lambda e: self._is_notice(e, "leave", 1, self.nick) and (
            room is None or room_key(e.fields[0]) == room_key(room)))
        self._forget_room(notice.fields[0])
        return notice.fields[0]

    def say(self, text):
        """Send ``text`` to the current room; return the Message as the room saw it."""
        return self._talk(_one_line(text), Message)

    def me(self, text):
        """Send ``text`` as an action (``/me``) to the current room; return the Action."""
        return self._talk("/me " + _one_line(text), Action)

    def msg(self, nick, text):
        """Send ``text`` to ``nick`` only; return the Private as delivered."""
        nick = _checked(check_nick, nick)
        line = "/msg %s %s" % (nick, _one_line(text))
        return self._command(line, lambda e: isinstance(e, Private) and self._mine(e.sender)
                             and nick_key(e.recipient) == nick_key(nick))

    def who(self, room=None):
        """Return the list of nicks in ``room`` (default: the current room)."""
        if room is not None:
            room = _checked(check_room, room)
        notice = self._command("/who" if room is None else "/who " + room,
                               lambda e: isinstance(e, Notice) and e.kind == "who")
        return list(notice.fields[1:])

    def rooms(self):
        """Return ``{room: member count}`` for every room on the server."""
        notice = self._command("/rooms", lambda e: isinstance(e, Notice) and e.kind == "rooms")
        return {name: int(count) for name, _, count in
                (field.rpartition(":") for field in notice.fields)}

    def change_nick(self, nick):
        """Change this client's nickname; return it as the server shows it."""
        nick = _checked(check_nick, nick)
        notice = self._command("/nick " + nick, lambda e: self._is_notice(e, "nick", 0, self.nick)
                               and nick_key(e.fields[1]) == nick_key(nick))
        self.nick = notice.fields[1]
        return self.nick

    def quit(self, reason=None):
        """Say goodbye (``* quit`` answers) and wait for the server to close.

        Events read meanwhile stay available to recv(), which then raises
        ConnectionFailed.
        """
        line = "/quit" if reason is None else "/quit " + _one_line(reason)
        deadline = self._deadline(self.timeout)
        try:
            self._command(line, lambda e: self._is_notice(e, "quit", 0, self.nick))
            while True:
                self._inbox.append(self._read_event(deadline))
        except ConnectionFailed:
            pass
        finally:
            self.close()

    # -- receiving ------------------------------------------------------------

    def recv(self, timeout=None):
        """Return the next event: Message, Action, Private, History or Notice.

        Waits up to ``timeout`` seconds (None: until one arrives), then
        raises RequestTimeout.  An error line not answering a command of
        this client's methods (one after :meth:`send_line`, or ``! flood``)
        is raised as ServerError; the connection stays usable.  Raises
        ConnectionFailed once the server closed the connection.
        """
        event = self._inbox.popleft() if self._inbox else self._read_event(self._deadline(timeout))
        if isinstance(event, Error):
            raise ServerError(event.code, event.message)
        return event

    def __iter__(self):
        """Yield events until the server closes the connection (see :meth:`recv`)."""
        while True:
            try:
                yield self.recv()
            except ConnectionFailed:
                if self._closed_by_server and not self._inbox:
                    return
                raise

    def send_line(self, text):
        """Send one raw line (a message or a /command) without waiting for its answer."""
        if "\n" in text or "\r" in text:
            raise ValueError("text must be one line (no line breaks)")
        self._send(text)

    def close(self):
        """Close the connection; a recv() blocked in another thread returns (idempotent)."""
        sock = self.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        super().close()

    # -- internals ------------------------------------------------------------

    def _talk(self, line, kind):
        if line.startswith("/") and kind is Message:
            line = "/" + line  # '//' sends a leading '/'
        return self._command(line, lambda e: isinstance(e, kind) and self._mine(e.nick))

    def _await_join(self, room):
        key = room_key(room)
        notice = self._wait(lambda e: self._is_notice(e, "join", 1, self.nick)
                            and room_key(e.fields[0]) == key)
        self._wait(lambda e: isinstance(e, Notice) and e.kind == "history-end"
                   and room_key(e.fields[0]) == key)
        self._forget_room(notice.fields[0])
        self.rooms_joined.append(notice.fields[0])
        return notice.fields[0]

    def _forget_room(self, name):
        self.rooms_joined = [r for r in self.rooms_joined if room_key(r) != room_key(name)]

    def _mine(self, nick):
        return nick_key(nick) == nick_key(self.nick)

    def _is_notice(self, event, kind, index, value):
        return (isinstance(event, Notice) and event.kind == kind and len(event.fields) > index
                and nick_key(event.fields[index]) == nick_key(value))

    def _command(self, line, is_answer):
        self._send(line)
        return self._wait(is_answer)

    def _wait(self, is_answer):
        """Read until ``is_answer(event)``; keep other events for recv, raise errors."""
        deadline = self._deadline(self.timeout)
        while True:
            event = self._read_event(deadline)
            if isinstance(event, Error):
                if event.code == "flood":
                    continue
                raise ServerError(event.code, event.message)
            if is_answer(event):
                return event
            self._inbox.append(event)

    @staticmethod
    def _deadline(timeout):
        return None if timeout is None else time.monotonic() + timeout

    def _send(self, text):
        if self.sock is None:
            raise ConnectionFailed("client is closed")
        data = text.encode("utf-8", "replace") + b"\n"
        with self._send_lock, translate_errors("send"):
            self.sock.sendall(data)
            self._last_sent = time.monotonic()

    def _read_event(self, deadline):
        while not self._events:
            self._fill(deadline)
        return self._events.popleft()

    def _fill(self, deadline):
        sock = self.sock  # close() from another thread sets it to None
        if self._closed_by_server or sock is None:
            raise ConnectionFailed("connection closed by server")
        if not self._wait_readable(sock, deadline):
            return
        with translate_errors("receive"):
            data = sock.recv(RECV_SIZE)
        if self._greeting is not None:
            self._check_greeting(data)
        events = self._reader.feed(data) if data else self._reader.eof()
        for line in events:
            if isinstance(line, LineTooLong):
                raise ProtocolError("too-large", "server line longer than %d bytes" % line.limit)
            self._events.append(parse_server_line(line.text))
        if not data:
            self._closed_by_server = True

    def _check_greeting(self, data):
        """Fail at once when the first bytes cannot start a chat greeting."""
        self._greeting += data[:_KEPT_GREETING]
        head = self._greeting[:max(len(g) for g in _GREETINGS)]
        if not any(g.startswith(head[:len(g)]) for g in _GREETINGS) or (not data and head):
            raise foreign_greeting(self._where, _PROTOCOL, self._greeting)
        if any(head.startswith(g) for g in _GREETINGS):
            self._greeting = None

    def _wait_readable(self, sock, deadline):
        """Wait until ``sock`` is readable; send keepalives; raise RequestTimeout at deadline."""
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            raise RequestTimeout("no answer from the chat server in time")
        waits = [] if deadline is None else [deadline - now]
        if self.keepalive is not None:
            due = self._last_sent + self.keepalive - now
            if due <= 0:
                self._send("")
                due = self.keepalive
            waits.append(due)
        try:
            ready, _, _ = select.select([sock], [], [], min(waits) if waits else None)
        except (OSError, ValueError):  # closed by another thread
            raise ConnectionFailed("client is closed") from None
        return bool(ready)
