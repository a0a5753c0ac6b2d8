"""Tests for msgsrv.sandbox: path resolution inside a root, and atomic writes."""

import os
import stat
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msgsrv.errors import ConfigError, ProtocolError
from msgsrv.sandbox import (
    TEMP_PREFIX, AtomicWriter, PathRefused, Sandbox, cleanup_temp_files, fsync_directory,
    is_temp_name, resumable_temp_path,
)

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
    os.symlink(".", root / "self")
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    os.mkfifo(root / "fifo")
    return root


@pytest.fixture
def tree(tmp_path):
    return _build_tree(tmp_path / "x")


@pytest.fixture
def box(tree):
    return Sandbox(tree)


REFUSED = [
    ("../x", "bad-path"),
    ("a/../../x", "bad-path"),
    ("a/../a", "bad-path"),
    ("..", "bad-path"),
    ("./../x", "bad-path"),
    ("/etc/passwd", "bad-path"),
    ("/", "bad-path"),
    ("", "bad-path"),
    (".", "bad-path"),
    ("./", "bad-path"),
    ("a\x00b", "bad-path"),
    ("a\\..\\b", "bad-path"),
    ("a\\b", "bad-path"),
    ("a/\x1b[31m", "bad-path"),
    ("a\nb", "bad-path"),
    ("a\x7f", "bad-path"),
    ("a\u0085", "bad-path"),
    ("\ud800", "bad-path"),
    ("x" * 256, "bad-path"),
    ("a/" + "\u00e9" * 128, "bad-path"),
    ("a/" * 2049, "bad-path"),
    ("etc", "bad-path"),
    ("etc/passwd", "bad-path"),
    ("etc/new-file", "bad-path"),
    ("chain1/passwd", "bad-path"),
    ("chain1", "bad-path"),
    ("p", "bad-path"),
    ("p/secret.txt", "bad-path"),
    ("p/new.txt", "bad-path"),
    ("self", "bad-path"),
    ("self/.", "bad-path"),
    ("loop1", "bad-path"),
    ("loop1/x", "bad-path"),
    (TEMP_PREFIX + "abc", "bad-path"),
    ("a/" + TEMP_PREFIX + "abc", "bad-path"),
    (TEMP_PREFIX + "d/b.txt", "bad-path"),
]


@pytest.mark.parametrize("client_path,code", REFUSED)
def test_escape_attempts_are_refused(box, tree, client_path, code):
    with pytest.raises(ProtocolError) as info:
        box.resolve(client_path)
    assert info.value.code == code
    assert str(tree) not in info.value.message


@pytest.mark.parametrize("client_path", [None, b"a/b.txt", 3, ["a"]])
def test_non_string_paths_are_refused(box, client_path):
    with pytest.raises(PathRefused) as info:
        box.resolve(client_path)
    assert info.value.code == "bad-path"


def test_refusal_names_the_rule(box):
    with pytest.raises(PathRefused, match=r"'\.\.'"):
        box.resolve("a/../../x")
    with pytest.raises(PathRefused, match="outside"):
        box.resolve("p/secret.txt")
    with pytest.raises(PathRefused, match="255 bytes"):
        box.resolve("x" * 256)
    with pytest.raises(PathRefused, match="empty"):
        box.resolve("")


def test_sibling_with_shared_prefix_is_refused(box, tree):
    real_target = os.path.realpath(tree / "p" / "secret.txt")
    # A string prefix check would wrongly accept this path.
    assert real_target.startswith(str(tree))
    with pytest.raises(PathRefused):
        box.resolve("p/secret.txt", must_exist=True)


def test_length_limits_are_inclusive(box, tree):
    name = "x" * 255
    assert box.resolve(name) == tree / name
    deep_path = "a/" * 1000 + "b"
    with pytest.raises(ProtocolError) as info:
        box.resolve(deep_path, must_exist=True)
    assert info.value.code == "not-found"


def test_path_too_long_for_the_host_is_refused(box):
    # 4096 bytes pass our own check, but the root in front exceeds the host's PATH_MAX.
    long_path = "a/" * 2047 + "bc"
    assert len(long_path.encode()) == 4096
    with pytest.raises(PathRefused, match="too long"):
        box.resolve(long_path)


ALLOWED = [
    ("a/b.txt", "a/b.txt"),
    ("./a", "a"),
    ("a/./b.txt", "a/b.txt"),
    ("a//b.txt", "a/b.txt"),
    ("a/", "a"),
    ("inner/b.txt", "a/b.txt"),
    ("inner", "a"),
    ("a/new.txt", "a/new.txt"),
    ("new.txt", "new.txt"),
    ("\u00e9t\u00e9 caf\u00e9.txt", "\u00e9t\u00e9 caf\u00e9.txt"),
    ("a/.hidden", "a/.hidden"),
    ("a/..b", "a/..b"),
    ("fifo", "fifo"),
]


@pytest.mark.parametrize("client_path,expected", ALLOWED)
def test_allowed_paths_resolve_inside_root(box, tree, client_path, expected):
    assert box.resolve(client_path) == tree / expected


@pytest.mark.parametrize("client_path", ["", ".", "./", ".//.", "self", "self/self"])
def test_root_is_named_only_when_allowed(box, tree, client_path):
    assert box.resolve(client_path, allow_root=True) == tree
    with pytest.raises(PathRefused):
        box.resolve(client_path)


@pytest.mark.parametrize("client_path", ["a/missing.txt", "missing/x", "a/b.txt/x"])
def test_must_exist_refuses_missing_paths(box, client_path):
    with pytest.raises(ProtocolError) as info:
        box.resolve(client_path, must_exist=True)
    assert info.value.code == "not-found"


def test_must_exist_accepts_existing_paths(box, tree):
    assert box.resolve("a/b.txt", must_exist=True) == tree / "a" / "b.txt"
    assert box.resolve(".", must_exist=True, allow_root=True) == tree


@pytest.mark.parametrize("client_path,expected", [
    ("etc", "etc"), ("p", "p"), ("loop1", "loop1"), ("inner", "inner"),
    ("inner/b.txt", "a/b.txt"), ("a/missing", "a/missing"), ("./a//b.txt", "a/b.txt"),
])
def test_resolve_entry_keeps_the_last_name_unresolved(box, tree, client_path, expected):
    assert box.resolve_entry(client_path) == tree / expected


@pytest.mark.parametrize("client_path,code", [
    ("", "bad-path"), (".", "bad-path"), ("../x", "bad-path"), ("etc/passwd", "bad-path"),
    ("p/secret.txt", "bad-path"), ("a/" + TEMP_PREFIX + "x", "bad-path"),
    ("missing/x", "not-found"),
])
def test_resolve_entry_refuses_escapes(box, tree, client_path, code):
    with pytest.raises(ProtocolError) as info:
        box.resolve_entry(client_path)
    assert info.value.code == code
    assert str(tree) not in info.value.message


def test_root_is_resolved_once(tree, tmp_path):
    os.symlink(tree, tmp_path / "link-to-root")
    box = Sandbox(str(tmp_path / "link-to-root"))
    assert box.root == tree
    assert box.resolve("a/b.txt") == tree / "a" / "b.txt"


def test_root_must_be_a_directory(tree):
    with pytest.raises(ConfigError):
        Sandbox(tree / "a" / "b.txt")
    with pytest.raises(ConfigError):
        Sandbox(tree / "missing")


def test_relative_gives_client_paths(box, tree):
    assert box.relative(tree / "a" / "b.txt") == "a/b.txt"
    assert box.relative(str(tree / "a")) == "a"
    assert box.relative(tree) == ""
    assert box.relative(tree / "inner") == "inner"
    assert box.relative(box.resolve("inner/b.txt")) == "a/b.txt"


def test_relative_refuses_outside_paths(box, tree):
    with pytest.raises(PathRefused):
        box.relative(tree.parent / "data-private" / "secret.txt")
    with pytest.raises(PathRefused):
        box.relative("/etc/passwd")


def test_check_regular_file(box, tree):
    st_result = box.check_regular_file(tree / "a" / "b.txt")
    assert st_result.st_size == 5
    for path in (os.devnull, tree / "fifo", tree / "a"):
        with pytest.raises(PathRefused) as info:
            box.check_regular_file(path)
        assert info.value.code == "bad-path"
    with pytest.raises(ProtocolError) as info:
        box.check_regular_file(tree / "a" / "missing")
    assert info.value.code == "not-found"


def test_check_regular_file_message_hides_real_path(box, tree):
    with pytest.raises(PathRefused) as info:
        box.check_regular_file(tree / "fifo")
    assert "'fifo'" in info.value.message
    assert str(tree) not in info.value.message


def test_check_directory(box, tree):
    assert stat.S_ISDIR(box.check_directory(tree / "a").st_mode)
    assert stat.S_ISDIR(box.check_directory(tree).st_mode)
    for path in (os.devnull, tree / "fifo", tree / "a" / "b.txt"):
        with pytest.raises(PathRefused):
            box.check_directory(path)
    with pytest.raises(ProtocolError) as info:
        box.check_directory(tree / "nope")
    assert info.value.code == "not-found"


def test_is_temp_name():
    assert is_temp_name(TEMP_PREFIX + "0123")
    assert not is_temp_name("x" + TEMP_PREFIX)
    assert not is_temp_name("notes.txt")


@pytest.fixture(scope="module")
def fixed_tree(tmp_path_factory):
    return _build_tree(tmp_path_factory.mktemp("prop") / "x")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(
    ["a", "b.txt", "..", ".", "", "etc", "p", "self", "inner", "chain1", "\\", "\x00", "/",
     TEMP_PREFIX, "\u00e9"]), max_size=8))
def test_resolve_never_leaves_root(fixed_tree, pieces):
    box = Sandbox(fixed_tree)
    try:
        real = box.resolve("".join(pieces), allow_root=True)
    except ProtocolError as exc:
        assert exc.code in ("bad-path", "not-found")
        return
    assert os.path.commonpath([str(fixed_tree), os.path.realpath(real)]) == str(fixed_tree)


def _temp_names(directory):
    return sorted(name for name in os.listdir(directory) if is_temp_name(name))


def test_commit_writes_content_and_mode(tmp_path):
    dest = tmp_path / "out.bin"
    with AtomicWriter(dest, mode=0o640) as writer:
        assert writer.temp_path.parent == tmp_path
        assert is_temp_name(writer.temp_path.name)
        assert stat.S_IMODE(os.stat(writer.temp_path).st_mode) == 0o600
        writer.write(b"abc")
        writer.file.write(b"def")
        assert not dest.exists()
        writer.commit()
    assert dest.read_bytes() == b"abcdef"
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o640
    assert _temp_names(tmp_path) == []
    assert writer.committed


def test_commit_replaces_existing_file(tmp_path):
    dest = tmp_path / "out.txt"
    dest.write_bytes(b"old")
    with AtomicWriter(dest) as writer:
        writer.write(b"new content")
        assert dest.read_bytes() == b"old"
        writer.commit()
    assert dest.read_bytes() == b"new content"
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o644


def test_exception_removes_temp_and_keeps_dest(tmp_path):
    dest = tmp_path / "out.txt"
    dest.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with AtomicWriter(dest) as writer:
            writer.write(b"partial")
            assert _temp_names(tmp_path) == [writer.temp_path.name]
            raise RuntimeError("connection lost")
    assert dest.read_bytes() == b"old"
    assert _temp_names(tmp_path) == []


def test_exit_without_commit_removes_temp(tmp_path):
    dest = tmp_path / "out.txt"
    with AtomicWriter(dest) as writer:
        writer.write(b"partial")
    assert not dest.exists()
    assert not writer.temp_path.exists()
    assert _temp_names(tmp_path) == []


def test_failed_replace_leaves_directory_and_no_temp(tmp_path):
    dest = tmp_path / "adir"
    dest.mkdir()
    with pytest.raises(OSError):
        with AtomicWriter(dest) as writer:
            writer.write(b"x")
            writer.commit()
    assert dest.is_dir()
    assert _temp_names(tmp_path) == []


def test_missing_directory_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        AtomicWriter(tmp_path / "nope" / "out.txt")


def test_resumable_temp_path_is_deterministic(tmp_path):
    dest = tmp_path / "big.iso"
    first = resumable_temp_path(dest, "alice:42")
    assert first == resumable_temp_path(str(dest), "alice:42")
    assert first.parent == tmp_path
    assert is_temp_name(first.name)
    assert len(first.name) == len(TEMP_PREFIX) + 32
    assert first != resumable_temp_path(dest, "alice:43")
    assert first != resumable_temp_path(tmp_path / "other.iso", "alice:42")
    # The separator keeps (name, id) pairs apart that concatenate alike.
    assert (resumable_temp_path(tmp_path / "ab", "c")
            != resumable_temp_path(tmp_path / "a", "bc"))
    for bad in ("", None, 7):
        with pytest.raises(ValueError):
            resumable_temp_path(dest, bad)


def test_resume_appends_across_connections(tmp_path):
    dest = tmp_path / "big.bin"
    temp = resumable_temp_path(dest, "u1")
    with pytest.raises(ConnectionError):
        with AtomicWriter.resume(temp, dest) as writer:
            assert writer.offset == 0
            writer.write(b"abc")
            raise ConnectionError("dropped")
    assert temp.read_bytes() == b"abc"
    assert not dest.exists()
    with AtomicWriter.resume(temp, dest, mode=0o600) as writer:
        assert writer.offset == 3
        writer.write(b"def")
        assert writer.size == 6
        writer.commit()
    assert dest.read_bytes() == b"abcdef"
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o600
    assert not temp.exists()
    with AtomicWriter.resume(temp, dest) as writer:
        assert writer.offset == 0


def test_resume_without_commit_keeps_temp_until_discard(tmp_path):
    dest = tmp_path / "big.bin"
    temp = resumable_temp_path(dest, "u2")
    with AtomicWriter.resume(temp, dest) as writer:
        writer.write(b"abc")
    assert temp.read_bytes() == b"abc"
    with AtomicWriter.resume(temp, dest) as writer:
        writer.discard()
        writer.discard()
    assert not temp.exists()
    assert not dest.exists()


def test_resume_is_exclusive(tmp_path):
    dest = tmp_path / "big.bin"
    temp = resumable_temp_path(dest, "u3")
    with AtomicWriter.resume(temp, dest) as writer:
        writer.write(b"abc")
        with pytest.raises(ProtocolError) as info:
            AtomicWriter.resume(temp, dest)
        assert info.value.code == "busy"
    with AtomicWriter.resume(temp, dest) as writer:
        assert writer.offset == 3


def test_resume_refuses_foreign_temp_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    dest = tmp_path / "big.bin"
    with pytest.raises(ValueError):
        AtomicWriter.resume(tmp_path / "sub" / (TEMP_PREFIX + "x"), dest)
    with pytest.raises(ValueError):
        AtomicWriter.resume(tmp_path / "notes.txt", dest)


def test_resume_refuses_planted_special_files(tmp_path):
    dest = tmp_path / "big.bin"
    fifo = tmp_path / (TEMP_PREFIX + "fifo")
    os.mkfifo(fifo)
    with pytest.raises((OSError, PathRefused)):
        AtomicWriter.resume(fifo, dest)
    link = tmp_path / (TEMP_PREFIX + "link")
    os.symlink(tmp_path / "elsewhere", link)
    with pytest.raises(OSError):
        AtomicWriter.resume(link, dest)
    assert not (tmp_path / "elsewhere").exists()
    os.mkdir(tmp_path / (TEMP_PREFIX + "dir"))
    with pytest.raises(OSError):
        AtomicWriter.resume(tmp_path / (TEMP_PREFIX + "dir"), dest)


def _make_temp(path, age_seconds=0):
    path.write_bytes(b"leftover")
    then = time.time() - age_seconds
    os.utime(path, (then, then))
    return path


def test_cleanup_by_age(tmp_path):
    (tmp_path / "sub").mkdir()
    old = _make_temp(tmp_path / (TEMP_PREFIX + "old"), age_seconds=7200)
    nested_old = _make_temp(tmp_path / "sub" / (TEMP_PREFIX + "old2"), age_seconds=7200)
    fresh = _make_temp(tmp_path / (TEMP_PREFIX + "fresh"))
    keeper = _make_temp(tmp_path / "old-but-mine.txt", age_seconds=7200)
    assert cleanup_temp_files(tmp_path, max_age_seconds=3600) == 2
    assert not old.exists() and not nested_old.exists()
    assert fresh.exists() and keeper.exists()
    assert cleanup_temp_files(tmp_path) == 1
    assert not fresh.exists() and keeper.exists()
    assert cleanup_temp_files(tmp_path) == 0


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
    assert cleanup_temp_files(root) == 1
    assert not os.path.lexists(root / (TEMP_PREFIX + "link"))
    assert target.exists() and outside_temp.exists()
    assert (root / (TEMP_PREFIX + "dir")).is_dir()


def test_cleanup_skips_files_being_written(tmp_path):
    dest = tmp_path / "out.bin"
    with AtomicWriter(dest) as writer:
        writer.write(b"in progress")
        old = time.time() - 7200
        os.utime(writer.temp_path, (old, old))
        assert cleanup_temp_files(tmp_path) == 0
        assert cleanup_temp_files(tmp_path, max_age_seconds=60) == 0
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
