"""The services under attack, as a table, and a daemon subprocess started from it.

Each :class:`ServiceSpec` names a service section of the daemon's config and
how a normal, fresh client uses it (``ping``).  Tests parametrize over
:data:`SERVICES` (or a subset by kind), so a new service joins the suite by
adding a row here.
"""

import contextlib
import os
import re
import socket
from dataclasses import dataclass, field
from typing import Callable, Dict

from msgsrv.services.chat.client import ChatClient
from msgsrv.services.command.client import CommandClient
from msgsrv.services.files.client import FileClient
from msgsrv.services.status.client import StatusClient
from msgsrv.client.framed import FramedClient
from msgsrv.net.proxy_protocol import encode_v2
from msgsrv.wire.frame_stream import FrameStream, check_error
from tests.conftest import DaemonProcess
from tests.hostile.procwatch import ProcessProbe

KEY_NAME = "hostile"
SECRET = "hostile-secret-0123456789"
PING = b"ping\n"


class Refused(Exception):
    """The service closed a new connection without serving it."""


#: The client a proxied probe claims to be (the load balancer is the prober, 127.0.0.1).
PROXIED_CLIENT = ("127.0.0.2", 40000)


def stream_session(address, prefix=b""):
    """Echo over TCP: connect, one line out and back; return the open socket.
    ``prefix`` is sent first (a PROXY header) and not echoed."""
    sock = socket.create_connection(address, timeout=10)
    try:
        sock.sendall(prefix + PING)
        got = b""
        while len(got) < len(PING):
            chunk = sock.recv(64)
            if not chunk:
                raise Refused("echo closed before answering")
            got += chunk
        assert got == PING, got
    except BaseException:
        sock.close()
        raise
    return sock


def proxied_session(address):
    """Echo behind a load balancer: a PROXY v2 header naming PROXIED_CLIENT, then a ping."""
    return stream_session(address, encode_v2(PROXIED_CLIENT, address))


def datagram_session(address):
    """Echo over UDP: one datagram out, the same back; return the socket."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(10)
    sock.sendto(PING, address)
    try:
        assert sock.recv(64) == PING
    except BaseException:
        sock.close()
        raise
    return sock


def _served(client, check):
    """``client`` once ``check(client)`` passed; closed if it raised."""
    try:
        check(client)
    except BaseException:
        client.close()
        raise
    return client


def _check(condition):
    assert condition


def authed_session(address):
    """Framed with authentication: hello, auth, one request; return the open FramedClient."""
    return _served(FramedClient(address[0], address[1], KEY_NAME, SECRET, timeout=10),
                   lambda c: _check(c.request({"type": "ping"}).header["identity"] == KEY_NAME))


def file_session(address):
    """File service: authenticate, one ``stat`` of the root; return the open FileClient."""
    return _served(FileClient(address[0], address[1], KEY_NAME, SECRET, timeout=10),
                   lambda c: _check(c.stat("").kind == "dir"))


def command_session(address):
    """Command service: authenticate, run ``echo ping``; return the open CommandClient."""
    return _served(CommandClient(address[0], address[1], KEY_NAME, SECRET, timeout=10),
                   lambda c: _check(c.run("echo", "ping").stdout == b"ping\n"))


def status_session(address):
    """Status service: hello, one JSON status document; return the open StatusClient."""
    return _served(StatusClient(address[0], address[1], timeout=10),
                   lambda c: _check(isinstance(c.status(), dict)))


_chat_nicks = iter(range(1 << 62))


def chat_session(address):
    """Chat: welcome, a nick, the lobby joined; return the open ChatClient."""
    return ChatClient(address[0], address[1], "probe%d" % next(_chat_nicks), timeout=10)


def framed_session(address):
    """Framed without authentication: one ping, one pong; return the open socket."""
    sock = socket.create_connection(address, timeout=10)
    try:
        stream = FrameStream(sock)
        stream.send({"type": "ping"})
        assert check_error(stream.recv()).type == "pong"
    except BaseException:
        sock.close()
        raise
    return sock


def web_session(address):
    """The web console: one keep-alive GET of /status.json; return the open socket."""
    sock = socket.create_connection(address, timeout=10)
    try:
        sock.sendall(b"GET /status.json HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (
            address[0].encode(), address[1]))
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = sock.recv(65536)
            if not chunk:
                raise Refused("the web console closed before answering")
            got += chunk
        if got.startswith(b"HTTP/1.1 503 "):
            raise Refused("refused: %r" % got.split(b"\r\n\r\n", 1)[-1][:200])
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head[:200]
        length = int(re.search(rb"(?i)\r\ncontent-length: (\d+)", head).group(1))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise Refused("the web console closed in the middle of an answer")
            body += chunk
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass(frozen=True)
class ServiceSpec:
    """One service of the hostile daemon.

    ``kind`` is ``stream`` (raw TCP), ``datagram`` (UDP), ``framed``, ``line``
    (the chat line protocol), ``proxied`` (raw TCP whose clients come through a
    load balancer: each connection starts with a PROXY header), ``http`` (the web
    console), or
    ``fault`` (a test handler that crashes on request; not a service row);
    ``options`` are its config keys (``{keys_file}`` is filled in);
    ``session(address)`` is what a normal fresh client does: it returns the
    open connection (``.close()``) after one served request, and raises
    (Refused, ServerError ``busy``, ConnectionFailed...) when not served
    (None: no client is ever served, e.g. a handler crashing on connect);
    ``authed`` says whether a framed service starts with the HMAC handshake.
    """

    name: str
    kind: str
    options: Dict[str, str]
    session: Callable
    authed: bool = False

    def ping(self, address):
        """One fresh client served (raises if not)."""
        self.session(address).close()


SERVICES = {
    "echo": ServiceSpec("echo", "stream", {"handler": "echo"}, stream_session),
    # Every client of the suite is 127.0.0.1: the default reply_rate would (rightly) cut the
    # churn and fuzz loads; tests/service/test_udp_guard.py covers the limit.
    "echo-udp": ServiceSpec("echo-udp", "datagram", {"handler": "echo", "transport": "udp",
                                                     "reply_rate": "1000000/s"},
                            datagram_session),
    # Clients through a load balancer (the prober at 127.0.0.1) claiming addresses of
    # 127.0.0.0/8: the only ones allowed, so a claim mutated elsewhere is refused.
    "echo-proxy": ServiceSpec("echo-proxy", "proxied",
                              {"handler": "echo", "proxy_protocol": "any",
                               "proxy_trusted": "127.0.0.1", "allow": "127.0.0.0/8",
                               "proxy_max_header": "512"},
                              proxied_session),
    "authed": ServiceSpec("authed", "framed",
                          {"handler": "tests.plugins:AuthedEcho", "keys_file": "{keys_file}",
                           "auth_timeout": "3", "frame_timeout": "3"},
                          authed_session, authed=True),
    "blocking": ServiceSpec("blocking", "framed",
                            {"handler": "tests.plugins:BlockingFramed", "io_timeout": "5"},
                            framed_session),
    "file": ServiceSpec("file", "framed",
                        {"handler": "file", "keys_file": "{keys_file}", "root": "{dir}/files",
                         "io_timeout": "5"},
                        file_session, authed=True),
    "command": ServiceSpec("command", "framed",
                           {"handler": "command", "keys_file": "{keys_file}",
                            "command.echo": "echo {{words*}}", "command.cat": "cat",
                            "command.sleep": "sleep {{seconds}}", "pattern.sleep": "[0-9]{{1,2}}",
                            "io_timeout": "5", "user": "nobody"},
                           command_session, authed=True),
    "status": ServiceSpec("status", "framed", {"handler": "status"}, status_session),
    "chat": ServiceSpec("chat", "line", {"handler": "chat", "line_rate": "0"}, chat_session),
    # Alone (chat empty) so that it runs without a chat service; the fuzz group names one.
    "web": ServiceSpec("web", "http", {"handler": "web", "chat": ""}, web_session),
    # Test handlers that crash on request (tests/hostile/plugins.py, tests/plugins.py).
    "crash": ServiceSpec("crash", "fault", {"handler": "tests.hostile.plugins:CrashOnRequest"},
                         stream_session),
    "crash-framed": ServiceSpec("crash-framed", "fault",
                                {"handler": "tests.hostile.plugins:CrashFramed"}, framed_session),
    "crash-connect": ServiceSpec("crash-connect", "fault",
                                 {"handler": "tests.hostile.plugins:CrashOnConnect"}, None),
    "crash-plain": ServiceSpec("crash-plain", "fault",
                               {"handler": "tests.plugins:CrashingThreadHandler"}, None),
}
#: The TCP services (the rows of connection-limit tables).
TCP_SERVICES = [name for name, spec in SERVICES.items()
                if spec.kind in ("stream", "framed", "line", "http")]


def service_options(name, keys_file, **overrides):
    """Service ``name``'s config keys with ``{keys_file}`` and ``{dir}`` (the keys file's
    directory) filled in, plus ``overrides``."""
    where = os.path.dirname(os.path.abspath(keys_file))
    options = {key: str(value).format(keys_file=keys_file, dir=where)
               for key, value in SERVICES[name].options.items()}
    options.update({key: str(value) for key, value in overrides.items()})
    return options


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
        section = service_options(name, keys_file, host="127.0.0.1", port="0",
                                  **(overrides or {}).get(name, {}))
        parts.append("\n[service:%s]" % name)
        parts += ["%s = %s" % item for item in section.items()]
    return "\n".join(parts) + "\n"


_ERROR_LINE = re.compile(r"^\S+ \S+ (ERROR|CRITICAL) ")


@dataclass
class HostileDaemon:
    """A running daemon with its services' addresses and a /proc probe."""

    process: object  # tests.conftest.DaemonProcess
    addresses: Dict[str, tuple]
    where: object = None  # the directory of its config, keys and ``{dir}`` paths
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
        """Ping every service of this daemon that ever serves anyone."""
        for name in self.addresses:
            if SERVICES[name].session is not None:
                self.ping(name)

    @property
    def log(self):
        """Everything the daemon logged so far."""
        return self.process.log

    def error_lines(self, allowed=()):
        """ERROR/CRITICAL log lines not matching any regex in ``allowed``."""
        return [line for line in self.process.lines if _ERROR_LINE.match(line)
                and not any(re.search(pattern, line) for pattern in allowed)]

    def closes(self, service):
        """The access-log records of ``service``'s closed connections, as dicts
        (``duration`` a float in seconds, ``outcome``, ``peer``...)."""
        records = []
        for line in self.process.lines:
            if " msgsrv.access: close service=%s " % service in line:
                record = dict(field.split("=", 1) for field in line.split()[5:] if "=" in field)
                record["duration"] = float(record.get("duration", "nan"))
                records.append(record)
        return records

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
    """Start ``python -m msgsrv`` serving ``services``; return a HostileDaemon once listening.

    ``daemon_factory(config_path)`` is the conftest fixture (or DaemonProcess
    itself, when the caller stops it).
    """
    keys_file = write_keys_file(tmp_path / "hostile.keys")
    config = tmp_path / "hostile.ini"
    config.write_text(render_config(services, keys_file, global_options, overrides))
    process = daemon_factory(config)
    try:
        addresses = dict(process.wait_listening(len(services), timeout=20))
    except BaseException:
        process.stop()
        raise
    return HostileDaemon(process, addresses, tmp_path)


@contextlib.contextmanager
def running_daemon(tmp_path, services, global_options=None, overrides=None):
    """A HostileDaemon for a ``with`` block (module-scoped fixtures); stopped at the end."""
    daemon = start_daemon(DaemonProcess, tmp_path, services, global_options, overrides)
    try:
        yield daemon
    finally:
        daemon.process.stop()

