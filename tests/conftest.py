"""Shared fixtures: real servers on 127.0.0.1 port 0, condition polling, leak checks."""

import configparser
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from msgsrv.ops import config as config_module
from msgsrv.wire.frames import encode
from msgsrv.net.server import make_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wait_for(predicate, timeout=5.0, interval=0.01, message="condition"):
    """Poll ``predicate`` until it returns a true value; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail("timed out after %.1fs waiting for %s" % (timeout, message))
        time.sleep(interval)


def free_port():
    """A TCP port free on 127.0.0.1 now, for a program that needs a number (redis-server,
    haproxy).  Bound then closed: another process may take it, so retry a failed start."""
    return free_ports(1)[0]


def free_ports(count):
    """``count`` different ports free on 127.0.0.1 now (as :func:`free_port`): all are held
    until the last is picked, since a port just closed is often the next one handed out."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def service_config(handler="echo", name="svc", global_options=None, **options):
    """Build a validated ServiceConfig (port 0 on 127.0.0.1 unless given)."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str
    parser["msgsrv"] = {k: str(v) for k, v in (global_options or {}).items()}
    section = {"handler": handler, "host": "127.0.0.1", "port": "0"}
    section.update({k: str(v) for k, v in options.items()})
    parser["service:" + name] = section
    return config_module.from_parser(parser, "<test>").services[0]


@pytest.fixture
def start_service():
    """Factory: start_service(handler, **options) -> a running server; stopped at teardown."""
    servers = []

    def start(handler="echo", **options):
        server = make_server(service_config(handler, **options))
        server.serve_in_thread()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(2.0)


@pytest.fixture
def no_thread_leak():
    """Fail if the test leaves threads behind (after a grace period)."""
    before = set(threading.enumerate())
    yield
    wait_for(lambda: set(threading.enumerate()) <= before, timeout=5.0,
             message="threads started by the test to end")


def connect(server, timeout=5.0):
    """A TCP socket connected to ``server`` with a timeout."""
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout)


def recv_until_closed(sock, limit=1 << 24):
    """Read until EOF (or reset); return what arrived."""
    data = bytearray()
    while len(data) < limit:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


def run_msgsrv(*args, cwd=ROOT, env=None, timeout=30):
    """``python -m msgsrv ARGS`` to completion (this tree's msgsrv, whatever the cwd)."""
    return subprocess.run([sys.executable, "-m", "msgsrv"] + list(args), cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=ROOT, **(env or {})))


class DaemonProcess:
    """``python -m msgsrv`` in a subprocess, with its listeners parsed from the log."""

    def __init__(self, config_path, extra_args=(), env=None):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "msgsrv", "--config", str(config_path)] + list(extra_args),
            cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=dict(os.environ, **(env or {})))
        self.lines = []
        self.listeners = {}
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()

    def _read_log(self):
        for line in self.proc.stderr:
            self.lines.append(line)
            if " listening service=" in line:
                fields = dict(part.split("=", 1) for part in line.split()[4:] if "=" in part)
                host, _, port = fields["address"].rpartition(":")
                self.listeners[fields["service"]] = (host.strip("[]"), int(port))

    def wait_listening(self, count, timeout=10.0):
        """Wait until ``count`` listeners are logged; return the dict name -> (host, port)."""
        wait_for(lambda: len(self.listeners) >= count or self.proc.poll() is not None,
                 timeout, message="daemon listeners")
        assert len(self.listeners) >= count, "daemon exited:\n" + self.log
        return self.listeners

    @property
    def log(self):
        """Everything the daemon logged so far."""
        return "".join(self.lines)

    def stop(self, timeout=10.0):
        """SIGTERM, wait; kill if it does not exit.  Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        return self.proc.returncode


@pytest.fixture
def daemon_factory():
    """Factory: daemon_factory(config_path) -> a DaemonProcess; killed at teardown."""
    daemons = []

    def start(config_path, *args, **kwargs):
        daemon = DaemonProcess(config_path, *args, **kwargs)
        daemons.append(daemon)
        return daemon

    yield start
    for daemon in daemons:
        daemon.stop()


def stop_during_a_blocked_transfer(server, sock, stream):
    """Stop ``server`` (tests.plugins:BlockingFramed) while its handler is blocked in a
    transfer on ``sock``; check the request still gets its reply, a request pipelined
    after it is not served, and the connection then closes.  Returns the stop's duration."""
    stream.send({"type": "sleep", "bytes": 100000})
    sock.sendall(b"x" * 50000)
    wait_for(lambda: server.pool.thread_count > server.pool.workers, message="a blocked handler")
    stopper = threading.Thread(target=server.stop, args=(5.0,))
    started = time.monotonic()
    stopper.start()
    wait_for(lambda: all(conn.closing for conn in server.pool.connections()),
             message="the stop to reach the connection")
    sock.sendall(b"x" * 50000 + encode({"type": "ping"}))
    assert stream.recv().type == "slept"
    assert recv_until_closed(sock) == b""
    stopper.join(5)
    assert not stopper.is_alive()
    return time.monotonic() - started


@pytest.fixture
def no_hyper(tmp_path, monkeypatch):
    """h11 (the web extra) cannot be imported: in this process (sys.modules) and in
    subprocesses given the returned PYTHONPATH."""
    fake = tmp_path / "no-hyper" / "h11"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('h11 is not installed (test)')\n")
    monkeypatch.setitem(sys.modules, "h11", None)
    return "%s%s%s" % (fake.parent, os.pathsep, ROOT)
