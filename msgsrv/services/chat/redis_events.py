"""The events daemons sharing a chat publish on Redis, sans-IO: bytes in, events out, and back.

One Redis message (a PUBLISH payload) carries one or more events separated
by RS (0x1E); an event is its kind letter and its fields separated by US
(0x1F).  Neither byte can occur in a field: names are tokens, and text and
reasons pass through :func:`~msgsrv.services.chat.protocol.clean_text`, which removes
every C0 control.  The Lua scripts of :mod:`.redis_scripts` build JOIN,
HISTORY and QUIT events with the same separators.

Member ids (``DAEMON/N``) name one connection on one daemon; room and nick
keys are the case-folded names.  A kind this version does not know is
skipped, so a newer daemon may add kinds.
"""

from typing import NamedTuple

US, RS = b"\x1f", b"\x1e"

__all__ = ["Message", "Join", "History", "Leave", "Nick", "Quit", "Private",
           "encode", "message", "decode", "daemon_of", "US", "RS"]


class Message(NamedTuple):
    """A room line (``MSG``/``ACT``, ready to send) from member ``sender``."""

    room: str
    sender: str
    line: bytes


class Join(NamedTuple):
    """``member`` (``nick``) joined ``room`` (display ``name``); ``request`` is its own."""

    room: str
    name: str
    member: str
    nick: str
    request: str


class History(NamedTuple):
    """The history of ``room`` for ``member``, who joins it next (its own daemon's channel)."""

    member: str
    room: str
    lines: bytes


class Leave(NamedTuple):
    """``member`` left ``room``."""

    room: str
    name: str
    member: str
    nick: str
    request: str


class Nick(NamedTuple):
    """``member`` is now ``new`` (``old`` is ``*`` for a first nick), seen in ``rooms``."""

    member: str
    old: str
    new: str
    request: str
    rooms: tuple


class Quit(NamedTuple):
    """``member`` (``nick``) left every room in ``rooms`` and freed its nick."""

    member: str
    nick: str
    reason: str
    rooms: tuple


class Private(NamedTuple):
    """``text`` from ``sender`` to ``target`` (member ids, with their nicks)."""

    target: str
    sender: str
    sender_nick: str
    target_nick: str
    text: str
    request: str


_KINDS = {b"M": Message, b"J": Join, b"H": History, b"L": Leave, b"N": Nick, b"Q": Quit,
          b"P": Private}
_LETTER = {cls: letter for letter, cls in _KINDS.items()}
_BYTES_FIELDS = {Message: 2, History: 2}  # the field kept as bytes (a ready line, lines)
_LISTS = (Nick, Quit)  # the last field is a list of room keys, one field each


def _field(value):
    data = value if isinstance(value, bytes) else value.encode("utf-8")
    if US in data or RS in data:
        raise ValueError("an event field must not hold 0x1E or 0x1F (got %r)" % (value,))
    return data


def encode(event):
    """The bytes of one event (join several with RS into one payload).

    Raises ValueError if a field holds a separator (a caller's bug: clean first).
    """
    fields = list(event)
    if type(event) in _LISTS:
        fields = fields[:-1] + list(fields[-1])
    return US.join([_LETTER[type(event)]] + [_field(value) for value in fields])


def message(room, sender, line):
    """``encode(Message(...))`` for the hot path: ``room`` and ``sender`` as bytes already."""
    return b"M\x1f" + room + US + sender + US + line


def decode(payload):
    """The events of one payload, in order; malformed or unknown ones are left out."""
    events = []
    for raw in payload.split(RS):
        event = _decode_one(raw)
        if event is not None:
            events.append(event)
    return events


def _decode_one(raw):
    parts = raw.split(US)
    cls = _KINDS.get(parts[0])
    if cls is None:
        return None
    count = len(cls._fields)
    if cls in _LISTS:
        if len(parts) < count:
            return None
        parts = parts[:count] + [tuple(p.decode("utf-8", "replace") for p in parts[count:])]
    elif len(parts) != count + 1:
        return None
    keep = _BYTES_FIELDS.get(cls)
    values = [part if i == keep or isinstance(part, tuple) else part.decode("utf-8", "replace")
              for i, part in enumerate(parts[1:])]
    return cls(*values)


def daemon_of(member):
    """The daemon id of member id ``DAEMON/N``."""
    return member.rpartition("/")[0]
