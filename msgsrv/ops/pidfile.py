"""A pidfile that is written atomically and locked for the daemon's lifetime.

The source of truth is the ``flock`` lock, not the number in the file: a
daemon that died (even by SIGKILL) loses its lock with its last file
descriptor, so a stale file, or one naming a pid that now belongs to an
unrelated process, never blocks a start.  Two daemons can never both hold
the lock, and only the holder removes the file.

Taking over a path atomically: lock the file currently at the path (the
*gate*; created empty if missing), write our pid to a temporary file in the
same directory, lock that too, ``rename`` it over the path, then release the
gate.  A competitor that opened the gate before the rename finds it locked;
one that locks it after the release notices that the path now names another
file and tries again, finding ours locked.
"""

import contextlib
import fcntl
import os
import tempfile
import time

from msgsrv.wire.errors import AlreadyRunning

_RETRY_FOR = 0.2  # seconds a lock held only by a probe (see ``running_pid``) is waited out


class Pidfile:
    """The pidfile at ``path``; :meth:`acquire` at start, :meth:`release` at exit."""

    def __init__(self, path):
        self.path = path
        self._fd = None

    @property
    def held(self):
        """True while this process owns the pidfile."""
        return self._fd is not None

    def fileno(self):
        """The locked descriptor (a forked worker closes it: the lock is the master's)."""
        return self._fd

    def acquire(self, pid=None):
        """Lock the path and write ``pid`` (default: ours) into it atomically.

        Creates missing parent directories.  Raises AlreadyRunning (naming
        the holder's pid) if another process holds the lock, OSError if the
        file cannot be written.
        """
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        deadline = time.monotonic() + _RETRY_FOR
        gate = self._lock_gate(deadline)
        try:
            self._fd = self._write_locked(directory, os.getpid() if pid is None else pid)
        finally:
            os.close(gate)

    def _lock_gate(self, deadline):
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() >= deadline:
                    raise AlreadyRunning("pidfile %s is locked by a running daemon (pid %s)"
                                         % (self.path, read_pid(self.path) or "unknown")) from None
                time.sleep(0.01)
                continue
            if _same_file(fd, self.path):
                return fd
            os.close(fd)  # replaced while we waited: lock the new one

    def _write_locked(self, directory, pid):
        fd, temp = tempfile.mkstemp(prefix=".pid-", dir=directory)
        try:
            os.write(fd, b"%d\n" % pid)
            os.fchmod(fd, 0o644)
            os.fsync(fd)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(temp, self.path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        return fd

    def release(self):
        """Remove the file (only if it is still ours) and drop the lock; idempotent."""
        if self._fd is None:
            return
        try:
            if _same_file(self._fd, self.path):
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
        finally:
            os.close(self._fd)
            self._fd = None


def _same_file(fd, path):
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def read_pid(path):
    """The pid written in ``path``, or None if missing or not a number."""
    try:
        with open(path, encoding="ascii", errors="replace") as stream:
            first = stream.readline().strip()
    except OSError:
        return None
    return int(first) if first.isdigit() else None


def running_pid(path):
    """The pid of the live daemon holding ``path``'s lock, or None if none holds it.

    Probes with a shared lock taken and dropped at once (a daemon starting at
    that very moment waits it out), so a stale file is never mistaken for a
    running daemon, whatever pid it names.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return read_pid(path) or 0
    finally:
        os.close(fd)
    return None
