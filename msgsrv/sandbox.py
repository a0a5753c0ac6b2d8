"""Client path -> real path inside a service root (or a refusal); atomic file writes.

Handlers never open a raw client string: they call ``Sandbox.resolve`` and use
the path it returns, and they never write a file in place: they write through
an ``AtomicWriter``, which keeps the data in a temp file next to the target
until ``commit()`` renames it into place.

Refusals are ``PathRefused`` (a ``ProtocolError`` with code ``bad-path``) or
``ProtocolError("not-found", ...)``; their messages name the client's path,
never the server's real path, so they can go to the client as they are.

How a file service uses this module (POSIX hosts)::

    # put: the whole file in one request
    dest = sandbox.resolve(request_path)
    with AtomicWriter(dest) as writer:
        for chunk in body:                     # verify size and SHA-256 as you go
            writer.write(chunk)
        if not verified:
            raise ProtocolError("bad-checksum", "...")   # temp file removed
        writer.commit()                        # fsync, rename, fsync directory
    # reply ok only after commit() returned

    # resumable put: the temp file outlives a dropped connection
    dest = sandbox.resolve(request_path)
    temp = resumable_temp_path(dest, identity + ":" + upload_id)
    with AtomicWriter.resume(temp, dest) as writer:
        # tell the client to continue from writer.offset (bytes already kept);
        # to verify a SHA-256, hash writer.temp_path's first writer.offset bytes
        ...write the rest...
        writer.commit()        # or writer.discard() to give the upload up
    # leaving the block without commit() keeps the temp file for the next try

    # at start-up, and now and then: forget abandoned uploads
    cleanup_temp_files(root, max_age_seconds=retention)

Temp files are named ``TEMP_PREFIX + ...``; ``resolve`` refuses such names and
a ``list`` operation hides entries for which ``is_temp_name`` is true.

Every writer holds an exclusive ``flock`` on its temp file while open, so two
connections cannot append to one resumable upload at once, and
``cleanup_temp_files`` never removes a file that is being written.

Limits of the promise: the checks stop client-supplied paths and symlinks that
already exist in the root; they do not stop a local user who can change the
tree between ``resolve`` and ``open`` (no path API without ``openat`` can).
"""

import errno
import fcntl
import hashlib
import os
import secrets
import stat
import time
import unicodedata
from pathlib import Path

from msgsrv.errors import ConfigError, ProtocolError

TEMP_PREFIX = ".msgsrv-tmp-"
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255

_SHOWN_CHARS = 80


class PathRefused(ProtocolError):
    """A client path is malformed or leads outside the root (code ``bad-path``)."""

    def __init__(self, message):
        super().__init__("bad-path", message)


def is_temp_name(name):
    """Return True if the file name ``name`` is (or poses as) a msgsrv temp file."""
    return name.startswith(TEMP_PREFIX)


def _shown(client_path):
    """The client path as it may appear in a message: repr'd and shortened."""
    if len(client_path) > _SHOWN_CHARS:
        client_path = client_path[:_SHOWN_CHARS] + "..."
    return repr(client_path)


class Sandbox:
    """The one gate between client path strings and the files under ``root``.

    ``root`` is made absolute and resolved once; it must be an existing
    directory (``ConfigError`` otherwise).
    """

    def __init__(self, root):
        real = os.path.realpath(os.path.abspath(os.fspath(root)))
        if not os.path.isdir(real):
            raise ConfigError("sandbox root %r is not a directory" % os.fspath(root))
        self._root = real
        self.root = Path(real)

    def resolve(self, client_path, *, must_exist=False, allow_root=False):
        """Return the real ``pathlib.Path`` that ``client_path`` names inside the root.

        ``client_path`` is relative and ``/``-separated; empty and ``.``
        components are dropped, so ``"a/./b"`` is ``"a/b"``, and ``""`` or
        ``"."`` names the root (accepted only with ``allow_root``). Symlinks
        are followed; where they lead must stay inside the root. A missing
        final component (a new upload) is fine unless ``must_exist``.

        Raises ``PathRefused`` (``bad-path``) for a malformed path, one that
        leads outside the root, a temp-file name, a symlink loop or the root
        when not allowed; ``ProtocolError("not-found")`` when ``must_exist``
        and nothing is there; ``OSError`` for other file system failures
        (e.g. a directory on the way that the server may not search).
        """
        parts = _split(client_path)
        if not parts and not allow_root:
            _refuse_root(client_path)
        real = os.path.realpath(os.path.join(self._root, *parts))
        if os.path.commonpath([self._root, real]) != self._root:
            raise PathRefused("path %s leads outside the shared directory" % _shown(client_path))
        if real == self._root and not allow_root:
            _refuse_root(client_path)
        if not _exists(real, client_path) and must_exist:
            raise ProtocolError("not-found", "path %s does not exist" % _shown(client_path))
        return Path(real)

    def resolve_entry(self, client_path):
        """Return the directory entry ``client_path`` names, without following its last part.

        For operations on a name itself (delete, rename): a symlink is the
        link, not its target.  The directory part is resolved as by
        ``resolve`` (symlinks followed, confined, must exist); the last
        component is checked and appended as it is, so the entry is always
        directly inside a directory in the root.  Raises ``PathRefused`` for
        a malformed path or the root, ``ProtocolError("not-found")`` if the
        directory part does not exist.
        """
        parts = _split(client_path)
        if not parts:
            _refuse_root(client_path)
        parent = self.resolve("/".join(parts[:-1]), must_exist=True, allow_root=True)
        return parent / parts[-1]

    def relative(self, real_path):
        """Return the client-visible ``/``-separated path of ``real_path`` ("" for the root).

        ``real_path`` is not resolved again, so a symlink's own name is kept.
        Raises ``PathRefused`` if it is not inside the root.
        """
        path = os.path.abspath(os.fspath(real_path))
        if os.path.commonpath([self._root, path]) != self._root:
            raise PathRefused("path is outside the shared directory")
        if path == self._root:
            return ""
        return os.path.relpath(path, self._root)

    def check_regular_file(self, real_path):
        """Return ``os.stat(real_path)`` if it is a regular file (symlinks followed).

        Raises ``PathRefused`` for a directory, device, FIFO, socket and the
        like; ``ProtocolError("not-found")`` if nothing is there.
        """
        st = self._stat(real_path)
        if not stat.S_ISREG(st.st_mode):
            raise PathRefused("%s is not a regular file" % self._named(real_path))
        return st

    def check_directory(self, real_path):
        """Return ``os.stat(real_path)`` if it is a directory (symlinks followed).

        Raises ``PathRefused`` for anything else; ``ProtocolError("not-found")``
        if nothing is there.
        """
        st = self._stat(real_path)
        if not stat.S_ISDIR(st.st_mode):
            raise PathRefused("%s is not a directory" % self._named(real_path))
        return st

    def _stat(self, real_path):
        try:
            return os.stat(real_path)
        except (FileNotFoundError, NotADirectoryError):
            raise ProtocolError("not-found", "%s does not exist" % self._named(real_path)) from None

    def _named(self, real_path):
        """Name ``real_path`` for a client: its relative path, never the server's."""
        try:
            return "path %s" % _shown(self.relative(real_path))
        except PathRefused:
            return "the path"


def _refuse_root(client_path):
    if client_path == "":
        raise PathRefused("path must not be empty")
    raise PathRefused("path %s names the shared root itself" % _shown(client_path))


def _split(client_path):
    """Check a client path string and return its meaningful components ([] for the root)."""
    if not isinstance(client_path, str):
        raise PathRefused("path must be a string (got %s)" % type(client_path).__name__)
    if client_path == "":
        return []
    _check_text(client_path)
    if client_path.startswith("/"):
        raise PathRefused("path %s must be relative (no leading '/')" % _shown(client_path))
    parts = [part for part in client_path.split("/") if part not in ("", ".")]
    for part in parts:
        _check_component(part, client_path)
    return parts


def _check_text(client_path):
    for char in client_path:
        if unicodedata.category(char) == "Cc":
            raise PathRefused("path %s contains a control character" % _shown(client_path))
    if "\\" in client_path:
        raise PathRefused("path %s contains a backslash; use '/'" % _shown(client_path))
    try:
        size = len(client_path.encode("utf-8"))
    except UnicodeEncodeError:
        raise PathRefused("path %s is not valid Unicode text" % _shown(client_path)) from None
    if size > MAX_PATH_BYTES:
        raise PathRefused("path is longer than %d bytes (got %d)" % (MAX_PATH_BYTES, size))


def _check_component(part, client_path):
    if part == "..":
        raise PathRefused("path %s must not contain '..'" % _shown(client_path))
    size = len(part.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        raise PathRefused("path %s has a name longer than %d bytes (got %d)"
                          % (_shown(client_path), MAX_NAME_BYTES, size))
    if is_temp_name(part):
        raise PathRefused("path %s uses a reserved name (%s...)"
                          % (_shown(client_path), TEMP_PREFIX))


def _exists(real, client_path):
    """Whether ``real`` exists; a symlink loop on the way is a refusal, not a miss."""
    try:
        os.stat(real)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PathRefused("path %s runs into a symlink loop" % _shown(client_path)) from None
        if exc.errno == errno.ENAMETOOLONG:
            raise PathRefused("path %s is too long for this server" % _shown(client_path)) from None
        raise
    return True


def fsync_directory(path):
    """Flush ``path``'s directory entries (a rename, create or unlink) to disk.

    Raises ``OSError`` if the directory cannot be opened or synced.
    """
    fd = os.open(os.fspath(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some file systems cannot fsync a directory; their renames are as durable as they get.
        if exc.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)


def resumable_temp_path(dest_path, upload_id):
    """Return the fixed temp path of upload ``upload_id`` to ``dest_path``.

    The name is ``TEMP_PREFIX`` + 32 hex digits of SHA-256 over the target's
    name and the id, in the target's directory, so every connection resuming
    the same upload finds the same file. Fold the client identity into
    ``upload_id`` if ids are only unique per client. Raises ``ValueError`` if
    ``upload_id`` is not a non-empty string.
    """
    if not isinstance(upload_id, str) or not upload_id:
        raise ValueError("upload_id must be a non-empty string (got %r)" % (upload_id,))
    dest = Path(dest_path)
    key = ("%s\0%s" % (dest.name, upload_id)).encode("utf-8", "surrogatepass")
    return dest.parent / (TEMP_PREFIX + hashlib.sha256(key).hexdigest()[:32])


class AtomicWriter:
    """Write ``dest_path`` all at once: readers see the old file or the whole new one.

    ``AtomicWriter(dest_path, mode=0o644)`` creates a fresh temp file (mode
    0600 while open) in ``dest_path``'s directory; ``OSError`` if it cannot.
    Write with ``write(b)`` or ``file`` (a buffered binary file); ``commit()``
    puts the data in place. Leaving the ``with`` block without ``commit()``
    (by exception or not) removes the temp file; ``dest_path`` is untouched.

    Attributes: ``dest_path``, ``temp_path`` (``Path``), ``offset`` (bytes the
    temp file held when opened), ``size`` (bytes it holds now), ``committed``.
    """

    def __init__(self, dest_path, *, mode=0o644):
        dest = Path(dest_path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        temp = dest.parent / (TEMP_PREFIX + secrets.token_hex(16))
        fd = os.open(temp, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._attach(fd, temp, dest, mode, keep=False)
        except BaseException:
            os.close(fd)
            _unlink_quietly(temp)
            raise

    @classmethod
    def resume(cls, temp_path, dest_path, *, mode=0o644):
        """Open (or create) the temp file ``temp_path`` and append to it.

        Use with ``resumable_temp_path``. Leaving the block without
        ``commit()`` closes the temp file but keeps it; ``discard()`` removes
        it. Raises ``ValueError`` if ``temp_path`` is not a temp name in
        ``dest_path``'s directory, ``PathRefused`` if it is not a regular file,
        ``ProtocolError("busy")`` if another writer holds it, ``OSError``.
        """
        temp, dest = Path(temp_path), Path(dest_path)
        if temp.parent != dest.parent or not is_temp_name(temp.name):
            raise ValueError("resume needs a temp file next to %s (got %s)" % (dest, temp))
        self = cls.__new__(cls)
        fd = _open_locked(temp)
        try:
            self._attach(fd, temp, dest, mode, keep=True)
        except BaseException:
            os.close(fd)
            raise
        return self

    def _attach(self, fd, temp, dest, mode, keep):
        self.temp_path, self.dest_path, self.mode = temp, dest, mode
        self.offset = self.size = os.fstat(fd).st_size
        self.file = os.fdopen(fd, "ab")
        self.committed = False
        self._keep = keep

    def write(self, data):
        """Append ``data`` (bytes-like) to the temp file; return its length."""
        written = self.file.write(data)
        self.size += written
        return written

    def commit(self):
        """Flush and fsync the temp file, rename it onto ``dest_path``, fsync the directory.

        Only after this returns is the new file durable under its name.
        Raises ``OSError`` (e.g. ``IsADirectoryError``) with ``dest_path``
        unchanged, or ``ValueError`` if the writer is already closed.
        """
        self.file.flush()
        fd = self.file.fileno()
        os.fchmod(fd, self.mode)
        os.fsync(fd)
        # Rename while still holding the lock: a resumer that locks later sees another inode.
        os.replace(self.temp_path, self.dest_path)
        self.committed = True
        self.file.close()
        fsync_directory(self.dest_path.parent)

    def close(self):
        """Close the temp file without committing; keep it on disk (for a later resume)."""
        self.file.close()

    def discard(self):
        """Close and remove the temp file; ``dest_path`` is untouched. Safe to repeat."""
        if not self.committed:
            _unlink_quietly(self.temp_path)
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.committed or self._keep:
            self.close()
        else:
            self.discard()
        return False


def _open_locked(temp):
    """Open ``temp`` for append holding its lock, making sure the name still points at it."""
    for _attempt in range(3):
        # O_NONBLOCK: a FIFO planted at the temp name must not hang the open.
        fd = os.open(temp, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                     | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
        try:
            if _lock_if_current(fd, temp):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    raise ProtocolError("busy", "the upload is being finished elsewhere; try again")


def _lock_if_current(fd, temp):
    """Lock ``fd``; False if ``temp`` was renamed or removed before the lock was ours."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise PathRefused("the upload's temp file is not a regular file")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ProtocolError("busy", "the upload is in progress on another connection") from None
    try:
        now = os.stat(temp, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def cleanup_temp_files(root, max_age_seconds=None):
    """Remove msgsrv temp files under ``root``; return how many were removed.

    Removes every temp file if ``max_age_seconds`` is None, else those whose
    mtime is older than that. Does not follow symlinks, never removes a
    directory or a name without ``TEMP_PREFIX``, and skips temp files a writer
    holds open. Errors on single entries are skipped, not raised.
    """
    cutoff = None if max_age_seconds is None else time.time() - max_age_seconds
    removed = 0
    for dirpath, dirnames, filenames in os.walk(os.fspath(root), followlinks=False):
        for name in dirnames + filenames:
            if is_temp_name(name) and _remove_if_stale(os.path.join(dirpath, name), cutoff):
                removed += 1
    return removed


def _remove_if_stale(path, cutoff):
    """Remove one temp entry if it is not a directory, old enough and not locked."""
    try:
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode) or (cutoff is not None and st.st_mtime >= cutoff):
            return False
        if not stat.S_ISREG(st.st_mode):
            os.unlink(path)
            return True
        return _unlink_unless_locked(path)
    except OSError:
        return False


def _unlink_unless_locked(path):
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held, now = os.fstat(fd), os.lstat(path)
        # A writer may have renamed its file away (commit) between our open and our lock.
        if (held.st_dev, held.st_ino) != (now.st_dev, now.st_ino):
            return False
        os.unlink(path)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


__all__ = [
    "TEMP_PREFIX", "MAX_PATH_BYTES", "MAX_NAME_BYTES", "PathRefused", "Sandbox",
    "AtomicWriter", "is_temp_name", "resumable_temp_path", "cleanup_temp_files",
    "fsync_directory",
]
