"""What every connection of a file service shares about its root, and what every
daemon serving the same root shares with the others.

:class:`DigestCache` remembers the SHA-256 of files already hashed, so a file
downloaded again is sent zero-copy without being read.  :class:`RootLock`
serialises the steps that check the tree and then change it (an upload's
commit, a delete, a rename) across threads and across processes: the
processes share the lock file ``ROOT_LOCK_NAME`` in the root, so daemons on
several hosts serving one root on a shared file system (with working POSIX
locks: local, NFSv4, CephFS...) take turns too.  :class:`QuotaLedger` keeps
the bytes stored under the root in that lock file, changed under the lock by
every daemon, so uploads over the quota are refused before their data is
sent, and one that would go over because another daemon stored files
meanwhile is refused at its commit.  All are thread-safe.
"""

import collections
import contextlib
import fcntl
import os
import re
import stat
import threading
import time
import weakref

from msgsrv.wire.errors import ProtocolError, ServiceBusy
from .sandbox import ROOT_LOCK_NAME, is_reserved_name
from .transfer import SERVER_CHUNK, file_sha256

LOCK_WAIT = 10.0       # seconds to wait for another process's turn before refusing busy
_RECOUNT_TRIES = 3     # counts without the lock, before one holding it
_LEDGER = re.compile(rb"msgsrv-usage used=(\d+|-) generation=(\d+)\n")


def content_key(st):
    """What identifies a file's content without reading it: an ``os.stat_result`` digest key.

    Any write changes ``st_ctime_ns`` (which no user can set back), a
    replacement changes the inode, so a stale entry is never found.
    """
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class DigestCache:
    """SHA-256 digests of files, keyed by :func:`content_key`; the oldest go first."""

    def __init__(self, capacity=4096):
        self.capacity = capacity
        self._lock = threading.Lock()
        self._digests = collections.OrderedDict()

    def get(self, st):
        """The digest recorded for the file ``st`` describes, or None."""
        key = content_key(st)
        with self._lock:
            digest = self._digests.get(key)
            if digest is not None:
                self._digests.move_to_end(key)
            return digest

    def put(self, st, digest):
        """Record ``digest`` for the file ``st`` describes."""
        with self._lock:
            self._digests[content_key(st)] = digest
            self._digests.move_to_end(content_key(st))
            while len(self._digests) > self.capacity:
                self._digests.popitem(last=False)

    def digest_of(self, fd):
        """Return the SHA-256 of the open file ``fd``, reading it only on a cache miss.

        The result is cached only if the file did not change while it was
        read (with one buffer of ``transfer.SERVER_CHUNK`` bytes).  Raises
        ``OSError`` if the file cannot be read.
        """
        before = os.fstat(fd)
        digest = self.get(before)
        if digest is None:
            digest = file_sha256(fd, 0, before.st_size, chunk_size=SERVER_CHUNK)
            if content_key(os.fstat(fd)) == content_key(before):
                self.put(before, digest)
        return digest


class RootLock:
    """The lock of one root: a thread lock, then an exclusive ``flock`` on the root's
    ``ROOT_LOCK_NAME`` (created mode 0600), which also holds the quota ledger.

    ``thread_lock`` may be shared with the lock of another root (a reload to
    a new root keeps its service's).  Waiting for another process gives up
    after ``wait`` seconds with ``ServiceBusy``.
    """

    def __init__(self, sandbox, thread_lock=None, wait=LOCK_WAIT):
        self.thread_lock = threading.Lock() if thread_lock is None else thread_lock
        self.wait = wait
        self._dir_fd = sandbox.dup_root()
        self._close = weakref.finalize(self, os.close, self._dir_fd)

    @contextlib.contextmanager
    def held(self):
        """Hold the lock while the block runs; yield a :class:`Held` (the ledger's record)."""
        with self.thread_lock:
            fd = self._open_locked()
            try:
                yield Held(fd)
            finally:
                os.close(fd)

    def _open_locked(self):
        """The lock file, locked, still under its name (someone may have removed it)."""
        for _attempt in range(3):
            fd = os.open(ROOT_LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                         | os.O_CLOEXEC, 0o600, dir_fd=self._dir_fd)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise OSError("the root's %s is not a regular file" % ROOT_LOCK_NAME)
                self._lock(fd)
                now = os.stat(ROOT_LOCK_NAME, dir_fd=self._dir_fd, follow_symlinks=False)
                if os.path.samestat(now, os.fstat(fd)):
                    return fd
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        raise ServiceBusy("the root's lock file keeps being replaced; try again")

    def _lock(self, fd):
        deadline, delay = time.monotonic() + self.wait, 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ServiceBusy("another daemon serving this root holds its lock; "
                                      "try again") from None
            time.sleep(delay)  # only while another process holds it: commits are short
            delay = min(delay * 2, 0.05)

    def close(self):
        """Close the root's descriptor (safe to repeat)."""
        self._close()


class Held:
    """The quota ledger in a held lock file: the bytes used (None: not counted) and
    a generation, one more at every change by any daemon."""

    def __init__(self, fd):
        self.fd = fd

    def read(self):
        """``(used or None, generation)``; a missing or torn record reads as not counted."""
        match = _LEDGER.fullmatch(os.pread(self.fd, 128, 0))
        if match is None:
            return None, 0
        used = None if match.group(1) == b"-" else int(match.group(1))
        return used, int(match.group(2))

    def write(self, used, generation):
        """Record ``used`` (None: not counted) at ``generation``."""
        record = b"msgsrv-usage used=%s generation=%d\n" % (
            b"-" if used is None else b"%d" % used, generation)
        os.pwrite(self.fd, record, 0)
        os.ftruncate(self.fd, len(record))


class QuotaLedger:
    """Bytes stored under a sandbox's root against ``limit`` (0: no quota).

    The usage is the sum of the sizes of the regular files under the root
    (reserved names excluded; walked with ``Sandbox.walk``, so nothing
    outside the root is counted), recorded in the root's lock file: counted
    when a ledger with a limit is made, then changed by every daemon's puts,
    deletes and renames under the lock (a daemon without a quota keeps a
    count it finds up to date too).  Uploads in progress hold a reservation
    in their own process; the final check at commit (:meth:`check`) sees
    what every daemon committed.  Changes made to the root by other programs
    are seen at the next count: the next start or reload of a daemon with a
    quota.
    """

    def __init__(self, sandbox, limit, lock=None):
        self.limit = limit
        self.lock = RootLock(sandbox) if lock is None else lock
        self._sandbox = sandbox
        self._reserved_lock = threading.Lock()
        self._reserved = 0
        if limit:
            self.recount()

    def recount(self):
        """Count the usage from disk and record it; return it.

        The walk runs without the lock and is kept only if no daemon changed
        the ledger meanwhile; after a few tries it runs holding the lock.
        """
        for _attempt in range(_RECOUNT_TRIES):
            with self.lock.held() as held:
                before = held.read()[1]
            used = _usage(self._sandbox)
            with self.lock.held() as held:
                generation = held.read()[1]
                if generation == before:
                    held.write(used, generation + 1)
                    return used
        with self.lock.held() as held:
            return self._count(held)

    def _count(self, held):
        used = _usage(self._sandbox)
        held.write(used, held.read()[1] + 1)
        return used

    def _used(self, held):
        used = held.read()[0]
        if used is None and self.limit:
            used = self._count(held)  # the record was removed or torn: count again
        return used or 0

    @contextlib.contextmanager
    def reserve(self, count):
        """Hold ``count`` bytes for an upload while the block runs.

        Raises ``ProtocolError("quota")`` at once if they do not fit.
        """
        count = max(0, count) if self.limit else 0
        if self.limit:
            with self.lock.held() as held:
                used = self._used(held)
            with self._reserved_lock:
                if used + self._reserved + count > self.limit:
                    raise ProtocolError("quota", "%d more bytes would exceed the quota of %d "
                                                 "bytes (%d in use)" % (count, self.limit, used))
                self._reserved += count
        try:
            yield
        finally:
            with self._reserved_lock:
                self._reserved -= count

    def check(self, delta, held):
        """Under the held lock, before a commit: refuse with ``quota`` if the stored bytes
        growing by ``delta`` would exceed the limit (other daemons' commits included)."""
        if self.limit and delta > 0:
            used = self._used(held)
            if used + delta > self.limit:
                raise ProtocolError("quota", "%d more bytes would exceed the quota of %d bytes "
                                             "(%d in use, stored meanwhile by another daemon "
                                             "or client); nothing was stored"
                                    % (delta, self.limit, used))

    def changed(self, delta, held=None):
        """Record that the stored bytes grew (or shrank) by ``delta`` (under ``held``,
        or taking the lock)."""
        if held is None:
            with self.lock.held() as held:
                return self.changed(delta, held)
        used, generation = held.read()
        held.write(None if used is None else max(0, used + delta), generation + 1)
        return None

    @property
    def used(self):
        """The bytes stored under the root, as last recorded (0 when not counted)."""
        with self.lock.held() as held:
            return held.read()[0] or 0

    @property
    def available(self):
        """Bytes an upload may still take (None without a quota)."""
        if not self.limit:
            return None
        with self.lock.held() as held:
            used = self._used(held)
        with self._reserved_lock:
            return max(0, self.limit - used - self._reserved)


def _usage(sandbox):
    return sum(st.st_size for _dir_fd, name, st in sandbox.walk()
               if stat.S_ISREG(st.st_mode) and not is_reserved_name(name))


__all__ = ["content_key", "DigestCache", "RootLock", "Held", "QuotaLedger", "LOCK_WAIT"]
