"""Handlers used by the tests as user plugins (imported by package.module:Class)."""

import socketserver

from msgsrv.handlers.authed import AuthenticatedHandler
from msgsrv.handlers.base import FramedHandler, Handler
from msgsrv.settings import Setting, text


class ShoutHandler(socketserver.BaseRequestHandler):
    """A plain socketserver handler: upper-cases each line (thread-per-connection mode)."""

    def handle(self):
        stream = self.request.makefile("rwb")
        for line in stream:
            stream.write(line.upper())
            stream.flush()


class DatagramShout(socketserver.BaseRequestHandler):
    """A plain socketserver handler on UDP: upper-cases the datagram."""

    def handle(self):
        data, sock = self.request
        sock.sendto(data.upper(), self.client_address)


class CrashHandler(Handler):
    """Raises on ``boom``; echoes anything else."""

    def data_received(self, data):
        if b"boom" in data:
            raise RuntimeError("boom requested")
        self.conn.send(data)


class CrashingThreadHandler(socketserver.BaseRequestHandler):
    """A plain handler that raises after reading one chunk."""

    def handle(self):
        self.request.recv(100)
        raise RuntimeError("plain handler exploded")


class BlockingFramed(FramedHandler):
    """Framed test handler: ``sleep`` blocks in a stream for a while, ``ping`` answers."""

    def message_received(self, message):
        if message.type == "sleep":
            with self.stream() as stream:
                stream.read_raw(int(message.header["bytes"]), lambda chunk: None)
            self.reply({"type": "slept"})
        else:
            self.reply({"type": "pong", "echo": message.header}, message.body)


class AuthedEcho(AuthenticatedHandler):
    """Answers every request with its header, tagged with the identity."""

    def request_received(self, message):
        self.reply({"type": "echo", "identity": self.identity, "request": message.header})


class AnonymousEcho(AuthedEcho):
    """AuthedEcho that also serves anonymous clients."""

    def anonymous_allowed(self):
        return True


class ShadowingHandler(Handler):
    """Declares a setting named like a service-wide one (a config error)."""

    settings = (Setting("port", text, "1", "clashes with the service's port"),)

    def data_received(self, data):
        self.conn.send(data)
