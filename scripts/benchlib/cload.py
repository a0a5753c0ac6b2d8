"""Load from the C generator (``csrc/loadgen.c``): processes driven over their stdin and stdout.

:class:`CLoadGroup` offers what :class:`benchlib.workers.LoadGroup` offers
(``require``, ``receive``, ``go``, ``close``, a context manager), so a
measurement does not care which generator runs.  Each process gets one job
(a share of the connections), prints a JSON "ready" line once its
connections are open and checked, starts on ``go START`` and prints a JSON
"done" line after its window.  Its stderr goes to a temporary file, quoted
when it fails.
"""

import json
import os
import select
import subprocess
import tempfile
import time

from benchlib import machine
from benchlib.workers import GroupBase, LoadError

STOP_TIMEOUT = 5.0


class _Generator:
    """One generator process and what it has printed so far."""

    def __init__(self, argv, cpus):
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, start_new_session=True)
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.buffer = b""
        self.lines = []
        try:
            machine.pin_process(self.proc.pid, cpus)
        except OSError:
            pass  # it already exited; the caller reports its stderr

    def read_lines(self):
        """Take what the process printed; return False at end of file."""
        try:
            chunk = os.read(self.proc.stdout.fileno(), 1 << 20)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        self.buffer += chunk
        *complete, self.buffer = self.buffer.split(b"\n")
        self.lines.extend(json.loads(line) for line in complete if line.strip())
        return True

    def failure(self):
        """The process's exit status and the end of its stderr, as one line."""
        self.stderr.seek(0)
        return "loadgen exited with status %s: %s" % (
            self.proc.poll(), self.stderr.read().strip()[-800:] or "(no output)")

    def stop(self):
        """End the process (stdin closed, then SIGTERM, then SIGKILL) and release its files."""
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            self.proc.wait(0.5)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        self.stderr.close()


def command(binary, mode, job):
    """Return the generator's argv for one job dict (see loads.run_pingpong / run_udp)."""
    argv = [binary, mode, "--port", str(job["port"]), "--conns", str(job["conns"]),
            "--size", str(job["size"]), "--seconds", repr(float(job["seconds"])),
            "--go-timeout", repr(float(job["go_timeout"]))]
    if mode == "tcp":
        argv += ["--batch", str(job["batch"] or 0),
                 "--connect-timeout", repr(float(job["connect_timeout"]))]
        if job.get("max_rounds"):
            argv += ["--max-rounds", str(job["max_rounds"])]
    else:
        argv += ["--reply-timeout", repr(float(job["reply_timeout"]))]
    return argv


class CLoadGroup(GroupBase):
    """C generator processes, one per job, used as a context manager (always stopped on exit)."""

    def __init__(self, binary, mode, jobs):
        self.argvs = [command(binary, mode, job) for job in jobs]
        self.cpus = [job.get("cpus") for job in jobs]
        self.generators = []

    def __enter__(self):
        try:
            for argv, cpus in zip(self.argvs, self.cpus):
                self.generators.append(_Generator(argv, cpus))
        except BaseException:
            self.close()
            raise
        return self

    @property
    def size(self):
        """How many generator processes there are."""
        return len(self.generators)

    def receive(self, phase, deadline):
        """Collect ``phase`` lines until every process printed one or ``deadline`` passes.

        Returns {process index: payload} (possibly partial); raises LoadError
        when a process exits without printing it.
        """
        while True:
            box = self._found(phase)
            waiting = [g for i, g in enumerate(self.generators) if i not in box]
            remaining = deadline - time.monotonic()
            if not waiting or remaining <= 0:
                return box
            ready, _, _ = select.select([g.proc.stdout for g in waiting], [], [],
                                        min(remaining, 0.5))
            for generator in waiting:
                if generator.proc.stdout in ready and not generator.read_lines():
                    if phase not in [line.get("phase") for line in generator.lines]:
                        raise LoadError(generator.failure())

    def _found(self, phase):
        return {i: line for i, g in enumerate(self.generators)
                for line in g.lines if line.get("phase") == phase}

    def go(self, start_at):
        """Start every process; their measured window begins at ``start_at`` (monotonic)."""
        for generator in self.generators:
            try:
                generator.proc.stdin.write(b"go %.6f\n" % start_at)
                generator.proc.stdin.flush()
            except OSError:
                pass  # it exited: receive() reports why

    def release(self):
        """Nothing to release: generators close their connections when they finish."""

    def close(self):
        """Stop every process within a bounded time."""
        for generator in self.generators:
            generator.stop()
        self.generators = []
