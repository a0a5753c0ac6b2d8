"""This daemon's share of a chat kept in Redis: its members, their rooms, what events mean here.

Sans-IO and single-threaded: the Redis store calls a :class:`Mirror` with
its lock held.  Every change to rooms and nicks reaches each daemon as an
event (:mod:`.redis_events`), in one order; :meth:`Mirror.apply` turns the
events into the deliveries for this daemon's members (``(targets, data)``
pairs, see :mod:`msgsrv.services.chat.state`), the echoes its senders get back, and the
requests the events answer.  The mirror knows only local members; who is in
a room on the other daemons is asked of Redis.
"""

import collections
import threading

from .protocol import format_notice, format_private
from .state import LOBBY, Member
from .redis_events import History, Join, Leave, Message, Nick, Private, Quit, daemon_of

__all__ = ["SharedMember", "Mirror", "Effects"]


class SharedMember(Member):
    """A local member of a shared chat.

    ``mid`` is its member id; ``sent`` counts its room messages handed to
    Redis and ``seen`` those that came back, and ``held`` keeps, in order,
    what must reach it after the messages still on their way (``(after,
    data)``: send once ``seen >= after``), all under ``lock``.  ``gone`` is
    the reason it quit (None until then); ``stash`` holds room history until
    its join arrives.
    """

    __slots__ = ("mid", "lock", "sent", "seen", "held", "gone", "claimed", "stash")

    def __init__(self, conn, mid):
        super().__init__(conn)
        self.mid = mid
        self.lock = threading.Lock()
        self.sent = self.seen = 0
        self.held = collections.deque()
        self.gone = None
        self.claimed = False  # asked Redis for a nick once: it may have state there
        self.stash = {}


class _Room:
    """A room as this daemon sees it: its name and local members in join order."""

    __slots__ = ("key", "name", "members", "targets")

    def __init__(self, key, name):
        self.key, self.name = key, name
        self.members = {}  # SharedMember -> None: an ordered set
        self.targets = ()

    def add(self, member):
        self.members[member] = None
        self.targets = tuple(m.conn for m in self.members)

    def remove(self, member):
        self.members.pop(member, None)
        self.targets = tuple(m.conn for m in self.members)


class Effects:
    """What applying events means here: ``deliveries`` to send, in order, then
    ``echoes`` (member -> own messages seen) and ``done`` (request ids answered)."""

    __slots__ = ("deliveries", "echoes", "done")

    def __init__(self):
        self.deliveries = []
        self.echoes = collections.Counter()
        self.done = []


class Mirror:
    """Local members (by member id) and the rooms they are in (by room key).

    ``daemon`` is this daemon's id: a QUIT of one of its own members that is
    no longer local was announced here already (see :meth:`forget`).
    """

    def __init__(self, daemon):
        self.daemon = daemon
        self.members = {}
        self.rooms = {}

    # -- local changes ------------------------------------------------------------

    def add(self, member):
        """Know ``member`` (a new connection) from now on."""
        self.members[member.mid] = member

    def joined(self, member, key):
        """The room ``key`` if ``member`` is in it, else None."""
        room = self.rooms.get(key)
        return room if room is not None and member in room.members else None

    def make_current(self, member, room):
        """``member`` rejoined ``room``, which it is in: it becomes its current room."""
        member.rooms.remove(room)
        member.rooms.append(room)

    def forget(self, member, reason):
        """Drop ``member`` without Redis (the backend is unavailable): the local
        members sharing a room with it are told ``* quit``.  Returns the deliveries."""
        if self.members.get(member.mid) is not member:
            return []
        del self.members[member.mid]
        audience = self._audience([r.key for r in member.rooms], member)
        self._remove(member)
        if member.nick is None or not audience:
            return []
        return [(audience, format_notice("quit", member.nick, reason))]

    def registrations(self):
        """``(member, [(room key, name), ...])`` for each local member with a nick."""
        return [(m, [(r.key, r.name) for r in m.rooms]) for m in self.members.values()
                if m.nick is not None and m.gone is None]

    # -- events -------------------------------------------------------------------

    def apply(self, events):
        """Apply ``events`` in order; return their :class:`Effects`."""
        effects = Effects()
        for event in events:
            try:
                self._APPLY[type(event)](self, event, effects)
            except ValueError:
                continue  # a field outside the grammar (another version's bug): skip it
        return effects

    def _local(self, mid, request, effects):
        """The local member ``mid`` unless it quit; its ``request`` is answered either way."""
        member = self.members.get(mid)
        if member is None:
            return None
        effects.done.append(request)
        return member if member.gone is None else None

    def _message(self, event, effects):
        room = self.rooms.get(event.room)
        if room is not None:
            effects.deliveries.append((room.targets, event.line))
        sender = self.members.get(event.sender)
        if sender is not None:
            effects.echoes[sender] += 1

    def _history(self, event, effects):
        member = self.members.get(event.member)
        if member is not None and member.gone is None:
            member.stash[event.room] = event.lines

    def _join(self, event, effects):
        member = self._local(event.member, event.request, effects)
        room = self.rooms.get(event.room)
        if member is not None:
            if room is None:
                room = self.rooms[event.room] = _Room(event.room, event.name)
            if member in room.members:
                member.rooms.remove(room)
            else:
                room.add(member)
            member.rooms.append(room)
        if room is None:
            return
        effects.deliveries.append((room.targets, format_notice("join", room.name, event.nick)))
        if member is not None:
            effects.deliveries.append((member.own, member.stash.pop(event.room, b"")
                                       + format_notice("history-end", room.name)))

    def _leave(self, event, effects):
        member = self._local(event.member, event.request, effects)
        room = self.rooms.get(event.room)
        if room is None:
            return
        effects.deliveries.append((room.targets, format_notice("leave", room.name, event.nick)))
        if member is not None and member in room.members:
            room.remove(member)
            member.rooms.remove(room)
            self._drop_if_empty(room)

    def _nick(self, event, effects):
        member = self._local(event.member, event.request, effects)
        if member is not None:
            member.nick = event.new
        if event.old == event.new:
            audience = (member.conn,) if member is not None else ()
        else:
            audience = self._audience(event.rooms, None, member)
        if audience:
            effects.deliveries.append((audience, format_notice("nick", event.old, event.new)))

    def _quit(self, event, effects):
        member = self.members.get(event.member)
        if member is None and daemon_of(event.member) == self.daemon:
            return  # forgotten while Redis was away: told here then
        if member is not None and member.gone is None:
            # Still here, dropped from Redis only (stale state cleaned up, or this daemon
            # presumed dead during a pause): it stays, and is registered again.
            return
        rooms = list(event.rooms) + ([r.key for r in member.rooms] if member else [])
        audience = self._audience(rooms, member)
        if member is not None:
            del self.members[event.member]
            self._remove(member)
        if audience:
            effects.deliveries.append((audience, format_notice("quit", event.nick,
                                                               event.reason)))

    def _private(self, event, effects):
        sender = self._local(event.sender, event.request, effects)
        target = self.members.get(event.target)
        target = target if target is not None and target.gone is None else None
        conns = tuple(dict.fromkeys(m.conn for m in (target, sender) if m is not None))
        if conns:
            effects.deliveries.append((conns, format_private(event.sender_nick,
                                                             event.target_nick, event.text)))

    _APPLY = {Message: _message, History: _history, Join: _join, Leave: _leave, Nick: _nick,
              Quit: _quit, Private: _private}

    # -- helpers ------------------------------------------------------------------

    def _audience(self, keys, without, also=None):
        """The connections of local members in any of rooms ``keys``, each once, without
        member ``without`` (and with member ``also``)."""
        seen = dict.fromkeys([also.conn] if also is not None else [])
        for key in keys:
            room = self.rooms.get(key)
            if room is not None:
                seen.update(dict.fromkeys(room.targets))
        if without is not None:
            seen.pop(without.conn, None)
        return tuple(seen)

    def _remove(self, member):
        for room in member.rooms:
            room.remove(member)
            self._drop_if_empty(room)
        member.rooms = []

    def _drop_if_empty(self, room):
        if not room.members and room.key != LOBBY:
            self.rooms.pop(room.key, None)
