"""``python -m msgsrv.client chat HOST:PORT --nick NAME``: an interactive chat terminal.

A reader thread prints incoming events as they arrive; the main thread
forwards each line typed on standard input.  On a terminal, the line being
typed is the last line of the screen, after a ``NICK@ROOM>`` prompt, and
incoming lines are printed above it (it is redrawn under them, as typed so
far); otherwise (a pipe) lines are read and printed as they are.  End with
``/quit`` or end of input (Ctrl-D).
"""

import contextlib
import os
import select
import shutil
import sys
import threading
import time

from msgsrv.client.base import parse_address
from msgsrv.client.base import printable
from msgsrv.client.framed import DEFAULT_HELLO_TIMEOUT
from msgsrv.services.chat.client import ChatClient
from msgsrv.services.chat.protocol import (Action, History, Message, Notice, Private, nick_key,
                                           room_key)
from msgsrv.wire.errors import MsgsrvError, ServerError
from .options import add_connection_options
from .terminal import LineEditor, cbreak

_POLL = 0.2  # seconds between checks that the connection is still open
_CLEAR_LINE = "\r\x1b[K"


def register(subparsers):
    """Add the ``chat`` subcommand."""
    parser = subparsers.add_parser("chat", help="chat interactively in a chat service")
    parser.add_argument("address", help="HOST:PORT")
    parser.add_argument("--nick", required=True, help="your nickname")
    add_connection_options(parser, tls=False)
    parser.set_defaults(func=run)


def describe(event):
    """A one-line, human-friendly rendering of a chat event."""
    if isinstance(event, History):
        stamp = time.strftime("%H:%M", time.localtime(event.ts))
        return "%s (%s)" % (describe(event.event), stamp)
    if isinstance(event, Message):
        return "[%s] <%s> %s" % (event.room, event.nick, event.text)
    if isinstance(event, Action):
        return "[%s] * %s %s" % (event.room, event.nick, event.text)
    if isinstance(event, Private):
        return "[private] <%s -> %s> %s" % (event.sender, event.recipient, event.text)
    if isinstance(event, Notice):
        return "-- %s" % " ".join((event.kind,) + tuple(event.fields) + ((event.text,) if event.text else ()))
    return str(event)


def run(args, stdin_fd=None, out=None):
    """Chat until /quit, end of input or the server closing; return the exit status.

    0 after the user quit, 1 if the connection ended first, 2 for a bad --nick.
    """
    stdin_fd = sys.stdin.fileno() if stdin_fd is None else stdin_fd
    out = sys.stdout if out is None else out
    host, port = parse_address(args.address)
    try:
        client = ChatClient(host, port, args.nick, timeout=args.timeout,
                            hello_timeout=getattr(args, "hello_timeout", DEFAULT_HELLO_TIMEOUT))
    except MsgsrvError:
        raise
    except ValueError as exc:  # the nick breaks the rule
        print("msgsrv.client: --nick: %s" % exc, file=sys.stderr)
        return 2
    interactive = os.isatty(stdin_fd) and getattr(out, "isatty", bool)()
    screen = _Screen(out, client) if interactive else _Lines(out)
    show = _Printer(client, screen)
    with contextlib.ExitStack() as terminal:
        if interactive:
            # Before anything is shown: what is typed once the prompt appears must reach
            # the editor, not the terminal's own line discipline.
            terminal.enter_context(cbreak(stdin_fd))
        show.start()
        try:
            if interactive:
                screen.say("-- connected to %s:%d as %s; /help lists the commands, /quit or "
                           "Ctrl-D leaves" % (host, port, client.nick))
                quit_sent = _edit_input(client, stdin_fd, show, screen)
            else:
                quit_sent = _forward_input(client, stdin_fd, show)
            show.join(args.timeout if quit_sent else 0)
        finally:
            client.close()
            show.join(args.timeout)
            screen.close()
    return 0 if quit_sent else 1


class _Printer(threading.Thread):
    """Prints every event from ``client`` until the connection ends."""

    def __init__(self, client, screen):
        super().__init__(name="chat-printer", daemon=True)
        self.client = client
        self.screen = screen
        self.quitting = False  # set once /quit is sent: the close that follows is expected

    def run(self):
        while True:
            try:
                event = self.client.recv()
            except ServerError as exc:
                self.screen.say("!! %s: %s" % (exc.code, exc.message))
                continue
            except MsgsrvError as exc:
                if self.client.sock is not None and not self.quitting:
                    self.screen.say("-- disconnected (%s)" % exc)
                return
            self.screen.follow(event)
            self.screen.say(describe(event))


class _Lines:
    """Output to a pipe or file: one line per event, nothing else."""

    def __init__(self, out):
        self.out = out
        self.lock = threading.Lock()

    def say(self, text):
        """Write one line (from any thread)."""
        with self.lock:
            self.out.write(printable(text) + "\n")
            self.out.flush()

    def follow(self, event):
        """Nothing to track without a prompt."""

    def close(self):
        """Nothing to restore."""


class _Screen(_Lines):
    """A terminal: incoming lines above, the line being typed last, after a prompt
    naming the user's nick and current room (followed from the events)."""

    def __init__(self, out, client):
        super().__init__(out)
        self.editor = LineEditor()
        self.nick = client.nick
        self.rooms = list(client.rooms_joined)

    def say(self, text):
        """Print ``text`` above the input line, then redraw the input line."""
        with self.lock:
            self.out.write(_CLEAR_LINE + printable(text) + "\n")
            self._draw()

    def keys(self, data):
        """Apply typed bytes to the input line; return its finished events."""
        with self.lock:
            events = self.editor.feed(data)
            self._draw()
        return events

    def follow(self, event):
        """Keep the prompt's nick and room up to date."""
        if not isinstance(event, Notice) or len(event.fields) < 2:
            return
        first, second = event.fields[0], event.fields[1]
        with self.lock:
            if event.kind == "nick" and nick_key(first) == nick_key(self.nick):
                self.nick = second
            elif event.kind in ("join", "leave") and nick_key(second) == nick_key(self.nick):
                self.rooms = [r for r in self.rooms if room_key(r) != room_key(first)]
                if event.kind == "join":
                    self.rooms.append(first)

    def close(self):
        """Leave the cursor on a fresh line."""
        with self.lock:
            self.out.write(_CLEAR_LINE)
            self.out.flush()

    def prompt(self):
        """``NICK@ROOM> `` (``NICK> `` in no room)."""
        room = "@" + self.rooms[-1] if self.rooms else ""
        return printable("%s%s> " % (self.nick, room))

    def _draw(self):
        width = shutil.get_terminal_size().columns
        text, column = self.editor.render(self.prompt(), width)
        self.out.write(_CLEAR_LINE + text + "\r" + ("\x1b[%dC" % column if column else ""))
        self.out.flush()


def _edit_input(client, fd, printer, screen):
    """Edit and send lines until /quit, Ctrl-D or Ctrl-C; return True if /quit was sent."""
    try:
        while printer.is_alive():
            ready, _, _ = select.select([fd], [], [], _POLL)
            if not ready:
                continue
            data = os.read(fd, 4096)
            events = screen.keys(data) if data else [("eof", None)]
            for kind, line in events:
                if _send(client, "/quit" if kind == "eof" else line, printer):
                    return True
    except KeyboardInterrupt:
        return _send(client, "/quit", printer)
    return False


def _forward_input(client, fd, printer):
    """Send typed lines until /quit or end of input; return True if /quit was sent."""
    pending = b""
    while printer.is_alive():
        ready, _, _ = select.select([fd], [], [], _POLL)
        if not ready:
            continue
        data = os.read(fd, 4096)
        if not data:
            return _send(client, "/quit", printer)
        *lines, pending = (pending + data).split(b"\n")
        for raw in lines:
            if _send(client, raw.decode("utf-8", "replace").rstrip("\r"), printer):
                return True
    return False


def _send(client, line, printer):
    """Send one typed line; True if it was /quit."""
    quitting = line.lower().split(" ", 1)[0] == "/quit"
    printer.quitting = printer.quitting or quitting
    client.send_line(line)
    return quitting
