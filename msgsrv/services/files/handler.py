"""FileHandler: get, put, list, stat, delete, mkdir and rename inside one root.

Each request is checked against the operation table (:mod:`msgsrv.services.files.protocol`)
before anything runs: the operation must be enabled (``operations``), the key
allowed (``read_keys`` / ``write_keys``; ``anonymous = read`` lets clients
that skip authentication read), the arguments well-formed.  Then one
``_op_NAME`` method runs.  Every client path goes through the service's
:class:`~msgsrv.services.files.sandbox.Sandbox`, which walks it from the root's descriptor
and hands back a :class:`~msgsrv.services.files.sandbox.Location`; every operation acts on
it with ``dir_fd=`` and never by a path string, so nothing outside the root
is touched even while the tree changes.  Uploads go through an
``AtomicWriter``, so the destination holds the old file or the whole
verified new one, never a mix.  Transfers block inside ``self.transfer()``,
admitted by the service's TransferGate and held to ``min_transfer_rate``; a
get of a small file is queued whole instead, holding no thread.  The wire
format is in docs/PROTOCOL.rst ("File service").
"""

import contextlib
import errno
import hashlib
import json
import logging
import os
import stat
import time

from msgsrv.plugin import (AuthedService, AuthenticatedHandler, ConfigError, ProtocolError, Setting,
                           choice, encode, format_peer, octal_mode, seconds, size, text, word_list)
from . import transfer
from .protocol import LIST_PAGE, OPERATIONS, check_request, parse_operations
from .sandbox import AtomicWriter, PathRefused, Sandbox, cleanup_temp_files, is_reserved_name
from .state import DigestCache, QuotaLedger, RootLock, content_key

log = logging.getLogger("msgsrv.files")

# Transfer buffers held against transfer_buffer_budget: an upload's DEPTH
# buffers plus one to hash what a resumed or conditional upload already holds.
_UPLOAD_BUFFERS = (transfer.DEPTH + 1) * transfer.SERVER_CHUNK
_HASH_BUFFERS = transfer.SERVER_CHUNK
# Files up to this size are sent from memory without a blocking section, so
# small gets are served whatever the transfers in progress.
_INLINE_SIZE = 64 << 10

_ERRNO_CODES = {
    errno.ENOENT: "not-found", errno.EEXIST: "exists", errno.ENOTEMPTY: "not-empty",
    errno.EACCES: "denied", errno.EPERM: "denied", errno.EROFS: "denied",
    errno.ENOSPC: "disk-full", errno.EDQUOT: "disk-full", errno.EFBIG: "disk-full",
    errno.EISDIR: "bad-path", errno.ENOTDIR: "bad-path", errno.EINVAL: "bad-path",
    errno.ELOOP: "bad-path", errno.ENAMETOOLONG: "bad-path", errno.EXDEV: "bad-path",
}


class _Desync(Exception):
    """A transfer failed half-way: the peer gets the error, then the connection closes."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def _shown(path):
    return "path %r" % (path if len(path) <= 80 else path[:80] + "...")


def _error_code(exc):
    return _ERRNO_CODES.get(exc.errno, "io-error")


@contextlib.contextmanager
def _os_errors(path):
    """Turn a file system ``OSError`` into a ProtocolError naming the client's path only."""
    try:
        yield
    except (ConnectionError, TimeoutError):  # the peer's trouble, handled by the base class
        raise
    except OSError as exc:
        code = _error_code(exc)
        if code == "io-error":
            log.error("file system error on %s: %s", _shown(path or ""), exc)
        reason = os.strerror(exc.errno) if exc.errno else "failed"
        raise ProtocolError(code, "%s: %s" % (_shown(path or ""), reason)) from None


def _kind(mode):
    for test, kind in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "link")):
        if test(mode):
            return kind
    return "other"


def _describe(st):
    """The fields of a listing entry or a stat reply (sizes only for files)."""
    kind = _kind(st.st_mode)
    return {"kind": kind, "size": st.st_size if kind == "file" else 0,
            "mtime": round(st.st_mtime, 6)}


def _encodable(name):
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # not UTF-8 on disk: no client path could name it
        return False
    return True


def _open_root(name, root):
    """The Sandbox of ``root``; ConfigError naming the service if it is not a directory."""
    try:
        return Sandbox(root)
    except (OSError, ConfigError) as exc:
        raise ConfigError("[service:%s] root %r: %s" % (
            name, root, getattr(exc, "strerror", None) or exc)) from None


class FileService(AuthedService):
    """A file service's shared state: the root's descriptor (``sandbox``), the
    checksum cache, the quota ledger and the commit lock (a
    :class:`~msgsrv.services.files.state.RootLock`, shared with every daemon serving the
    same root).

    A reload keeps them all; a changed ``root`` is applied by opening the
    new root (requests already running finish in the old one, whose
    descriptor closes when they are done), with a lock file and a quota
    ledger of its own.
    """

    def __init__(self, config, global_options):
        super().__init__(config, global_options)
        self.sandbox = self._prepare_root(config)
        self.commit_lock = RootLock(self.sandbox)
        self.quota = QuotaLedger(self.sandbox, config["quota"], self.commit_lock)
        self.digests = DigestCache()
        self.last_cleanup = time.monotonic()
        _warn_unknown_keys(config, self.keys)

    def _prepare_root(self, config):
        """Create the root if missing, open it, remove partial uploads left in it (at
        the daemon's start: not in a worker process started later, whose siblings
        may be resuming those uploads)."""
        root = config["root"]
        try:
            os.makedirs(root, exist_ok=True)
        except OSError as exc:
            raise ConfigError("%s root %r: %s" % (self.where, root, exc.strerror or exc)) from None
        sandbox = _open_root(self.name, root)
        removed = remove_abandoned(sandbox, config["temp_max_age"])
        if removed:
            log.info("%s: removed %d partial uploads", self.name, removed)
        return sandbox

    def prepare_keyed(self, config, global_options, keys):
        _warn_unknown_keys(config, keys)
        limit = config["quota"]
        sandbox, lock, quota = self.sandbox, self.commit_lock, self.quota
        if config["root"] != self.config["root"]:
            sandbox = self._prepare_root(config)
            lock = RootLock(sandbox, self.commit_lock.thread_lock)
            quota = QuotaLedger(sandbox, limit, lock)
        elif limit and not quota.limit:
            quota = QuotaLedger(sandbox, limit, lock)  # usage was not counted without a quota

        def apply():
            self.sandbox, self.commit_lock, self.quota = sandbox, lock, quota
            quota.limit = limit
        return apply

    def close(self):
        """Close the root's descriptors (a request still running is refused ``busy``)."""
        self.sandbox.close()
        self.commit_lock.close()


def remove_abandoned(sandbox, temp_max_age):
    """Remove the temp files writers left behind: the parts of resumable uploads older
    than ``temp_max_age`` (kept until then for a resume, on any daemon serving the
    root), and every other temp file no writer holds (it was left by one that died)."""
    return cleanup_temp_files(sandbox, resumable_max_age=temp_max_age)


class FileHandler(AuthenticatedHandler):
    """One connection of a file service; see the module docstring."""

    service_class = FileService
    body_types = ()

    settings = AuthenticatedHandler.settings + (
        Setting("root", text, "var/files",
                "Directory served (created if missing); no path leads outside it."),
        Setting("operations", parse_operations, "get, put, list, stat, delete, mkdir, rename",
                "Operations enabled; 'get, list, stat' makes the service read-only."),
        Setting("read_keys", word_list, "*",
                "Keys that may get, list and stat ('*': every key; empty: none)."),
        Setting("write_keys", word_list, "*",
                "Keys that may put, delete, mkdir and rename ('*': every key; empty: none)."),
        Setting("anonymous", choice("no", "read"), "no",
                "'read' lets clients that do not authenticate get, list and stat."),
        Setting("max_file_size", size(0), "1G", "Largest file a client may upload."),
        Setting("quota", size(0), "0",
                "Most bytes all files under root may take together, one quota for all "
                "worker processes (0: no quota)."),
        Setting("temp_max_age", seconds(60), "86400",
                "Seconds an interrupted resumable upload is kept for its client, who may "
                "resume it on any daemon serving the root (other partial uploads are "
                "removed at start)."),
        Setting("file_mode", octal_mode, "0640",
                "Permission bits of uploaded files (octal; the daemon's umask is ignored)."),
        Setting("dir_mode", octal_mode, "0750",
                "Permission bits of directories clients create (octal; the umask is ignored)."),
    )

    @classmethod
    def check_service(cls, service, global_options):
        """The keys file (see AuthenticatedHandler); an existing root must be a directory."""
        super().check_service(service, global_options)
        if os.path.lexists(service["root"]):
            _open_root(service.name, service["root"]).close()

    @classmethod
    def creates(cls, service):
        return super().creates(service) + (("root", "file root"),)

    def anonymous_allowed(self):
        return self.options["anonymous"] == "read"

    @property
    def sandbox(self):
        """The service's Sandbox (shared by every connection)."""
        return self.service.sandbox

    # -- dispatch -------------------------------------------------------------

    def request_received(self, message):
        operation, args = check_request(message.header)
        self._authorize(operation)
        try:
            with _os_errors(args.get("path")):
                reply = getattr(self, "_op_" + operation.name)(**args)
        except ProtocolError as exc:
            if exc.code == "bad-path":
                self._audit_refusal(operation, exc)
            raise
        except _Desync as exc:
            log.warning("%s: %s transfer aborted (%s): %s", self.server.name,
                        format_peer(self.conn.address), exc.code, exc.message)
            self.reply_error(exc.code, exc.message)
            self.conn.close("transfer failed: %s" % exc.code)
            return
        if reply is not None:
            self.reply(*reply)

    def _audit_refusal(self, operation, exc):
        """One log line per refused path: the trail of traversal attempts, by key and peer."""
        log.warning("%s: bad-path refused to key %r from %s (%s): %s", self.server.name,
                    self.identity, format_peer(self.conn.address), operation.name, exc.message)

    def _authorize(self, operation):
        if operation.access == "any":
            return
        if operation.name not in self.options["operations"]:
            raise ProtocolError("denied", "%s is disabled on this service" % operation.name)
        if not self._may(operation.access):
            who = "anonymous clients" if self.identity is None else "key %r" % self.identity
            raise ProtocolError("denied", "%s may not %s here" % (who, operation.name))

    def _may(self, access):
        if self.identity is None:
            return access == "read" and self.anonymous_allowed()
        keys = self.options[access + "_keys"]
        return "*" in keys or self.identity in keys

    def _allowed(self, operation):
        if operation.access == "any":
            return True
        return operation.name in self.options["operations"] and self._may(operation.access)

    # -- operations -------------------------------------------------------------

    def _op_help(self):
        limits = {"max_file_size": self.options["max_file_size"], "quota": self.options["quota"],
                  "quota_available": self.service.quota.available, "list_page": LIST_PAGE}
        operations = [dict(op.describe(), allowed=self._allowed(op)) for op in OPERATIONS.values()]
        return ({"type": "help", "identity": self.identity, "operations": operations,
                 "limits": limits},)

    def _op_get(self, path, offset):
        with self.sandbox.locate(path) as where, where.open_file() as file:
            st = os.fstat(file.fileno())
            if offset > st.st_size:
                raise ProtocolError("bad-request", "'offset' %d is past the end of %s (%d bytes)"
                                    % (offset, _shown(path), st.st_size))
            header = {"type": "data", "path": path, "size": st.st_size, "offset": offset,
                      "mtime": round(st.st_mtime, 6)}
            if self._fits_inline(st.st_size):
                self._send_inline(header, file, st, offset)
            else:
                with self.transfer(_HASH_BUFFERS) as stream:
                    stream.send(header)
                    digest = self._send(stream, file, st, offset)
                    stream.send({"type": "end", "sha256": digest})
        self.server.counters.incr("files_sent")
        log.info("%s: %s got %s (%d bytes from %d)", self.server.name, self.identity,
                 _shown(path), st.st_size, offset)

    def _fits_inline(self, size):
        # Bounded like any reply: the peer's queue stays under max_pending_output.
        return (size <= _INLINE_SIZE
                and self.conn.pending_output + size <= self.options["max_pending_output"])

    def _send_inline(self, header, file, st, offset):
        """Queue a small file's exchange whole: no blocking section, no thread held."""
        data = os.pread(file.fileno(), st.st_size, 0)
        if len(data) != st.st_size:
            raise ProtocolError("io-error", "%s changed while being read; try again"
                                % _shown(header["path"]))
        digest = self.service.digests.get(st)
        if digest is None:
            digest = hashlib.sha256(data).hexdigest()
            if content_key(os.fstat(file.fileno())) == content_key(st):
                self.service.digests.put(st, digest)
        # One send: separate small segments would wait on the peer's delayed ACK (Nagle).
        self.conn.send(b"".join((encode(header), data[offset:],
                                 encode({"type": "end", "sha256": digest}))))

    def _send(self, stream, file, st, offset):
        """Send the file from ``offset``; return the whole file's SHA-256 (hashed alongside)."""
        known = self.service.digests.get(st)
        if known is not None:
            transfer.send_file(stream, file, offset, st.st_size - offset)
            return known
        with transfer.Hasher((file.fileno(), 0, st.st_size), chunk_size=transfer.SERVER_CHUNK,
                             depth=0) as hasher:
            transfer.send_file(stream, file, offset, st.st_size - offset)
            digest = hasher.hexdigest()
        if content_key(os.fstat(file.fileno())) == content_key(st):
            self.service.digests.put(st, digest)
        return digest

    def _op_put(self, path, size, overwrite, upload_id, if_sha256):
        if size > self.options["max_file_size"]:
            raise ProtocolError("too-large", "%d bytes exceed max_file_size (%d bytes)"
                                % (size, self.options["max_file_size"]))
        with self.sandbox.locate(path) as dest, self.transfer(_UPLOAD_BUFFERS) as stream:
            self._clean_if_due()
            old = self._check_destination(dest, overwrite, if_sha256)
            with self.service.quota.reserve(size - old), \
                    self._writer(dest, upload_id, size) as writer:
                self._check_disk(dest, size - writer.offset)
                stream.send({"type": "ready", "offset": writer.offset})
                digest = self._receive(stream, writer, size)
                self._commit(writer, dest, overwrite, if_sha256, digest)
        self.server.counters.incr("files_received")
        log.info("%s: %s put %s (%d bytes from %d, sha256 %s)", self.server.name, self.identity,
                 _shown(path), size, writer.offset, digest)
        return ({"type": "ok", "path": path, "size": size, "sha256": digest},)

    def _check_destination(self, dest, overwrite, if_sha256):
        """Return the size of the file the upload would replace (0: none), or refuse the put."""
        path = dest.path
        st = dest.lstat()
        if st is None:
            if if_sha256 is not None:
                raise ProtocolError("conflict", "%s does not exist (if_sha256 expects it)"
                                    % _shown(path))
            return 0
        dest.check_regular(st)
        if if_sha256 is not None:
            with dest.open_file() as file:
                current = self.service.digests.digest_of(file.fileno())
            if current != if_sha256:
                raise ProtocolError("conflict", "%s has SHA-256 %s, not the expected %s"
                                    % (_shown(path), current, if_sha256))
        elif not overwrite:
            raise ProtocolError("exists", "%s exists (ask to overwrite)" % _shown(path))
        return st.st_size

    def _writer(self, dest, upload_id, size):
        mode = self.options["file_mode"]
        if upload_id is None:
            return AtomicWriter(dest, mode=mode)
        upload = "%s:%s" % (self.identity, upload_id)
        writer = AtomicWriter.resume(dest, upload, mode=mode)
        if writer.offset > size:  # left by an upload of other content under the same id
            writer.discard()
            writer = AtomicWriter.resume(dest, upload, mode=mode)
        return writer

    def _check_disk(self, dest, count):
        st = os.fstatvfs(dest.dir_fd)
        free = st.f_bavail * st.f_frsize
        if free < count:
            raise ProtocolError("disk-full", "the upload needs %d bytes, the server has %d free"
                                % (count, free))

    def _receive(self, stream, writer, size):
        """Receive the rest of the upload and its end frame; return the verified SHA-256."""
        digest = self._receive_data(stream, writer, size)
        end = stream.recv()
        claimed = end.header.get("sha256")
        if end.type != "end" or not isinstance(claimed, str):
            raise _Desync("bad-request", "expected an end frame with the sha256 after the data")
        if claimed != digest:
            writer.discard()
            self.server.counters.incr("checksum_mismatches")
            raise ProtocolError("checksum-mismatch", "received %d bytes with SHA-256 %s, not %s; "
                                "nothing was stored" % (size, digest, claimed))
        return digest

    def _receive_data(self, stream, writer, size):
        try:
            with self._prefix(writer) as prefix, \
                    transfer.Hasher(prefix, chunk_size=transfer.SERVER_CHUNK) as hasher:
                transfer.receive(stream, size - writer.offset, writer.write, hasher,
                                 flush_fd=writer.file.fileno())
                return hasher.hexdigest()
        except (ConnectionError, TimeoutError):
            raise
        except OSError as exc:
            raise _Desync(_error_code(exc), "cannot store the upload: %s"
                          % (os.strerror(exc.errno) if exc.errno else exc)) from None

    @contextlib.contextmanager
    def _prefix(self, writer):
        """``(fd, 0, offset)`` to hash what a resumed upload already holds, or None."""
        # The writer's own descriptor (readable, the lock held): read with pread, never reopened.
        yield (writer.file.fileno(), 0, writer.offset) if writer.offset else None

    def _commit(self, writer, dest, overwrite, if_sha256, digest):
        writer.file.flush()
        os.fsync(writer.file.fileno())  # the slow part, outside the lock
        inode = os.fstat(writer.file.fileno()).st_ino
        lock, quota = self.service.commit_lock, self.service.quota
        with lock.held() as held:
            # Checked again: another upload (here or on another daemon) may have landed
            # while this one streamed.
            old = self._check_destination(dest, overwrite, if_sha256)
            quota.check(writer.size - old, held)
            writer.commit()
            quota.changed(writer.size - old, held)
        st = dest.lstat()
        if st is not None and st.st_ino == inode:
            self.service.digests.put(st, digest)

    def _clean_if_due(self):
        age = self.options["temp_max_age"]
        now = time.monotonic()
        if now - self.service.last_cleanup < min(age / 4, 3600):
            return
        self.service.last_cleanup = now
        removed = remove_abandoned(self.sandbox, age)
        if removed:
            log.info("%s: removed %d abandoned uploads", self.server.name, removed)

    def _op_list(self, path, after):
        with self.sandbox.locate(path, allow_root=True) as where, \
                where.open_directory() as listed:
            names = sorted(name for name in os.listdir(listed.dir_fd)
                           if not is_reserved_name(name) and _encodable(name)
                           and (after is None or name > after))
            entries = []
            for name in names[:LIST_PAGE]:
                with contextlib.suppress(FileNotFoundError):  # removed while we list
                    st = os.stat(name, dir_fd=listed.dir_fd, follow_symlinks=False)
                    entries.append(dict(_describe(st), name=name))
        body = json.dumps(entries, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        return ({"type": "listing", "path": path, "count": len(entries),
                 "more": len(names) > LIST_PAGE}, body)

    def _op_stat(self, path, sha256):
        with self.sandbox.locate(path, allow_root=True) as where:
            reply = dict(_describe(where.stat()), type="stat", path=path)
            if sha256:
                with where.open_file() as file:
                    reply["sha256"] = self._digest(file)
        return (reply,)

    def _digest(self, file):
        """The file's SHA-256: at once if cached or small, else hashed as an admitted transfer."""
        st = os.fstat(file.fileno())
        if st.st_size <= _INLINE_SIZE or self.service.digests.get(st) is not None:
            return self.service.digests.digest_of(file.fileno())
        with self.transfer(_HASH_BUFFERS):
            return self.service.digests.digest_of(file.fileno())

    def _op_delete(self, path):
        with self.sandbox.locate(path) as where:
            with self.service.commit_lock.held() as held:
                st = where.lstat()
                if st is None:
                    raise ProtocolError("not-found", "%s does not exist" % _shown(path))
                try:
                    remove = os.rmdir if stat.S_ISDIR(st.st_mode) else os.unlink
                    remove(where.name, dir_fd=where.dir_fd)
                except OSError as exc:
                    if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                        raise ProtocolError("not-empty", "%s is a directory that is not empty"
                                            % _shown(path)) from None
                    raise
                if stat.S_ISREG(st.st_mode):
                    self.service.quota.changed(-st.st_size, held)
            where.fsync()
        log.info("%s: %s deleted %s", self.server.name, self.identity, _shown(path))
        return ({"type": "ok", "path": path},)

    def _op_mkdir(self, path, parents):
        mode = self.options["dir_mode"]
        with self.sandbox.locate(path, parents_mode=mode if parents else None) as where:
            where.mkdir(mode)
            where.fsync()
        return ({"type": "ok", "path": path},)

    def _op_rename(self, path, to, overwrite):
        with self.sandbox.locate(path) as source, self.sandbox.locate(to) as dest:
            with self.service.commit_lock.held() as held:
                moved, replaced = source.lstat(), dest.lstat()
                if moved is None:
                    raise ProtocolError("not-found", "%s does not exist" % _shown(path))
                if replaced is not None and not overwrite and not os.path.samestat(moved, replaced):
                    raise ProtocolError("exists", "%s exists (ask to overwrite)" % _shown(to))
                _rename(source, dest)
                if replaced is not None and stat.S_ISREG(replaced.st_mode) \
                        and not os.path.samestat(moved, replaced):
                    self.service.quota.changed(-replaced.st_size, held)
            source.fsync()
            if not os.path.samestat(os.fstat(source.dir_fd), os.fstat(dest.dir_fd)):
                dest.fsync()
        log.info("%s: %s renamed %s to %s", self.server.name, self.identity, _shown(path),
                 _shown(to))
        return ({"type": "ok", "path": path, "to": to},)


def _rename(source, dest):
    """Rename ``source`` to ``dest`` (two Locations), both relative to their directories."""
    with _os_errors(dest.path):
        try:
            os.rename(source.name, dest.name, src_dir_fd=source.dir_fd, dst_dir_fd=dest.dir_fd)
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # the kernel's answer to moving a directory into itself
                raise PathRefused("cannot move %s into itself (%s)"
                                  % (_shown(source.path), _shown(dest.path))) from None
            raise


def _warn_unknown_keys(config, keys):
    for setting in ("read_keys", "write_keys"):
        unknown = sorted(set(config[setting]) - set(keys) - {"*"})
        if unknown:
            log.warning("%s: %s names keys not in the keys file: %s",
                        config.name, setting, ", ".join(unknown))
