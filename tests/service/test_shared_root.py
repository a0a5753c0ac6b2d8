"""Two daemons serving one root (a shared file system): puts, resumes, quota, checksums."""

import fcntl
import io
import os
import threading

import pytest

from msgsrv.client import FileClient
from msgsrv.services.files import sandbox as sandbox_module
from msgsrv.services.files.sandbox import ROOT_LOCK_NAME, Sandbox, resumable_temp_path
from msgsrv.services.files.state import QuotaLedger, RootLock
from msgsrv.wire.errors import ServerError, ServiceBusy
from tests.conftest import wait_for
from tests.service.test_files import (SECRETS, begin_put, client, keys_file, raw_session,  # noqa: F401
                              root, serve, sha, temp_files, visible)

pytestmark = pytest.mark.timeout(30)


def used_on_disk(root):
    return sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(root)
               for n in names if not sandbox_module.is_reserved_name(n))


def test_concurrent_puts_of_one_name_end_with_one_complete_file(serve, root):
    first, second = serve(), serve()
    contents = [bytes([n]) * (1 << 20) for n in range(6)]
    errors = []

    def upload(server, data):
        try:
            with client(server, timeout=30) as c:
                c.put(io.BytesIO(data), "same", overwrite=True)
        except Exception as exc:  # reported below
            errors.append(exc)

    for _round in range(2):
        threads = [threading.Thread(target=upload, args=((first, second)[n % 2], data))
                   for n, data in enumerate(contents)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert (root / "same").read_bytes() in contents  # one whole upload, never a mix
    assert temp_files(root) == []


def test_a_put_without_overwrite_loses_to_the_other_daemons(serve, root, monkeypatch):
    first, second = serve(), serve()
    both_checked = threading.Barrier(2)
    commit = sandbox_module.AtomicWriter.commit

    def slow_commit(writer):
        # Without a lock shared by the daemons, both would pass the "exists" check here.
        try:
            both_checked.wait(timeout=0.5)
        except threading.BrokenBarrierError:
            pass  # the other waits for the lock: it checks again after this commit
        commit(writer)

    monkeypatch.setattr(sandbox_module.AtomicWriter, "commit", slow_commit)
    outcomes = []

    def upload(server, data):
        with client(server) as c:
            try:
                c.put(io.BytesIO(data), "f")
                outcomes.append(("ok", data))
            except ServerError as exc:
                outcomes.append((exc.code, data))

    threads = [threading.Thread(target=upload, args=(server, data))
               for server, data in ((first, b"from one"), (second, b"from two"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(code for code, _ in outcomes) == ["exists", "ok"]
    winner = [data for code, data in outcomes if code == "ok"][0]
    assert (root / "f").read_bytes() == winner and temp_files(root) == []


def interrupt_upload(server, root, data, upload_id):
    """Send the first half of a resumable put of ``data`` to ``server``, then drop it;
    return once the server has let the kept part go."""
    temp = resumable_temp_path(root / "big", "alice:" + upload_id)
    sock, stream = raw_session(server)
    with sock:
        stream.send({"type": "put", "path": "big", "size": len(data), "upload_id": upload_id})
        assert stream.recv().header["offset"] == 0
        stream.send_raw(data[:len(data) // 2])
        wait_for(lambda: temp.exists() and temp.stat().st_size == len(data) // 2,
                 message="the first half to be stored")
    wait_for(lambda: _unlocked(temp), message="the first daemon to release the part")
    return temp


def _unlocked(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_an_upload_interrupted_on_one_daemon_resumes_on_the_other(serve, root):
    first = serve()
    data = os.urandom(2 << 20)
    upload_id = sha(data)[:32]
    temp = interrupt_upload(first, root, data, upload_id)
    other = serve()  # its start-up clean-up keeps the part: it may be resumed anywhere
    assert temp.exists()
    kept = []
    with client(other) as c:
        done = c.put(io.BytesIO(data), "big", upload_id=upload_id,
                     on_resume=lambda offset, _discarded: kept.append(offset))
    assert kept == [1 << 20] and done.resumed_from == 1 << 20 and done.sha256 == sha(data)
    assert (root / "big").read_bytes() == data and temp_files(root) == []


def test_the_quota_counts_what_every_daemon_stores(serve, root):
    (root / "old").write_bytes(b"o" * 100)  # from another program: counted at start
    first, second = serve(quota="1000"), serve(quota="1000")
    with client(first) as one, client(second) as two:
        one.put(io.BytesIO(b"a" * 500), "a")
        with pytest.raises(ServerError) as info:
            two.put(io.BytesIO(b"b" * 401), "b")  # refused before its data is sent
        assert info.value.code == "quota"
        assert two.capabilities()["limits"]["quota_available"] == 400
        sock, stream = raw_session(second)
        with sock:
            begin_put(stream, b"c" * 300, path="c")  # fits now: 600 + 300
            one.put(io.BytesIO(b"d" * 300), "d")     # lands first: 900
            stream.send({"type": "end", "sha256": sha(b"c" * 300)})
            refusal = stream.recv().header
        assert refusal["code"] == "quota" and "nothing was stored" in refusal["message"]
        assert not (root / "c").exists()
        two.delete("a")
        two.rename("d", "old", overwrite=True)
        one.put(io.BytesIO(b"e" * 700), "e")
    assert first.service.quota.used == second.service.quota.used == used_on_disk(root) == 1000


def test_checksums_follow_what_the_other_daemon_and_other_programs_change(serve, root):
    first, second = serve(), serve()
    with client(first) as one, client(second) as two:
        one.put(io.BytesIO(b"x" * 100), "f")
        assert one.stat("f", sha256=True).sha256 == sha(b"x" * 100)  # now cached by the first
        two.put(io.BytesIO(b"y" * 100), "f", overwrite=True)  # same size, new inode
        assert one.stat("f", sha256=True).sha256 == sha(b"y" * 100)
        before = os.stat(root / "f")
        wait_for(lambda: _rewrite_in_place(root / "f", b"z" * 100, before),
                 message="an in-place rewrite with a new ctime")
        assert os.stat(root / "f").st_mtime_ns == before.st_mtime_ns  # mtime set back
        assert one.stat("f", sha256=True).sha256 == sha(b"z" * 100)
        sink = io.BytesIO()
        one.get("f", sink)
        assert sink.getvalue() == b"z" * 100


def _rewrite_in_place(path, data, before):
    with open(path, "r+b") as stream:
        stream.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    return os.stat(path).st_ctime_ns != before.st_ctime_ns  # the clock ticked: done


def test_the_lock_file_is_neither_listed_nor_reachable(serve, root):
    server = serve()
    with client(server) as c:
        c.put(io.BytesIO(b"x"), "f")
        assert (root / ROOT_LOCK_NAME).exists()
        assert [entry.name for entry in c.list("")] == ["f"] == visible(root)
        for attempt in (lambda: c.stat(ROOT_LOCK_NAME), lambda: c.delete(ROOT_LOCK_NAME),
                        lambda: c.put(io.BytesIO(b"y"), ROOT_LOCK_NAME, overwrite=True),
                        lambda: c.rename("f", ROOT_LOCK_NAME, overwrite=True)):
            with pytest.raises(ServerError) as info:
                attempt()
            assert info.value.code == "bad-path"


def test_a_real_daemon_and_a_service_share_a_root(serve, root, keys_file,  # noqa: F811
                                                  daemon_factory, tmp_path):
    first = serve(quota="4M")
    data = os.urandom(2 << 20)
    upload_id = sha(data)[:32]
    temp = interrupt_upload(first, root, data, upload_id)
    ini = tmp_path / "server.ini"
    ini.write_text("[service:files]\nhandler = file\nport = 0\nroot = %s\nkeys_file = %s\n"
                   "quota = 4M\n" % (root, keys_file))
    daemon = daemon_factory(ini)
    host, port = daemon.wait_listening(1)["files"]
    assert temp.exists()
    with FileClient(host, port, "alice", SECRETS["alice"], timeout=10) as c:
        assert c.put(io.BytesIO(data), "big", upload_id=upload_id).resumed_from == 1 << 20
        with pytest.raises(ServerError) as info:
            c.put(io.BytesIO(b"q" * ((2 << 20) + 1)), "more")  # 2 MiB stored: one byte over
        assert info.value.code == "quota"
    with client(first) as c:
        c.put(io.BytesIO(b"s" * 1000), "small")
    assert first.service.quota.used == used_on_disk(root) == (2 << 20) + 1000


# -- the lock and the ledger, without sockets ---------------------------------------

def test_two_root_locks_exclude_each_other_and_give_up_busy(root):
    with Sandbox(root) as box:
        one, two = RootLock(box), RootLock(box, wait=0.05)
        with one.held():
            with pytest.raises(ServiceBusy):
                with two.held():
                    pass
        with two.held() as held:
            assert held.read() == (None, 0)
            held.write(123, 7)
        with one.held() as held:
            assert held.read() == (123, 7)
        one.close()
        two.close()


def test_a_removed_or_torn_ledger_is_counted_again(root):
    (root / "f").write_bytes(b"x" * 10)
    with Sandbox(root) as box:
        ledger = QuotaLedger(box, 100)
        assert ledger.used == 10
        (root / ROOT_LOCK_NAME).write_bytes(b"msgsrv-usage used=1")  # torn by a crash
        assert ledger.available == 90
        os.unlink(root / ROOT_LOCK_NAME)
        (root / "g").write_bytes(b"y" * 20)  # another program: seen at the next count
        assert ledger.available == 70
        ledger.changed(-20)
        assert ledger.used == 10 and ledger.recount() == 30


def test_a_count_is_kept_only_if_nobody_changed_the_ledger_meanwhile(root, monkeypatch):
    from msgsrv.services.files import state as fileroot
    (root / "f").write_bytes(b"x" * 10)
    with Sandbox(root) as box:
        ledger = QuotaLedger(box, 100)
        walk = fileroot._usage
        walks = []

        def busy_walk(sandbox):  # another daemon commits during every count but the last
            walks.append(1)
            if len(walks) <= fileroot._RECOUNT_TRIES:
                ledger.changed(5)
            return walk(sandbox)

        monkeypatch.setattr(fileroot, "_usage", busy_walk)
        assert ledger.recount() == 10 and len(walks) == fileroot._RECOUNT_TRIES + 1
