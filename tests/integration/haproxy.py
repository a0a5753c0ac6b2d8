"""A real HAProxy (Debian's package) for the tests: tcp mode, its own config, stopped by PID.

:class:`HAProxy` writes a configuration into its directory (``tmp_path``),
runs ``haproxy -db`` (foreground: its PID is the process the test started),
waits until the stats socket answers (its listeners are bound then), and stops it
with SIGTERM (SIGKILL after a grace period).  Frontend ports are picked free
on 127.0.0.1 and the start is retried when one was taken meanwhile.
"""

import csv
import io
import os
import socket
import subprocess
import time

from tests.conftest import free_ports, wait_for

START_ATTEMPTS = 3

GLOBAL = """global
    stats socket {stats} mode 600 level admin
    pidfile {pidfile}

defaults
    mode tcp
    timeout connect 2s
    timeout client 20s
    timeout server 20s
    timeout check 1s
"""


class HAProxy:
    """One haproxy process serving ``sections(ports)``: ``sections`` returns the
    frontend/backend text given the dict of frontend name -> port picked for it.

    With ``standalone`` the text is the whole configuration, its own ``global``
    and ``defaults`` included; it must declare ``stats socket`` at
    :attr:`stats_path` (readiness is seen there).
    """

    def __init__(self, program, directory, frontends, sections, standalone=False):
        self.program = program
        self.directory = str(directory)
        self.frontends = list(frontends)
        self.sections = sections
        self.standalone = standalone
        self.stats_path = os.path.join(self.directory, "stats.sock")
        self.config_path = os.path.join(self.directory, "haproxy.cfg")
        self.pidfile = os.path.join(self.directory, "haproxy.pid")
        self.ports = {}
        self.proc = None

    def start(self):
        """Write the config and start; retried on a port taken meanwhile.  Returns self."""
        for attempt in range(START_ATTEMPTS):
            self.ports = dict(zip(self.frontends, free_ports(len(self.frontends))))
            with open(self.config_path, "w") as config:
                if not self.standalone:
                    config.write(GLOBAL.format(stats=self.stats_path, pidfile=self.pidfile))
                config.write(self.sections(self.ports))
            self.proc = subprocess.Popen([self.program, "-db", "-f", self.config_path],
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         text=True)
            if self._ready():
                return self
            output = self.stop()
            if "bind" not in output or attempt == START_ATTEMPTS - 1:
                raise RuntimeError("haproxy did not start:\n" + output)
        return self

    def _ready(self):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            # The stats socket answers once every listener is bound; probing a frontend
            # would open a proxied connection to the backend under test.
            if self._stats_up():
                return True
            time.sleep(0.02)
        return False

    def _stats_up(self):
        try:
            self.command("show info")
            return True
        except OSError:
            return False

    def address(self, frontend):
        """``(host, port)`` of a frontend."""
        return ("127.0.0.1", self.ports[frontend])

    def command(self, line):
        """One command on the stats socket (``show stat``...); its answer as text."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(self.stats_path)
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return b"".join(chunks).decode()
                chunks.append(chunk)

    def server_stats(self, backend, server):
        """A backend server's row of ``show stat`` (``status`` UP/DOWN..., ``check_status``
        L4OK/L7OK/L4CON..., ``check_desc``...)."""
        text = self.command("show stat").lstrip("# ")
        for row in csv.DictReader(io.StringIO(text)):
            if row["pxname"] == backend and row["svname"] == server:
                return row
        raise KeyError("%s/%s is not in haproxy's stats" % (backend, server))

    def wait_status(self, backend, server, status, check_status, timeout=10.0):
        """Wait until ``backend/server`` is ``status`` after a check ending ``check_status``."""
        def reached():
            row = self.server_stats(backend, server)
            return (row["status"], row["check_status"]) == (status, check_status)
        wait_for(reached, timeout, interval=0.05, message="haproxy to report %s/%s %s (%s)"
                 % (backend, server, status, check_status))

    def stop(self):
        """SIGTERM to our haproxy (SIGKILL after 5 s); return what it printed."""
        if self.proc is None:
            return ""
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.terminate()
        try:
            output, _ = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        return output or ""
