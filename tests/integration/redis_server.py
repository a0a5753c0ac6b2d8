"""A real redis-server (Debian's package) for the tests: loopback, its own directory, stopped by PID.

:class:`RedisServer` runs ``redis-server`` in the foreground on 127.0.0.1 with a
data directory in ``tmp_path``, waits until it answers PING, and stops it with
SIGTERM (SIGKILL if it lingers).  The port is picked free and the start is
retried when it was taken meanwhile.  The ``redis_server`` fixture of
tests/integration/conftest.py gives each test one.
"""

import os
import signal
import socket
import ssl
import subprocess
import time

import pytest

from tests.conftest import free_port
from tests.processes import kill_quietly

START_ATTEMPTS = 5


def pong(port, ca_file=None):
    """True once a redis-server answers on ``port`` (over TLS with ``ca_file``)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as raw:
            sock = raw
            if ca_file:
                sock = ssl.create_default_context(cafile=ca_file).wrap_socket(
                    raw, server_hostname="localhost")
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class RedisServer:
    """One redis-server on 127.0.0.1 with its data directory, stopped by PID."""

    def __init__(self, program, directory):
        self.program, self.directory = program, directory
        self.port = None
        self.proc = None

    def start(self, port=None, tls=None, password=None, config=None):
        """Start it (again on ``port``, or on a free one) and wait until it answers PING.

        ``tls``: ``(cert, key, ca)`` files to serve TLS only; ``password``: requirepass;
        ``config``: a redis.conf to read first (its address, port and directory are
        overridden; without one, nothing is persisted).
        """
        for _ in range(START_ATTEMPTS):
            self.port = port or free_port()
            listen = ["--port", str(self.port)]
            if tls:
                listen = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", tls[0],
                          "--tls-key-file", tls[1], "--tls-ca-cert-file", tls[2],
                          "--tls-auth-clients", "no"]
            self.proc = subprocess.Popen(
                [self.program] + ([str(config)] if config else []) + listen + [
                    "--bind", "127.0.0.1", "--dir", str(self.directory), "--daemonize", "no",
                    "--loglevel", "warning"]
                + ([] if config else ["--save", "", "--appendonly", "no"])
                + (["--requirepass", password] if password else []),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and self.proc.poll() is None:
                if pong(self.port, tls[2] if tls else None):
                    return self
                time.sleep(0.02)
            self.stop()  # the port was taken meanwhile (or it did not start): try again
        pytest.fail("redis-server did not start on 127.0.0.1")

    def stop(self):
        """SIGTERM (SIGCONT first, in case it is paused), then SIGKILL if it lingers."""
        if self.proc is None:
            return
        kill_quietly(self.proc.pid, signal.SIGCONT)
        kill_quietly(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            kill_quietly(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None

    def signal(self, signum):
        """Send ``signum`` to the server (SIGSTOP, SIGCONT...)."""
        os.kill(self.proc.pid, signum)
