"""Servers under test: declared once in TARGETS, each started as its own process.

msgsrv is started as the real daemon (``python -m msgsrv --config FILE``) with
a temporary INI file; the Python anchors run ``scripts/bench_anchors.py``, the
C one is ``csrc/epoll_echo.c`` built on demand (``benchlib.cbuild``). All are
started, probed and stopped the same way, so they are measured identically.
An anchor that cannot run here (uvloop not installed, no C compiler) is
skipped with a note (:func:`unavailable_reason`).
"""

import collections
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

from benchlib import cbuild, machine

HOST = "127.0.0.1"
SCRIPTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_ROOT = os.path.dirname(SCRIPTS_DIR)
READY_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
START_ATTEMPTS = 3
ANCHOR_MAX_SECONDS = 3 * 3600

Target = collections.namedtuple("Target", "name label transport kind is_msgsrv")
Target.__doc__ = """A server to measure: registry name, table label, "tcp"/"udp", kind, msgsrv or anchor."""

TARGETS = collections.OrderedDict((t.name, t) for t in [
    Target("msgsrv-tcp", "msgsrv", "tcp", "echo", True),
    Target("threading-tcp", "stdlib-threading", "tcp", "threading-tcp", False),
    Target("asyncio-tcp", "asyncio-streams", "tcp", "asyncio-tcp", False),
    Target("uvloop-tcp", "uvloop", "tcp", "uvloop-tcp", False),
    Target("c-epoll-tcp", "c-epoll", "tcp", "c-epoll-tcp", False),
    Target("threading-tcp-q1024", "stdlib-threading-q1024", "tcp", "threading-tcp-q1024", False),
    Target("msgsrv-udp", "msgsrv", "udp", "echo", True),
    Target("udp", "stdlib-udp", "udp", "udp", False),
    Target("threading-udp", "stdlib-threading-udp", "udp", "threading-udp", False),
    # The workers experiment: msgsrv with 1 or 2 worker processes (echo and command).
    Target("msgsrv-p1", "msgsrv processes=1", "tcp", "workers", True),
    Target("msgsrv-p2", "msgsrv processes=2", "tcp", "workers", True),
    Target("msgsrv-p2-shared", "msgsrv processes=2 reuse_port=no", "tcp", "workers", True),
])

MSGSRV_INI = """\
[msgsrv]
log_level = warning

[service:{kind}]
handler = {kind}
transport = {transport}
host = {host}
port = {port}
max_connections = 20000
max_connections_per_ip = 20000
# UDP: every load client is 127.0.0.1; keep the reply limit's cost, not its limit.
reply_rate = 1000000/s
"""


WORKERS_INI = """\
[msgsrv]
log_level = warning
processes = {processes}
reuse_port = {reuse_port}
pidfile = {workdir}/msgsrv.pid

[service:echo]
handler = echo
host = {host}
port = {port}
max_connections = 20000
max_connections_per_ip = 20000

[service:command]
handler = command
host = {host}
port = {command_port}
keys_file = {workdir}/bench.keys
max_concurrent = 256
max_connections_per_ip = 20000
max_transfers = 256
max_transfers_per_ip = 256
run_as_root = yes
command.true = /bin/true

[service:status]
handler = status
host = {host}
port = {status_port}
"""
BENCH_KEY = ("bench", "b" * 43)  # name and secret of the command service's one key


class TargetUnavailable(Exception):
    """The server process did not start or did not answer in time; the message says why."""


def free_port(transport):
    """Return a port that was free a moment ago (a benchmark may live with that race)."""
    kind = socket.SOCK_STREAM if transport == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def unavailable_reason(target):
    """Why ``target`` cannot run on this machine (an optional module or the compiler), or None."""
    if target.kind == "uvloop-tcp" and importlib.util.find_spec("uvloop") is None:
        return "uvloop is not importable here (pip install uvloop)"
    if target.kind == "c-epoll-tcp":
        try:
            cbuild.build("epoll_echo")
        except (cbuild.BuildUnavailable, OSError) as exc:
            return "cannot build the C echo server: %s" % exc
    return None


def server_command(target, port, workdir, extra_ini=""):
    """Return the argv that starts ``target`` on ``port`` (msgsrv's INI goes into workdir).

    ``extra_ini`` is added to msgsrv's service section (``key = value`` lines).
    """
    if target.kind == "c-epoll-tcp":
        try:
            binary = cbuild.build("epoll_echo")
        except (cbuild.BuildUnavailable, OSError) as exc:
            raise TargetUnavailable(str(exc)) from exc
        return [binary, "--port", str(port), "--max-seconds", str(ANCHOR_MAX_SECONDS)]
    if not target.is_msgsrv:
        return [sys.executable, os.path.join(SCRIPTS_DIR, "bench_anchors.py"), target.kind,
                "--port", str(port), "--max-seconds", str(ANCHOR_MAX_SECONDS)]
    if target.kind == "workers":
        return _workers_command(target, port, workdir)
    path = os.path.join(workdir, "msgsrv-bench-%d.ini" % port)
    with open(path, "w") as ini:
        ini.write(MSGSRV_INI.format(kind=target.kind, transport=target.transport,
                                    host=HOST, port=port) + extra_ini)
    return [sys.executable, "-m", "msgsrv", "--config", path]


def _workers_command(target, port, workdir):
    """msgsrv with echo on ``port``, a command service (one key: BENCH_KEY) and a status
    service on the ports written to ``workdir``/command-port and status-port."""
    command_port, status_port = free_port("tcp"), free_port("tcp")
    for name, number in (("command-port", command_port), ("status-port", status_port)):
        with open(os.path.join(workdir, name), "w") as out:
            out.write(str(number))
    keys = os.path.join(workdir, "bench.keys")
    with open(os.open(keys, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
        out.write("%s %s\n" % BENCH_KEY)
    processes = 1 if target.name == "msgsrv-p1" else 2
    path = os.path.join(workdir, "msgsrv-bench-%d.ini" % port)
    with open(path, "w") as ini:
        ini.write(WORKERS_INI.format(processes=processes, workdir=workdir, host=HOST, port=port,
                                     command_port=command_port, status_port=status_port,
                                     reuse_port="no" if target.name.endswith("shared")
                                     else "yes"))
    return [sys.executable, "-m", "msgsrv", "--config", path]


def _environment():
    env = dict(os.environ)
    paths = [REPO_ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


class ServerProcess:
    """One running server process, used as a context manager.

    ``__enter__`` starts the target on a fresh port, pins it, waits until it
    answers, and raises TargetUnavailable if it exits or stays silent; a
    process that exits early is retried on another port (it may have lost the
    port race). ``__exit__`` always stops it: SIGTERM, then SIGKILL after
    STOP_TIMEOUT seconds.  ``extra_ini`` goes into msgsrv's service section;
    ``wrapper`` is an argv prefix (a profiler) and ``ready_timeout`` how long
    the start may take.
    """

    def __init__(self, target, cpus=None, extra_ini="", wrapper=(), ready_timeout=READY_TIMEOUT):
        self.target = target
        self.cpus = cpus
        self.extra_ini = extra_ini
        self.wrapper = list(wrapper)
        self.ready_timeout = ready_timeout
        self.port = None
        self.proc = None
        self._stderr = None
        self._workdir = None

    @property
    def pid(self):
        """The server's process id."""
        return self.proc.pid

    @property
    def workdir(self):
        """The server's temporary directory (its INI file, keys, pidfile)."""
        return self._workdir.name

    def __enter__(self):
        self._workdir = tempfile.TemporaryDirectory(prefix="msgsrv-bench-")
        try:
            self._start_with_retries()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info):
        self.stop()
        return False

    def _start_with_retries(self):
        reason = "not started"
        for _ in range(START_ATTEMPTS):
            reason = self._start_once()
            if reason is None:
                return
            if self.proc.poll() is None:
                break  # alive but silent: another port will not help
        raise TargetUnavailable(reason)

    def _start_once(self):
        self._reap()
        self.port = free_port(self.target.transport)
        argv = self.wrapper + server_command(self.target, self.port, self._workdir.name,
                                             self.extra_ini)
        self._stderr = open(os.path.join(self._workdir.name, "stderr-%d" % self.port), "w+")
        try:
            self.proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=_environment(),
                                         stdin=subprocess.DEVNULL, stdout=self._stderr,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            raise TargetUnavailable("cannot run %s: %s" % (argv[0], exc)) from exc
        try:
            machine.pin_process(self.proc.pid, self.cpus)
        except OSError:
            pass  # it already died; the readiness check reports why
        return self._wait_ready()

    def _wait_ready(self):
        probe = probe_tcp if self.target.transport == "tcp" else probe_udp
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return "exited with status %s: %s" % (self.proc.returncode, self._last_output())
            if probe(self.port):
                return None
            time.sleep(0.02)
        return "no answer on %s port %d within %.0f s" % (
            self.target.transport, self.port, self.ready_timeout)

    def _last_output(self):
        self._stderr.seek(0)
        lines = [line.strip() for line in self._stderr.read().splitlines() if line.strip()]
        return lines[-1] if lines else "(no output)"

    def stop(self):
        """Stop the process (SIGTERM, then SIGKILL) and remove the temporary files."""
        self._reap()
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def _reap(self):
        if self.proc is not None:
            terminate(self.proc, STOP_TIMEOUT)
            self.proc = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def cpu_seconds(self):
        """CPU seconds (user + system, all threads) the server has used so far, or None."""
        return machine.process_cpu_seconds(self.proc.pid)

    def tree_cpu_seconds(self):
        """CPU seconds of the server with its worker processes and their children."""
        return machine.tree_cpu_seconds(self.proc.pid)

    def status(self):
        """Resident memory (KiB) and thread count of the server, values None if unknown."""
        return machine.process_status(self.proc.pid)


def terminate(proc, timeout):
    """Stop a subprocess: SIGTERM, wait up to ``timeout`` s, then SIGKILL and wait."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
        except ProcessLookupError:
            pass
    else:
        proc.wait()


def probe_tcp(port):
    """Return True if a TCP connection to the port is accepted right now."""
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def probe_udp(port):
    """Return True if a datagram sent to the port is echoed back within 0.2 s."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        try:
            sock.connect((HOST, port))
            sock.send(b"bench-ready?")
            return sock.recv(64) == b"bench-ready?"
        except OSError:  # refused (nobody there yet) or timed out
            return False
