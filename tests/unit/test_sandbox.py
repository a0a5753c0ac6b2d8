"""Tests for msgsrv.services.files.sandbox: walking client paths inside a root, and atomic writes."""

import contextlib
import fcntl
import os
import socket
import stat
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msgsrv.wire.errors import ConfigError, ProtocolError
from msgsrv.services.files.sandbox import (
    RESUMABLE_PREFIX, TEMP_PREFIX, AtomicWriter, PathRefused, Sandbox, cleanup_temp_files,
    is_temp_name, resumable_temp_name, resumable_temp_path,
)
from msgsrv.services.files.transfer import fsync_directory

pytestmark = pytest.mark.timeout(30)


def _build_tree(base):
    """base/data is the root; base/data-private is a sibling sharing its name as a prefix."""
    root = base / "data"
    (root / "a").mkdir(parents=True)
    (root / "a" / "b.txt").write_bytes(b"hello")
    private = base / "data-private"
    private.mkdir()
    (private / "secret.txt").write_bytes(b"secret")
    os.symlink("/etc", root / "etc")
    os.symlink("/etc", root / "chain2")
    os.symlink("chain2", root / "chain1")
    os.symlink("../data-private", root / "p")
    os.symlink("a", root / "inner")
    os.symlink("a/b.txt", root / "inner-file")
    os.symlink(".", root / "self")
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    os.mkfifo(root / "fifo")
    with contextlib.closing(socket.socket(socket.AF_UNIX)) as sock:
        sock.bind(str(root / "sock"))
    return root


@pytest.fixture
def tree(tmp_path):
    return _build_tree(tmp_path / "x")


@pytest.fixture
def box(tree):
    with Sandbox(tree) as sandbox:
        yield sandbox


def _same_file(fd, path):
    return os.path.samestat(os.fstat(fd), os.stat(path))


# Refused by the walk itself: malformed, '..', absolute, temp names, and every path whose
# directory part runs through a symlink (in the root or out of it) or a non-directory.
REFUSED = [
    "../x", "a/../../x", "a/../a", "..", "./../x", "/etc/passwd", "/", "//", "/a/../..",
    "a\x00b", "a\\..\\b", "a\\b", "a/\x1b[31m", "a\nb", "a\x7f", "a\u0085", "\ud800",
    "x" * 256, "a/" + "\u00e9" * 128, "a/" * 2049,
    "etc/passwd", "etc/new-file", "chain1/passwd", "p/secret.txt", "p/new.txt",
    "self/a", "self/self/a/b.txt", "loop1/x", "inner/b.txt", "inner/new.txt",
    "fifo/x", "a/b.txt/x", "sock/x",
    TEMP_PREFIX + "abc", "a/" + TEMP_PREFIX + "abc", TEMP_PREFIX + "d/b.txt",
]

# Found by the walk (the last name is not looked at), refused by every use that would read it.
SYMLINKS = ["etc", "chain1", "p", "self", "self/.", "loop1", "inner", "inner-file"]


@pytest.mark.parametrize("client_path", REFUSED)
def test_escape_attempts_are_refused_by_the_walk(box, tree, client_path):
    for options in ({}, {"allow_root": True}, {"parents_mode": 0o700}):
        with pytest.raises(ProtocolError) as info:
            box.locate(client_path, **options).close()
        assert info.value.code == "bad-path", (client_path, options, info.value.message)
        assert str(tree) not in info.value.message
    assert sorted(os.listdir(tree.parent / "data-private")) == ["secret.txt"]


@pytest.mark.parametrize("client_path", SYMLINKS)
def test_a_symlink_as_the_last_name_is_never_followed(box, tree, client_path):
    with box.locate(client_path) as where:
        for use in (where.stat, where.open_file, where.open_directory):
            with pytest.raises(PathRefused, match="symbolic link") as info:
                use()
            assert str(tree) not in info.value.message
        assert stat.S_ISLNK(where.lstat().st_mode)  # delete and rename act on the link itself


@pytest.mark.parametrize("client_path", [None, b"a/b.txt", 3, ["a"]])
def test_non_string_paths_are_refused(box, client_path):
    with pytest.raises(PathRefused) as info:
        box.locate(client_path)
    assert info.value.code == "bad-path"


def test_refusal_names_the_rule(box):
    with pytest.raises(PathRefused, match=r"'\.\.'"):
        box.locate("a/../../x")
    with pytest.raises(PathRefused, match=r"'p' is a symbolic link"):
        box.locate("p/secret.txt")
    with pytest.raises(PathRefused, match=r"'a/b.txt' is not a directory"):
        box.locate("a/b.txt/x")
    with pytest.raises(PathRefused, match="255 bytes"):
        box.locate("x" * 256)
    with pytest.raises(PathRefused, match="empty"):
        box.locate("")


def test_missing_directories_are_not_found(box):
    for client_path in ("missing/x", "a/missing/x"):
        with pytest.raises(ProtocolError) as info:
            box.locate(client_path)
        assert info.value.code == "not-found"
    with box.locate("a/missing.txt") as where, pytest.raises(ProtocolError) as info:
        where.stat()
    assert info.value.code == "not-found"


def test_length_limits_are_inclusive(box, tree):
    with box.locate("x" * 255) as where:
        assert where.name == "x" * 255 and _same_file(where.dir_fd, tree)


def test_paths_longer_than_the_hosts_path_max_still_work(box, tree):
    # Nearly 4096 bytes of client path under a root: by path it would exceed PATH_MAX; walked, not.
    deep = ("n" * 254 + "/") * 16 + "bc"
    assert len(deep) + len(str(tree)) > 4096
    with box.locate(deep, parents_mode=0o750) as where:
        where.mkdir(0o750)
    with box.locate(deep, allow_root=True) as where:
        assert stat.S_ISDIR(where.stat().st_mode)


ALLOWED = [
    ("a/b.txt", "a", "b.txt"),
    ("./a", "", "a"),
    ("a/./b.txt", "a", "b.txt"),
    ("a//b.txt", "a", "b.txt"),
    ("a/", "", "a"),
    ("a/new.txt", "a", "new.txt"),
    ("new.txt", "", "new.txt"),
    ("\u00e9t\u00e9 caf\u00e9.txt", "", "\u00e9t\u00e9 caf\u00e9.txt"),
    ("a/.hidden", "a", ".hidden"),
    ("a/..b", "a", "..b"),
    ("fifo", "", "fifo"),
    ("etc", "", "etc"),
    ("a/missing", "a", "missing"),
]


@pytest.mark.parametrize("client_path,directory,name", ALLOWED)
def test_allowed_paths_are_a_name_in_a_directory_of_the_root(box, tree, client_path, directory,
                                                               name):
    with box.locate(client_path) as where:
        assert where.name == name and where.path == client_path
        assert _same_file(where.dir_fd, tree / directory)


@pytest.mark.parametrize("client_path", ["", ".", "./", ".//."])
def test_root_is_named_only_when_allowed(box, tree, client_path):
    with box.locate(client_path, allow_root=True) as where:
        assert where.name == "." and _same_file(where.dir_fd, tree)
        assert stat.S_ISDIR(where.stat().st_mode)
        with where.open_directory() as listed:
            assert "a" in os.listdir(listed.dir_fd)
    with pytest.raises(PathRefused):
        box.locate(client_path)


def test_open_file_reads_regular_files_only(box, tree):
    with box.locate("a/b.txt") as where, where.open_file() as file:
        assert file.read() == b"hello"
    for client_path in ("fifo", "sock", "a"):
        with box.locate(client_path) as where, pytest.raises(PathRefused) as info:
            where.open_file()
        assert "not a regular file" in info.value.message and str(tree) not in info.value.message
    with box.locate("a/missing") as where, pytest.raises(ProtocolError) as info:
        where.open_file()
    assert info.value.code == "not-found"


def test_devices_are_never_opened(box, tree):
    try:
        os.mknod(tree / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD")
    with box.locate("null") as where, pytest.raises(PathRefused, match="not a regular file"):
        where.open_file()


def test_open_directory(box, tree):
    with box.locate("a") as where, where.open_directory() as listed:
        assert listed.name == "." and os.listdir(listed.dir_fd) == ["b.txt"]
    for client_path in ("fifo", "a/b.txt"):
        with box.locate(client_path) as where, pytest.raises(PathRefused, match="not a direc"):
            where.open_directory()
    with box.locate("nope") as where, pytest.raises(ProtocolError) as info:
        where.open_directory()
    assert info.value.code == "not-found"


def test_a_walked_directory_stays_the_one_walked(box, tree, tmp_path):
    """Swapping a component after the walk moves nothing outside: the walk holds the directory."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "b.txt").write_bytes(b"outside")
    with box.locate("a/b.txt") as where:
        os.rename(tree / "a", tree / "a.moved")
        os.symlink(str(outside), tree / "a")
        with where.open_file() as file:
            assert file.read() == b"hello"
        with AtomicWriter(where) as writer:
            writer.write(b"new")
            writer.commit()
    assert (tree / "a.moved" / "b.txt").read_bytes() == b"new"
    assert (outside / "b.txt").read_bytes() == b"outside" and os.listdir(outside) == ["b.txt"]
    with pytest.raises(PathRefused, match="symbolic link"):
        box.locate("a/b.txt")


def test_a_last_name_swapped_for_a_symlink_after_the_check_is_refused(box, tree, monkeypatch):
    with box.locate("a/b.txt") as where:
        real_open = os.open

        def swap_then_open(name, flags, *args, **kwargs):
            if name == "b.txt":  # between the stat check and the open
                os.replace(tree / "inner-file", tree / "a" / "b.txt")
            return real_open(name, flags, *args, **kwargs)
        monkeypatch.setattr(os, "open", swap_then_open)
        with pytest.raises(PathRefused, match="symbolic link"):
            where.open_file()


def test_mkdir_and_parents_get_exact_modes_whatever_the_umask(box, tree):
    old = os.umask(0)
    try:
        with box.locate("n1/n2/n3", parents_mode=0o751) as where:
            where.mkdir(0o705)
    finally:
        os.umask(old)
    modes = [stat.S_IMODE(os.stat(tree / p).st_mode) for p in ("n1", "n1/n2", "n1/n2/n3")]
    assert modes == [0o751, 0o751, 0o705]
    with box.locate("n1/n2/n3", parents_mode=0o700) as where, pytest.raises(FileExistsError):
        where.mkdir(0o700)


def test_root_is_resolved_once(tree, tmp_path):
    os.symlink(tree, tmp_path / "link-to-root")
    with Sandbox(str(tmp_path / "link-to-root")) as box:
        assert box.root == tree
        os.unlink(tmp_path / "link-to-root")  # the descriptor is what counts now
        with box.locate("a/b.txt") as where:
            assert _same_file(where.dir_fd, tree / "a")


def test_root_must_be_a_directory(tree):
    with pytest.raises(ConfigError):
        Sandbox(tree / "a" / "b.txt")
    with pytest.raises(ConfigError):
        Sandbox(tree / "missing")


def test_descriptors_are_closed(tree):
    before = len(os.listdir("/proc/self/fd"))
    with Sandbox(tree) as box:
        for client_path in ("a/b.txt", "", "a/x/y"):
            with contextlib.suppress(ProtocolError), box.locate(client_path, allow_root=True):
                pass
        list(box.walk())
    Sandbox(tree)  # closed when collected
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_closed_sandbox_refuses_to_walk(tree):
    box = Sandbox(tree)
    box.close()
    box.close()
    for attempt in (lambda: box.locate("a"), lambda: list(box.walk())):
        with pytest.raises(ProtocolError) as info:
            attempt()
        assert info.value.code == "busy"


def test_walk_lists_everything_but_directories_without_following_symlinks(box, tree):
    (tree / "a" / "c").mkdir()
    (tree / "a" / "c" / "d.txt").write_bytes(b"")
    found = sorted(name for _fd, name, _st in box.walk())
    assert found == sorted(["b.txt", "d.txt", "etc", "chain2", "chain1", "p", "inner",
                            "inner-file", "self", "loop1", "loop2", "fifo", "sock"])


def test_is_temp_name():
    assert is_temp_name(TEMP_PREFIX + "0123")
    assert not is_temp_name("x" + TEMP_PREFIX)
    assert not is_temp_name("notes.txt")


@pytest.fixture(scope="module")
def fixed_tree(tmp_path_factory):
    return _build_tree(tmp_path_factory.mktemp("prop") / "x")


def _directories(root):
    """(dev, ino) of every real directory under ``root`` (symlinks not followed)."""
    found = {(os.stat(root).st_dev, os.stat(root).st_ino)}
    for where, dirs, _files in os.walk(root):
        for name in dirs:
            st_ = os.lstat(os.path.join(where, name))
            found.add((st_.st_dev, st_.st_ino))
    return found


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(
    ["a", "b.txt", "..", ".", "", "etc", "p", "self", "inner", "chain1", "\\", "\x00", "/",
     TEMP_PREFIX, "\u00e9", "fifo", "loop1"]), max_size=8))
def test_the_walk_never_leaves_the_root(fixed_tree, pieces):
    inside = _directories(fixed_tree)
    with Sandbox(fixed_tree) as box:
        try:
            where = box.locate("".join(pieces), allow_root=True)
        except ProtocolError as exc:
            assert exc.code in ("bad-path", "not-found")
            return
        with where:
            st_ = os.fstat(where.dir_fd)
            assert (st_.st_dev, st_.st_ino) in inside
            assert "/" not in where.name and where.name != ".."


def _temp_names(directory):
    return sorted(name for name in os.listdir(directory) if is_temp_name(name))


@pytest.fixture
def here(tmp_path):
    """``here("name")``: a Location of ``name`` in ``tmp_path`` (closed at teardown)."""
    with Sandbox(tmp_path) as sandbox, contextlib.ExitStack() as stack:
        yield lambda name: stack.enter_context(sandbox.locate(name))


@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_commit_writes_content_and_exact_mode(tmp_path, here, umask):
    dest = tmp_path / "out.bin"
    old = os.umask(umask)
    try:
        with AtomicWriter(here("out.bin"), mode=0o640) as writer:
            temp = tmp_path / writer.temp_name
            assert is_temp_name(writer.temp_name)
            assert stat.S_IMODE(os.stat(temp).st_mode) == 0o600 & ~umask
            writer.write(b"abc")
            writer.file.write(b"def")
            assert not dest.exists()
            writer.commit()
    finally:
        os.umask(old)
    assert dest.read_bytes() == b"abcdef"
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o640
    assert _temp_names(tmp_path) == []
    assert writer.committed


def test_commit_replaces_existing_file(tmp_path, here):
    dest = tmp_path / "out.txt"
    dest.write_bytes(b"old")
    with AtomicWriter(here("out.txt")) as writer:
        writer.write(b"new content")
        assert dest.read_bytes() == b"old"
        writer.commit()
    assert dest.read_bytes() == b"new content"
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o640


def test_commit_replaces_a_symlink_itself_not_its_target(tmp_path, here):
    (tmp_path / "target").write_bytes(b"target")
    os.symlink("target", tmp_path / "link")
    with AtomicWriter(here("link")) as writer:
        writer.write(b"new")
        writer.commit()
    assert (tmp_path / "target").read_bytes() == b"target"
    assert not os.path.islink(tmp_path / "link") and (tmp_path / "link").read_bytes() == b"new"


def test_exception_removes_temp_and_keeps_dest(tmp_path, here):
    dest = tmp_path / "out.txt"
    dest.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with AtomicWriter(here("out.txt")) as writer:
            writer.write(b"partial")
            assert _temp_names(tmp_path) == [writer.temp_name]
            raise RuntimeError("connection lost")
    assert dest.read_bytes() == b"old"
    assert _temp_names(tmp_path) == []


def test_exit_without_commit_removes_temp(tmp_path, here):
    with AtomicWriter(here("out.txt")) as writer:
        writer.write(b"partial")
    assert not (tmp_path / "out.txt").exists()
    assert _temp_names(tmp_path) == []


def test_failed_replace_leaves_directory_and_no_temp(tmp_path, here):
    dest = tmp_path / "adir"
    dest.mkdir()
    with pytest.raises(OSError):
        with AtomicWriter(here("adir")) as writer:
            writer.write(b"x")
            writer.commit()
    assert dest.is_dir()
    assert _temp_names(tmp_path) == []


def test_a_writer_needs_a_file_name(tmp_path):
    with Sandbox(tmp_path) as box, box.locate("", allow_root=True) as root:
        with pytest.raises(ValueError):
            AtomicWriter(root)
        with pytest.raises(ValueError):
            AtomicWriter.resume(root, "u0")


def test_the_temp_file_is_made_in_the_walked_directory(tmp_path, here):
    (tmp_path / "d").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = here("d/out.txt")
    os.rename(tmp_path / "d", tmp_path / "d.moved")
    os.symlink(str(outside), tmp_path / "d")
    with AtomicWriter(dest) as writer:
        writer.write(b"x")
        writer.commit()
    assert os.listdir(outside) == [] and (tmp_path / "d.moved" / "out.txt").read_bytes() == b"x"


def test_resumable_temp_names_are_deterministic(tmp_path):
    first = resumable_temp_name("big.iso", "alice:42")
    assert first == resumable_temp_name("big.iso", "alice:42")
    assert resumable_temp_path(tmp_path / "big.iso", "alice:42") == tmp_path / first
    assert is_temp_name(first)
    assert first.startswith(RESUMABLE_PREFIX) and len(first) == len(RESUMABLE_PREFIX) + 32
    assert first != resumable_temp_name("big.iso", "alice:43")
    assert first != resumable_temp_name("other.iso", "alice:42")
    # The separator keeps (name, id) pairs apart that concatenate alike.
    assert resumable_temp_name("ab", "c") != resumable_temp_name("a", "bc")
    for bad in ("", None, 7):
        with pytest.raises(ValueError):
            resumable_temp_name("big.iso", bad)


def test_resume_appends_across_connections(tmp_path, here):
    dest = tmp_path / "big.bin"
    temp = resumable_temp_path(dest, "u1")
    with pytest.raises(ConnectionError):
        with AtomicWriter.resume(here("big.bin"), "u1") as writer:
            assert writer.offset == 0 and writer.temp_name == temp.name
            writer.write(b"abc")
            raise ConnectionError("dropped")
    assert temp.read_bytes() == b"abc"
    assert not dest.exists()
    with AtomicWriter.resume(here("big.bin"), "u1", mode=0o600) as writer:
        assert writer.offset == 3
        assert os.pread(writer.file.fileno(), 3, 0) == b"abc"  # readable, for the hash
        writer.write(b"def")
        assert writer.size == 6
        writer.commit()
    assert dest.read_bytes() == b"abcdef"
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o600
    assert not temp.exists()
    with AtomicWriter.resume(here("big.bin"), "u1") as writer:
        assert writer.offset == 0


def test_resume_without_commit_keeps_temp_until_discard(tmp_path, here):
    temp = resumable_temp_path(tmp_path / "big.bin", "u2")
    with AtomicWriter.resume(here("big.bin"), "u2") as writer:
        writer.write(b"abc")
    assert temp.read_bytes() == b"abc"
    with AtomicWriter.resume(here("big.bin"), "u2") as writer:
        writer.discard()
        writer.discard()
    assert not temp.exists()
    assert not (tmp_path / "big.bin").exists()


def test_resume_is_exclusive(here):
    with AtomicWriter.resume(here("big.bin"), "u3") as writer:
        writer.write(b"abc")
        with pytest.raises(ProtocolError) as info:
            AtomicWriter.resume(here("big.bin"), "u3")
        assert info.value.code == "busy"
    with AtomicWriter.resume(here("big.bin"), "u3") as writer:
        assert writer.offset == 3


def test_resume_refuses_planted_special_files(tmp_path, here):
    os.mkfifo(resumable_temp_path(tmp_path / "fifo", "u"))
    with pytest.raises((OSError, PathRefused)):
        AtomicWriter.resume(here("fifo"), "u")
    os.symlink(tmp_path / "elsewhere", resumable_temp_path(tmp_path / "link", "u"))
    with pytest.raises(OSError):
        AtomicWriter.resume(here("link"), "u")
    assert not (tmp_path / "elsewhere").exists()
    os.mkdir(resumable_temp_path(tmp_path / "dir", "u"))
    with pytest.raises(OSError):
        AtomicWriter.resume(here("dir"), "u")


def _make_temp(path, age_seconds=0):
    path.write_bytes(b"leftover")
    then = time.time() - age_seconds
    os.utime(path, (then, then), follow_symlinks=False)
    return path


def test_cleanup_by_age(tmp_path):
    (tmp_path / "sub").mkdir()
    old = _make_temp(tmp_path / (TEMP_PREFIX + "old"), age_seconds=7200)
    nested_old = _make_temp(tmp_path / "sub" / (TEMP_PREFIX + "old2"), age_seconds=7200)
    fresh = _make_temp(tmp_path / (TEMP_PREFIX + "fresh"))
    keeper = _make_temp(tmp_path / "old-but-mine.txt", age_seconds=7200)
    with Sandbox(tmp_path) as box:
        assert cleanup_temp_files(box, max_age_seconds=3600) == 2
        assert not old.exists() and not nested_old.exists()
        assert fresh.exists() and keeper.exists()
        assert cleanup_temp_files(box) == 1
        assert not fresh.exists() and keeper.exists()
        assert cleanup_temp_files(box) == 0


def test_cleanup_does_not_follow_symlinks_or_remove_directories(tmp_path):
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    outside_temp = _make_temp(outside / (TEMP_PREFIX + "theirs"))
    target = _make_temp(outside / "target.txt")
    os.symlink(outside, root / "linked-dir")
    os.symlink(target, root / (TEMP_PREFIX + "link"))
    (root / (TEMP_PREFIX + "dir")).mkdir()
    with Sandbox(root) as box:
        assert cleanup_temp_files(box) == 1
    assert not os.path.lexists(root / (TEMP_PREFIX + "link"))
    assert target.exists() and outside_temp.exists()
    assert (root / (TEMP_PREFIX + "dir")).is_dir()


def test_cleanup_skips_files_being_written(tmp_path, here):
    dest = tmp_path / "out.bin"
    with AtomicWriter(here("out.bin")) as writer, Sandbox(tmp_path) as box:
        writer.write(b"in progress")
        old = time.time() - 7200
        os.utime(tmp_path / writer.temp_name, (old, old))
        assert cleanup_temp_files(box) == 0
        assert cleanup_temp_files(box, max_age_seconds=60) == 0
        writer.commit()
    assert dest.read_bytes() == b"in progress"


def test_fsync_directory(tmp_path):
    fsync_directory(tmp_path)
    fsync_directory(str(tmp_path))
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        fsync_directory(tmp_path / "f")
    with pytest.raises(FileNotFoundError):
        fsync_directory(tmp_path / "missing")


def test_a_new_temp_file_cleaned_up_before_its_writer_locks_it_is_made_again(
        tmp_path, here, monkeypatch):
    real_flock, removed = fcntl.flock, []

    def flock(fd, operation):
        if not removed and operation == fcntl.LOCK_EX:  # the writer, between create and lock
            with Sandbox(tmp_path) as box:
                removed.append(cleanup_temp_files(box))  # another daemon starting up
        return real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock)
    with AtomicWriter(here("out.bin")) as writer:
        writer.write(b"kept")
        writer.commit()
    assert removed == [1] and (tmp_path / "out.bin").read_bytes() == b"kept"
    assert [name for name in os.listdir(tmp_path) if is_temp_name(name)] == []
