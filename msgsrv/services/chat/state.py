"""The chat service's shared state: nicknames, rooms, members and history.

:class:`ChatStore` is the interface the chat handler uses (a later backend
may share it between processes); :class:`ChatState`, the in-process
implementation and the default, is described here.  One per chat service
(kept across reloads by :class:`msgsrv.services.chat.handler.ChatService`)
holds every connected client's :class:`Member`, the rooms and their recent history, behind one lock.  The
lock is held only to update or snapshot that state, never while sending:
every operation returns *deliveries*, a list of ``(targets, data)`` pairs
(``targets`` a tuple of connections, ``data`` the bytes each should get), and
the caller sends them after the lock is released.  Each room caches its
members' connections as a tuple that is rebuilt when membership changes, so
a broadcast costs one attribute read under the lock.

Rules (docs/PROTOCOL.rst, "Chat protocol"): nicknames are unique
case-insensitively; a member's current room is the room it joined most
recently and still is in; the lobby always exists, other rooms vanish (with
their history) when their last member leaves.
"""

import abc
import collections
import threading
import time

from .protocol import (ChatError, format_action, format_message, format_notice, format_private,
                       nick_key, room_key)

LOBBY = "lobby"


class Member:
    """One client as the chat state sees it.

    ``conn`` is anything with ``send(data, limit=None)`` (``own`` is the
    tuple ``(conn,)``); ``nick`` is None
    until the client chose one; ``rooms`` lists the joined rooms, oldest join
    first, so ``rooms[-1]`` is the current room.  Only ChatState changes them.
    """

    __slots__ = ("conn", "own", "nick", "rooms")

    def __init__(self, conn):
        self.conn = conn
        self.own = (conn,)  # one tuple, so deliveries to the member alone can be merged
        self.nick = None
        self.rooms = []

    @property
    def room(self):
        """The current room's name, or None when in no room."""
        return self.rooms[-1].name if self.rooms else None


class Room:
    """A room: its display name, members in join order, recent history."""

    __slots__ = ("name", "members", "targets", "history", "permanent")

    def __init__(self, name, history, permanent=False):
        self.name = name
        self.members = {}  # Member -> None: an ordered set
        self.targets = ()
        self.history = collections.deque(maxlen=history)
        self.permanent = permanent

    def _refresh(self):
        self.targets = tuple(member.conn for member in self.members)


class Pending:
    """The answer to a store call that comes later (a shared backend's round trip).

    The store calls :meth:`complete` (with deliveries for the caller) or
    :meth:`fail` (with a ChatError) exactly once, from any thread; the caller
    stops handling that client's lines until then (:meth:`when_done`).
    """

    __slots__ = ("_lock", "_done", "_callback", "deliveries", "error")

    def __init__(self):
        self._lock = threading.Lock()
        self._done = False
        self._callback = None
        self.deliveries = ()
        self.error = None

    @property
    def done(self):
        """True once completed or failed."""
        return self._done

    def complete(self, deliveries=()):
        """The call succeeded: ``deliveries`` (or a question's answer line) are the caller's."""
        self._finish(deliveries, None)

    def fail(self, error):
        """The call failed with ``error`` (a ChatError, state unchanged)."""
        self._finish((), error)

    def _finish(self, deliveries, error):
        with self._lock:
            if self._done:
                return
            self.deliveries, self.error, self._done = deliveries, error, True
            callback, self._callback = self._callback, None
        if callback is not None:
            callback()

    def when_done(self, callback):
        """Run ``callback()`` once done: now, in this thread, if it is done already."""
        with self._lock:
            if not self._done:
                self._callback = callback
                return
        callback()


class ChatStore(abc.ABC):
    """What the chat handler needs from the shared chat state.

    Every method returns promptly and is safe to call from any thread; the
    mutating ones return deliveries (``(targets, data)`` pairs) for the
    caller to send, the questions return one reply line.  They raise
    :class:`~msgsrv.services.chat.protocol.ChatError` (state unchanged) when the request
    cannot be met.  ``closing`` is set once the service is shutting down.

    A store shared between processes (``shared`` true) never waits for its
    backend in the caller's thread: a call that needs an answer returns a
    :class:`Pending` instead, completed with the deliveries or the line the
    call would have returned, and the store sends
    what other members see itself.  What the handler sends to its own client
    goes through :meth:`send`, which keeps it in order with what the store
    sends.
    """

    closing = False
    shared = False

    def new_member(self, conn):
        """The :class:`Member` for a new connection (not yet known to the others)."""
        return Member(conn)

    def send(self, member, deliveries, limit=None):
        """Send ``deliveries`` made by the handler of ``member`` (never blocks)."""
        deliver(deliveries, limit)

    def close(self):
        """The service stopped: release what the store holds (threads, connections)."""

    @abc.abstractmethod
    def configure(self, history, max_joined):
        """Apply reloaded limits: messages kept per room, rooms one member may join."""

    @abc.abstractmethod
    def set_nick(self, member, nick):
        """Claim ``nick`` for ``member`` (ChatError('nick-taken') if another has it)."""

    @abc.abstractmethod
    def lookup(self, nick):
        """The Member using ``nick`` (a shared store: on this server), or None."""

    @abc.abstractmethod
    def join(self, member, name):
        """Join room ``name`` (created if needed); the joiner gets its history."""

    @abc.abstractmethod
    def leave(self, member, name=None):
        """Leave room ``name`` (default: the current room)."""

    @abc.abstractmethod
    def say(self, member, text, action=False):
        """Say ``text`` in the current room; the room's history keeps it."""

    @abc.abstractmethod
    def private(self, member, nick, text):
        """Send ``text`` to ``nick`` alone."""

    @abc.abstractmethod
    def who(self, member, name=None):
        """The ``* who`` line of room ``name`` (default: the current room), or a Pending."""

    @abc.abstractmethod
    def rooms(self):
        """The ``* rooms`` line, or a Pending."""

    @abc.abstractmethod
    def snapshot(self):
        """``({room name: [nick, ...]}, {nick, ...})``, consistent."""

    @abc.abstractmethod
    def quit(self, member, reason):
        """Leave every room and free the nick; idempotent."""


class ChatState(ChatStore):
    """Nicknames, rooms and history shared by every connection of one chat service.

    Every method is thread-safe and returns promptly: it holds the lock only
    to read or change the state, and returns deliveries (see the module
    docstring) or a reply line for the caller to send.  Methods raise
    :class:`~msgsrv.services.chat.protocol.ChatError` when the client's request cannot be
    met; the state is then unchanged.
    """

    def __init__(self, history=50, max_joined=20, clock=time.time):
        self.history = history
        self.max_joined = max_joined
        self.clock = clock
        self.closing = False
        self._lock = threading.Lock()
        self._nicks = {}  # nick_key -> Member
        self._rooms = {room_key(LOBBY): Room(LOBBY, history, permanent=True)}

    def configure(self, history, max_joined):
        """New limits: rooms keep their newest ``history`` messages from now on; a
        member already in more than ``max_joined`` rooms stays in them."""
        with self._lock:
            self.history, self.max_joined = history, max_joined
            for room in self._rooms.values():
                if room.history.maxlen != history:
                    room.history = collections.deque(room.history, maxlen=history)

    # -- nicknames ----------------------------------------------------------

    def set_nick(self, member, nick):
        """Give ``member`` the (already validated) ``nick``.

        The notice ``* nick OLD NEW`` goes to the member and everyone sharing
        a room with it (OLD is ``*`` for a first nick, told to the member
        only).  Raises ChatError('nick-taken') if another member has it.
        """
        key = nick_key(nick)
        with self._lock:
            owner = self._nicks.get(key)
            if owner is not None and owner is not member:
                raise ChatError("nick-taken", "nick %r is already in use" % nick)
            old = member.nick
            if old is not None:
                del self._nicks[nick_key(old)]
            self._nicks[key] = member
            member.nick = nick
            line = format_notice("nick", old or "*", nick)
            if old == nick:
                return [(member.own, line)]
            return [(self._audience(member, include_self=True), line)]

    def lookup(self, nick):
        """The Member using ``nick`` (case-insensitive), or None."""
        with self._lock:
            return self._nicks.get(nick_key(nick))

    # -- rooms ----------------------------------------------------------------

    def join(self, member, name):
        """Put ``member`` (which has a nick) in room ``name``, creating it, and make it current.

        Everyone in the room (the joiner too) gets ``* join ROOM NICK``; the
        joiner then gets the room's history as HIST lines and
        ``* history-end ROOM``.  Joining a room already joined only makes it
        current (the ``* join`` and ``* history-end`` go to the joiner alone,
        without replay).  Raises ChatError('busy') past ``max_joined`` rooms.
        """
        key = room_key(name)
        with self._lock:
            room = self._rooms.get(key)
            if room is not None and member in room.members:
                return self._rejoin(member, room)
            if len(member.rooms) >= self.max_joined:
                raise ChatError("busy", "you are in %d rooms already (the limit); "
                                        "/leave one first" % len(member.rooms))
            if room is None:
                room = self._rooms[key] = Room(name, self.history)
            room.members[member] = None
            room._refresh()
            member.rooms.append(room)
            replay = b"".join(b"HIST %.3f " % ts + line for ts, line in room.history)
            return [(room.targets, format_notice("join", room.name, member.nick)),
                    (member.own, replay + format_notice("history-end", room.name))]

    def _rejoin(self, member, room):
        member.rooms.remove(room)
        member.rooms.append(room)
        lines = format_notice("join", room.name, member.nick) + format_notice(
            "history-end", room.name)
        return [(member.own, lines)]

    def leave(self, member, name=None):
        """Take ``member`` out of room ``name`` (default: its current room).

        Everyone in the room, the leaver too, gets ``* leave ROOM NICK``.
        Raises ChatError('no-room') if the member is not in that room.
        """
        with self._lock:
            room = self._joined_room(member, name)
            targets = room.targets
            self._remove(member, room)
            return [(targets, format_notice("leave", room.name, member.nick))]

    def _joined_room(self, member, name):
        if name is None:
            if not member.rooms:
                raise ChatError("no-room", "you are in no room; /join one")
            return member.rooms[-1]
        room = self._rooms.get(room_key(name))
        if room is None or member not in room.members:
            raise ChatError("no-room", "you are not in room %r" % name)
        return room

    def _remove(self, member, room):
        del room.members[member]
        room._refresh()
        member.rooms.remove(room)
        if not room.members and not room.permanent:
            del self._rooms[room_key(room.name)]

    # -- talking --------------------------------------------------------------

    def say(self, member, text, action=False):
        """Send ``text`` (a /me action if ``action``) to the member's current room.

        Everyone in the room, the sender too, gets the MSG (or ACT) line, and
        the room's history keeps it.  Raises ChatError('no-room').
        """
        fmt = format_action if action else format_message
        with self._lock:
            if not member.rooms:
                raise ChatError("no-room", "you are in no room; /join one")
            room = member.rooms[-1]
            line = fmt(room.name, member.nick, text)
            room.history.append((self.clock(), line))
            return [(room.targets, line)]

    def private(self, member, nick, text):
        """Send ``text`` to ``nick`` only: the PRIV line goes to the recipient and the sender.

        Raises ChatError('no-such-nick') if nobody uses ``nick``.
        """
        with self._lock:
            target = self._nicks.get(nick_key(nick))
            if target is None:
                raise ChatError("no-such-nick", "nobody uses the nick %r" % nick)
            line = format_private(member.nick, target.nick, text)
            targets = member.own if target is member else (target.conn, member.conn)
            return [(targets, line)]

    # -- questions ------------------------------------------------------------

    def who(self, member, name=None):
        """Return the ``* who ROOM NICK...`` line for room ``name`` (default: the current room).

        Raises ChatError('no-room') without a current room, ChatError('no-such-room')
        for a room that does not exist.
        """
        with self._lock:
            if name is None:
                if not member.rooms:
                    raise ChatError("no-room", "you are in no room; name one: /who ROOM")
                room = member.rooms[-1]
            else:
                room = self._rooms.get(room_key(name))
                if room is None:
                    raise ChatError("no-such-room", "there is no room %r" % name)
            return format_notice("who", room.name, *[m.nick for m in room.members])

    def rooms(self):
        """Return the ``* rooms ROOM:COUNT...`` line, rooms sorted by name."""
        with self._lock:
            pairs = sorted((key, room.name, len(room.members)) for key, room in self._rooms.items())
        return format_notice("rooms", *["%s:%d" % (name, count) for _, name, count in pairs])

    def snapshot(self):
        """A consistent copy of the state: ``{room name: [nick, ...]}`` and the set of nicks."""
        with self._lock:
            rooms = {room.name: [m.nick for m in room.members] for room in self._rooms.values()}
            return rooms, {member.nick for member in self._nicks.values()}

    # -- leaving ----------------------------------------------------------------

    def quit(self, member, reason):
        """Remove ``member`` from every room and free its nick; idempotent.

        ``* quit NICK REASON`` goes to everyone else who shared a room with
        it.  Returns no deliveries for a member without a nick, or once the
        service is closing (everyone is leaving).
        """
        with self._lock:
            if member.nick is None or self._nicks.get(nick_key(member.nick)) is not member:
                return []
            audience = self._audience(member, include_self=False)
            for room in list(member.rooms):
                self._remove(member, room)
            del self._nicks[nick_key(member.nick)]
            if self.closing or not audience:
                return []
            return [(audience, format_notice("quit", member.nick, reason))]

    def _audience(self, member, include_self):
        """Connections sharing a room with ``member``, each once (lock held)."""
        seen = dict.fromkeys([member.conn] if include_self else [])
        for room in member.rooms:
            seen.update(dict.fromkeys(room.targets))
        if not include_self:
            seen.pop(member.conn, None)
        return tuple(seen)


def deliver(deliveries, limit=None):
    """Send each delivery's data to each of its targets (never blocks).

    ``limit`` is the per-connection send-queue bound passed to ``conn.send``.
    """
    for targets, data in deliveries:
        for conn in targets:
            conn.send(data, limit=limit)


class Outbox:
    """Deliveries gathered while one batch of lines is handled, then sent together.

    Adjacent deliveries to the same targets (the same tuple object: a room's
    member tuple, a member's ``own``) are joined, so the lines of one chunk
    go to each member in one send.  A batch is sent once it holds
    ``flush_at`` bytes, and at the end of each chunk, by ``send(deliveries,
    limit)``.
    """

    def __init__(self, limit, flush_at=64 * 1024, send=None):
        self.limit = limit
        self.flush_at = flush_at
        self._send = send or deliver
        self._items = []
        self._size = 0

    def add(self, deliveries):
        """Queue ``(targets, data)`` pairs."""
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
        if items:
            self._send([(targets, b"".join(parts)) for targets, parts in items], self.limit)
