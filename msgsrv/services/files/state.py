"""What every connection of a file service shares about its root.

:class:`DigestCache` remembers the SHA-256 of files already hashed, so a file
downloaded again is sent zero-copy without being read.  :class:`QuotaLedger`
keeps the bytes stored under the root, so uploads over the quota are refused
before their data is sent.  Both are thread-safe.
"""

import collections
import contextlib
import logging
import os
import stat
import threading

from msgsrv.ops.shared import LocalStore
from msgsrv.wire.errors import ProtocolError, TableFull
from .sandbox import is_temp_name
from .transfer import SERVER_CHUNK, file_sha256

log = logging.getLogger("msgsrv.files")


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
    are seen at the next start or reload.  The figures live in ``store``
    (this process's by default; with the shared store of several worker
    processes, the first to make its ledger counts and the others use that
    count, so a quota is one quota for all of them).
    """

    def __init__(self, sandbox, limit, store=None):
        self.limit = limit
        self._store = store if store is not None else LocalStore()
        if limit:
            self._count(sandbox)
        else:
            with self._store.locked():
                self._store.delete(_USED)  # counted afresh once a quota is set again

    def _count(self, sandbox):
        with self._store.locked():
            if self._store.get(_USED) is not None:
                return  # counted by another worker process
        used = _usage(sandbox)  # a walk: never inside the lock
        with self._store.locked():
            if self._store.get(_USED) is None:
                self._put_used(used)

    def _put_used(self, used):
        try:
            self._store.put(_USED, (used,))
        except TableFull as exc:
            log.warning("quota: usage not recorded: %s", exc)

    @property
    def used(self):
        """Bytes stored under the root."""
        with self._store.locked():
            return self._used()

    def _used(self):
        record = self._store.get(_USED)
        return int(record[0]) if record is not None else 0

    @contextlib.contextmanager
    def reserve(self, count):
        """Hold ``count`` bytes for an upload while the block runs.

        Raises ``ProtocolError("quota")`` at once if they do not fit.
        """
        count = max(0, count) if self.limit else 0
        with self._store.locked():
            used = self._used()
            if self.limit and used + self._store.total(_RESERVED) + count > self.limit:
                raise ProtocolError("quota", "%d more bytes would exceed the quota of %d bytes "
                                             "(%d in use)" % (count, self.limit, used))
            if count:
                self._store.add(_RESERVED, count)
        try:
            yield
        finally:
            if count:
                with self._store.locked():
                    self._store.add(_RESERVED, -count)

    def changed(self, delta):
        """Record that the stored bytes grew (or shrank) by ``delta``."""
        if self.limit:
            with self._store.locked():
                self._put_used(max(0, self._used() + delta))

    @property
    def available(self):
        """Bytes an upload may still take (None without a quota)."""
        if not self.limit:
            return None
        with self._store.locked():
            return max(0, self.limit - self._used() - self._store.total(_RESERVED))


_USED, _RESERVED = ("used",), ("reserved",)


def _usage(sandbox):
    return sum(st.st_size for _dir_fd, name, st in sandbox.walk()
               if stat.S_ISREG(st.st_mode) and not is_temp_name(name))


__all__ = ["content_key", "DigestCache", "QuotaLedger"]
