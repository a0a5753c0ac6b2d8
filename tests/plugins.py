"""Handlers used by the tests as user plugins (imported by package.module:Class)."""

import os
import socketserver
import threading

from msgsrv.net.authenticated import AuthenticatedHandler
from msgsrv.net.handler import FramedHandler, Handler
from msgsrv.net.service import Service
from msgsrv.ops.settings import Setting, text
from msgsrv.services.chat.handler import ChatService
from msgsrv.wire.errors import ConfigError


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


class BlockingDatagram(socketserver.BaseRequestHandler):
    """A UDP plugin that answers ``blocking`` and then never returns (a stuck handler)."""

    def handle(self):
        data, sock = self.request
        sock.sendto(b"blocking", self.client_address)
        threading.Event().wait()


class HoldHandler(socketserver.BaseRequestHandler):
    """A plain TCP handler that says ``held`` and holds its thread until the peer closes."""

    def handle(self):
        self.request.sendall(b"held\n")
        while self.request.recv(100):
            pass


class BlockingSender(Handler):
    """On ``send N``: sends N bytes from a blocking section, then reports the connection's
    ``bytes_out`` in a line of its own (``out=...``)."""

    def data_received(self, data):
        count = int(data.split()[1])
        before = self.conn.bytes_out
        with self.conn.blocking(5) as sock:
            sock.sendall(b"x" * count)
        self.conn.send(b"\nout=%d\n" % (self.conn.bytes_out - before))


class PickyService(Service):
    """Refuses to start while the file its ``refuse_if`` names exists (a service object
    that fails where the master's checks do not look)."""

    def __init__(self, config, global_options):
        super().__init__(config, global_options)
        if os.path.exists(config["refuse_if"]):
            raise ConfigError("[service:%s] refuse_if: %s exists" % (config.name,
                                                                     config["refuse_if"]))


class PickyHandler(Handler):
    """An echo handler whose service is a PickyService."""

    settings = (Setting("refuse_if", text, "", "Path that makes the service refuse."),)
    service_class = PickyService

    def data_received(self, data):
        self.conn.send(data)


class ChatFriend(Handler):
    """An echo handler naming a chat service as its sibling (as the web console does)."""

    settings = (Setting("chat", text, "", "The chat service this one talks to."),)
    siblings = (("chat", ChatService),)

    def data_received(self, data):
        self.conn.send(data)


class StateChanger(Handler):
    """Changes its connection's state from inside ``data_received`` (the pool's short path).

    ``pause``: reading stops for 0.3 s (a timer resumes it) after the answer
    ``paused``; ``big N``: N bytes queued at once; ``close``: ``bye``, then
    close; ``soon``: another thread's ``call_soon`` lands while this call
    runs, and its callback answers ``soon``; anything else is echoed.
    """

    def data_received(self, data):
        word = data.split()[0]
        if word == b"pause":
            self.conn.pause_reading()
            self.conn.call_later(0.3, self.conn.resume_reading)
            self.conn.send(b"paused\n")
        elif word == b"big":
            self.conn.send(b"x" * int(data.split()[1]))
        elif word == b"close":
            self.conn.send(b"bye\n")
            self.conn.close()
        elif word == b"soon":
            scheduled = threading.Event()
            threading.Thread(target=lambda: (self.conn.call_soon(self._soon), scheduled.set()),
                             daemon=True).start()
            scheduled.wait(5)
        else:
            self.conn.send(data)

    def _soon(self):
        self.conn.send(b"soon\n")
