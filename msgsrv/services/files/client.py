"""FileClient: upload, download and manage files on a msgsrv file service.

Defensive by design: a download goes to a temp file next to the requested
local path and is renamed into place only after its size and SHA-256 match,
so nobody sees a partial file under that name; no name the server sends is
ever used as a local path; memory stays bounded (a few 1 MiB buffers,
whatever the file size); every wait on the server honours ``timeout``.
Wire format: docs/PROTOCOL.rst ("File service").
"""

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import stat
from pathlib import Path
from typing import NamedTuple, Optional

from msgsrv.client.base import DEFAULT_TIMEOUT
from msgsrv.client.framed import FramedClient
from msgsrv.wire.errors import (ConnectionFailed, MsgsrvError, ProtocolError, RequestTimeout,
                                ServerError)
from msgsrv.wire.frame_stream import check_error
from . import transfer
from .transfer import fsync_directory

MAX_LISTING_BODY = 4 << 20   # one page of a listing (1000 entries of long names fits)
PART_SUFFIX = ".msgsrv-part"
SOURCE_SUFFIX = ".json"      # beside a resumable part: the remote version it is of
_SHA256 = re.compile(r"[0-9a-f]{64}")
_ERROR_GRACE = 0.5           # seconds to wait for the server's reason after a failed send


class FileInfo(NamedTuple):
    """One file or directory: ``kind`` is file, dir, link or other; ``mtime`` Unix seconds."""

    name: str
    kind: str
    size: int
    mtime: float
    sha256: Optional[str] = None


class Transfer(NamedTuple):
    """A finished upload or download: the remote path, its size and SHA-256, and the
    offset it resumed from (0 for a transfer from the start)."""

    path: str
    size: int
    sha256: str
    resumed_from: int = 0


class FileClient(FramedClient):
    """A connection to a file service; see the module docstring.

    ``progress`` callbacks are called as ``progress(done, total)`` in bytes,
    ``done`` counting a resumed transfer's earlier part; ``on_resume``
    callbacks once before the data moves, as ``on_resume(kept, discarded)``:
    ``kept`` bytes of an earlier attempt are used (0: the transfer starts
    from the beginning), ``discarded`` bytes of one could not be (a download
    kept of another version of the remote file).  The other keyword
    arguments (``tls``, ``hello_timeout``...) are FramedClient's.  Every method raises
    ServerError (``.code`` as in docs/PROTOCOL.rst: ``not-found``,
    ``exists``, ``denied``, ``quota``...), ConnectionFailed, RequestTimeout or
    ProtocolError (``bad-reply``, ``checksum-mismatch``); local file problems
    raise OSError.  After a transfer fails half-way the connection is closed.
    """

    def __init__(self, host, port, key_name=None, secret=None, *, keys_file=None,
                 timeout=DEFAULT_TIMEOUT, **options):
        super().__init__(host, port, key_name, secret, keys_file=keys_file, timeout=timeout,
                         max_body=MAX_LISTING_BODY, **options)

    # -- transfers ------------------------------------------------------------

    def put(self, local, remote, overwrite=False, resume=False, *, if_sha256=None,
            progress=None, upload_id=None, on_resume=None):
        """Upload ``local`` to ``remote``; return a :class:`Transfer` once it is stored.

        ``local`` is a path or a seekable binary file object (read from its
        position to its end).  An existing ``remote`` is refused (``exists``)
        unless ``overwrite``; with ``if_sha256`` it is replaced only if it
        still has that SHA-256 (``conflict`` otherwise).  A put is resumable
        when it has an ``upload_id``: the server keeps what it received of an
        interrupted one, and a put of ``remote`` under the same id later sends
        only the rest (:func:`upload_id_for` derives one from a local file's
        identity; the final SHA-256 check still covers the whole file, and a
        mismatch discards the kept part).  With ``resume`` and no
        ``upload_id``, the local data is hashed first and names the upload, so
        a put of the same content resumes wherever it is read from.
        Raises ValueError if the size of ``local`` cannot be known.
        """
        with _Source(local) as source:
            digest = source.sha256() if resume and upload_id is None else None
            header = {"type": "put", "path": remote, "size": source.size,
                      "overwrite": bool(overwrite)}
            if upload_id is not None or resume:
                header["upload_id"] = upload_id if upload_id is not None else digest[:32]
            if if_sha256 is not None:
                header["if_sha256"] = if_sha256
            offset = self._ready_offset(self.request(header), source.size, "upload_id" in header)
            if on_resume is not None:
                on_resume(offset, 0)
            report = _reporter(progress, offset, source.size)
            with self._in_transfer():
                if offset and digest is None and source.fd is None:
                    digest = source.sha256()  # a stream is hashed as it is sent: not its prefix
                digest = self._send_body(source, offset, digest, report)
                self.send({"type": "end", "sha256": digest})
            reply = _expect(self.recv(), "ok")
            if reply.header.get("sha256") != digest or reply.header.get("size") != source.size:
                raise ProtocolError("bad-reply", "the server acknowledged other content")
        return Transfer(remote, source.size, digest, offset)

    def _ready_offset(self, reply, size, resumable):
        with self._in_transfer():  # a bad reply here leaves us unsure what the server awaits
            offset = _expect(reply, "ready").header.get("offset")
            if type(offset) is not int or not 0 <= offset <= size or (offset and not resumable):
                raise ProtocolError("bad-reply", "ready offset %r is not valid" % (offset,))
        return offset

    def _send_body(self, source, offset, digest, report):
        count = source.size - offset
        if source.fd is not None:
            hasher = None if digest else transfer.Hasher((source.fd, source.start, source.size),
                                                         depth=0)
            with hasher or contextlib.nullcontext():
                transfer.send_file(self.stream, source.file, source.start + offset, count,
                                   progress=report)
                return digest or hasher.hexdigest()
        source.file.seek(source.start + offset)
        with transfer.Hasher() as hasher:
            transfer.send_stream(self.stream, source.file, count, hasher, progress=report)
            return digest or hasher.hexdigest()

    def get(self, remote, local, resume=False, *, progress=None, max_size=None, overwrite=True,
            on_resume=None):
        """Download ``remote`` into ``local``; return a :class:`Transfer` once it is verified.

        ``local`` is a path (written whole: a temp file in its directory,
        renamed over it after the size and SHA-256 check) or a binary file
        object (written as bytes arrive; it holds a partial copy if the
        download fails).  An existing ``local`` path is replaced unless
        ``overwrite`` is false (then FileExistsError, before anything is
        fetched and again if the file appears meanwhile).  With ``resume``, a
        download that fails keeps its part (``.NAME.msgsrv-part``, with the
        remote path, size and mtime it is of beside it in ``.json``), and the
        next resumable get of the same version continues where it stopped;
        a part of another version is discarded.  ``max_size`` refuses a
        larger file.  Raises ``ProtocolError("checksum-mismatch")`` if the
        bytes are not what the server hashed (the partial file is removed).
        """
        with _target(local, resume, overwrite) as target:
            offset = self._resume_offset(remote, target, on_resume)
            self.send({"type": "get", "path": remote, "offset": offset})
            header = self._data_header(self.recv(), offset, max_size)
            size = header["size"]
            target.record(_version(remote, size, header.get("mtime")))
            report = _reporter(progress, offset, size)
            with self._in_transfer():
                with transfer.Hasher(target.prefix(offset)) as hasher:
                    transfer.receive(self.stream, size - offset, target.write, hasher,
                                     progress=report, flush_fd=target.fd)
                    digest = hasher.hexdigest()
                claimed = _expect(self.recv(), "end").header.get("sha256")
            if claimed != digest:
                target.discard()
                raise ProtocolError("checksum-mismatch",
                                    "%s: received SHA-256 %s, the server sent %r; the download "
                                    "was discarded" % (remote, digest, claimed))
            target.commit()
        return Transfer(remote, size, digest, offset)

    def _resume_offset(self, remote, target, on_resume):
        """Check a kept part against the remote file (one stat) before resuming from it."""
        discarded = 0
        if target.offset:
            info = self.stat(remote)
            discarded = target.match(_version(remote, info.size, info.mtime))
        if on_resume is not None:
            on_resume(target.offset, discarded)
        return target.offset

    def _data_header(self, reply, offset, max_size):
        with self._in_transfer():  # the bytes are already on their way: refusing spends the link
            header = _expect(reply, "data").header
            size = header.get("size")
            if type(size) is not int or size < offset or header.get("offset") != offset:
                raise ProtocolError("bad-reply", "data header has size %r, offset %r"
                                    % (size, header.get("offset")))
            if max_size is not None and size > max_size:
                raise ProtocolError("too-large", "the file has %d bytes, more than max_size=%d"
                                    % (size, max_size))
        return header

    @contextlib.contextmanager
    def _in_transfer(self):
        """A failure while raw bytes flow leaves the connection out of step: close it.

        If sending failed, the server may have said why (``disk-full``...):
        that error is raised instead of the bare connection failure.
        """
        try:
            yield
        except ServerError:
            raise
        except (ConnectionFailed, RequestTimeout):
            reason = self._server_reason()
            self.close()
            if reason is not None:
                raise reason from None
            raise
        except BaseException:
            self.close()
            raise

    def _server_reason(self):
        try:
            self.sock.settimeout(_ERROR_GRACE)
            check_error(self.stream.recv())
        except ServerError as exc:
            return exc
        except (MsgsrvError, OSError):
            return None
        return None

    # -- requests -------------------------------------------------------------

    def list(self, path=""):
        """Return the entries of directory ``path`` ("" for the root) as FileInfo, by name."""
        entries, after = [], None
        while True:
            header = {"type": "list", "path": path}
            if after is not None:
                header["after"] = after
            reply = _expect(self.request(header), "listing")
            page = _parse_entries(reply.body, after)
            entries += page
            if not reply.header.get("more") or not page:
                return entries
            after = page[-1].name

    def stat(self, path, sha256=False):
        """Return a FileInfo for ``path`` (with its SHA-256 if asked; files only)."""
        header = _expect(self.request({"type": "stat", "path": path, "sha256": bool(sha256)}),
                         "stat").header
        info = _parse_info(dict(header, name=path))
        if sha256 and not _is_sha256(info.sha256):
            raise ProtocolError("bad-reply", "stat reply lacks a valid sha256")
        return info

    def delete(self, path):
        """Remove a file, a symlink or an empty directory."""
        _expect(self.request({"type": "delete", "path": path}), "ok")

    def mkdir(self, path, parents=False):
        """Create directory ``path`` (and missing parents if asked)."""
        _expect(self.request({"type": "mkdir", "path": path, "parents": bool(parents)}), "ok")

    def rename(self, path, to, overwrite=False):
        """Rename or move ``path`` to ``to`` within the root."""
        _expect(self.request({"type": "rename", "path": path, "to": to,
                              "overwrite": bool(overwrite)}), "ok")

    def capabilities(self):
        """The server's ``help`` reply: operations (with ``allowed``), limits, identity."""
        header = dict(_expect(self.request({"type": "help"}), "help").header)
        header.pop("type")
        return header


def _expect(message, kind):
    if message.type != kind:
        raise ProtocolError("bad-reply", "expected a %s reply, got %r" % (kind, message.type))
    return message


def _is_sha256(value):
    return isinstance(value, str) and _SHA256.fullmatch(value) is not None


def _parse_info(item):
    try:
        name, kind, size, mtime = item["name"], item["kind"], item["size"], item["mtime"]
    except (KeyError, TypeError):
        raise ProtocolError("bad-reply", "malformed file entry") from None
    if not (isinstance(name, str) and isinstance(kind, str) and type(size) is int and size >= 0
            and isinstance(mtime, (int, float)) and not isinstance(mtime, bool)):
        raise ProtocolError("bad-reply", "malformed file entry")
    sha256 = item.get("sha256")
    return FileInfo(name, kind, size, float(mtime), sha256 if _is_sha256(sha256) else None)


def _parse_entries(body, after):
    try:
        items = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError("bad-reply", "listing body is not UTF-8 JSON") from None
    if not isinstance(items, list):
        raise ProtocolError("bad-reply", "listing body is not a list")
    entries = [_parse_info(item) for item in items]
    if after is not None and any(entry.name <= after for entry in entries):
        raise ProtocolError("bad-reply", "listing page does not continue after %r" % after)
    return entries


def _reporter(progress, offset, total):
    if progress is None:
        return None
    progress(offset, total)
    return lambda done: progress(offset + done, total)


# -- the local side of a transfer ----------------------------------------------

class _Source:
    """What a put reads: a file opened here, or the caller's file object from its position."""

    def __init__(self, local):
        self._owned = isinstance(local, (str, bytes, os.PathLike))
        self.file = open(local, "rb") if self._owned else local
        try:
            self.fd, self.start, self.size = _measure(self.file)
        except BaseException:
            self.close()
            raise

    def sha256(self):
        """The SHA-256 of the bytes the put sends (one extra read of them)."""
        if self.fd is not None:
            return transfer.file_sha256(self.fd, self.start, self.size)
        self.file.seek(self.start)
        digest, left = hashlib.sha256(), self.size
        while left:
            chunk = self.file.read(min(transfer.CHUNK, left))
            if not chunk:
                raise OSError(errno.EIO, "the local data shrank while being hashed")
            digest.update(chunk)
            left -= len(chunk)
        return digest.hexdigest()

    def close(self):
        if self._owned:
            self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _measure(file):
    """``(fd or None, start, size)``: fd only for a regular file (sent with sendfile)."""
    try:
        fd = file.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    if fd is not None and stat.S_ISREG(os.fstat(fd).st_mode):
        start = file.tell()
        return fd, start, max(0, os.fstat(fd).st_size - start)
    try:
        start = file.tell()
        end = file.seek(0, os.SEEK_END)
        file.seek(start)
    except (AttributeError, OSError, ValueError):
        raise ValueError("cannot upload from %r: its size must be known (a file or a "
                         "seekable stream)" % (file,)) from None
    return None, start, end - start


def _target(local, resume, overwrite):
    if isinstance(local, (str, bytes, os.PathLike)):
        return _PathTarget(os.fsdecode(local), resume, overwrite)
    return _StreamTarget(local)


class _StreamTarget:
    """A download into the caller's file object: written as it arrives, never resumed."""

    offset = 0
    fd = None

    def __init__(self, file):
        self.write = file.write
        self._file = file

    def prefix(self, _offset):
        return None

    def record(self, _version):
        pass

    def discard(self):
        pass

    def commit(self):
        flush = getattr(self._file, "flush", None)
        if flush is not None:
            flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False


def _version(remote, size, mtime):
    """What identifies the remote file a kept download part is of."""
    number = isinstance(mtime, (int, float)) and not isinstance(mtime, bool)
    return {"path": remote, "size": size, "mtime": float(mtime) if number else None}


def part_path(dest, resume):
    """The temp file a download of ``dest`` is written to, in ``dest``'s directory.

    Resumable downloads use one fixed name per destination; others a random one.
    """
    dest = Path(dest)
    name = dest.name if len(dest.name.encode()) <= 180 else hashlib.sha256(
        os.fsencode(dest.name)).hexdigest()[:32]
    tag = "" if resume else "." + secrets.token_hex(8)
    return dest.parent / (".%s%s%s" % (name, tag, PART_SUFFIX))


def upload_id_for(path):
    """An ``upload_id`` for a put of the local file ``path``: the same until the file
    changes (its device, inode, size or modification time), without reading it."""
    st = os.stat(path)
    identity = "%d:%d:%d:%d" % (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    return hashlib.sha256(identity.encode("ascii")).hexdigest()[:32]


class _PathTarget:
    """A download into a temp file next to ``dest``, renamed over it once verified.

    A resumable one has a fixed part name and, beside it (``SOURCE_SUFFIX``),
    the remote path, size and mtime the part is of.
    """

    def __init__(self, dest, resume, overwrite=True):
        self.dest = Path(os.path.abspath(dest))
        if self.dest.is_dir():
            raise IsADirectoryError(errno.EISDIR, "is a directory", dest)
        if not self.dest.parent.is_dir():
            raise FileNotFoundError(errno.ENOENT, "no such directory", str(self.dest.parent))
        if not overwrite and os.path.lexists(self.dest):
            raise FileExistsError(errno.EEXIST, "exists (ask to overwrite)", dest)
        self.resume, self.overwrite = resume, overwrite
        self.temp = part_path(self.dest, resume)
        self.source = Path(str(self.temp) + SOURCE_SUFFIX)
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | (0 if resume else os.O_EXCL)
        self.fd = os.open(self.temp, flags, 0o666)
        try:
            _lock_regular(self.fd, self.temp)
        except BaseException:
            os.close(self.fd)
            raise
        self.file = os.fdopen(self.fd, "r+b")
        self.done = False
        self.offset = self.file.seek(0, os.SEEK_END) if resume else 0

    def match(self, version):
        """Keep the part only if it is of ``version`` (see :func:`_version`) of the remote
        file; return how many kept bytes were discarded."""
        if self.offset and (self.offset > version["size"] or self._recorded() != version):
            discarded = self.offset
            self.restart()
            return discarded
        return 0

    def record(self, version):
        """Note beside a resumable part which version of the remote file it is of."""
        if not self.resume:
            return
        fd = os.open(self.source, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o666)
        with os.fdopen(fd, "w", encoding="utf-8") as record:
            json.dump(version, record)

    def _recorded(self):
        try:
            with open(self.source, encoding="utf-8") as record:
                return json.load(record)
        except (OSError, ValueError):
            return None

    def prefix(self, offset):
        return (self.fd, 0, offset) if offset else None

    def write(self, view):
        self.file.write(view)

    def restart(self):
        self.file.seek(0)
        self.file.truncate()
        self.offset = 0

    def commit(self):
        self.file.flush()
        os.fsync(self.fd)
        if self.overwrite:
            os.replace(self.temp, self.dest)
        else:
            _rename_no_replace(self.temp, self.dest)
        self.done = True
        self.file.close()
        self._forget_source()
        fsync_directory(self.dest.parent)

    def discard(self):
        if not self.done:
            self.done = True
            self.file.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.temp)
            self._forget_source()

    def _forget_source(self):
        if self.resume:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.source)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.resume and not self.done and os.fstat(self.fd).st_size:
            self.file.close()  # kept for the next attempt
        else:
            self.discard()
        return False


def _rename_no_replace(temp, dest):
    """Rename ``temp`` to ``dest`` unless ``dest`` exists (FileExistsError), atomically
    where the file system has hard links."""
    try:
        os.link(temp, dest)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if os.path.lexists(dest):
            raise FileExistsError(errno.EEXIST, "exists (ask to overwrite)", str(dest)) from None
        os.rename(temp, dest)
        return
    os.unlink(temp)


def _lock_regular(fd, path):
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise OSError(errno.EBUSY, "another download is writing this file", str(path)) from None


__all__ = ["FileClient", "FileInfo", "Transfer", "part_path", "upload_id_for"]
