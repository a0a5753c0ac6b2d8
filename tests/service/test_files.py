"""The file service over real sockets: FileHandler with FileClient (and raw frames where needed)."""

import errno
import hashlib
import io
import json
import os
import socket
import stat
import threading

import pytest

from msgsrv.wire import auth
from msgsrv.services.files import protocol as fileproto
from msgsrv.client import FileClient
from msgsrv.services.files.client import part_path
from msgsrv.wire.errors import AuthError, ConfigError, ConnectionFailed, ProtocolError, ServerError
from msgsrv.services.files.protocol import LIST_PAGE
from msgsrv.services.files import handler as files_handler
from msgsrv.services.files.sandbox import (TEMP_PREFIX, is_reserved_name, is_temp_name,
                                           resumable_temp_path)
from msgsrv.wire.frame_stream import FrameStream
from tests.conftest import connect, recv_until_closed, service_config, wait_for

pytestmark = pytest.mark.timeout(60)

SECRETS = {"alice": "a" * 20, "bob": "b" * 20, "carol": "c" * 20}


@pytest.fixture
def keys_file(tmp_path):
    path = tmp_path / "keys"
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, "".join("%s %s\n" % item for item in SECRETS.items()).encode())
    os.close(fd)
    return str(path)


@pytest.fixture
def root(tmp_path):
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def serve(start_service, keys_file, root):
    def start(**options):
        options.setdefault("root", str(root))
        return start_service("file", keys_file=keys_file, auth_timeout=5, **options)
    return start


@pytest.fixture
def server(serve):
    return serve()


def client(server, name="alice", timeout=10):
    return FileClient("127.0.0.1", server.port, name, SECRETS[name], timeout=timeout)


def sha(data):
    return hashlib.sha256(data).hexdigest()


def temp_files(root):
    return [name for _, dirs, names in os.walk(root) for name in dirs + names if is_temp_name(name)]


def visible(root):
    """The names in ``root`` a client may see (not the lock file nor temp files), sorted."""
    return sorted(name for name in os.listdir(root) if not is_reserved_name(name))


def raw_session(server, name="alice"):
    """A socket and an authenticated FrameStream, for sending what FileClient would not."""
    sock = connect(server)
    stream = FrameStream(sock)
    stream.send(auth.answer_hello(stream.recv().header, name, SECRETS[name]))
    assert stream.recv().type == "authenticated"
    return sock, stream


def begin_put(stream, data, **fields):
    """Send a put header for ``data``, expect ready, send the bytes; return the ready offset."""
    stream.send(dict({"type": "put", "size": len(data)}, **fields))
    ready = stream.recv().header
    assert ready["type"] == "ready", ready
    stream.send_raw(data)
    return ready["offset"]


# -- round trips -----------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 100_000])
def test_round_trip_of_paths(server, root, tmp_path, size):
    data = os.urandom(size)
    (tmp_path / "src").write_bytes(data)
    with client(server) as c:
        sent = c.put(str(tmp_path / "src"), "f.bin")
        got = c.get("f.bin", str(tmp_path / "dst"))
    assert sent.sha256 == got.sha256 == sha(data) and sent.size == got.size == size
    assert (tmp_path / "dst").read_bytes() == data == (root / "f.bin").read_bytes()
    assert temp_files(root) == [] and temp_files(tmp_path) == []


def test_large_round_trip_with_file_objects_and_progress(server, root, tmp_path):
    size = 100 << 20
    source = tmp_path / "big"
    with open(source, "wb") as stream:
        for _ in range(size >> 20):
            stream.write(os.urandom(1 << 20))
    expected = hashlib.sha256(source.read_bytes()).hexdigest()
    seen = []
    with client(server, timeout=30) as c:
        assert c.put(str(source), "big").sha256 == expected
        sink = io.BytesIO()
        got = c.get("big", sink, progress=lambda done, total: seen.append((done, total)))
    assert got.sha256 == expected and sha(sink.getvalue()) == expected
    assert seen[0] == (0, size) and seen[-1] == (size, size)
    assert os.path.getsize(root / "big") == size


def test_put_from_a_stream_position_and_get_to_a_stream(server):
    source = io.BytesIO(b"skip:payload")
    source.seek(5)
    sink = io.BytesIO()
    with client(server) as c:
        assert c.put(source, "p").size == 7
        c.get("p", sink)
    assert sink.getvalue() == b"payload"


def test_put_needs_a_known_size(server):
    class Unseekable(io.RawIOBase):
        def readable(self):
            return True

        def seekable(self):
            return False

    with client(server) as c, pytest.raises(ValueError, match="size must be known"):
        c.put(Unseekable(), "x")


# -- confinement --------------------------------------------------------------------

@pytest.fixture
def tree(root, tmp_path):
    private = tmp_path / "data-private"
    private.mkdir()
    (private / "secret").write_bytes(b"secret")
    (tmp_path / "outside").write_bytes(b"outside")
    os.symlink("../data-private", root / "p")
    os.symlink(str(tmp_path / "outside"), root / "out")
    os.symlink("/dev/zero", root / "zero")
    os.mkfifo(root / "fifo")
    (root / "a").mkdir()
    (root / "a" / "f").write_bytes(b"inside")
    return root


ESCAPES = ["../outside", "a/../../outside", "/etc/passwd", "/dev/zero", "p/secret", "p", "out",
           "zero", "a/\x00", "a\\..\\..\\outside", "a/" + TEMP_PREFIX + "x"]


@pytest.mark.parametrize("path", ESCAPES)
def test_escape_attempts_are_refused_by_every_operation(server, tree, tmp_path, path):
    with client(server) as c:
        attempts = [lambda: c.get(path, io.BytesIO()),
                    lambda: c.put(io.BytesIO(b"x"), path, overwrite=True),
                    lambda: c.stat(path, sha256=True),
                    lambda: c.mkdir(path + "/d"),
                    lambda: c.rename("a/f", path + "/moved"),
                    lambda: c.rename(path + "/x", "a/g"),
                    lambda: c.list(path)]
        for attempt in attempts:
            with pytest.raises(ServerError) as info:
                attempt()
            assert info.value.code in ("bad-path", "not-found"), (path, info.value)
            assert str(tmp_path) not in info.value.message
    assert (tmp_path / "outside").read_bytes() == b"outside"
    assert (tmp_path / "data-private" / "secret").read_bytes() == b"secret"
    assert sorted(os.listdir(tmp_path / "data-private")) == ["secret"]
    assert (tree / "a" / "f").read_bytes() == b"inside"


@pytest.mark.parametrize("path", ["", ".", "./", "a/.."])
def test_the_root_itself_cannot_be_replaced_or_removed(server, tree, path):
    with client(server) as c:
        for attempt in (lambda: c.get(path, io.BytesIO()), lambda: c.delete(path),
                        lambda: c.put(io.BytesIO(b"x"), path, overwrite=True),
                        lambda: c.rename(path, "x"), lambda: c.mkdir(path)):
            with pytest.raises(ServerError) as info:
                attempt()
            assert info.value.code == "bad-path"
    assert (tree / "a" / "f").exists()


def test_fifo_and_directories_are_not_files(server, tree):
    with client(server) as c:
        for path in ("fifo", "a"):
            with pytest.raises(ServerError) as info:
                c.get(path, io.BytesIO())
            assert info.value.code == "bad-path"
        with pytest.raises(ServerError) as info:
            c.put(io.BytesIO(b"x"), "a", overwrite=True)
        assert info.value.code == "bad-path"


def test_deleting_a_symlink_removes_the_link_not_its_target(server, tree, tmp_path):
    with client(server) as c:
        kinds = {entry.name: entry.kind for entry in c.list()}
        assert kinds == {"a": "dir", "fifo": "other", "out": "link", "p": "link", "zero": "link"}
        c.delete("out")
        c.delete("p")
    assert not os.path.lexists(tree / "out") and not os.path.lexists(tree / "p")
    assert (tmp_path / "outside").read_bytes() == b"outside"
    assert (tmp_path / "data-private" / "secret").exists()


def test_symlinks_inside_the_root_are_never_followed(server, tree):
    os.symlink("a", tree / "inner")
    os.symlink("a/f", tree / "inner-file")
    with client(server) as c:
        for path in ("inner/f", "inner-file", "inner"):
            for attempt in (lambda: c.get(path, io.BytesIO()), lambda: c.stat(path),
                            lambda: c.put(io.BytesIO(b"x"), path, overwrite=True),
                            lambda: c.list(path)):
                with pytest.raises(ServerError) as info:
                    attempt()
                assert info.value.code == "bad-path" and "symbolic link" in info.value.message
        with pytest.raises(ServerError) as info:
            c.mkdir("inner/d")
        assert info.value.code == "bad-path"
        c.rename("inner-file", "moved-link")
        c.delete("moved-link")
    assert os.readlink(tree / "inner") == "a" and not os.path.lexists(tree / "moved-link")
    assert (tree / "a" / "f").read_bytes() == b"inside" and os.listdir(tree / "a") == ["f"]


def test_refused_paths_are_logged_with_key_and_peer(server, tree, caplog):
    import logging
    with caplog.at_level(logging.WARNING, "msgsrv.files"), client(server, "bob") as c:
        port = c.sock.getsockname()[1]
        for attempt in (lambda: c.get("p/secret", io.BytesIO()), lambda: c.delete("../x")):
            with pytest.raises(ServerError):
                attempt()
        c.stat("a")
    lines = [r.getMessage() for r in caplog.records if "bad-path" in r.getMessage()]
    assert len(lines) == 2, lines
    for line, operation in zip(lines, ("get", "delete")):
        assert "key 'bob'" in line and "127.0.0.1:%d" % port in line and operation in line


@pytest.mark.parametrize("options,file_mode,dir_mode", [
    ({}, 0o640, 0o750), ({"file_mode": "0604", "dir_mode": "711"}, 0o604, 0o711)])
def test_created_files_and_directories_get_the_modes_whatever_the_umask(serve, root, options,
                                                                         file_mode, dir_mode):
    server = serve(**options)
    old = os.umask(0)
    try:
        with client(server) as c:
            c.put(io.BytesIO(b"x"), "f")
            c.put(io.BytesIO(b"y"), "r", resume=True)
            c.mkdir("d")
            c.mkdir("p/q/r", parents=True)
    finally:
        os.umask(old)
    modes = {path: stat.S_IMODE(os.stat(root / path).st_mode)
             for path in ("f", "r", "d", "p", "p/q", "p/q/r")}
    assert modes == {"f": file_mode, "r": file_mode, "d": dir_mode, "p": dir_mode,
                     "p/q": dir_mode, "p/q/r": dir_mode}


def test_mode_settings_are_checked(serve):
    for bad in ("0999", "rw-r-----", "4755", "0o640", ""):
        with pytest.raises(ConfigError, match="octal mode"):
            serve(file_mode=bad)


def test_a_reload_to_another_root_reopens_it_and_closes_the_old_one(serve, root, keys_file,
                                                                     tmp_path):
    server = serve()
    old = server.service.sandbox
    old_fd, held = old.fileno(), os.fstat(old.fileno())
    other = tmp_path / "other"
    server.reconfigure(service_config("file", keys_file=keys_file, auth_timeout=5,
                                      root=str(other)))
    assert server.service.sandbox is not old and server.service.sandbox.root == other
    del old  # the last reference: the old root's descriptor closes with it
    try:
        still = os.fstat(old_fd)
    except OSError:
        still = None
    assert still is None or not os.path.samestat(still, held)  # closed (or the number reused)
    with client(server) as c:
        c.put(io.BytesIO(b"x"), "f")
    assert (other / "f").read_bytes() == b"x" and not (root / "f").exists()


# -- atomicity and resume -----------------------------------------------------------

def test_put_interrupted_mid_stream_leaves_the_old_version(server, root):
    (root / "f").write_bytes(b"old version")
    sock, stream = raw_session(server)
    with sock:
        stream.send({"type": "put", "path": "f", "size": 1 << 20, "overwrite": True})
        assert stream.recv().header == {"type": "ready", "offset": 0}
        stream.send_raw(os.urandom(300_000))
        wait_for(lambda: temp_files(root), message="the upload's temp file")
    wait_for(lambda: not temp_files(root), message="the temp file to be removed")
    assert (root / "f").read_bytes() == b"old version"
    sock, stream = raw_session(server)
    with sock:
        stream.send({"type": "put", "path": "new", "size": 10})
        assert stream.recv().type == "ready"
        stream.send_raw(b"12345")
    wait_for(lambda: not temp_files(root), message="the temp file to be removed")
    assert not (root / "new").exists()


def test_resumed_put_after_an_interruption_gives_an_identical_file(server, root):
    data = os.urandom(3 << 20)
    upload_id = sha(data)[:32]
    sock, stream = raw_session(server)
    with sock:
        stream.send({"type": "put", "path": "r", "size": len(data), "upload_id": upload_id})
        assert stream.recv().header["offset"] == 0
        stream.send_raw(data[:2 << 20])
        temp = resumable_temp_path(root / "r", "alice:" + upload_id)
        wait_for(lambda: temp.exists() and temp.stat().st_size == 2 << 20,
                 message="the first part to be stored")
    with client(server) as c:
        wait_for(lambda: _resumable(c, data), message="the interrupted upload to be released")
    assert (root / "r").read_bytes() == data
    assert temp_files(root) == []


def _resumable(c, data):
    try:
        sent = c.put(io.BytesIO(data), "r", resume=True)
    except ServerError as exc:
        assert exc.code == "busy"  # the server has not noticed the first connection close yet
        return False
    assert sent.resumed_from == 2 << 20 and sent.sha256 == sha(data)
    return True


def test_resumed_get_after_an_interruption_gives_an_identical_file(server, root, tmp_path):
    data = os.urandom(6 << 20)
    (root / "g").write_bytes(data)
    dest = tmp_path / "g"

    def stop_early(done, total):
        if done >= 2 << 20:
            raise KeyboardInterrupt

    with client(server) as c, pytest.raises(KeyboardInterrupt):
        c.get("g", str(dest), resume=True, progress=stop_early)
    part = part_path(dest, resume=True)
    assert not dest.exists() and part.stat().st_size >= 2 << 20
    with client(server) as c:
        got = c.get("g", str(dest), resume=True)
    assert got.resumed_from >= 2 << 20 and dest.read_bytes() == data and not part.exists()


def test_resume_restarts_when_the_kept_part_is_longer_than_the_file(server, root, tmp_path):
    (root / "g").write_bytes(b"short")
    dest = tmp_path / "g"
    part_path(dest, resume=True).write_bytes(b"a much longer stale part")
    with client(server) as c:
        assert c.get("g", str(dest), resume=True).resumed_from == 0
    assert dest.read_bytes() == b"short"


def test_resumed_put_of_other_content_under_the_same_id_starts_over(server, root):
    upload_id = "fixed-id"
    temp = resumable_temp_path(root / "x", "alice:" + upload_id)
    temp.write_bytes(b"0123456789" * 10)  # longer than the new upload
    sock, stream = raw_session(server)
    with sock:
        assert begin_put(stream, b"abcd", path="x", upload_id=upload_id) == 0
        stream.send({"type": "end", "sha256": sha(b"abcd")})
        assert stream.recv().type == "ok"
    assert (root / "x").read_bytes() == b"abcd"


# -- integrity -------------------------------------------------------------------------

def test_corrupted_upload_is_detected_and_nothing_is_stored(server, root):
    data = os.urandom(500_000)
    corrupted = bytearray(data)
    corrupted[123_456] ^= 0x01
    sock, stream = raw_session(server)
    with sock:
        begin_put(stream, bytes(corrupted), path="c")
        stream.send({"type": "end", "sha256": sha(data)})
        reply = stream.recv().header
        assert reply["code"] == "checksum-mismatch" and sha(bytes(corrupted)) in reply["message"]
        stream.send({"type": "stat", "path": ""})  # the connection is still in step
        assert stream.recv().header["kind"] == "dir"
    assert not (root / "c").exists() and temp_files(root) == []
    assert server.counters.snapshot()["checksum_mismatches"] == 1


def test_corrupted_download_is_detected_and_not_kept(server, root, tmp_path):
    (root / "d").write_bytes(b"the real content")
    server.service.digests.put(os.stat(root / "d"), sha(b"what the server believes"))
    with client(server) as c:
        with pytest.raises(ProtocolError) as info:
            c.get("d", str(tmp_path / "d"), resume=True)
        assert info.value.code == "checksum-mismatch"
        assert c.stat("d").size == 16  # the connection is still usable
    assert sorted(os.listdir(tmp_path)) == ["data", "keys"]


def test_end_frame_must_follow_the_data(server, root):
    sock, stream = raw_session(server)
    with sock:
        begin_put(stream, b"abc", path="e")
        stream.send({"type": "help"})
        assert stream.recv().header["code"] == "bad-request"
        assert recv_until_closed(sock) == b""
    assert not (root / "e").exists()


# -- policies ----------------------------------------------------------------------------

def test_overwrite_and_conditional_put(server, root):
    with client(server) as c:
        first = c.put(io.BytesIO(b"v1"), "f")
        for kwargs, code in [({}, "exists"), ({"if_sha256": sha(b"other")}, "conflict")]:
            with pytest.raises(ServerError) as info:
                c.put(io.BytesIO(b"v2"), "f", **kwargs)
            assert info.value.code == code
        assert c.put(io.BytesIO(b"v2"), "f", if_sha256=first.sha256).size == 2
        assert c.put(io.BytesIO(b"v3"), "f", overwrite=True).size == 2
        with pytest.raises(ServerError) as info:
            c.put(io.BytesIO(b"x"), "missing", if_sha256=first.sha256)
        assert info.value.code == "conflict"
    assert (root / "f").read_bytes() == b"v3"


def refused_before_data(server, header, name="alice"):
    """Send a put header; return the error code, checking that no ready came first."""
    sock, stream = raw_session(server, name)
    with sock:
        stream.send(header)
        reply = stream.recv()
        assert reply.type == "error", reply
        return reply.header["code"]


def test_max_file_size_and_quota_are_enforced_before_data(serve, root):
    server = serve(max_file_size="1M", quota="1536K")
    assert refused_before_data(server, {"type": "put", "path": "x", "size": (1 << 20) + 1}) \
        == "too-large"
    with client(server) as c:
        c.put(io.BytesIO(b"x" * (1 << 20)), "one")
        assert refused_before_data(server, {"type": "put", "path": "two", "size": 600 << 10}) \
            == "quota"
        c.put(io.BytesIO(b"y" * (500 << 10)), "two")
        assert c.capabilities()["limits"]["quota_available"] == 12 << 10
        c.put(io.BytesIO(b"z" * (1 << 20)), "one", overwrite=True)  # a replacement counts its gain
        c.delete("two")
        c.put(io.BytesIO(b"w" * (500 << 10)), "three")


def test_quota_counts_existing_files_at_start(serve, root):
    (root / "old").write_bytes(b"o" * 1000)
    server = serve(quota="1500")
    assert refused_before_data(server, {"type": "put", "path": "x", "size": 501}) == "quota"
    with client(server) as c:
        c.rename("old", "older")
        c.put(io.BytesIO(b"n" * 500), "x")


def test_disk_full_is_refused_before_data(server, monkeypatch):
    class Tiny:
        f_bavail, f_frsize = 10, 1
    monkeypatch.setattr(files_handler.os, "fstatvfs", lambda fd: Tiny)
    assert refused_before_data(server, {"type": "put", "path": "x", "size": 11}) == "disk-full"


def test_disk_full_during_the_upload_is_reported_and_the_connection_closed(server, root,
                                                                           monkeypatch):
    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(files_handler.AtomicWriter, "write", full)
    with client(server) as c:
        with pytest.raises(ServerError) as info:
            c.put(io.BytesIO(os.urandom(4 << 20)), "x")
        assert info.value.code == "disk-full"
        with pytest.raises(ConnectionFailed):
            c.stat("")
    wait_for(lambda: not temp_files(root), message="the temp file to be removed")
    assert not (root / "x").exists()


def test_read_only_service_refuses_writes(serve, root):
    (root / "f").write_bytes(b"data")
    server = serve(operations="get, list, stat")
    with client(server) as c:
        for attempt in (lambda: c.put(io.BytesIO(b"x"), "g"), lambda: c.delete("f"),
                        lambda: c.mkdir("d"), lambda: c.rename("f", "g")):
            with pytest.raises(ServerError) as info:
                attempt()
            assert info.value.code == "denied" and "disabled" in info.value.message
        sink = io.BytesIO()
        c.get("f", sink)
        allowed = {op["name"]: op["allowed"] for op in c.capabilities()["operations"]}
    assert sink.getvalue() == b"data" and visible(root) == ["f"]
    assert allowed == {"get": True, "put": False, "list": True, "stat": True, "delete": False,
                       "mkdir": False, "rename": False, "help": True}


def test_permissions_per_key(serve, root):
    (root / "f").write_bytes(b"data")
    server = serve(read_keys="alice bob", write_keys="alice")
    with client(server, "bob") as c:
        c.get("f", io.BytesIO())
        with pytest.raises(ServerError) as info:
            c.put(io.BytesIO(b"x"), "g")
        assert info.value.code == "denied" and "'bob'" in info.value.message
    with client(server, "carol") as c:
        with pytest.raises(ServerError) as info:
            c.list()
        assert info.value.code == "denied"
        assert c.capabilities()["identity"] == "carol"
    with client(server, "alice") as c:
        c.put(io.BytesIO(b"x"), "g")


def test_anonymous_access(serve, root, tmp_path):
    (root / "f").write_bytes(b"public")
    reader = serve(anonymous="read")
    with FileClient("127.0.0.1", reader.port, timeout=5) as c:
        assert c.identity is None and c.list()[0].name == "f"
        with pytest.raises(ServerError) as info:
            c.put(io.BytesIO(b"x"), "g")
        assert info.value.code == "denied" and "anonymous" in info.value.message
    closed = serve(root=str(tmp_path))
    with FileClient("127.0.0.1", closed.port, timeout=5) as c:
        with pytest.raises(AuthError):
            c.list()


def test_concurrent_puts_never_interleave(server, root):
    contents = [bytes([n]) * (4 << 20) for n in range(4)]
    errors = []

    def upload(data):
        try:
            with client(server, timeout=30) as c:
                c.put(io.BytesIO(data), "same", overwrite=True)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=(data,)) for data in contents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert (root / "same").read_bytes() in contents
    assert temp_files(root) == []


def test_the_last_complete_put_wins(server, root):
    sock, stream = raw_session(server)
    with sock:
        begin_put(stream, b"first", path="f", overwrite=True)  # streamed first, completed last
        with client(server) as c:
            c.put(io.BytesIO(b"second"), "f", overwrite=True)
        assert (root / "f").read_bytes() == b"second"
        stream.send({"type": "end", "sha256": sha(b"first")})
        assert stream.recv().type == "ok"
    assert (root / "f").read_bytes() == b"first"


def test_a_put_without_overwrite_loses_to_one_that_landed_meanwhile(server, root):
    sock, stream = raw_session(server)
    with sock:
        begin_put(stream, b"first", path="f")
        with client(server) as c:
            c.put(io.BytesIO(b"second"), "f")
        stream.send({"type": "end", "sha256": sha(b"first")})
        assert stream.recv().header["code"] == "exists"
    assert (root / "f").read_bytes() == b"second" and temp_files(root) == []


# -- the other operations -------------------------------------------------------------------

def test_list_pages_hide_temp_files_and_sort_by_name(server, root):
    names = sorted("f%04d" % n for n in range(LIST_PAGE + 5))
    for name in names:
        (root / name).write_bytes(b"")
    (root / (TEMP_PREFIX + "x")).write_bytes(b"partial")
    os.mkdir(root / "sub")
    with client(server) as c:
        entries = c.list("")
    assert [e.name for e in entries] == names + ["sub"]
    assert entries[-1].kind == "dir" and entries[0].kind == "file"


def test_stat_mkdir_rename_delete(server, root):
    with client(server) as c:
        c.mkdir("a")
        c.mkdir("b/c/d", parents=True)
        with pytest.raises(ServerError) as info:
            c.mkdir("a")
        assert info.value.code == "exists"
        c.put(io.BytesIO(b"hello"), "a/f")
        info_ = c.stat("a/f", sha256=True)
        assert (info_.kind, info_.size, info_.sha256) == ("file", 5, sha(b"hello"))
        assert c.stat("").kind == "dir" and c.stat("b/c").kind == "dir"
        c.put(io.BytesIO(b"other"), "g")
        with pytest.raises(ServerError) as info:
            c.rename("a/f", "g")
        assert info.value.code == "exists"
        c.rename("a/f", "g", overwrite=True)
        c.rename("g", "g")
        for path, code in [("b", "not-empty"), ("nothing", "not-found")]:
            with pytest.raises(ServerError) as info:
                c.delete(path)
            assert info.value.code == code
        with pytest.raises(ServerError) as info:
            c.rename("nothing", "x")
        assert info.value.code == "not-found"
        with pytest.raises(ServerError) as info:
            c.rename("b", "b/c/inside")
        assert info.value.code == "bad-path"
        c.delete("a")
    assert visible(root) == ["b", "g"] and (root / "g").read_bytes() == b"hello"


def test_help_and_malformed_requests(server):
    sock, stream = raw_session(server)
    with sock:
        stream.send({"type": "help"})
        described = {op["name"] for op in stream.recv().header["operations"]}
        assert described == set(fileproto.OPERATIONS)
        for header, code in [({"type": "chmod"}, "unknown-operation"),
                             ({"type": "put", "path": "x"}, "bad-request"),
                             ({"type": "put", "path": "x", "size": -1}, "bad-request"),
                             ({"type": "get", "path": 3}, "bad-request"),
                             ({"type": "get", "path": "x", "offset": True}, "bad-request")]:
            stream.send(header)
            assert stream.recv().header["code"] == code, header


def test_get_offset_past_the_end_is_refused(server, root):
    (root / "f").write_bytes(b"abc")
    sock, stream = raw_session(server)
    with sock:
        stream.send({"type": "get", "path": "f", "offset": 4})
        assert stream.recv().header["code"] == "bad-request"


def test_old_partial_uploads_are_removed_by_age(serve, root):
    server = serve(temp_max_age=60)
    old = root / (TEMP_PREFIX + "0" * 32)
    old.write_bytes(b"abandoned")
    os.utime(old, (1, 1))
    server.service.last_cleanup -= 3600
    with client(server) as c:
        c.put(io.BytesIO(b"x"), "f")
    assert not old.exists()


def test_partial_uploads_are_removed_at_start(serve, root):
    leftover = root / (TEMP_PREFIX + "1" * 32)
    leftover.write_bytes(b"from a killed daemon")
    serve()
    assert not leftover.exists()


def test_client_refuses_a_file_over_max_size_and_a_directory_target(server, root, tmp_path):
    (root / "f").write_bytes(b"x" * 100)
    with client(server) as c:
        with pytest.raises(IsADirectoryError):
            c.get("f", str(tmp_path))
        with pytest.raises(FileNotFoundError, match="no such directory"):
            c.get("f", str(tmp_path / "missing" / "f"))
        with pytest.raises(ProtocolError) as info:
            c.get("f", str(tmp_path / "f"), max_size=99)
        assert info.value.code == "too-large"
    assert sorted(os.listdir(tmp_path)) == ["data", "keys"]


def test_access_log_counts_streamed_bytes(server, root, caplog):
    import logging
    with caplog.at_level(logging.INFO, "msgsrv.access"):
        with client(server) as c:
            c.put(io.BytesIO(b"z" * 100_000), "f")
        wait_for(lambda: "close service=svc" in caplog.text, message="the access log line")
    line = [r.getMessage() for r in caplog.records if "close service" in r.getMessage()][0]
    assert int(line.split(" in=")[1].split()[0]) > 100_000


def test_file_system_errors_are_reported_without_server_paths(server, root, monkeypatch, caplog):
    def broken(path):
        raise OSError(errno.EIO, "Input/output error", str(path))
    monkeypatch.setattr(files_handler.os, "listdir", broken)
    with client(server) as c, pytest.raises(ServerError) as info:
        c.list("")
    assert info.value.code == "io-error" and str(root) not in info.value.message
    assert "file system error" in caplog.text


def test_names_that_are_not_utf8_are_not_listed(server, root):
    open(os.path.join(os.fsencode(root), b"bad\xff"), "wb").close()
    (root / "good").write_bytes(b"")
    with client(server) as c:
        assert [entry.name for entry in c.list()] == ["good"]


def test_configuration_problems_are_reported_at_start(serve, tmp_path, caplog):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"\[service:svc\] root"):
        serve(root=str(tmp_path / "file"))
    serve(read_keys="alice nobody")
    assert "read_keys names keys not in the keys file: nobody" in caplog.text


def test_resumed_put_of_a_path(server, root, tmp_path):
    (tmp_path / "src").write_bytes(b"resumable")
    with client(server) as c:
        assert c.put(str(tmp_path / "src"), "r", resume=True).sha256 == sha(b"resumable")
    assert (root / "r").read_bytes() == b"resumable"


def test_a_source_that_shrinks_while_hashed_fails_locally(server):
    class Liar(io.BytesIO):
        def seek(self, pos, whence=0):
            return super().seek(pos, whence) + (10 if whence == os.SEEK_END else 0)

    with client(server) as c, pytest.raises(OSError, match="shrank"):
        c.put(Liar(b"data"), "x", resume=True)


def test_a_corrupted_download_into_a_stream_is_reported(server, root):
    (root / "d").write_bytes(b"content")
    server.service.digests.put(os.stat(root / "d"), sha(b"other"))
    with client(server) as c, pytest.raises(ProtocolError):
        c.get("d", io.BytesIO())


def test_a_resumed_download_is_written_by_one_client_at_a_time(server, root, tmp_path):
    import fcntl
    (root / "d").write_bytes(b"content")
    part = part_path(tmp_path / "d", resume=True)
    with open(part, "wb") as held, client(server) as c:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(OSError) as info:
            c.get("d", str(tmp_path / "d"), resume=True)
        assert info.value.errno == errno.EBUSY
    os.unlink(part)
    os.mkfifo(part)
    with client(server) as c, pytest.raises(OSError) as info:
        c.get("d", str(tmp_path / "d"), resume=True)
    assert info.value.errno == errno.EINVAL


# -- a client facing a misbehaving server --------------------------------------------------

class Scripted:
    """A fake file server: a hello, then each step(stream) in turn on one connection."""

    def __init__(self, *steps):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.steps = steps
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conn, _ = self.listener.accept()
        with conn:
            conn.settimeout(5)
            stream = FrameStream(conn)
            stream.send({"type": "hello"})
            try:
                for step in self.steps:
                    step(stream)
                recv_until_closed(conn)
            except (ConnectionFailed, OSError):
                pass

    def client(self):
        return FileClient("127.0.0.1", self.port, timeout=5)

    def close(self):
        self.thread.join(5)
        self.listener.close()


def reply(header, body=b""):
    def step(stream):
        stream.recv()
        stream.send(header, body)
    return step


def swallow_upload(then):
    def step(stream):
        size = stream.recv().header["size"]
        stream.send({"type": "ready", "offset": 0})
        stream.read_raw(size, lambda chunk: None)
        stream.recv()
        stream.send(then)
    return step


def close_after_ready(stream):
    stream.recv()
    stream.send({"type": "ready", "offset": 0})
    stream.sock.shutdown(socket.SHUT_RDWR)


ENTRY = {"name": "a", "kind": "file", "size": 1, "mtime": 1.0}
BAD_REPLIES = [
    ("put", reply({"type": "ready", "offset": 3})),
    ("put", reply({"type": "ready", "offset": "0"})),
    ("put", swallow_upload({"type": "ok", "size": 4, "sha256": "0" * 64})),
    ("put", reply({"type": "listing"})),
    ("get", reply({"type": "data", "size": 4})),
    ("get", reply({"type": "data", "size": -1, "offset": 0})),
    ("get", reply({"type": "ready", "offset": 0})),
    ("list", reply({"type": "listing"}, b"\xff")),
    ("list", reply({"type": "listing"}, b"{}")),
    ("list", reply({"type": "listing"}, b'[{"name": "a"}]')),
    ("list", reply({"type": "listing"}, json.dumps([dict(ENTRY, size=-1)]).encode())),
    ("list", reply({"type": "listing"}, b"[1]")),
    ("list_pages", None),
    ("stat", reply(dict(ENTRY, type="stat"))),
]


@pytest.mark.parametrize("operation,step", BAD_REPLIES)
def test_client_refuses_malformed_replies(operation, step, tmp_path):
    if operation == "list_pages":
        page = json.dumps([ENTRY]).encode()
        fake = Scripted(reply({"type": "listing", "more": True}, page),
                        reply({"type": "listing", "more": True}, page))
    else:
        fake = Scripted(step)
    calls = {"put": lambda c: c.put(io.BytesIO(b"data"), "x"),
             "get": lambda c: c.get("x", str(tmp_path / "x")),
             "list": lambda c: c.list(), "list_pages": lambda c: c.list(),
             "stat": lambda c: c.stat("x", sha256=True)}
    with fake.client() as c, pytest.raises(ProtocolError) as info:
        calls[operation](c)
    fake.close()
    assert info.value.code == "bad-reply"
    assert sorted(os.listdir(tmp_path)) == []


def test_client_reports_a_server_that_vanishes_mid_upload():
    fake = Scripted(close_after_ready)
    with fake.client() as c, pytest.raises(ConnectionFailed):
        c.put(io.BytesIO(os.urandom(8 << 20)), "x")
    fake.close()
