"""Load processes: start them, line them up on one start time, collect, stop.

Each load process runs one job (``tcp`` ping-pong, ``udp`` ping-pong or
``idle`` holding) over many sockets with the loops in ``clients``. Messages
travel back on one queue as (phase, worker id, payload) with phase "ready",
"done" or "failed". Processes are forked where the platform can (it is ten times quicker to
start than "spawn", and the orchestrator runs no threads that a fork could
copy mid-operation); elsewhere they are spawned.
"""

import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import socket
import sys
import time
import traceback

from benchlib import clients, machine, stats
from benchlib.targets import REPO_ROOT

_MP = multiprocessing.get_context(
    "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
STOP_TIMEOUT = 5.0


class LoadError(Exception):
    """A load process failed, or did not report within its deadline."""


class _Control:
    """What the orchestrator shares with its load processes."""

    def __init__(self):
        self.queue = _MP.Queue()
        self.go = _MP.Event()
        self.stop = _MP.Event()
        self.start_at = _MP.Value("d", 0.0, lock=False)


class GroupBase:
    """What a group of load processes offers, whichever generator they run.

    Subclasses provide ``size`` (processes), ``receive(phase, deadline)``,
    ``go(start_at)``, ``release()`` and ``close()``.
    """

    def __exit__(self, *exc_info):
        self.close()
        return False

    def require(self, phase, deadline):
        """Like ``receive`` but raise LoadError unless every process reported; return a list."""
        box = self.receive(phase, deadline)
        if len(box) < self.size:
            raise LoadError("%d of %d load processes did not report %r in time"
                            % (self.size - len(box), self.size, phase))
        return [box[wid] for wid in sorted(box)]


class LoadGroup(GroupBase):
    """Load processes that run one job kind, used as a context manager.

    ``jobs`` is a list of parameter dicts, one per process. ``__exit__`` always
    stops the processes: it sets the stop event, joins, then terminates and
    kills what is left.
    """

    def __init__(self, kind, jobs):
        self.kind = kind
        self.jobs = jobs
        self.control = _Control()
        self.procs = []
        self.messages = {"ready": {}, "done": {}}

    def __enter__(self):
        try:
            for wid, job in enumerate(self.jobs):
                proc = _MP.Process(target=worker_main, name="bench-load-%d" % wid,
                                   args=(self.kind, wid, job, self.control), daemon=True)
                proc.start()
                self.procs.append(proc)
        except BaseException:
            self.close()
            raise
        return self

    @property
    def size(self):
        """How many load processes there are."""
        return len(self.procs)

    def receive(self, phase, deadline):
        """Collect ``phase`` messages until all processes sent one or ``deadline`` passes.

        Returns {worker id: payload} (possibly partial); raises LoadError when a
        process reports a failure.
        """
        box = self.messages[phase]
        while len(box) < len(self.procs):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                got_phase, wid, payload = self.control.queue.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                self._check_alive()
                continue
            if got_phase == "failed":
                raise LoadError("load process %d failed:\n%s" % (wid, payload))
            self.messages[got_phase][wid] = payload
        return dict(box)

    def _check_alive(self):
        for wid, proc in enumerate(self.procs):
            if proc.exitcode not in (None, 0):
                raise LoadError("load process %d died with exit code %s" % (wid, proc.exitcode))

    def go(self, start_at):
        """Tell every process to start its measured work at ``start_at`` (monotonic)."""
        self.control.start_at.value = start_at
        self.control.go.set()

    def release(self):
        """Tell processes that hold connections to close them and finish."""
        self.control.stop.set()

    def close(self):
        """Stop all processes within a bounded time (stop event, terminate, kill)."""
        self.control.go.set()
        self.control.stop.set()
        deadline = time.monotonic() + STOP_TIMEOUT
        alive = [proc for proc in self.procs if proc.is_alive()]
        while alive and time.monotonic() < deadline:
            self._discard_messages()  # a child cannot exit while its queue data is unread
            multiprocessing.connection.wait([proc.sentinel for proc in alive], timeout=0.05)
            alive = [proc for proc in alive if proc.is_alive()]
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(1.0)
            if proc.is_alive():
                proc.kill()
                proc.join(1.0)
        self.control.queue.close()

    def _discard_messages(self):
        try:
            while True:
                self.control.queue.get_nowait()
        except queue.Empty:
            pass


def worker_main(kind, wid, job, control):
    """Entry point of a load process: prepare, run the job, report failures on the queue."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the orchestrator's to handle
    machine.raise_nofile_limit()
    try:
        machine.pin_process(os.getpid(), job.get("cpus"))
        JOB_KINDS[kind](wid, job, control)
    except Exception:
        control.queue.put(("failed", wid, traceback.format_exc()))


def _await_start(control, timeout):
    if not control.go.wait(timeout) or control.stop.is_set():
        return None
    return control.start_at.value


def _tcp_job(wid, job, control):
    deadline = time.monotonic() + job["connect_timeout"]
    socks, failures, connect_s, served_s = clients.open_served(
        job["port"], job["conns"], deadline, job["batch"])
    ready = {"connected": len(socks), "failures": failures,
             "connect_s": connect_s, "served_s": served_s}
    payload = clients.make_payload(job["size"])
    _measure(wid, job, control, socks, ready, lambda start_at: clients.PingPong(
        socks, payload, start_at, start_at + job["seconds"], job.get("max_rounds"),
        job.get("warmup", 0.0)))


def _udp_job(wid, job, control):
    socks = [_udp_socket(job["port"]) for _ in range(job["conns"])]
    ready = {"connected": len(socks), "failures": 0, "connect_s": 0.0, "served_s": 0.0}
    _measure(wid, job, control, socks, ready, lambda start_at: clients.UdpPingPong(
        socks, job["size"], start_at, start_at + job["seconds"], job["reply_timeout"],
        job.get("warmup", 0.0)))


def _measure(wid, job, control, socks, ready, make_loop):
    """Report ready, wait for the common start, run the loop, report its result."""
    try:
        control.queue.put(("ready", wid, ready))
        start_at = _await_start(control, job["go_timeout"])
        if start_at is None:
            return
        control.queue.put(("done", wid, _as_histogram(make_loop(start_at).run())))
    finally:
        _close_all(socks)


def _as_histogram(result):
    """Replace the list of latencies by the histogram the C generator reports."""
    histogram = stats.Histogram()
    histogram.add_seconds(result.pop("latencies"))
    result["hist"], result["max_ns"] = histogram.sparse(), histogram.max_ns
    return result


def _udp_socket(port):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.connect((clients.HOST, port))
    return sock


def _idle_job(wid, job, control):
    deadline = time.monotonic() + job["connect_timeout"]
    socks, failures, connect_s, served_s = clients.open_served(
        job["port"], job["conns"], deadline, job["batch"])
    try:
        control.queue.put(("ready", wid, {"connected": len(socks), "failures": failures,
                                          "connect_s": connect_s, "served_s": served_s}))
        control.stop.wait(job["hold_timeout"])
    finally:
        _close_all(socks)
    control.queue.put(("done", wid, {}))


def _command_job(wid, job, control):
    sys.path.insert(0, REPO_ROOT)
    from msgsrv.client import CommandClient  # only this job needs the msgsrv client
    name, secret = job["key"]
    conns = [CommandClient(clients.HOST, job["port"], name, secret, timeout=30)
             for _ in range(job["conns"])]
    ready = {"connected": len(conns), "failures": 0, "connect_s": 0.0, "served_s": 0.0}
    try:
        calls = [lambda conn=conn: conn.run(job["command"]).exit_code == 0 for conn in conns]
        _measure(wid, job, control, [], ready, lambda start_at: clients.Repeat(
            calls, start_at, start_at + job["seconds"]))
    finally:
        for conn in conns:
            conn.close()


def _churn_job(wid, job, control):
    ready = {"connected": 0, "failures": 0, "connect_s": 0.0, "served_s": 0.0}
    calls = [lambda: clients.one_connection(job["port"])] * job["conns"]
    _measure(wid, job, control, [], ready, lambda start_at: clients.Repeat(
        calls, start_at, start_at + job["seconds"]))


def _close_all(socks):
    for sock in socks:
        sock.close()


JOB_KINDS = {"tcp": _tcp_job, "udp": _udp_job, "idle": _idle_job, "command": _command_job,
             "churn": _churn_job}
