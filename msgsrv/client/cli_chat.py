"""``python -m msgsrv.client chat HOST:PORT --nick NAME``: an interactive chat terminal.

A reader thread prints incoming events as they arrive; the main thread
forwards each line typed on standard input, so incoming messages show even
while the user is typing.  End with ``/quit`` or end of input (Ctrl-D).
"""

import os
import select
import sys
import threading
import time

from ..chatproto import Action, History, Message, Notice, Private
from ..errors import MsgsrvError, ServerError
from .base import parse_address
from .chat import ChatClient
from .options import add_connection_options

_POLL = 0.2  # seconds between checks that the connection is still open


def register(subparsers):
    """Add the ``chat`` subcommand."""
    parser = subparsers.add_parser("chat", help="chat interactively in a chat service")
    parser.add_argument("address", help="HOST:PORT")
    parser.add_argument("--nick", required=True, help="your nickname")
    add_connection_options(parser)
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

    0 after the user quit, 1 if the connection ended first.
    """
    stdin_fd = sys.stdin.fileno() if stdin_fd is None else stdin_fd
    out = sys.stdout if out is None else out
    host, port = parse_address(args.address)
    client = ChatClient(host, port, args.nick, timeout=args.timeout)
    show = _Printer(client, out)
    show.start()
    try:
        quit_sent = _forward_input(client, stdin_fd, show)
        show.join(args.timeout if quit_sent else 0)
    finally:
        client.close()
        show.join(args.timeout)
    return 0 if quit_sent else 1


class _Printer(threading.Thread):
    """Prints every event from ``client`` until the connection ends."""

    def __init__(self, client, out):
        super().__init__(name="chat-printer", daemon=True)
        self.client = client
        self.out = out
        self.lock = threading.Lock()

    def run(self):
        while True:
            try:
                event = self.client.recv()
            except ServerError as exc:
                self.say("!! %s: %s" % (exc.code, exc.message))
                continue
            except MsgsrvError as exc:
                if self.client.sock is not None:
                    self.say("-- disconnected (%s)" % exc)
                return
            self.say(describe(event))

    def say(self, text):
        """Write one line (from any thread)."""
        with self.lock:
            self.out.write(text + "\n")
            self.out.flush()


def _forward_input(client, fd, printer):
    """Send typed lines until /quit or end of input; return True if /quit was sent."""
    pending = b""
    while printer.is_alive():
        ready, _, _ = select.select([fd], [], [], _POLL)
        if not ready:
            continue
        data = os.read(fd, 4096)
        if not data:
            client.send_line("/quit")
            return True
        *lines, pending = (pending + data).split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace").rstrip("\r")
            client.send_line(line)
            if line.lower().split(" ", 1)[0] == "/quit":
                return True
    return False
