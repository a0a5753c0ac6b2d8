"""Handlers that raise in a chosen callback, for the crash-containment table.

Each is a plain echo until the client asks for a crash with a ``crash:WHERE``
token, so one daemon serves crashing and healthy connections side by side.
"""

from msgsrv.net.handler import FramedHandler, Handler


class Crash(RuntimeError):
    """The deliberate failure (its name shows in the log's traceback)."""


class CrashOnRequest(Handler):
    """Echo; ``crash:data`` raises in data_received, ``crash:eof`` at EOF,
    ``crash:timeout`` in a timer's callback (after 0.1 s), ``crash:lost`` in
    connection_lost."""

    def connection_made(self):
        self.armed = set()

    def data_received(self, data):
        for where in (b"data", b"eof", b"timeout", b"lost"):
            if b"crash:" + where in data:
                self.armed.add(where)
        if b"data" in self.armed:
            raise Crash("data_received crashed on request")
        if b"timeout" in self.armed:
            self.conn.call_later(0.1, self.timer_fired)
        self.conn.send(data)

    def eof_received(self):
        if b"eof" in self.armed:
            raise Crash("eof_received crashed on request")
        return False

    def timer_fired(self):
        raise Crash("timer callback crashed on request")

    def connection_lost(self):
        if b"lost" in self.armed:
            raise Crash("connection_lost crashed on request")


class CrashOnConnect(Handler):
    """Raises in connection_made, for every connection."""

    def connection_made(self):
        raise Crash("connection_made crashed")

    def data_received(self, data):
        self.conn.send(data)


class CrashFramed(FramedHandler):
    """Framed: a ``crash`` request raises in message_received; others get ``pong``."""

    def message_received(self, message):
        if message.type == "crash":
            raise Crash("message_received crashed on request")
        self.reply({"type": "pong"})


class UpperEcho(Handler):
    """A broken echo (upper-cases): the fuzzer must report it."""

    def data_received(self, data):
        self.conn.send(data.upper())


class TracebackFramed(FramedHandler):
    """A framed service that leaks a traceback text in its errors: the fuzzer must report it."""

    def message_received(self, message):
        self.reply_error("bad-header", "Traceback (most recent call last):\n  File ...")
