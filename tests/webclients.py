"""Clients for the web console tests: HTTP over h11, WebSocket over wsproto, raw chat lines;
and a console (chat, echo, web sharing a registry, as the daemon sets them up) in-process."""

import configparser
import contextlib
import socket
import time
from dataclasses import dataclass
from typing import Dict

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.events import (AcceptConnection, CloseConnection, RejectConnection, RejectData,
                            Request, TextMessage)

from msgsrv.ops import config as config_module
from msgsrv.ops.running import Registry
from msgsrv.net.server import make_server


@dataclass
class Reply:
    """One HTTP response: status, lower-case headers, body."""

    status: int
    headers: Dict[str, str]
    body: bytes


def read_reply(sock, client):
    """The next response on ``sock`` (an h11 client connection ``client``)."""
    reply = None
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA:
            client.receive_data(sock.recv(65536))
        elif isinstance(event, h11.Response):
            reply = Reply(event.status_code, {k.decode().lower(): v.decode()
                                              for k, v in event.headers}, b"")
        elif isinstance(event, h11.Data):
            reply.body += event.data
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            return reply


def http(port, target="/", method="GET", headers=(), body=b"", host=None):
    """One request on a fresh connection; its Reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        client = h11.Connection(h11.CLIENT)
        fields = [("Host", host or "127.0.0.1:%d" % port), ("Connection", "close")]
        fields += list(headers) + ([("Content-Length", str(len(body)))] if body else [])
        out = client.send(h11.Request(method=method, target=target, headers=fields))
        if body:
            out += client.send(h11.Data(data=body))
        sock.sendall(out + client.send(h11.EndOfMessage()))
        return read_reply(sock, client)


def raw(port, data, timeout=5.0):
    """Send raw bytes, read until the server closes; what came back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        got = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return got
            if not chunk:
                return got
            got += chunk


class WsClient:
    """A WebSocket client over a real socket; ``status`` is 101 or the refusal's."""

    def __init__(self, port, path, origin="same", headers=(), timeout=5.0, rcvbuf=None):
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.host = "127.0.0.1:%d" % port
        extra = list(headers)
        if origin:
            extra.append(("Origin", "http://" + self.host if origin == "same" else origin))
        self.sock.sendall(self.ws.send(Request(host=self.host, target=path, extra_headers=extra)))
        self.pending, self.lines, self.closed = [], [], None
        self.status, self.body = None, b""
        while self.status is None:
            for event in self._receive():
                if isinstance(event, AcceptConnection):
                    self.status = 101
                elif isinstance(event, RejectConnection):
                    self.status = event.status_code
                elif isinstance(event, RejectData):
                    self.body += event.data
                else:
                    self.pending.append(event)

    def _receive(self):
        data = self.sock.recv(65536)
        self.ws.receive_data(data or None)
        return list(self.ws.events())

    def send(self, event):
        """Send one wsproto event."""
        self.sock.sendall(self.ws.send(event))

    def say(self, text):
        """Send one text message."""
        self.send(TextMessage(data=text))

    def event(self):
        """The next event (TextMessage, Pong, CloseConnection...)."""
        while not self.pending:
            self.pending += self._receive()
        event = self.pending.pop(0)
        if isinstance(event, CloseConnection):
            self.closed = event
        return event

    def text(self):
        """The next text message (other events are skipped)."""
        while True:
            event = self.event()
            if isinstance(event, TextMessage):
                return event.data
            if isinstance(event, CloseConnection):
                raise ConnectionError("closed %d %s" % (event.code, event.reason))

    def line(self, predicate=lambda line: True, timeout=5.0):
        """The next server line matching ``predicate`` (chat lines, one or more per message)."""
        deadline = time.monotonic() + timeout
        while True:
            while self.lines:
                line = self.lines.pop(0)
                if predicate(line):
                    return line
            if time.monotonic() > deadline:
                raise AssertionError("no matching line within %gs" % timeout)
            self.lines += self.text().splitlines()

    def close_code(self):
        """Wait for the server's close; its code."""
        while self.closed is None:
            self.event()
        return self.closed.code

    def close(self):
        self.sock.close()


class LineClient:
    """A raw TCP chat client, as nc is."""

    def __init__(self, port, nick=None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buffer = b""
        if nick:
            self.send(nick)
            self.line(lambda line: line.startswith("* history-end lobby"))

    def send(self, text):
        self.sock.sendall(text.encode() + b"\n")

    def line(self, predicate=lambda line: True):
        """The next line matching ``predicate``."""
        while True:
            while b"\n" in self.buffer:
                raw_line, self.buffer = self.buffer.split(b"\n", 1)
                if predicate(raw_line.decode()):
                    return raw_line.decode()
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buffer += chunk

    def close(self):
        self.sock.close()


def parse_config(sections, global_options=None):
    """A validated Config of ``sections`` ({name: {key: value}}) on 127.0.0.1 port 0."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str
    parser["msgsrv"] = dict(global_options or {})
    for name, options in sections.items():
        parser["service:" + name] = dict({"host": "127.0.0.1", "port": "0"},
                                         **{k: str(v) for k, v in options.items()})
    return config_module.from_parser(parser, "<test>")


class Console:
    """Running servers of ``sections`` sharing a Registry: ``console["web"].port``."""

    def __init__(self, sections):
        self.config = parse_config(sections)
        self.registry = Registry()
        self.servers = {}
        for service in self.config.services:
            server = make_server(service, global_options=self.config.options)
            server.serve_in_thread()
            self.registry.add(server)
            self.servers[service.name] = server

    def __getitem__(self, name):
        return self.servers[name]

    def stop(self):
        for server in self.servers.values():
            server.stop(2.0)
