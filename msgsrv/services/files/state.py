"""What every connection of a file service shares about its root.

:class:`DigestCache` remembers the SHA-256 of files already hashed, so a file
downloaded again is sent zero-copy without being read.  :class:`QuotaLedger`
keeps the bytes stored under the root, so uploads over the quota are refused
before their data is sent.  Both are thread-safe.
"""

import collections
import contextlib
import os
import stat
import threading

from msgsrv.wire.errors import ProtocolError
from .sandbox import is_temp_name
from .transfer import SERVER_CHUNK, file_sha256


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


class QuotaLedger:
    """Bytes stored under a sandbox's root against ``limit`` (0: no quota, nothing counted).

    The usage is the sum of the sizes of the regular files under the root
    (temp files excluded; walked with ``Sandbox.walk``, so nothing outside
    the root is counted), counted once when the ledger is made, then kept up
    to date by the service's own puts, deletes and renames; uploads in
    progress hold a reservation.  Changes made to the root by other programs
    are seen at the next start or reload.
    """

    def __init__(self, sandbox, limit):
        self.limit = limit
        self._lock = threading.Lock()
        self._reserved = 0
        self.used = _usage(sandbox) if limit else 0

    @contextlib.contextmanager
    def reserve(self, count):
        """Hold ``count`` bytes for an upload while the block runs.

        Raises ``ProtocolError("quota")`` at once if they do not fit.
        """
        count = max(0, count) if self.limit else 0
        with self._lock:
            if self.limit and self.used + self._reserved + count > self.limit:
                raise ProtocolError("quota", "%d more bytes would exceed the quota of %d bytes "
                                             "(%d in use)" % (count, self.limit, self.used))
            self._reserved += count
        try:
            yield
        finally:
            with self._lock:
                self._reserved -= count

    def changed(self, delta):
        """Record that the stored bytes grew (or shrank) by ``delta``."""
        if self.limit:
            with self._lock:
                self.used = max(0, self.used + delta)

    @property
    def available(self):
        """Bytes an upload may still take (None without a quota)."""
        if not self.limit:
            return None
        with self._lock:
            return max(0, self.limit - self.used - self._reserved)


def _usage(sandbox):
    return sum(st.st_size for _dir_fd, name, st in sandbox.walk()
               if stat.S_ISREG(st.st_mode) and not is_temp_name(name))


__all__ = ["content_key", "DigestCache", "QuotaLedger"]
