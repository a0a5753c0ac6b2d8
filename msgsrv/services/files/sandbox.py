"""Client path -> a name in a directory opened inside a service root; atomic file writes.

Handlers never open a raw client string, and never hold a path string for a
real file: they call ``Sandbox.locate``, which walks the client's path
component by component from a descriptor of the root, and returns a
``Location``: an open directory (``dir_fd``) and one ``name`` in it.  Every
operation then uses ``dir_fd=`` (open, stat, mkdir, rename, unlink, rmdir).
Uploads never write a file in place: they go through an ``AtomicWriter``,
which keeps the data in a temp file next to the target until ``commit()``
renames it into place.

Refusals are ``PathRefused`` (a ``ProtocolError`` with code ``bad-path``) or
``ProtocolError("not-found", ...)``; their messages name the client's path,
never the server's real path, so they can go to the client as they are.

How a file service uses this module (POSIX hosts)::

    # put: the whole file in one request
    with sandbox.locate(request_path) as dest:          # dest.dir_fd, dest.name
        with AtomicWriter(dest, mode=0o640) as writer:
            for chunk in body:                 # verify size and SHA-256 as you go
                writer.write(chunk)
            if not verified:
                raise ProtocolError("bad-checksum", "...")   # temp file removed
            writer.commit()                    # fchmod, fsync, rename, fsync directory
    # reply ok only after commit() returned

    # resumable put: the temp file outlives a dropped connection
    with sandbox.locate(request_path) as dest, \\
            AtomicWriter.resume(dest, identity + ":" + upload_id) as writer:
        # tell the client to continue from writer.offset (bytes already kept);
        # to verify a SHA-256, pread writer.file.fileno()'s first writer.offset bytes
        ...write the rest...
        writer.commit()        # or writer.discard() to give the upload up
    # leaving the block without commit() keeps the temp file for the next try

    # at start-up, and now and then: forget abandoned uploads
    cleanup_temp_files(sandbox, max_age_seconds=retention)

Temp files are named ``TEMP_PREFIX + ...`` (those of resumable uploads
``RESUMABLE_PREFIX + ...``); the root's lock file is ``ROOT_LOCK_NAME``.
``locate`` refuses these reserved names and a ``list`` operation hides
entries for which ``is_reserved_name`` is true.

Every writer holds an exclusive ``flock`` on its temp file while open, so two
connections cannot append to one resumable upload at once, and
``cleanup_temp_files`` never removes a file that is being written.

The guarantee: no operation reads, writes, creates, renames or deletes
anything outside the root, even while anyone, local or remote, changes the
tree concurrently.  Symlinks are never followed: each directory on the way is
opened with ``O_NOFOLLOW | O_DIRECTORY`` relative to the one before, so a
component swapped for a symlink between two requests, or in the middle of
one, is refused (``bad-path``) instead of leading elsewhere; the last
component is opened, created, renamed or removed relative to the directory
the walk holds, never by path.  A directory that someone with local access
moves out of the root while an operation works inside it takes that
operation with it, as if the move had come just after; the protocol itself
cannot move anything out (both ends of a rename are walked).  Hard links and
mount points placed in the root by a local administrator are part of the
tree.
"""

import errno
import fcntl
import hashlib
import os
import secrets
import stat
import threading
import time
import unicodedata
import weakref
from pathlib import Path

from msgsrv.wire.errors import ConfigError, ProtocolError
from .transfer import fsync_dir

TEMP_PREFIX = ".msgsrv-tmp-"
RESUMABLE_PREFIX = TEMP_PREFIX + "up-"
ROOT_LOCK_NAME = ".msgsrv-lock"
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255

_SHOWN_CHARS = 80
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO (or a device) must never hang an open.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class PathRefused(ProtocolError):
    """A client path is malformed or leads outside the root (code ``bad-path``)."""

    def __init__(self, message):
        super().__init__("bad-path", message)


def is_temp_name(name):
    """Return True if the file name ``name`` is (or poses as) a msgsrv temp file."""
    return name.startswith(TEMP_PREFIX)


def is_reserved_name(name):
    """Return True for the names msgsrv keeps for itself: temp files and the lock file."""
    return name.startswith(TEMP_PREFIX) or name == ROOT_LOCK_NAME


def _shown(client_path):
    """The client path as it may appear in a message: repr'd and shortened."""
    if len(client_path) > _SHOWN_CHARS:
        client_path = client_path[:_SHOWN_CHARS] + "..."
    return repr(client_path)


class Sandbox:
    """The one gate between client path strings and the files under ``root``.

    ``root`` is made absolute and resolved once, then opened as a directory
    descriptor that lives as long as the object (``close()``, a ``with``
    block, or garbage collection closes it); it must be an existing
    directory (``ConfigError`` otherwise).  ``root`` (a ``Path``) is kept for
    log messages only: nothing is opened by it again.  Thread-safe; after
    ``close()``, ``locate`` and ``walk`` raise ``ProtocolError("busy")``.
    """

    def __init__(self, root):
        real = os.path.realpath(os.path.abspath(os.fspath(root)))
        try:
            self._fd = os.open(real, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise ConfigError("sandbox root %r is not a directory" % os.fspath(root)) from None
        self._close = weakref.finalize(self, os.close, self._fd)
        self._lock = threading.Lock()
        self.root = Path(real)

    def fileno(self):
        """The root's directory descriptor (owned by the sandbox: do not close it)."""
        return self._fd

    def close(self):
        """Close the root's descriptor (safe to repeat)."""
        with self._lock:  # never while a walk duplicates it: its number could be reused
            self._close()

    def dup_root(self):
        """A duplicate of the root's descriptor, for the caller to close;
        ``ProtocolError("busy")`` after ``close()``."""
        with self._lock:
            if not self._close.alive:
                raise ProtocolError("busy", "the service is stopping")
            return os.dup(self._fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def locate(self, client_path, *, allow_root=False, parents_mode=None):
        """Walk to where ``client_path`` names inside the root; return a ``Location``.

        ``client_path`` is relative and ``/``-separated; empty and ``.``
        components are dropped, so ``"a/./b"`` is ``"a/b"``, and ``""`` or
        ``"."`` names the root (accepted only with ``allow_root``; its
        Location is the root with the name ``"."``).  Every component but the
        last must be a directory, and not a symlink; the last is not looked
        at (it may be missing, for a new upload).  With ``parents_mode``
        (a mode such as 0o750), missing directories on the way are created
        with that mode.

        Raises ``PathRefused`` (``bad-path``) for a malformed path, a temp
        file name, a directory component that is a symlink or not a
        directory, or the root when not allowed; ``ProtocolError("not-found")``
        when a directory on the way is missing; ``OSError`` for other file
        system failures (e.g. a directory the server may not read).
        """
        parts = _split(client_path)
        if not parts and not allow_root:
            _refuse_root(client_path)
        fd = self.dup_root()
        try:
            for done in range(1, len(parts)):
                fd = _descend(fd, parts, done, client_path, parents_mode)
        except BaseException:
            os.close(fd)
            raise
        return Location(fd, parts[-1] if parts else ".", client_path)

    def walk(self):
        """Yield ``(dir_fd, name, lstat)`` for every entry under the root but directories.

        Depth first; symlinks are listed, never followed (each directory is
        opened ``O_NOFOLLOW`` from its parent's descriptor); a directory
        already on the current branch (a bind mount loop) is not entered
        again.  ``dir_fd`` is valid until the next item is asked for.
        Entries that vanish or cannot be read meanwhile are skipped.
        """
        top = self.dup_root()
        stack = [[top, None, set()]]
        try:
            stack[0][2].add(_identity(os.fstat(top)))
            while stack:
                fd, pending, branch = stack[-1]
                if pending is None:
                    subdirs = []
                    for name, st in _entries(fd):
                        if stat.S_ISDIR(st.st_mode):
                            subdirs.append((name, _identity(st)))
                        else:
                            yield fd, name, st
                    pending = stack[-1][1] = iter(subdirs)
                child = next(pending, None)
                if child is None:
                    os.close(stack.pop()[0])
                elif child[1] not in branch:
                    child_fd = _open_dir_quietly(fd, child[0])
                    if child_fd is not None:
                        stack.append([child_fd, None, branch | {child[1]}])
        finally:
            for entry in stack:
                os.close(entry[0])


class Location:
    """One name in one directory that a walk opened: where a single operation acts.

    ``dir_fd`` is the directory's descriptor, owned by the Location (closed
    by ``close()`` or at the end of a ``with`` block); ``name`` is one
    component (no ``/``), or ``"."`` for the directory itself; ``path`` is
    the client's path, for messages.  Use ``dir_fd=`` for every operation on
    ``name``; the methods below cover the ones that need care.
    """

    def __init__(self, dir_fd, name, path):
        self.dir_fd, self.name, self.path = dir_fd, name, path

    def close(self):
        """Close the directory descriptor (safe to repeat)."""
        if self.dir_fd >= 0:
            fd, self.dir_fd = self.dir_fd, -1
            os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def lstat(self):
        """``os.stat_result`` of the name itself (a symlink is not followed), None if missing."""
        try:
            return os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def stat(self):
        """``os.stat_result`` of the name, which must exist and not be a symlink.

        Raises ``ProtocolError("not-found")`` or ``PathRefused``.
        """
        st = self.lstat()
        if st is None:
            raise ProtocolError("not-found", "path %s does not exist" % _shown(self.path))
        if stat.S_ISLNK(st.st_mode):
            raise _symlink_refused(self.path, self.path)
        return st

    def check_regular(self, st):
        """Raise ``PathRefused`` unless ``st`` (this name's lstat) is a regular file."""
        if stat.S_ISLNK(st.st_mode):
            raise _symlink_refused(self.path, self.path)
        if not stat.S_ISREG(st.st_mode):
            raise PathRefused("path %s is not a regular file" % _shown(self.path))

    def open_file(self):
        """Open the name for reading if it is a regular file; return a binary file object.

        Never follows a symlink, never opens a FIFO, device or socket (its
        kind is checked before and after the open).  Raises
        ``PathRefused``, ``ProtocolError("not-found")``, ``OSError``.
        """
        self.check_regular(self.stat())
        try:
            fd = os.open(self.name, _FILE_FLAGS, dir_fd=self.dir_fd)
        except OSError as exc:
            raise _refined(exc, self.path) from None
        try:
            self.check_regular(os.fstat(fd))
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    def open_directory(self):
        """Open the name as a directory; return a ``Location`` of it (``name`` ".").

        Raises ``PathRefused`` for a symlink or a non-directory,
        ``ProtocolError("not-found")`` if nothing is there.
        """
        if self.name == ".":
            return Location(os.dup(self.dir_fd), ".", self.path)
        try:
            fd = os.open(self.name, _DIR_FLAGS, dir_fd=self.dir_fd)
        except FileNotFoundError:
            raise ProtocolError("not-found", "path %s does not exist" % _shown(self.path)) \
                from None
        except OSError as exc:
            raise _refined(exc, self.path, self._kind_refusal) from None
        return Location(fd, ".", self.path)

    def mkdir(self, mode):
        """Create the name as a directory with exactly ``mode`` (whatever the umask).

        Raises ``FileExistsError`` if something is there, ``OSError``.
        """
        os.mkdir(self.name, 0o700, dir_fd=self.dir_fd)
        os.close(_open_with_mode(self.dir_fd, self.name, mode))

    def fsync(self):
        """Flush the directory's entries (a create, rename or unlink in it) to disk."""
        fsync_dir(self.dir_fd)

    def _kind_refusal(self):
        st = self.lstat()
        if st is not None and stat.S_ISLNK(st.st_mode):
            return _symlink_refused(self.path, self.path)
        return PathRefused("path %s is not a directory" % _shown(self.path))


def _identity(st):
    return (st.st_dev, st.st_ino)


def _entries(fd):
    """``(name, lstat)`` of the entries of the directory ``fd``; unreadable ones left out."""
    result = []
    try:
        with os.scandir(fd) as scan:
            for entry in scan:
                try:
                    result.append((entry.name, entry.stat(follow_symlinks=False)))
                except OSError:
                    continue
    except OSError:
        pass
    return result


def _open_dir_quietly(fd, name):
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=fd)
    except OSError:
        return None


def _descend(fd, parts, done, client_path, parents_mode):
    """Open directory ``parts[done - 1]`` in ``fd``, close ``fd``, return the new descriptor."""
    name = parts[done - 1]
    try:
        child = os.open(name, _DIR_FLAGS, dir_fd=fd)
    except FileNotFoundError:
        if parents_mode is None:
            raise ProtocolError("not-found", "path %s: %s does not exist"
                                % (_shown(client_path), _shown("/".join(parts[:done])))) from None
        child = _make_parent(fd, name, parents_mode)
    except OSError as exc:
        prefix = "/".join(parts[:done])
        raise _refined(exc, client_path, lambda: _component_refusal(fd, name, prefix,
                                                                    client_path)) from None
    os.close(fd)
    return child


def _make_parent(fd, name, mode):
    """Create directory ``name`` in ``fd`` (unless it appeared meanwhile); return it open."""
    try:
        os.mkdir(name, 0o700, dir_fd=fd)
    except FileExistsError:
        return os.open(name, _DIR_FLAGS, dir_fd=fd)
    child = _open_with_mode(fd, name, mode)
    try:
        fsync_dir(fd)
    except BaseException:
        os.close(child)
        raise
    return child


def _open_with_mode(fd, name, mode):
    """Open the directory ``name`` in ``fd`` (``O_NOFOLLOW``), fchmod it to ``mode``, return it."""
    # os.chmod(dir_fd=..., follow_symlinks=False) is not supported on Linux: open it, fchmod.
    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
    try:
        os.fchmod(child, mode)
    except BaseException:
        os.close(child)
        raise
    return child


def _component_refusal(fd, name, prefix, client_path):
    """Why directory component ``prefix`` (``name`` in ``fd``) could not be entered."""
    try:
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
    except OSError:
        st = None
    if st is not None and stat.S_ISLNK(st.st_mode):
        return _symlink_refused(client_path, prefix)
    if st is not None and stat.S_ISDIR(st.st_mode):  # swapped back since the open failed
        return PathRefused("path %s: %s changed while the path was walked"
                           % (_shown(client_path), _shown(prefix)))
    return PathRefused("path %s: %s is not a directory" % (_shown(client_path), _shown(prefix)))


def _refined(exc, client_path, kind_refusal=None):
    """The refusal an ``OSError`` of a walk or open stands for (``exc`` itself if none)."""
    if exc.errno in (errno.ENOTDIR, errno.ELOOP) and kind_refusal is not None:
        return kind_refusal()
    if exc.errno == errno.ELOOP:
        return _symlink_refused(client_path, client_path)
    if exc.errno == errno.ENOENT:
        return ProtocolError("not-found", "path %s does not exist" % _shown(client_path))
    return exc


def _symlink_refused(client_path, component):
    if component == client_path:
        return PathRefused("path %s is a symbolic link (the server never follows them)"
                           % _shown(client_path))
    return PathRefused("path %s: %s is a symbolic link (the server never follows them)"
                       % (_shown(client_path), _shown(component)))


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
    if is_reserved_name(part):
        raise PathRefused("path %s uses a reserved name (%s... or %s)"
                          % (_shown(client_path), TEMP_PREFIX, ROOT_LOCK_NAME))


def resumable_temp_name(dest_name, upload_id):
    """Return the fixed temp file name of upload ``upload_id`` to the file ``dest_name``.

    The name is ``RESUMABLE_PREFIX`` + 32 hex digits of SHA-256 over the
    target's name and the id, so every connection resuming the same upload
    finds the same file (in the target's directory), on any daemon serving
    the same root. Fold the client identity into
    ``upload_id`` if ids are only unique per client. Raises ``ValueError`` if
    ``upload_id`` is not a non-empty string.
    """
    if not isinstance(upload_id, str) or not upload_id:
        raise ValueError("upload_id must be a non-empty string (got %r)" % (upload_id,))
    key = ("%s\0%s" % (dest_name, upload_id)).encode("utf-8", "surrogatepass")
    return RESUMABLE_PREFIX + hashlib.sha256(key).hexdigest()[:32]


def resumable_temp_path(dest_path, upload_id):
    """``resumable_temp_name`` next to ``dest_path``, as a ``Path`` (for tools and tests)."""
    dest = Path(dest_path)
    return dest.parent / resumable_temp_name(dest.name, upload_id)


class AtomicWriter:
    """Write the file at a ``Location`` all at once: readers see the old file or the whole new one.

    ``AtomicWriter(dest, mode=0o640)`` creates a fresh temp file (mode 0600
    while open) in ``dest``'s directory, through its descriptor; ``OSError``
    if it cannot.  Write with ``write(b)`` or ``file`` (a buffered binary
    file whose descriptor is also readable with ``os.pread``); ``commit()``
    puts the data in place with exactly ``mode``, whatever the umask.
    Leaving the ``with`` block without ``commit()`` (by exception or not)
    removes the temp file; the destination is untouched.  The writer keeps
    its own duplicate of ``dest.dir_fd``.

    Attributes: ``dir_fd``, ``dest_name``, ``temp_name``, ``offset`` (bytes
    the temp file held when opened), ``size`` (bytes it holds now),
    ``committed``.
    """

    def __init__(self, dest, *, mode=0o640):
        dir_fd = _dup_for(dest)
        try:
            fd, temp = _create_locked(dir_fd)
        except BaseException:
            os.close(dir_fd)
            raise
        try:
            self._attach(fd, dir_fd, temp, dest.name, mode, keep=False)
        except BaseException:
            os.close(fd)
            _unlink_quietly(dir_fd, temp)
            os.close(dir_fd)
            raise

    @classmethod
    def resume(cls, dest, upload_id, *, mode=0o640):
        """Open (or create) the temp file of ``upload_id`` next to ``dest`` and append to it.

        The temp name is ``resumable_temp_name(dest.name, upload_id)``.
        Leaving the block without ``commit()`` closes the temp file but keeps
        it; ``discard()`` removes it. Raises ``ValueError`` for a bad
        ``upload_id``, ``PathRefused`` if the temp name is not a regular
        file, ``ProtocolError("busy")`` if another writer holds it,
        ``OSError``.
        """
        temp = resumable_temp_name(dest.name, upload_id)
        self = cls.__new__(cls)
        dir_fd = _dup_for(dest)
        try:
            fd = _open_locked(dir_fd, temp)
        except BaseException:
            os.close(dir_fd)
            raise
        try:
            self._attach(fd, dir_fd, temp, dest.name, mode, keep=True)
        except BaseException:
            os.close(fd)
            os.close(dir_fd)
            raise
        return self

    def _attach(self, fd, dir_fd, temp, dest_name, mode, keep):
        self.dir_fd, self.temp_name, self.dest_name, self.mode = dir_fd, temp, dest_name, mode
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
        """fchmod and fsync the temp file, rename it onto the destination, fsync the directory.

        Only after this returns is the new file durable under its name.
        Raises ``OSError`` (e.g. ``IsADirectoryError``) with the destination
        unchanged, or ``ValueError`` if the writer is already closed.
        """
        self.file.flush()
        fd = self.file.fileno()
        os.fchmod(fd, self.mode)
        os.fsync(fd)
        # Rename while still holding the lock: a resumer that locks later sees another inode.
        os.replace(self.temp_name, self.dest_name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        self.committed = True
        self.file.close()
        fsync_dir(self.dir_fd)
        self._close_dir()

    def close(self):
        """Close the temp file without committing; keep it on disk (for a later resume)."""
        self.file.close()
        self._close_dir()

    def discard(self):
        """Close and remove the temp file; the destination is untouched. Safe to repeat."""
        if not self.committed and self.dir_fd >= 0:
            _unlink_quietly(self.dir_fd, self.temp_name)
        self.close()

    def _close_dir(self):
        if self.dir_fd >= 0:
            fd, self.dir_fd = self.dir_fd, -1
            os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.committed or self._keep:
            self.close()
        else:
            self.discard()
        return False


def _dup_for(dest):
    """A duplicate of ``dest.dir_fd`` for a writer; ``ValueError`` if ``dest`` names no file."""
    if dest.name == ".":
        raise ValueError("a writer needs a file name, not the directory %s" % _shown(dest.path))
    return os.dup(dest.dir_fd)


def _create_locked(dir_fd):
    """A new temp file in ``dir_fd``, locked and still under its name: a clean-up (of
    this process or another sharing the root) may remove a file between its creation
    and its lock, and then another is made."""
    for _attempt in range(3):
        temp = TEMP_PREFIX + secrets.token_hex(16)
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dir_fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _still_named(fd, dir_fd, temp):
                return fd, temp
        except BaseException:
            os.close(fd)
            _unlink_quietly(dir_fd, temp)
            raise
        os.close(fd)
    raise ProtocolError("busy", "new temp files keep being removed; try again")


def _open_locked(dir_fd, temp):
    """Open ``temp`` for append holding its lock, making sure the name still points at it."""
    for _attempt in range(3):
        fd = os.open(temp, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                     | os.O_NONBLOCK | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        try:
            if _lock_if_current(fd, dir_fd, temp):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    raise ProtocolError("busy", "the upload is being finished elsewhere; try again")


def _lock_if_current(fd, dir_fd, temp):
    """Lock ``fd``; False if ``temp`` was renamed or removed before the lock was ours."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise PathRefused("the upload's temp file is not a regular file")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ProtocolError("busy", "the upload is in progress on another connection") from None
    return _still_named(fd, dir_fd, temp)


def _still_named(fd, dir_fd, name):
    """Whether ``name`` in ``dir_fd`` is still the file open as ``fd``."""
    try:
        now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return _identity(now) == _identity(os.fstat(fd))


def _unlink_quietly(dir_fd, name):
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def cleanup_temp_files(sandbox, max_age_seconds=None, *, resumable_max_age=None):
    """Remove msgsrv temp files under ``sandbox``'s root; return how many were removed.

    Removes every temp file if ``max_age_seconds`` is None, else those whose
    mtime is older than that; with ``resumable_max_age`` the parts of
    resumable uploads (``RESUMABLE_PREFIX``) are kept until they are that old
    instead.  Walks with ``Sandbox.walk`` (never follows a symlink, never
    leaves the root), never removes a directory or a name without
    ``TEMP_PREFIX``, and skips temp files a writer holds open, in this
    process or any other sharing the root (a writer that finds its new file
    removed between creating and locking it makes another).  Errors on
    single entries are skipped, not raised.
    """
    now = time.time()
    cutoff = None if max_age_seconds is None else now - max_age_seconds
    resumable_cutoff = cutoff if resumable_max_age is None else now - resumable_max_age
    removed = 0
    for dir_fd, name, st in sandbox.walk():
        if not is_temp_name(name):
            continue
        limit = resumable_cutoff if name.startswith(RESUMABLE_PREFIX) else cutoff
        if _remove_if_stale(dir_fd, name, st, limit):
            removed += 1
    return removed


def _remove_if_stale(dir_fd, name, st, cutoff):
    """Remove one temp entry (not a directory) if it is old enough and not locked."""
    if cutoff is not None and st.st_mtime >= cutoff:
        return False
    try:
        if not stat.S_ISREG(st.st_mode):
            os.unlink(name, dir_fd=dir_fd)
            return True
        return _unlink_unless_locked(dir_fd, name)
    except OSError:
        return False


def _unlink_unless_locked(dir_fd, name):
    fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # A writer may have renamed its file away (commit) between our open and our lock.
        if not _still_named(fd, dir_fd, name):
            return False
        os.unlink(name, dir_fd=dir_fd)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


__all__ = [
    "TEMP_PREFIX", "RESUMABLE_PREFIX", "ROOT_LOCK_NAME", "MAX_PATH_BYTES", "MAX_NAME_BYTES",
    "PathRefused", "Sandbox", "Location", "AtomicWriter", "is_temp_name", "is_reserved_name",
    "resumable_temp_name", "resumable_temp_path", "cleanup_temp_files",
]
