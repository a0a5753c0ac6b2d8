"""What the worker processes of one daemon share: held counts, records and status snapshots.

With ``processes`` above 1 the master makes one :class:`Arena` before it
forks a worker, and every worker maps the same pages (an anonymous shared
mapping of a ``memfd``).  A limit that must mean the same with N workers as
with one keeps its state here, through a :class:`SharedStore`:

* *held* counts (connections open, per address too, commands running,
  transfer slots, bytes reserved) go into one table; each entry holds the
  total and, beside it, what each worker slot added.  When a worker dies,
  even by SIGKILL, the master takes its slot's column off the totals: nothing
  a dead worker held stays counted.
* *records* (rate-limit buckets, authentication penalties, the quota's bytes
  in use) go into one table for all: they describe an address or a root, not
  what a worker holds, so they outlive the worker that wrote them.
* *snapshots*: each worker publishes its status document, which the status
  service of any worker gathers.

Both tables are bounded (``shared_addresses`` entries; open addressing with
linear probing); an entry is named by keyed BLAKE2 hashes of its namespace and
key (the hash key is random per daemon, so clients cannot pick addresses that
collide).  Locks are POSIX record locks (``fcntl.lockf``) on one byte of the
arena's file per stripe: the kernel drops them when a process dies, so a
worker killed inside a critical section never blocks the others (a semaphore
would stay taken).  Record locks belong to a process, so a thread lock per
stripe orders the threads of one process first.

:class:`LocalStore` is the in-process default with the same interface (one
process, and servers started on their own by tests or embedding programs).
"""

import contextlib
import fcntl
import hashlib
import mmap
import os
import struct
import tempfile
import threading

from msgsrv.wire.errors import TableFull

STRIPES = 64            # record-lock stripes; the namespace's hash picks one
_REGISTRY = STRIPES     # the stripe of the worker table and the snapshots
SNAPSHOT_SIZE = 256 * 1024  # bytes of one worker's status document, at most
_HEADER = struct.Struct("<Q")                     # entries in use
_RECORD = struct.Struct("<QQdddd")                # namespace, key, four values
_WORKER = struct.Struct("<qqqdq")                 # pid, generation, index, started, state
_SNAPSHOT = struct.Struct("<Q")                   # length of the document that follows
RECORD_FIELDS = 4

#: Worker states in the worker table.
FREE, STARTING, READY, STOPPING = 0, 1, 2, 3
STATE_NAMES = {FREE: "free", STARTING: "starting", READY: "ready", STOPPING: "stopping"}


def _power_of_two(at_least):
    size = 1
    while size < at_least:
        size *= 2
    return size


class _Table:
    """Open addressing over ``capacity`` entries of ``entry`` at ``offset`` of ``mm``.

    An entry is ``(namespace, key, values...)``; namespace 0 marks a free
    entry.  At most three quarters of the entries are used, so a probe always
    ends; deletion shifts the following entries back (no tombstones).  A
    count (:meth:`add`) that falls to 0 keeps its entry, so a count going up
    and down costs no insertion and removal each time; those entries are
    collected when the table is full.  Callers hold the stripe lock of the
    namespace.
    """

    def __init__(self, mm, offset, capacity, entry, limit, counts=False):
        self.counts = counts  # a table of counts: entries at 0 may be collected
        self._values = len(entry.unpack(bytes(entry.size))) - 2
        self._mm = mm
        self._count_at = offset
        self._base = offset + _HEADER.size
        self._mask = capacity - 1
        self._entry = entry
        self.limit = limit

    @staticmethod
    def size(capacity, entry):
        """Bytes a table of ``capacity`` entries takes."""
        return _HEADER.size + capacity * entry.size

    def __len__(self):
        return _HEADER.unpack_from(self._mm, self._count_at)[0]

    def _at(self, position):
        return self._base + position * self._entry.size

    def _find(self, ns, key):
        mask, base, size, mm = self._mask, self._base, self._entry.size, self._mm
        unpack = self._entry.unpack_from
        position = (key ^ (ns >> 7)) & mask
        while True:
            entry = unpack(mm, base + position * size)
            if entry[0] == 0:
                return position, None
            if entry[1] == key and entry[0] == ns:
                return position, entry[2:]
            position = (position + 1) & mask

    def get(self, ns, key):
        """The values stored under ``(ns, key)``, or None."""
        return self._find(ns, key)[1]

    def set(self, ns, key, values):
        """Store ``values``; raises TableFull when the entry is new and the table is full."""
        position, old = self._find(ns, key)
        if old is None:
            position = self._room(ns, key, position)
        self._entry.pack_into(self._mm, self._at(position), ns, key, *values)

    def _room(self, ns, key, position):
        """Count one more entry, to go at ``position`` (found again if counts at 0 had
        to be collected first); TableFull when there is none."""
        count = len(self)
        if count >= self.limit and self.counts:
            self._collect()
            position, count = self._find(ns, key)[0], len(self)
        if count >= self.limit:
            raise TableFull("the shared table is full (%d entries: shared_addresses)"
                            % self.limit)
        _HEADER.pack_into(self._mm, self._count_at, count + 1)
        return position

    def _collect(self):
        """Remove the counts at 0 (a count table only)."""
        kept = [entry for entry in self.all() if entry[2]]
        self.clear()
        for entry in kept:
            self.set(entry[0], entry[1], entry[2:])

    def delete(self, ns, key):
        """Remove ``(ns, key)`` if present."""
        position, old = self._find(ns, key)
        if old is not None:
            self._remove(position)

    def add(self, ns, key, delta, column):
        """Add ``delta`` to the total of ``(ns, key)`` and to its ``column`` (a slot) in a
        table of counts.  Raises TableFull like :meth:`set`."""
        position, old = self._find(ns, key)
        if old is None:
            if not delta:
                return
            position = self._room(ns, key, position)
            values = [0] * self._values
        else:
            values = list(old)
        values[0] += delta
        values[1 + column] += delta
        self._entry.pack_into(self._mm, self._at(position), ns, key, *values)

    def _remove(self, position):
        _HEADER.pack_into(self._mm, self._count_at, len(self) - 1)
        self._shift_back(position)

    def _shift_back(self, hole):
        size, mm, mask = self._entry.size, self._mm, self._mask
        probe = hole
        while True:
            probe = (probe + 1) & mask
            entry = self._entry.unpack_from(mm, self._at(probe))
            if entry[0] == 0:
                break
            home = (entry[1] ^ (entry[0] >> 7)) & mask
            # The entry may move into the hole unless its home lies after the hole
            # (cyclically) and at or before its own position.
            if (probe - home) & mask >= (probe - hole) & mask:
                mm[self._at(hole):self._at(hole) + size] = mm[self._at(probe):
                                                               self._at(probe) + size]
                hole = probe
        mm[self._at(hole):self._at(hole) + size] = bytes(size)

    def entries(self, ns):
        """Every ``(key, values)`` of namespace ``ns`` (a scan of the whole table)."""
        return [(entry[1], entry[2:]) for entry in self.all() if entry[0] == ns]

    def all(self):
        """Every entry ``(ns, key, values...)`` in use."""
        unpack = self._entry.unpack_from
        entries = (unpack(self._mm, self._at(position)) for position in range(self._mask + 1))
        return [entry for entry in entries if entry[0]]

    def clear(self):
        """Empty the table."""
        end = self._at(self._mask + 1)
        self._mm[self._count_at:end] = bytes(end - self._count_at)


class _StripeLock:
    """One stripe: a thread lock, then a record lock on byte ``index`` of ``fd``.

    Re-entrant within a thread (a limit checked inside another's critical
    section, such as the rate limit inside admission, takes the stripe again).
    """

    __slots__ = ("_fd", "_index", "_lock", "_depth")

    def __init__(self, fd, index):
        self._fd, self._index = fd, index
        self._lock = threading.RLock()
        self._depth = 0

    def __enter__(self):
        self._lock.acquire()
        if self._depth == 0:
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_EX, 1, self._index)
            except BaseException:
                self._lock.release()
                raise
        self._depth += 1
        return self

    def __exit__(self, *exc_info):
        self._depth -= 1
        if self._depth == 0:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, self._index)
        self._lock.release()
        return False


class Arena:
    """The shared memory of one daemon: ``slots`` worker slots, tables bounded by
    ``addresses`` entries each, one status snapshot per slot and one for the master.

    Made by the master before it forks; the children use the same object.
    Raises OSError when the memory cannot be had.
    """

    def __init__(self, slots, addresses):
        self.slots = slots
        capacity = _power_of_two(addresses * 4 // 3 + 1)
        held = struct.Struct("<QQq" + "i" * slots)  # namespace, key, total, per slot
        self._held_at = slots * _WORKER.size
        self._records_at = self._held_at + _Table.size(capacity, held)
        self._snapshots_at = self._records_at + _Table.size(capacity, _RECORD)
        total = self._snapshots_at + (slots + 1) * (_SNAPSHOT.size + SNAPSHOT_SIZE)
        self._fd = _anonymous_file()
        try:
            os.ftruncate(self._fd, total)
            self._mm = mmap.mmap(self._fd, total)
        except OSError:
            os.close(self._fd)
            raise
        self.totals = _Table(self._mm, self._held_at, capacity, held, addresses, counts=True)
        self.records = _Table(self._mm, self._records_at, capacity, _RECORD, addresses)
        self._secret = os.urandom(16)
        self._stripes = [_StripeLock(self._fd, n) for n in range(STRIPES + 1)]

    def close(self):
        """Unmap and close (the children keep their own mapping)."""
        self._mm.close()
        os.close(self._fd)

    def hash(self, text):
        """A non-zero 64-bit keyed hash of ``text``."""
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8,
                                 key=self._secret).digest()
        return int.from_bytes(digest, "little") | 1

    def stripe(self, index):
        """The lock of stripe ``index`` (0..STRIPES), against every thread of every process."""
        return self._stripes[index]

    @contextlib.contextmanager
    def everything(self):
        """Hold every stripe (the master, when it frees a slot)."""
        with contextlib.ExitStack() as stack:
            for lock in self._stripes:
                stack.enter_context(lock)
            yield

    # -- the worker table -----------------------------------------------------

    def set_worker(self, slot, pid, generation, index, started, state):
        """Describe the worker in ``slot``."""
        with self.stripe(_REGISTRY):
            _WORKER.pack_into(self._mm, slot * _WORKER.size, pid, generation, index, started,
                              state)

    def set_state(self, slot, state):
        """Change the state of the worker in ``slot`` (READY, STOPPING...)."""
        with self.stripe(_REGISTRY):
            record = list(_WORKER.unpack_from(self._mm, slot * _WORKER.size))
            record[4] = state
            _WORKER.pack_into(self._mm, slot * _WORKER.size, *record)

    def workers(self):
        """``{slot: (pid, generation, index, started, state)}`` of the slots in use."""
        with self.stripe(_REGISTRY):
            records = [(slot, _WORKER.unpack_from(self._mm, slot * _WORKER.size))
                       for slot in range(self.slots)]
        return {slot: record for slot, record in records if record[4] != FREE}

    # -- status snapshots -------------------------------------------------------

    def _snapshot_at(self, slot):
        return self._snapshots_at + slot * (_SNAPSHOT.size + SNAPSHOT_SIZE)

    def publish(self, slot, data):
        """Make ``data`` (bytes) the snapshot of ``slot`` (``slots``: the master's own);
        raises ValueError when it is larger than SNAPSHOT_SIZE."""
        if len(data) > SNAPSHOT_SIZE:
            raise ValueError("status snapshot of %d bytes is over %d" % (len(data), SNAPSHOT_SIZE))
        at = self._snapshot_at(slot)
        with self.stripe(_REGISTRY):
            _SNAPSHOT.pack_into(self._mm, at, len(data))
            self._mm[at + _SNAPSHOT.size:at + _SNAPSHOT.size + len(data)] = data

    def snapshots(self):
        """``{slot: bytes}`` of every published snapshot, the master's under ``slots``."""
        found = {}
        with self.stripe(_REGISTRY):
            for slot in range(self.slots + 1):
                at = self._snapshot_at(slot)
                length = _SNAPSHOT.unpack_from(self._mm, at)[0]
                if length:
                    found[slot] = self._mm[at + _SNAPSHOT.size:at + _SNAPSHOT.size + length]
        return found

    def view(self):
        """``(workers, snapshots)`` read together (see :meth:`workers`, :meth:`snapshots`):
        a worker that exits is in both or in neither."""
        with self.stripe(_REGISTRY):
            return self.workers(), self.snapshots()

    def free(self, slot):
        """Take what the worker in ``slot`` held off the totals and forget what it
        published: it has exited.  Master only."""
        with self.everything():
            for entry in self.totals.all():
                if entry[3 + slot]:
                    self.totals.add(entry[0], entry[1], -entry[3 + slot], slot)
            _WORKER.pack_into(self._mm, slot * _WORKER.size, 0, 0, 0, 0.0, FREE)
            _SNAPSHOT.pack_into(self._mm, self._snapshot_at(slot), 0)


def _anonymous_file():
    if hasattr(os, "memfd_create"):
        return os.memfd_create("msgsrv-shared", os.MFD_CLOEXEC)
    with tempfile.TemporaryFile(prefix="msgsrv-shared-") as stream:  # pragma: no cover
        return os.dup(stream.fileno())


class LocalStore:
    """Held counts and records of one process, in dicts (the in-process default).

    The interface of :class:`SharedStore`: call the other methods inside
    ``with store.locked():``.  Keys are tuples of strings and numbers;
    records are tuples of up to RECORD_FIELDS floats.
    """

    def __init__(self):
        self._lock = threading.RLock()
        self._held = {}
        self._records = {}

    def locked(self):
        """The context that makes a sequence of calls atomic."""
        return self._lock

    def total(self, key):
        """What every process holds under ``key``."""
        return self._held.get(key, 0)

    def add(self, key, delta):
        """Change what this process holds under ``key`` by ``delta``."""
        value = self._held.get(key, 0) + delta
        if value:
            self._held[key] = value
        else:
            self._held.pop(key, None)

    def get(self, key):
        """The record under ``key``, or None."""
        return self._records.get(key)

    def put(self, key, record):
        """Store ``record`` under ``key`` (a shared store raises TableFull when full)."""
        self._records[key] = tuple(record)

    def delete(self, key):
        """Forget the record under ``key``."""
        self._records.pop(key, None)

    def prune(self, keep):
        """Forget every record for which ``keep(record)`` is false; return how many."""
        doomed = [key for key, record in self._records.items() if not keep(record)]
        for key in doomed:
            del self._records[key]
        return len(doomed)

    def record_count(self):
        """Records stored (in the whole table, for a shared store)."""
        return len(self._records)


class SharedStore:
    """A namespace of the arena seen from one worker ``slot`` (see :class:`LocalStore`).

    ``total`` is what all workers hold; ``add`` changes the total and this
    slot's share of it; records are common to all.  ``put`` and
    ``add`` raise TableFull when a new entry does not fit.  Namespaces with
    the same ``group`` share a stripe, so one critical section may cover them
    all (a service's admission checks its rate limit and its connections).
    """

    def __init__(self, arena, slot, namespace, group=None):
        self._arena = arena
        self._slot = slot
        self._ns = arena.hash(namespace)
        self._lock = arena.stripe(arena.hash(group or namespace) % STRIPES)
        self._keys = {}

    def locked(self):
        """The stripe lock (shared with the other processes)."""
        return self._lock

    def _key(self, key):
        found = self._keys.get(key)
        if found is None:
            found = self._arena.hash("\x1f".join(str(part) for part in key))
            if len(self._keys) >= 4096:  # recent addresses, bounded
                self._keys.clear()
            self._keys[key] = found
        return found

    def total(self, key):
        """What every worker holds under ``key``."""
        values = self._arena.totals.get(self._ns, self._key(key))
        return 0 if values is None else values[0]

    def add(self, key, delta):
        """Change what this worker holds under ``key`` by ``delta``."""
        self._arena.totals.add(self._ns, self._key(key), delta, self._slot)

    def get(self, key):
        """The record under ``key``, or None."""
        return self._arena.records.get(self._ns, self._key(key))

    def put(self, key, record):
        """Store ``record`` (up to RECORD_FIELDS numbers) under ``key``."""
        values = tuple(record) + (0.0,) * (RECORD_FIELDS - len(record))
        self._arena.records.set(self._ns, self._key(key), values)

    def delete(self, key):
        """Forget the record under ``key``."""
        self._arena.records.delete(self._ns, self._key(key))

    def prune(self, keep):
        """Forget this namespace's records for which ``keep(record)`` is false."""
        records = self._arena.records
        doomed = [key for key, values in records.entries(self._ns) if not keep(values)]
        for key in doomed:
            records.delete(self._ns, key)
        return len(doomed)

    def record_count(self):
        """Records in the whole shared table."""
        return len(self._arena.records)


class WorkerContext:
    """Who this worker process is: its ``slot`` in the ``arena``, its ``index`` among
    the workers of its ``generation``; ``first`` on the daemon's first start only
    (what runs once per start, such as removing partial uploads, runs then)."""

    def __init__(self, arena, slot, index, generation, first):
        self.arena, self.slot, self.index = arena, slot, index
        self.generation, self.first = generation, first


_context = None


def install(context):
    """Make ``context`` this process's (a worker, right after the fork)."""
    global _context
    _context = context


def current():
    """This worker's WorkerContext, or None in a single-process daemon."""
    return _context


def store(namespace, group=None):
    """The store for ``namespace``: shared between the workers when there are several
    (``group``: see SharedStore), a LocalStore otherwise."""
    if _context is None:
        return LocalStore()
    return SharedStore(_context.arena, _context.slot, namespace, group)


__all__ = ["Arena", "LocalStore", "SharedStore", "WorkerContext", "install", "current",
           "store", "FREE", "STARTING", "READY", "STOPPING"]
