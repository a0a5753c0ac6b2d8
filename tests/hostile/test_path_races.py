"""File root confinement under concurrent change (issue 11): swappers against every operation.

Directories on the clients' paths are swapped again and again for symlinks
that point out of the root: remotely with the service's own ``rename`` (a
symlink already in the root moved into place), and locally by a thread or a
separate process.  Meanwhile client threads run put, resumable put, get,
stat, list, mkdir, delete and rename on those paths.  Afterwards nothing
outside the root may have changed (a full snapshot of the sentinel tree,
an old temp file in it included, which an escaping cleanup would remove), no
get or stat may have returned sentinel content, no listing a sentinel name,
and no temp file may be left anywhere.
"""

import hashlib
import io
import os
import random
import stat
import subprocess
import sys
import threading
import time

import pytest

from msgsrv.services.files.client import FileClient
from msgsrv.wire.errors import ServerError
from msgsrv.services.files.sandbox import TEMP_PREFIX, is_temp_name
from tests.conftest import ROOT
from tests.hostile import campaign
from tests.hostile.procwatch import SelfProbe, settle
from tests.hostile.targets import KEY_NAME, SECRET, write_keys_file

pytestmark = pytest.mark.timeout(campaign.timeout(120))

OPERATIONS = campaign.pick(3000, 100_000)   # client operations per test, all clients together
BUDGET = campaign.pick(15.0, 4 * 3600.0)    # seconds the clients may take at most
CLIENTS = 4
NAMES = ["f%d" % n for n in range(4)]
DIRS = ["sub", "sub/deep", "top/deep"]
MARK = b"OUTSIDE-SENTINEL "
MARK_NAME = "OUTSIDE-MARK"
#: Refusals a client may meet while the tree changes under it; anything else fails the test.
EXPECTED = {"bad-path", "not-found", "exists", "not-empty", "busy", "conflict"}
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


def _sha(data):
    return hashlib.sha256(data).hexdigest()


def _build(tmp_path):
    """The root (files/) and the sentinel tree next to it (outside/), mirroring its names."""
    root, outside = tmp_path / "files", tmp_path / "outside"
    for directory in (root / "sub" / "deep", root / "top" / "deep", outside / "deep"):
        directory.mkdir(parents=True)
    for name in NAMES:
        for directory in ("sub", "sub/deep", "top/deep"):
            (root / directory / name).write_bytes(b"INSIDE " + name.encode())
        for directory in (outside, outside / "deep"):
            (directory / name).write_bytes(MARK + name.encode())
    (outside / MARK_NAME).write_bytes(MARK)
    old_temp = outside / (TEMP_PREFIX + "0" * 32)  # an escaping cleanup would remove it
    old_temp.write_bytes(MARK + b"temp")
    os.utime(old_temp, (1, 1))
    os.symlink(str(outside), root / "link-out")
    os.symlink("../outside", root / "link-rel")
    return root, outside


def _snapshot(base, skip):
    """Every entry under ``base`` but ``skip``: kind, mode, size, mtime, content or link text."""
    seen = {}
    for where, dirs, files in os.walk(base):
        if where == str(base):
            dirs[:] = [d for d in dirs if d not in skip]
        for name in dirs + files:
            path = os.path.join(where, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as stream:
                    content = _sha(stream.read())
            else:
                content = None
            seen[os.path.relpath(path, base)] = (st.st_mode, st.st_size, st.st_mtime_ns, content)
    return seen


def _sentinel_digests(outside):
    return {_sha(p.read_bytes()) for p in outside.rglob("*") if p.is_file()}


def _temp_files(base):
    return [os.path.join(where, name) for where, dirs, files in os.walk(base)
            for name in dirs + files if is_temp_name(name)]


def _client(server):
    return FileClient("127.0.0.1", server.port, KEY_NAME, SECRET, timeout=20)


class Worker(threading.Thread):
    """One client doing random operations on the swapped paths; counts and findings kept."""

    def __init__(self, server, number, quota, sentinels):
        super().__init__(daemon=True)
        self.server, self.number, self.quota, self.sentinels = server, number, quota, sentinels
        self.rng = random.Random(number)
        self.done, self.ok, self.refused = {}, 0, {}
        self.escapes, self.failures = [], []

    def run(self):
        try:
            with _client(self.server) as client:
                deadline = time.monotonic() + BUDGET
                for count in range(self.quota):
                    if time.monotonic() > deadline:
                        break
                    self._one(client, count)
        except Exception as exc:  # reported by the test
            self.failures.append(repr(exc))

    def _one(self, client, count):
        kind = self.rng.choice(sorted(OPS))
        path = "%s/%s" % (self.rng.choice(DIRS), self.rng.choice(NAMES))
        self.done[kind] = self.done.get(kind, 0) + 1
        try:
            finding = OPS[kind](self, client, path, count)
        except ServerError as exc:
            self.refused[exc.code] = self.refused.get(exc.code, 0) + 1
            if exc.code not in EXPECTED:
                self.failures.append("%s %s: %s" % (kind, path, exc))
            return
        self.ok += 1
        if finding:
            self.escapes.append("%s %s: %s" % (kind, path, finding))

    def content(self, count):
        return b"CLIENT %d %d " % (self.number, count) + os.urandom(self.rng.randrange(0, 8192))

    def put(self, client, path, count):
        client.put(io.BytesIO(self.content(count)), path, overwrite=True)

    def put_resumable(self, client, path, count):
        client.put(io.BytesIO(self.content(count)), path, overwrite=True, resume=True)

    def get(self, client, path, count):
        sink = io.BytesIO()
        client.get(path, sink)
        return "read sentinel content" if sink.getvalue().startswith(MARK) else None

    def stat(self, client, path, count):
        info = client.stat(path, sha256=True)
        return "stat of a sentinel file" if info.sha256 in self.sentinels else None

    def list(self, client, path, count):
        names = [entry.name for entry in client.list(path.rsplit("/", 1)[0])]
        return "listed the sentinel directory" if MARK_NAME in names else None

    def mkdir(self, client, path, count):
        client.mkdir(path + ".d/x/y" if count % 2 else path + ".d", parents=bool(count % 2))

    def delete(self, client, path, count):
        client.delete(self.rng.choice([path, path + ".d/x/y", path + ".d/x", path + ".d"]))

    def rename(self, client, path, count):
        to = "%s/%s" % (self.rng.choice(DIRS), self.rng.choice(NAMES))
        client.rename(path, to, overwrite=self.rng.random() < 0.5)


OPS = {"put": Worker.put, "put-resumable": Worker.put_resumable, "get": Worker.get,
       "stat": Worker.stat, "list": Worker.list, "mkdir": Worker.mkdir,
       "delete": Worker.delete, "rename": Worker.rename}


def _swap_remotely(server, stop, counts):
    """Swap ``sub`` (and ``sub/deep``) for the out-pointing symlinks with the protocol's rename."""
    rng = random.Random(1)
    with _client(server) as client:
        for turn in range(1 << 62):
            if stop.is_set():
                break
            link = rng.choice(["link-out", "link-rel"])
            where = rng.choice(["sub", "sub/deep"])
            away = "%s.real%d" % (where, turn)  # a fresh name each turn
            for source, dest in ((where, away), (link, where), (where, link), (away, where)):
                try:
                    client.rename(source, dest)
                    counts["remote"] += 1
                except ServerError as exc:
                    if exc.code == "exists" and source == away:
                        # A client's mkdir with parents recreated it meanwhile: keep that one
                        # (in use) and drop the old one, so that long runs do not pile them up.
                        _remove_tree(client, away)


def _remove_tree(client, path):
    """Delete ``path`` and everything under it over the protocol (best effort)."""
    try:
        entries = client.list(path)
    except ServerError:
        entries = []
    for entry in entries:
        inner = path + "/" + entry.name
        if entry.kind == "dir":
            _remove_tree(client, inner)
        else:
            _quietly(client.delete, inner)
    _quietly(client.delete, path)


def _quietly(operation, *args):
    """Run one client operation, ignoring refusals (the tree changes under the swapper)."""
    try:
        operation(*args)
    except ServerError:
        pass


def _swap_locally(root, outside, stop, counts):
    """Swap ``top`` and ``top/deep`` for symlinks out of the root, through descriptors only."""
    root_fd = os.open(str(root), _DIR)
    top_fd = os.open("top", _DIR, dir_fd=root_fd)
    target = str(outside)
    rng = random.Random(2)
    try:
        while not stop.is_set():
            for fd, name in ((root_fd, "top"), (top_fd, "deep")):
                try:
                    os.rename(name, name + ".real", src_dir_fd=fd, dst_dir_fd=fd)
                    os.symlink(target, name, dir_fd=fd)
                    time.sleep(rng.uniform(0, 0.001))  # each state lasts as long as a request
                    os.unlink(name, dir_fd=fd)
                    os.rename(name + ".real", name, src_dir_fd=fd, dst_dir_fd=fd)
                    time.sleep(rng.uniform(0, 0.001))
                    counts["local"] += 1
                except OSError:
                    pass
    finally:
        os.close(top_fd)
        os.close(root_fd)


class _Counts(dict):
    """Swap counts shared with the swapper threads (one writer per key)."""

    def __init__(self):
        super().__init__(remote=0, local=0)


#: The local swapper in a process of its own: swaps until its standard input closes.
SWAPPER = """
import sys, threading
from tests.hostile.test_path_races import _Counts, _swap_locally
stop, counts = threading.Event(), _Counts()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
_swap_locally(sys.argv[1], sys.argv[2], stop, counts)
print(counts["local"])
"""


def _forced_cleanups(server, stop):
    """Make puts walk the root for old temp files while the tree is being swapped."""
    while not stop.wait(0.2):
        server.service.last_cleanup = 0.0


def _run_clients(server, outside):
    sentinels = _sentinel_digests(outside)
    workers = [Worker(server, n, OPERATIONS // CLIENTS, sentinels) for n in range(CLIENTS)]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(BUDGET + 60)
        assert not worker.is_alive(), "a client hung"
    return workers, time.monotonic() - started


def _check(workers, tmp_path, root, before, name, seconds, counts):
    """Nothing outside changed, nothing escaped, no temp file anywhere; record the figures."""
    failures = [f for w in workers for f in w.failures]
    escapes = [e for w in workers for e in w.escapes]
    assert failures == [], failures[:10]
    assert escapes == [], escapes[:10]
    after = _snapshot(tmp_path, skip={"files"})
    changed = sorted(set(before.items()) ^ set(after.items()))
    assert changed == [], "outside the root changed: %s" % changed[:10]
    temps = _temp_files(root)  # outside: covered by the snapshot (its old temp file kept)
    assert temps == [], temps
    done, refused = {}, {}
    for worker in workers:
        for table, counts_ in ((done, worker.done), (refused, worker.refused)):
            for key, value in counts_.items():
                table[key] = table.get(key, 0) + value
    succeeded = sum(w.ok for w in workers)
    operations = sum(done.values())
    assert operations >= min(OPERATIONS, 400), "too few operations ran: %d" % operations
    assert succeeded > operations // 10, "almost nothing succeeded: %s" % refused
    campaign.record(name, operations=operations, succeeded=succeeded, by_kind=done,
                    refused=refused, swaps=dict(counts), escapes=0, outside_changed=0,
                    seconds=round(seconds, 1))


@pytest.fixture
def swapped(tmp_path, start_service):
    root, outside = _build(tmp_path)
    keys = write_keys_file(tmp_path / "keys")
    server = start_service("file", keys_file=keys, root=str(root), auth_timeout=5,
                           temp_max_age=60)
    before = _snapshot(tmp_path, skip={"files"})
    baseline = SelfProbe().snapshot()
    yield server, root, outside, before
    # Every directory descriptor a walk opened was closed again.
    settle(SelfProbe(), baseline,
           extra=lambda: "connections still open" if server.pool.connections() else None)


def _stopping(*targets):
    stop = threading.Event()
    threads = [threading.Thread(target=t, args=args + (stop,) + rest, daemon=True)
               for t, args, rest in targets]
    for thread in threads:
        thread.start()
    return stop, threads


def test_remote_and_local_swaps_never_lead_outside_the_root(swapped, tmp_path):
    server, root, outside, before = swapped
    counts = _Counts()
    stop, threads = _stopping((_swap_remotely, (server,), (counts,)),
                              (_swap_locally, (root, outside), (counts,)),
                              (_forced_cleanups, (server,), ()))
    try:
        workers, seconds = _run_clients(server, outside)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert counts["remote"] > 10 and counts["local"] > 10, counts
    _check(workers, tmp_path, root, before, "path-races-remote", seconds, counts)


def test_a_local_process_swapping_components_never_leads_outside(swapped, tmp_path):
    server, root, outside, before = swapped
    env = dict(os.environ, PYTHONPATH=ROOT)
    swapper = subprocess.Popen([sys.executable, "-c", SWAPPER, str(root), str(outside)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    try:
        workers, seconds = _run_clients(server, outside)
    finally:
        try:
            out, _ = swapper.communicate(timeout=30)  # closing its input stops it
        except subprocess.TimeoutExpired:
            swapper.kill()
            out, _ = swapper.communicate()
    assert swapper.returncode == 0
    counts = {"local-process": int(out)}
    assert counts["local-process"] > 10, counts
    _check(workers, tmp_path, root, before, "path-races-local-process", seconds, counts)
