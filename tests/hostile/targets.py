"""The services under attack, as a table, and a daemon subprocess started from it.

Each :class:`ServiceSpec` names a service section of the daemon's config and
how a normal, fresh client uses it (``ping``).  Tests parametrize over
:data:`SERVICES` (or a subset by kind), so a new service joins the suite by
adding a row here.
"""

import os
import re
import socket
import textwrap
from dataclasses import dataclass, field
from typing import Callable, Dict

from msgsrv.client.framed import FramedClient
from msgsrv.stream import FrameStream
from tests.hostile.procwatch import ProcessProbe

KEY_NAME = "hostile"
SECRET = "hostile-secret-0123456789"
PING = b"ping\n"


def ping_stream(address):
    """Echo over TCP: one line out, the same line back."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(PING)
        got = b""
        while len(got) < len(PING):
            chunk = sock.recv(64)
            assert chunk, "echo closed before answering"
            got += chunk
    assert got == PING


def ping_datagram(address):
    """Echo over UDP: one datagram out, the same back."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        sock.sendto(PING, address)
        assert sock.recv(64) == PING


def ping_authed(address):
    """Framed with authentication: hello, auth, one request, its echo."""
    with FramedClient(address[0], address[1], KEY_NAME, SECRET, timeout=10) as client:
        reply = client.request({"type": "ping"})
    assert reply.header["identity"] == KEY_NAME


def ping_framed(address):
    """Framed without authentication: one ping, one pong."""
    with socket.create_connection(address, timeout=10) as sock:
        stream = FrameStream(sock)
        stream.send({"type": "ping"})
        assert stream.recv().type == "pong"


@dataclass(frozen=True)
class ServiceSpec:
    """One service of the hostile daemon.

    ``kind`` is ``stream`` (raw TCP), ``datagram`` (UDP) or ``framed``;
    ``options`` are its config keys (``{keys_file}`` is filled in);
    ``ping(address)`` is what a normal fresh client does (raises on failure);
    ``authed`` says whether a framed service starts with the HMAC handshake.
    """

    name: str
    kind: str
    options: Dict[str, str]
    ping: Callable
    authed: bool = False


SERVICES = {
    "echo": ServiceSpec("echo", "stream", {"handler": "echo"}, ping_stream),
    "echo-udp": ServiceSpec("echo-udp", "datagram", {"handler": "echo", "transport": "udp"},
                            ping_datagram),
    "authed": ServiceSpec("authed", "framed",
                          {"handler": "tests.plugins:AuthedEcho", "keys_file": "{keys_file}",
                           "auth_timeout": "3", "frame_timeout": "3"},
                          ping_authed, authed=True),
    "blocking": ServiceSpec("blocking", "framed",
                            {"handler": "tests.plugins:BlockingFramed", "io_timeout": "5"},
                            ping_framed),
}


def write_keys_file(path):
    """A keys file holding KEY_NAME with mode 0600 from its first byte."""
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as stream:
        stream.write("%s %s\n" % (KEY_NAME, SECRET))
    return str(path)


def render_config(services, keys_file, global_options=None, overrides=None):
    """The INI text for ``services`` (names in SERVICES) on 127.0.0.1 port 0."""
    options = {"log_level": "info", "shutdown_timeout": "5"}
    options.update(global_options or {})
    parts = ["[msgsrv]"] + ["%s = %s" % item for item in options.items()]
    for name in services:
        section = dict(SERVICES[name].options, host="127.0.0.1", port="0")
        section.update((overrides or {}).get(name, {}))
        parts.append("\n[service:%s]" % name)
        parts += ["%s = %s" % (key, str(value).format(keys_file=keys_file))
                  for key, value in section.items()]
    return "\n".join(parts) + "\n"


_ERROR_LINE = re.compile(r"^\S+ \S+ (ERROR|CRITICAL) ")


@dataclass
class HostileDaemon:
    """A running daemon with its services' addresses and a /proc probe."""

    process: object  # tests.conftest.DaemonProcess
    addresses: Dict[str, tuple]
    probe: ProcessProbe = field(init=False)

    def __post_init__(self):
        self.probe = ProcessProbe(self.process.proc.pid)

    def address(self, name):
        """``(host, port)`` of service ``name``."""
        return self.addresses[name]

    def ping(self, name):
        """A fresh client's normal request to ``name`` (raises if not served)."""
        SERVICES[name].ping(self.addresses[name])

    def ping_all(self):
        """Ping every service of this daemon."""
        for name in self.addresses:
            self.ping(name)

    @property
    def log(self):
        """Everything the daemon logged so far."""
        return self.process.log

    def error_lines(self, allowed=()):
        """ERROR/CRITICAL log lines not matching any regex in ``allowed``."""
        return [line for line in self.process.lines if _ERROR_LINE.match(line)
                and not any(re.search(pattern, line) for pattern in allowed)]

    def assert_alive(self):
        """Fail if the daemon process has exited."""
        code = self.process.proc.poll()
        assert code is None, "daemon died with status %s:\n%s" % (code, self.log[-4000:])

    def assert_clean_log(self, allowed=()):
        """No unexpected ERROR line and no traceback in the log."""
        unexpected = self.error_lines(allowed)
        assert not unexpected, "unexpected errors logged:\n" + "".join(unexpected[:20])
        if not allowed:
            assert "Traceback" not in self.log, self.log[-4000:]


def start_daemon(daemon_factory, tmp_path, services, global_options=None, overrides=None):
    """Start ``python -m msgsrv`` serving ``services``; return a HostileDaemon once listening."""
    keys_file = write_keys_file(tmp_path / "hostile.keys")
    config = tmp_path / "hostile.ini"
    config.write_text(render_config(services, keys_file, global_options, overrides))
    process = daemon_factory(config)
    addresses = dict(process.wait_listening(len(services), timeout=20))
    return HostileDaemon(process, addresses)


def describe(text):
    """Indent a multi-line text for an assertion message."""
    return textwrap.indent(text, "    ")
