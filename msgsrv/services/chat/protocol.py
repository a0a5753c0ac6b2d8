"""The chat service's line protocol, sans-IO: bytes in, events out, and back.

The chat service speaks UTF-8 lines so that ``nc`` and ``telnet`` work; the
grammar is specified in docs/PROTOCOL.rst ("Chat protocol"). This module never touches a socket: a
handler feeds received bytes to a :class:`LineReader`, turns each
:class:`Line` into a :class:`Command` with :func:`parse_line`, and sends the
bytes the ``format_*`` functions return. The client library reads those lines
back into typed events with :func:`parse_server_line`.
"""

import math
import re
from dataclasses import dataclass
from typing import NamedTuple, Union

from msgsrv.wire.errors import ProtocolError

EOL = b"\n"
MAX_LINE = 4096


class ChatError(ProtocolError):
    """A client line the chat service refuses; answered with an error line, not a disconnect."""


# ---------------------------------------------------------------------------
# Text hygiene

def _clean_table():
    table = dict.fromkeys(range(0x00, 0x20))
    table.update(dict.fromkeys(range(0x7F, 0xA0)))
    # Line breaks become spaces so words on either side stay apart; a break
    # must never survive, or a peer could forge a whole server line.
    table.update(dict.fromkeys(map(ord, "\t\n\v\f\r\x85\u2028\u2029"), " "))
    # Lone surrogates cannot be encoded; replacing them keeps output encodable.
    table.update(dict.fromkeys(range(0xD800, 0xE000), "\ufffd"))
    return table


_CLEAN = _clean_table()


def clean_text(text):
    """Return ``text`` safe to show on a terminal and to put on one line.

    TAB and line breaks (CR, LF, VT, FF, NEL, U+2028, U+2029) become a space;
    every other C0 control, DEL and C1 control is removed; lone surrogates
    become U+FFFD. The result never contains a line break and always encodes
    to UTF-8. Idempotent.
    """
    return text.translate(_CLEAN)


def _decode(raw):
    return clean_text(raw.decode("utf-8", "replace"))


# ---------------------------------------------------------------------------
# Reading lines

@dataclass(frozen=True)
class Line:
    """One complete line from the peer, terminator stripped, decoded and cleaned."""

    text: str


@dataclass(frozen=True)
class LineTooLong:
    """A line longer than ``limit`` bytes arrived; it was discarded whole."""

    limit: int


class LineReader:
    """Split a byte stream into :class:`Line` events, holding at most ``max_line + 1`` bytes.

    Lines end with LF or CRLF; ``max_line`` counts the bytes of a line without
    its terminator (the extra byte held is a CR that may precede LF). A longer
    line yields one :class:`LineTooLong` and is skipped up to and including its
    LF. Raises ValueError if ``max_line`` is below 1.
    """

    def __init__(self, max_line=MAX_LINE):
        if not isinstance(max_line, int) or max_line < 1:
            raise ValueError("'max_line' must be an integer >= 1 (got %r)" % (max_line,))
        self.max_line = max_line
        self._buf = bytearray()
        self._discarding = False

    @property
    def buffered(self):
        """Bytes of an unfinished line currently held (never above ``max_line + 1``)."""
        return len(self._buf)

    def feed(self, data):
        """Consume ``data`` (bytes-like); return the events it completes, in order."""
        data = bytes(data)
        events = []
        pos = 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            if nl < 0:
                self._hold(data, pos, events)
                break
            if self._discarding:
                self._discarding = False
            else:
                events.append(self._finish(data, pos, nl))
            pos = nl + 1
        return events

    def eof(self):
        """The peer closed: return a final unterminated line, if any, and reset."""
        # While discarding the buffer is empty, so an over-long tail yields nothing.
        raw = bytes(self._buf)
        self._buf.clear()
        self._discarding = False
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        return [Line(_decode(raw))] if raw else []

    def _hold(self, data, pos, events):
        if self._discarding:
            return
        size = len(self._buf) + len(data) - pos
        # Only a CR may sit past max_line bytes: it may be half of a CRLF.
        if size > self.max_line + 1 or (size == self.max_line + 1 and data[-1:] != b"\r"):
            self._buf.clear()
            self._discarding = True
            events.append(LineTooLong(self.max_line))
        else:
            self._buf += data[pos:]

    def _finish(self, data, pos, nl):
        # Measure before copying, so a huge chunk is never joined to the buffer.
        too_long = len(self._buf) + nl - pos > self.max_line + 1
        raw = b"" if too_long else bytes(self._buf) + data[pos:nl]
        self._buf.clear()
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if too_long or len(raw) > self.max_line:
            return LineTooLong(self.max_line)
        return Line(_decode(raw))


# ---------------------------------------------------------------------------
# Names

NAME_MAX = 32
_NICK_RE = re.compile(r"[A-Za-z][A-Za-z0-9_\-\[\]{}^|]{0,%d}" % (NAME_MAX - 1))
_ROOM_RE = re.compile(r"[A-Za-z0-9_\-.]{1,%d}" % NAME_MAX)


def _quote(value, limit=40):
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _valid_nick(nick):
    return bool(_NICK_RE.fullmatch(nick))


def _valid_room(room):
    # Rooms made only of dots ('.', '..') are refused in case a room name ever
    # becomes part of a file name.
    return bool(_ROOM_RE.fullmatch(room)) and bool(room.strip("."))


def check_nick(nick):
    """Return ``nick`` if it is a valid nickname; raise ChatError('bad-nick') if not.

    A nickname is 1-32 characters: an ASCII letter, then letters, digits or
    any of ``_-[]{}^|``.
    """
    if not _valid_nick(nick):
        raise ChatError("bad-nick", "nick %s must be 1-%d characters: a letter, then "
                        "letters, digits or _-[]{}^|" % (_quote(nick), NAME_MAX))
    return nick


def check_room(room):
    """Return ``room`` without its optional leading '#'; raise ChatError('bad-room') if invalid.

    A room name is 1-32 ASCII letters, digits, ``_``, ``-`` or ``.``, not only dots.
    """
    name = room[1:] if room.startswith("#") else room
    if not _valid_room(name):
        raise ChatError("bad-room", "room %s must be 1-%d letters, digits, '_', '-' or '.' "
                        "(not only dots), optionally after a '#'" % (_quote(room), NAME_MAX))
    return name


def nick_key(nick):
    """Return the key under which ``nick`` is unique (nicks compare case-insensitively)."""
    return nick.casefold()


def room_key(room):
    """Return the key under which ``room`` is unique: no leading '#', case-folded."""
    return (room[1:] if room.startswith("#") else room).casefold()


# ---------------------------------------------------------------------------
# Client lines -> commands

class CommandSpec(NamedTuple):
    """One client command: its argument labels (``[X]`` = optional) and a help sentence."""

    args: str
    help: str


# Labels: NAME/NICK are nicknames, ROOM a room, TEXT/REASON the rest of the line.
COMMANDS = {
    "nick": CommandSpec("NAME", "choose or change your nickname"),
    "join": CommandSpec("ROOM", "join ROOM (made if new); it becomes your current room"),
    "leave": CommandSpec("[ROOM]", "leave ROOM, or your current room"),
    "msg": CommandSpec("NICK TEXT", "send TEXT to NICK only"),
    "who": CommandSpec("[ROOM]", "list who is in ROOM, or in your current room"),
    "rooms": CommandSpec("", "list the rooms and how many are in each"),
    "me": CommandSpec("TEXT", "show TEXT as an action in your current room"),
    "help": CommandSpec("", "show this help"),
    "quit": CommandSpec("[REASON]", "leave the chat and disconnect"),
}

_ARG_CHECKS = {"NAME": check_nick, "NICK": check_nick, "ROOM": check_room,
               "TEXT": str, "REASON": str}
_REST_LABELS = frozenset({"TEXT", "REASON"})
_COMMAND_RE = re.compile(r"/(\S*)\s*(.*)", re.DOTALL)


@dataclass(frozen=True)
class Command:
    """One parsed client line.

    ``name`` is a key of COMMANDS, ``"say"`` (args: the text) or ``"noop"``
    (a blank line, args empty). ``args`` follow the command's usage in order;
    an omitted optional argument is None.
    """

    name: str
    args: tuple = ()


def usage(name):
    """Return the usage string of command ``name``, e.g. ``/msg NICK TEXT``."""
    return ("/%s %s" % (name, COMMANDS[name].args)).rstrip()


def parse_line(text):
    """Turn one cleaned client line into a :class:`Command`.

    A line not starting with '/' is a message ("say"); '//' escapes a
    leading '/'. Raises ChatError with code 'unknown-command', 'bad-args',
    'bad-nick' or 'bad-room'.
    """
    if not text.strip():
        return Command("noop")
    if not text.startswith("/") or text.startswith("//"):
        return Command("say", (text[1:] if text.startswith("/") else text,))
    name, rest = _COMMAND_RE.match(text).groups()
    name = name.lower()
    if name not in COMMANDS:
        raise ChatError("unknown-command", "unknown command %s; try /help (start a message "
                        "with // to send a leading /)" % _quote("/" + name))
    return Command(name, _parse_args(name, rest))


def _parse_args(name, rest):
    values = []
    for label in COMMANDS[name].args.split():
        optional, label = label.startswith("["), label.strip("[]")
        if label in _REST_LABELS:
            value, rest = rest, ""
        else:
            value, rest = _split_token(rest)
        if value:
            values.append(_ARG_CHECKS[label](value))
        elif optional:
            values.append(None)
        else:
            raise ChatError("bad-args", "usage: " + usage(name))
    if rest:
        raise ChatError("bad-args", "too many arguments; usage: " + usage(name))
    return tuple(values)


def _split_token(rest):
    parts = rest.split(None, 1)
    return (parts[0] if parts else ""), (parts[1] if len(parts) > 1 else "")


# ---------------------------------------------------------------------------
# Server lines: formatting

class NoticeSpec(NamedTuple):
    """A notice kind: its fixed token fields, then ``rest``: "" (nothing), "text" or "tokens"."""

    fields: tuple
    rest: str


NOTICES = {
    "welcome": NoticeSpec(("server",), "text"),
    "info": NoticeSpec((), "text"),
    "nick": NoticeSpec(("old", "new"), ""),
    "join": NoticeSpec(("room", "nick"), ""),
    "leave": NoticeSpec(("room", "nick"), ""),
    "quit": NoticeSpec(("nick",), "text"),
    "who": NoticeSpec(("room",), "tokens"),
    "rooms": NoticeSpec((), "tokens"),
    "history-end": NoticeSpec(("room",), ""),
    "help": NoticeSpec((), "text"),
    "shutdown": NoticeSpec((), "text"),
}

# Every error code the chat service sends, with what it means (docs/PROTOCOL.rst ("Chat protocol")).
ERRORS = {
    "unknown-command": "the line starts with '/' but names no command",
    "bad-args": "a command got too few or too many arguments",
    "bad-nick": "a nickname breaks the nickname rule",
    "bad-room": "a room name breaks the room rule",
    "no-nick": "choose a nickname with /nick before anything else",
    "nick-taken": "another client uses that nickname (case-insensitively)",
    "no-room": "no current room (or not in the room named)",
    "no-such-nick": "no client uses that nickname",
    "no-such-room": "no room has that name",
    "line-too-long": "a line was longer than the server's limit and was discarded",
    "flood": "lines arrive faster than the server's rate limit; slow down",
    "busy": "the server is at a limit (clients, rooms or members)",
    "unavailable": "the shared chat state (Redis) cannot be reached now; try again later",
}

_TOKEN_RE = re.compile(r"[^\s\x00-\x1f\x7f-\x9f]+")
_CODE_RE = re.compile(r"[a-z][a-z0-9-]*")
_TS_RE = re.compile(r"[0-9]+(\.[0-9]+)?")


def _require(valid, value, what):
    if not (isinstance(value, str) and valid(value)):
        raise ValueError("%s must be %s (got %r)" % (what, _RULES[what], value))
    return value


_RULES = {
    "nick": "a valid nickname", "room": "a valid room name without '#'",
    "token": "a non-empty word without spaces or control characters",
    "code": "lower-case letters, digits and '-', starting with a letter",
}


def _nick(value):
    return _require(_valid_nick, value, "nick")


def _room(value):
    return _require(_valid_room, value, "room")


def _token(value):
    return _require(_TOKEN_RE.fullmatch, value, "token")


def _line(*parts):
    return " ".join(parts).encode("utf-8") + EOL


def format_message(room, nick, text):
    """Return ``MSG room nick text`` as one LF-terminated UTF-8 line; ``text`` is cleaned.

    Raises ValueError if ``room`` or ``nick`` is not a valid name (a server bug).
    """
    return _line("MSG", _room(room), _nick(nick), clean_text(text))


def format_action(room, nick, text):
    """Return ``ACT room nick text`` (a /me action); raises as :func:`format_message`."""
    return _line("ACT", _room(room), _nick(nick), clean_text(text))


def format_private(sender, recipient, text):
    """Return ``PRIV sender recipient text``; raises ValueError on an invalid nick."""
    return _line("PRIV", _nick(sender), _nick(recipient), clean_text(text))


def format_history(room, nick, ts, text, action=False):
    """Return ``HIST ts MSG|ACT room nick text``: a replayed message sent at unix time ``ts``.

    ``ts`` is written in seconds with three decimals. Raises ValueError if
    ``ts`` is negative or not finite, or a name is invalid.
    """
    if not (isinstance(ts, (int, float)) and math.isfinite(ts) and ts >= 0):
        raise ValueError("ts must be a finite number of seconds >= 0 (got %r)" % (ts,))
    inner = (format_action if action else format_message)(room, nick, text)
    return b"HIST %.3f " % ts + inner


def format_notice(kind, *args):
    """Return ``* kind field... [text]``: a system notice laid out as NOTICES[kind] says.

    ``args`` are the kind's token fields, then its text (cleaned) if it has
    one, or any number of further tokens if it takes a list. Raises
    ValueError on an unknown kind, a wrong argument count or a bad token.
    """
    spec = NOTICES.get(kind)
    if spec is None:
        raise ValueError("unknown notice kind %r (known: %s)" % (kind, ", ".join(NOTICES)))
    count = len(spec.fields)
    if len(args) < count or (spec.rest != "tokens" and len(args) != count + (spec.rest == "text")):
        raise ValueError("notice %r takes fields %s%s (got %r)" % (
            kind, spec.fields, " and a " + spec.rest if spec.rest else "", args))
    tokens = args if spec.rest == "tokens" else args[:count]
    parts = ["*", kind] + [_token(t) for t in tokens]
    if spec.rest == "text":
        parts.append(clean_text(args[count]))
    return _line(*parts)


def format_error(code, message):
    """Return ``! code message``; raises ValueError if ``code`` is not a well-formed code."""
    return _line("!", _require(_CODE_RE.fullmatch, code, "code"), clean_text(message))


def format_help():
    """Return the /help answer: ``* help`` lines built from the COMMANDS table."""
    width = max(len(usage(name)) for name in COMMANDS)
    lines = [format_notice("help", "anything not starting with / is a message to your "
                           "current room; start it with // to send a leading /")]
    for name, spec in COMMANDS.items():
        lines.append(format_notice("help", "%-*s  %s" % (width, usage(name), spec.help)))
    return b"".join(lines)


# ---------------------------------------------------------------------------
# Server lines: parsing (for the client library)

@dataclass(frozen=True)
class Message:
    """``nick`` said ``text`` in ``room``."""

    room: str
    nick: str
    text: str


@dataclass(frozen=True)
class Action:
    """``nick`` performed ``text`` (/me) in ``room``."""

    room: str
    nick: str
    text: str


@dataclass(frozen=True)
class Private:
    """``sender`` sent ``text`` to ``recipient`` only."""

    sender: str
    recipient: str
    text: str


@dataclass(frozen=True)
class History:
    """A replayed room Message or Action, first sent at unix time ``ts``."""

    ts: float
    event: Union[Message, Action]


@dataclass(frozen=True)
class Notice:
    """A system notice: ``kind``, its token ``fields`` and its free ``text`` (may be empty)."""

    kind: str
    fields: tuple = ()
    text: str = ""


@dataclass(frozen=True)
class Error:
    """The server refused something: a stable ``code`` and a human ``message``."""

    code: str
    message: str


def parse_server_line(line):
    """Turn one server line (str or bytes, one LF or CRLF at the end optional) into an event.

    Returns Message, Action, Private, History, Notice or Error. A notice of a
    kind not in NOTICES becomes ``Notice(kind, (), rest)``. Raises
    ProtocolError('bad-line') for anything outside the grammar.
    """
    if isinstance(line, (bytes, bytearray)):
        line = line.decode("utf-8", "replace")
    line = line[:-1] if line.endswith("\n") else line
    line = line[:-1] if line.endswith("\r") else line
    verb, _, rest = line.partition(" ")
    parser = _SERVER_PARSERS.get(verb)
    event = parser(rest) if parser and "\n" not in line and "\r" not in line else None
    if event is None:
        raise ProtocolError("bad-line", "not a chat server line: %s" % _quote(line))
    return event


def _split_fields(rest, count, valid):
    """Return ``count`` valid tokens and the (cleaned) text after them, or None."""
    parts = rest.split(" ", count)
    if len(parts) < count or not all(v(p) for v, p in zip(valid, parts)):
        return None
    return parts[:count] + [clean_text(parts[count]) if len(parts) > count else ""]


def _room_event(cls):
    def parse(rest):
        parts = _split_fields(rest, 2, (_valid_room, _valid_nick))
        return cls(*parts) if parts else None
    return parse


def _parse_private(rest):
    parts = _split_fields(rest, 2, (_valid_nick, _valid_nick))
    return Private(*parts) if parts else None


def _parse_history(rest):
    ts, _, inner = rest.partition(" ")
    verb, _, inner_rest = inner.partition(" ")
    if not _TS_RE.fullmatch(ts) or verb not in ("MSG", "ACT"):
        return None
    event = _SERVER_PARSERS[verb](inner_rest)
    return History(float(ts), event) if event else None


def _parse_notice(rest):
    kind, _, rest = rest.partition(" ")
    spec = NOTICES.get(kind)
    if not _TOKEN_RE.fullmatch(kind):
        return None
    if spec is None:
        return Notice(kind, (), clean_text(rest))
    parts = _split_fields(rest, len(spec.fields), [_TOKEN_RE.fullmatch] * len(spec.fields))
    if parts is None:
        return None
    if spec.rest == "tokens":
        return Notice(kind, tuple(parts[:-1]) + tuple(parts[-1].split()))
    return Notice(kind, tuple(parts[:-1]), parts[-1])


def _parse_error(rest):
    parts = _split_fields(rest, 1, (_CODE_RE.fullmatch,))
    return Error(*parts) if parts else None


_SERVER_PARSERS = {
    "MSG": _room_event(Message), "ACT": _room_event(Action), "PRIV": _parse_private,
    "HIST": _parse_history, "*": _parse_notice, "!": _parse_error,
}


def format_event(event):
    """Return the line for a parsed event: the inverse of :func:`parse_server_line`.

    Raises ValueError as the ``format_*`` function for that event does, or
    TypeError for an object that is not a chat event.
    """
    if isinstance(event, (Message, Action)):
        fmt = format_message if isinstance(event, Message) else format_action
        return fmt(event.room, event.nick, event.text)
    if isinstance(event, Private):
        return format_private(event.sender, event.recipient, event.text)
    if isinstance(event, History):
        inner = event.event
        return format_history(inner.room, inner.nick, event.ts, inner.text,
                              action=isinstance(inner, Action))
    if isinstance(event, Notice):
        text = (event.text,) if NOTICES.get(event.kind, NoticeSpec((), "")).rest == "text" else ()
        return format_notice(event.kind, *(tuple(event.fields) + text))
    if isinstance(event, Error):
        return format_error(event.code, event.message)
    raise TypeError("not a chat event: %r" % (event,))


__all__ = [
    "EOL", "MAX_LINE", "NAME_MAX", "ChatError", "clean_text",
    "Line", "LineTooLong", "LineReader",
    "check_nick", "check_room", "nick_key", "room_key",
    "CommandSpec", "COMMANDS", "Command", "usage", "parse_line",
    "NoticeSpec", "NOTICES", "ERRORS",
    "format_message", "format_action", "format_private", "format_history",
    "format_notice", "format_error", "format_help", "format_event",
    "Message", "Action", "Private", "History", "Notice", "Error", "parse_server_line",
]
