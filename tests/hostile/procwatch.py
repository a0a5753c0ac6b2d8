"""Resource snapshots of a process, and leak checks that allow a settling time.

:class:`ProcessProbe` reads a daemon subprocess from /proc (threads and RSS
from ``/proc/PID/status``, open descriptors from ``/proc/PID/fd``);
:class:`SelfProbe` measures this test process (``threading.enumerate`` and
``/proc/self/fd``) for in-process servers.
"""

import os
import threading
import time
from typing import NamedTuple, Optional

import pytest


class Snapshot(NamedTuple):
    """Threads, open fds and resident memory (KiB) of one process at one moment."""

    threads: int
    fds: int
    rss_kib: int

    def __str__(self):
        return "threads=%d fds=%d rss=%.1fMiB" % (self.threads, self.fds, self.rss_kib / 1024)


class ProcessProbe:
    """Snapshots of another process (a daemon subprocess) read from /proc."""

    def __init__(self, pid):
        self.pid = pid

    def snapshot(self):
        """Return a Snapshot; raises ProcessLookupError if the process is gone."""
        try:
            status = _read_status("/proc/%d/status" % self.pid)
            fds = len(os.listdir("/proc/%d/fd" % self.pid))
        except FileNotFoundError:
            raise ProcessLookupError("process %d is gone" % self.pid) from None
        if "VmRSS" not in status:  # a zombie: exited, not yet reaped
            raise ProcessLookupError("process %d has exited" % self.pid)
        return Snapshot(int(status["Threads"]), fds, int(status["VmRSS"].split()[0]))


class SelfProbe:
    """Snapshots of this process: Python threads, /proc/self/fd, VmRSS."""

    def snapshot(self):
        """Return a Snapshot of the test process itself."""
        status = _read_status("/proc/self/status")
        return Snapshot(len(threading.enumerate()), len(os.listdir("/proc/self/fd")),
                        int(status["VmRSS"].split()[0]))


def _read_status(path):
    with open(path, encoding="ascii", errors="replace") as stream:
        return dict(line.rstrip("\n").split(":\t", 1) for line in stream if ":\t" in line)


def settle(probe, baseline, timeout=10.0, rss_slack_kib=None, extra=None):
    """Wait until threads and fds are back to ``baseline`` (and RSS within slack).

    ``extra()`` may add a condition (e.g. a server's connection count is 0)
    by returning a problem string, or None when satisfied.  Returns the last
    Snapshot; fails the test naming what is still above the baseline.
    """
    deadline = time.monotonic() + timeout
    while True:
        now = probe.snapshot()
        problem = _excess(baseline, now, rss_slack_kib) or (extra() if extra else None)
        if problem is None:
            return now
        if time.monotonic() > deadline:
            pytest.fail("no return to baseline after %.0fs: %s (before: %s, after: %s)"
                        % (timeout, problem, baseline, now))
        time.sleep(0.05)


def _excess(before, after, rss_slack_kib) -> Optional[str]:
    if after.threads > before.threads:
        return "%d more threads" % (after.threads - before.threads)
    if after.fds > before.fds:
        return "%d more open fds" % (after.fds - before.fds)
    if rss_slack_kib is not None and after.rss_kib - before.rss_kib > rss_slack_kib:
        return "RSS grew by %d KiB (allowed %d)" % (after.rss_kib - before.rss_kib, rss_slack_kib)
    return None


class PeakRSS:
    """Sample a process's RSS in a background thread; ``peak_kib`` is the highest seen."""

    def __init__(self, probe, interval=0.01):
        self.probe = probe
        self.interval = interval
        self.peak_kib = probe.snapshot().rss_kib
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join(5)
        self._sample()

    def _run(self):
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self):
        try:
            self.peak_kib = max(self.peak_kib, self.probe.snapshot().rss_kib)
        except ProcessLookupError:
            self._stop.set()
