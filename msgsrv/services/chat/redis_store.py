"""The chat state shared through Redis (or Valkey): rooms, nicknames and history across daemons.

:class:`RedisChatStore` is the :class:`~msgsrv.services.chat.state.ChatStore` of a chat
service with ``backend = redis://...``.  Redis holds the truth (who uses
which nick, who is in which room, each room's history); every change is a
Lua script that also publishes the event announcing it
(:mod:`.redis_scripts`), and every daemon, this one included, applies the
events in the one order Redis published them (:mod:`.mirror`): a message is
delivered to its sender's room on this daemon the same way as on the
others.  So every feature works across daemons as on one, and each
sender's lines reach everyone in the order they were sent.

Handler threads never wait for Redis (:mod:`.redis_link` queues their
operations): a room message is queued and forgotten; a command that needs
an answer (a nick, a join, ``/who``) returns a :class:`~msgsrv.services.chat.state.Pending`,
completed when its event comes back or its script answers.  What reaches
one client keeps the order of its commands: the replies it is sent while
its own messages are on their way wait for them (``SharedMember.held``).

While the backend is unavailable every command that needs it is answered
``! unavailable``; slow-consumer and flood limits stay per connection, as
with the memory backend.
"""

import itertools
import logging
import os
import re
import socket
import threading
import time

from .protocol import (ChatError, clean_text, format_action, format_error, format_message,
                          format_notice, nick_key, room_key)
from .state import ChatStore, Outbox, Pending
from .backend import key_prefix, redis_password
from .mirror import Mirror, SharedMember
from .redis_events import Leave, Nick, decode, encode, message
from .redis_link import Link, LinkLost

log = logging.getLogger("msgsrv.chat.redis")

__all__ = ["RedisChatStore"]

UNAVAILABLE = "the chat backend (Redis) cannot be reached; try again in a moment"
_QUEUE_FULL = "the chat backend is behind (redis_queue is full); try again in a moment"


def _daemon_id():
    host = re.sub(r"[^A-Za-z0-9.-]", "", socket.gethostname())[:40] or "host"
    return "%s-%d-%s" % (host, os.getpid(), os.urandom(3).hex())


class RedisChatStore(ChatStore):
    """Rooms and nicknames shared by every daemon whose chat service uses the same
    Redis and key prefix.  Created by the chat service from its options; connects
    in the background (clients get ``! unavailable`` until it has)."""

    shared = True

    def __init__(self, options, service_name, environ=None):
        where = "[service:%s]" % service_name
        self.prefix = key_prefix(options, service_name)
        self.daemon = _daemon_id()
        self.history, self.max_joined = options["history"], options["max_joined"]
        self.limit = options["max_queue"]
        self.timeout = options["redis_timeout"]
        self.closing = False
        self.registered_before = False  # resync ran once (later ones re-register)
        self._lock = threading.Lock()
        self._mirror = Mirror(self.daemon)
        self._members = itertools.count(1)
        self._ids = itertools.count(1)
        self._requests = {}  # request id -> Pending, answered by its event
        self._link = Link(self, options["backend"], redis_password(options, where, environ),
                          options["redis_ca_file"], options["redis_timeout"],
                          options["presence_ttl"], options["redis_queue"], service_name)
        self._link.start()

    @property
    def available(self):
        """True while Redis answers and this daemon's members are registered there."""
        return self._link.available

    def configure(self, history, max_joined):
        """New limits: history kept per room from the next message on, rooms per member."""
        self.history, self.max_joined = history, max_joined

    def close(self):
        """Announce the members still here as gone, withdraw the presence, stop the threads."""
        self._link.close()

    # -- members and what they are sent ----------------------------------------------

    def new_member(self, conn):
        member = SharedMember(conn, "%s/%d" % (self.daemon, next(self._members)))
        with self._lock:
            self._mirror.add(member)
        return member

    def send(self, member, deliveries, limit=None):
        """Send the handler's ``deliveries``; what goes to ``member`` alone waits for the
        messages it sent that have not come back from Redis yet."""
        for targets, data in deliveries:
            if targets is not member.own:
                for conn in targets:
                    conn.send(data, limit=limit)
                continue
            with member.lock:
                if member.held or member.seen < member.sent:
                    member.held.append((member.sent, data))
                else:
                    member.conn.send(data, limit=limit)

    def _echoed(self, member, count):
        with member.lock:
            member.seen += count
            while member.held and member.held[0][0] <= member.seen:
                member.conn.send(member.held.popleft()[1], limit=self.limit)

    def _settle(self, member, notice=None):
        """Nothing more of ``member``'s will come back: send what waits (after ``notice``)."""
        with member.lock:
            lost, member.seen = member.sent - member.seen, member.sent
            held = [data for _, data in member.held]
            member.held.clear()
            member.stash.clear()
            if lost and notice:
                held.insert(0, format_error("unavailable", notice % lost))
            if held:
                member.conn.send(b"".join(held), limit=self.limit)

    # -- commands -----------------------------------------------------------------

    def _check(self):
        if not self._link.available:
            raise ChatError("unavailable", UNAVAILABLE)

    def _request(self):
        pending, request = Pending(), "%d" % next(self._ids)
        with self._lock:
            self._requests[request] = pending
        return request, pending

    def _refuse(self, request, error):
        """The script refused (or the link failed): the request's Pending fails."""
        with self._lock:
            pending = self._requests.pop(request, None)
        if pending is not None:
            pending.fail(error)

    def _answered_by_event(self, request, refusals):
        """A reply callback: ``ok`` waits for the event; a refusal or error fails it."""
        def reply(result):
            if isinstance(result, Exception):
                self._refuse(request, ChatError("unavailable", UNAVAILABLE))
                if not isinstance(result, ConnectionError):
                    log.error("chat backend error: %s", result)
                return
            status = result[0].decode()
            if status == "unregistered":
                self._link.request_resync()
                self._refuse(request, ChatError("unavailable", UNAVAILABLE))
            elif status != "ok":
                self._refuse(request, refusals[status])
        return reply

    def set_nick(self, member, nick):
        self._check()
        if member.nick == nick:
            return [(member.own, format_notice("nick", nick, nick))]
        request, pending = self._request()
        old = member.nick
        event = encode(Nick(member.mid, old or "*", nick, request,
                            tuple(room.key for room in member.rooms)))
        member.claimed = True
        self._link.call("nick", [member.mid.encode(), nick_key(nick).encode(), nick.encode(),
                                 nick_key(old).encode() if old else b"", event],
                        self._answered_by_event(request, {"taken": ChatError(
                            "nick-taken", "nick %r is already in use" % nick)}))
        return pending

    def lookup(self, nick):
        """The local Member using ``nick`` (members on other daemons are not objects here)."""
        key = nick_key(nick)
        with self._lock:
            for member in self._mirror.members.values():
                if member.nick is not None and nick_key(member.nick) == key \
                        and member.gone is None:
                    return member
        return None

    def join(self, member, name):
        self._check()
        key = room_key(name)
        with self._lock:
            room = self._mirror.joined(member, key)
            if room is not None:
                self._mirror.make_current(member, room)
                return [(member.own, format_notice("join", room.name, member.nick)
                         + format_notice("history-end", room.name))]
        if len(member.rooms) >= self.max_joined:
            raise ChatError("busy", "you are in %d rooms already (the limit); /leave one first"
                            % len(member.rooms))
        request, pending = self._request()
        self._link.call("join", [member.mid.encode(), key.encode(), name.encode(),
                                 member.nick.encode(), request.encode(),
                                 b"%d" % self.history],
                        self._answered_by_event(request, {}))
        return pending

    def leave(self, member, name=None):
        self._check()
        room = self._current(member) if name is None else self._joined(member, name)
        request, pending = self._request()
        event = encode(Leave(room.key, room.name, member.mid, member.nick, request))
        self._link.call("leave", [member.mid.encode(), room.key.encode(), event],
                        self._answered_by_event(request, {}))
        return pending

    def _current(self, member, hint="/join one"):
        rooms = member.rooms  # one read: a lost link may replace the list meanwhile
        if not rooms:
            raise ChatError("no-room", "you are in no room; %s" % hint)
        return rooms[-1]

    def _joined(self, member, name):
        with self._lock:
            room = self._mirror.joined(member, room_key(name))
        if room is None:
            raise ChatError("no-room", "you are not in room %r" % name)
        return room

    def say(self, member, text, action=False):
        self._check()
        room = self._current(member)
        line = (format_action if action else format_message)(room.name, member.nick, text)
        with member.lock:
            member.sent += 1  # before it can come back
        entry = b"HIST %.3f " % time.time() + line
        try:
            queued = self._link.say(room.key.encode(), entry,
                                    message(room.key.encode(), member.mid.encode(), line))
        except LinkLost:
            queued = None
        if not queued:
            with member.lock:
                member.sent -= 1
            if queued is None:
                raise ChatError("unavailable", UNAVAILABLE)
            raise ChatError("busy", _QUEUE_FULL)
        return []

    def private(self, member, nick, text):
        self._check()
        request, pending = self._request()
        self._link.call("private", [nick_key(nick).encode(), member.mid.encode(),
                                    member.nick.encode(), clean_text(text).encode(),
                                    request.encode()],
                        self._answered_by_event(request, {"none": ChatError(
                            "no-such-nick", "nobody uses the nick %r" % nick)}))
        return pending

    # -- questions -----------------------------------------------------------------

    def who(self, member, name=None):
        self._check()
        key = room_key(name) if name is not None else self._current(
            member, "name one: /who ROOM").key
        pending = Pending()

        def reply(result):
            if self._failed(pending, result):
                return
            if result[0] == b"none":
                pending.fail(ChatError("no-such-room", "there is no room %r" % name))
                return
            nicks = [n.decode("utf-8", "replace") for n in result[2:]]
            pending.complete(format_notice("who", result[1].decode("utf-8", "replace"), *nicks))
        self._link.call("who", [key.encode()], reply)
        return pending

    def rooms(self):
        self._check()
        pending = Pending()

        def reply(result):
            if self._failed(pending, result):
                return
            triples = sorted(zip(result[1::3], result[2::3], result[3::3]))
            line = format_notice("rooms", *["%s:%d" % (name.decode("utf-8", "replace"), count)
                                            for _, name, count in triples])
            pending.complete(line)
        self._link.call("rooms", [], reply)
        return pending

    def _failed(self, pending, result):
        if isinstance(result, Exception):
            pending.fail(ChatError("unavailable", UNAVAILABLE))
            return True
        return False

    def snapshot(self, timeout=None):
        """``({room name: [nick, ...]}, {nick, ...})`` across every daemon, from Redis.

        Blocks (never call it from a pool thread); raises ChatError('unavailable').
        """
        self._check()
        done, answer = threading.Event(), []

        def reply(result):
            answer.append(result)
            done.set()
        self._link.call("snapshot", [], reply)
        if not done.wait(timeout or 2 * self.timeout + 1) or isinstance(answer[0], Exception):
            raise ChatError("unavailable", UNAVAILABLE)
        rooms, nicks = answer[0][1], answer[0][2]
        text = lambda value: value.decode("utf-8", "replace")  # noqa: E731
        return ({text(name): [text(n) for n in members]
                 for name, members in zip(rooms[::2], rooms[1::2])}, {text(n) for n in nicks})

    # -- leaving --------------------------------------------------------------------

    def quit(self, member, reason):
        """``member`` leaves (idempotent): Redis tells every daemon; while it is away,
        only this daemon's members hear of it (the deliveries returned)."""
        with self._lock:
            if member.gone is not None or self._mirror.members.get(member.mid) is not member:
                return []
            member.gone = reason
            if not (member.claimed and self._link.available):
                return self._mirror.forget(member, reason)
        self._link.call("quit", [member.mid.encode(), clean_text(reason).encode()],
                        lambda result: isinstance(result, Exception) and self._forget(member))
        return []

    def _forget(self, member):
        """The backend went away before ``member``'s quit reached it: tell this daemon."""
        with self._lock:
            deliveries = self._mirror.forget(member, member.gone)
        self._deliver(deliveries)

    # -- called by the link --------------------------------------------------------------

    def received(self, payloads):
        """Listener thread: apply the events of ``payloads``, deliver, answer requests."""
        events = []
        for payload in payloads:
            events.extend(decode(payload))
        with self._lock:
            effects = self._mirror.apply(events)
            done = [self._requests.pop(r, None) for r in effects.done]
        self._deliver(effects.deliveries)
        for member, count in effects.echoes.items():
            self._echoed(member, count)
        for pending in done:
            if pending is not None:
                pending.complete()

    def resync(self, link):
        """Link thread, on each (re)connect: make Redis hold exactly this daemon's members.

        Members of this daemon Redis still lists but that left meanwhile are
        announced as quit; a member whose nick was taken meanwhile on another
        daemon is told so and disconnected.  Returns ``(members, rooms)`` registered.
        """
        with self._lock:
            registrations = self._mirror.registrations()
        registered = {member.mid for member, _ in registrations}
        listed = link.run_now("members", [self.daemon.encode()])[1:]
        # Listed but not registered now: gone meanwhile, or a nick claim whose answer was lost.
        calls = [("quit", [mid, b"connection lost while the chat backend was unavailable"])
                 for mid in listed if mid.decode() not in registered]
        for member, rooms in registrations:
            args = [member.mid.encode(), nick_key(member.nick).encode(), member.nick.encode()]
            for key, name in rooms:
                args += [key.encode(), name.encode()]
            calls.append(("register", args))
        results = link.run_many(calls)[len(calls) - len(registrations):]
        for (member, _), result in zip(registrations, results):
            if isinstance(result, Exception):
                raise result
            if result[0] == b"taken":
                self._lost_nick(member)
        self.registered_before = True
        return len(registrations), len({key for _, rooms in registrations for key, _ in rooms})

    def _lost_nick(self, member):
        log.warning("chat: %s lost its nick %s to a client of another server while the chat "
                    "backend was unavailable; disconnecting it", member.mid, member.nick)
        member.conn.send(format_error("nick-taken", "your nick %r was taken on another server "
                                      "while the chat backend was unavailable; reconnect and "
                                      "choose a nick" % member.nick), limit=self.limit)
        with self._lock:
            member.gone = "nick taken elsewhere"
            deliveries = self._mirror.forget(member, member.gone)
        member.conn.close("nick taken elsewhere")
        self._deliver(deliveries)

    def link_down(self):
        """Link thread: the backend went away; nothing in flight will come back."""
        with self._lock:
            requests, self._requests = self._requests, {}
            members = list(self._mirror.members.values())
            gone = [m for m in members if m.gone is not None]
            deliveries = [d for m in gone for d in self._mirror.forget(m, m.gone)]
        for pending in requests.values():
            pending.fail(ChatError("unavailable", UNAVAILABLE))
        for member in members:
            self._settle(member, "the chat backend went away: your last %d messages may "
                                 "not have reached everyone")
        self._deliver(deliveries)

    def _deliver(self, deliveries):
        """Send ``deliveries``, those in a row to the same targets in one send each."""
        outbox = Outbox(self.limit, flush_at=1 << 62)
        outbox.add(deliveries)
        outbox.flush()

    def reaped(self, daemon, count):
        """Link thread: another daemon's presence expired; its ``count`` members were announced."""
        log.warning("chat: server %s stopped responding (no heartbeat for presence_ttl): its "
                    "%d members were announced as quit and their nicks freed", daemon, count)
