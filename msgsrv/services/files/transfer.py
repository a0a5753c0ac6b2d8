"""File bytes over a socket, with SHA-256 computed alongside; both ends use it.

The sender hashes while it sends and the receiver while it receives, so an
end-to-end check costs no extra pass over the data.  Hashing runs on a helper
thread (``hashlib`` releases the interpreter lock on large buffers), fed from
a small fixed pool of buffers: memory stays bounded whatever the file size,
and a slow hash or disk slows the socket down (TCP flow control) instead of
filling memory.  Received data is flushed to disk in the background as it
arrives, so the final ``fsync`` before a rename has little left to do.
"""

import errno
import hashlib
import os
import queue
import threading

from msgsrv.wire.errors import ConnectionFailed
from msgsrv.wire.frame_stream import translate_errors

CHUNK = 1 << 20            # one buffer: large enough that hashing releases the GIL for long
DEPTH = 4                  # buffers per transfer: 4 MiB in flight at most
# A server's buffers: many transfers share the service's transfer_buffer_budget.
SERVER_CHUNK = 256 << 10
SEND_STEP = 16 << 20       # sendfile() bytes per call: the progress granularity of a send
FLUSH_EVERY = 64 << 20     # start writing received data back to disk every this many bytes

_STOP = object()


class Hasher:
    """SHA-256 of a byte stream, computed on a helper thread.

    ``prefix`` is ``(fd, start, count)`` or None: ``count`` bytes of the open
    file descriptor ``fd`` from ``start`` are hashed first (read with
    ``os.pread``, the descriptor's position is untouched), then every buffer
    handed to ``submit``, in order.  ``take()`` returns a free buffer of
    ``CHUNK`` bytes, blocking while all ``DEPTH`` are in use; ``submit(buffer,
    length)`` queues its first ``length`` bytes; the buffer must not be
    touched again until ``take()`` hands it out anew.  ``hexdigest()`` waits
    for the thread and returns the digest; it raises ``OSError`` if reading
    the prefix failed or the file was shorter than ``count``.  ``close()``
    abandons the work, a prefix half-read included (idempotent).  Use as a
    context manager.
    """

    def __init__(self, prefix=None, *, chunk_size=CHUNK, depth=DEPTH):
        self._hash = hashlib.sha256()
        self._prefix = prefix
        self._chunk_size = chunk_size
        self._free = queue.Queue()
        for _ in range(depth):
            self._free.put(bytearray(chunk_size))
        self._work = queue.Queue()
        self._error = None
        self._digest = None
        self._abandoned = False
        self._thread = threading.Thread(target=self._run, name="msgsrv-sha256", daemon=True)
        self._thread.start()

    def take(self):
        """Return a free buffer (a ``bytearray``); blocks while every buffer is in use."""
        return self._free.get()

    def submit(self, buffer, length):
        """Hash ``buffer[:length]`` after everything submitted before it."""
        self._work.put((buffer, length))

    def hexdigest(self):
        """Wait for every queued byte to be hashed; return the lowercase hex digest."""
        if self._digest is None:
            self._finish()
            if self._error is not None:
                raise self._error
            self._digest = self._hash.hexdigest()
        return self._digest

    def close(self):
        """Stop the helper thread without waiting for a result (safe to repeat)."""
        self._abandoned = True
        self._finish()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _finish(self):
        if self._thread.is_alive():
            self._work.put(_STOP)
            self._thread.join()

    def _run(self):
        if self._prefix is not None:
            try:
                self._hash_file(*self._prefix)
            except OSError as exc:
                self._error = exc
        while True:
            item = self._work.get()
            if item is _STOP:
                return
            buffer, length = item
            if self._error is None:
                self._hash.update(memoryview(buffer)[:length])
            self._free.put(buffer)

    def _hash_file(self, fd, start, count):
        buffer = bytearray(min(self._chunk_size, max(count, 1)))
        view = memoryview(buffer)
        end = start + count
        while start < end:
            if self._abandoned:
                raise OSError("hashing abandoned")
            got = os.preadv(fd, [view[:min(len(buffer), end - start)]], start)
            if not got:
                raise OSError("file shrank while being hashed (%d bytes missing)" % (end - start))
            self._hash.update(view[:got])
            start += got


def file_sha256(fd, start=0, count=None, *, chunk_size=CHUNK):
    """Return the SHA-256 hex digest of ``count`` bytes of ``fd`` from ``start`` (None: to EOF).

    Reads with one buffer of ``chunk_size`` bytes.  Raises ``OSError`` if the
    file cannot be read or is shorter than ``count``.
    """
    if count is None:
        count = max(0, os.fstat(fd).st_size - start)
    with Hasher((fd, start, count), chunk_size=chunk_size, depth=0) as hasher:
        return hasher.hexdigest()


class _Flusher:
    """Write a growing file back to disk every ``FLUSH_EVERY`` bytes, on a helper thread.

    The kernel otherwise keeps gigabytes dirty until the final ``fsync``,
    which then stalls for as long as the whole disk write takes.
    """

    def __init__(self, fd):
        self._fd = fd
        self._pending = 0
        self._wake = threading.Event()
        self._stopping = False
        self._thread = None

    def wrote(self, count):
        self._pending += count
        if self._pending < FLUSH_EVERY:
            return
        self._pending = 0
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="msgsrv-flush", daemon=True)
            self._thread.start()
        self._wake.set()

    def close(self):
        if self._thread is not None:
            self._stopping = True
            self._wake.set()
            self._thread.join()

    def _run(self):
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            try:
                os.fdatasync(self._fd)
            except OSError:
                return  # the final fsync reports the problem where it can be handled


def receive(stream, count, write, hasher, *, progress=None, flush_fd=None):
    """Read exactly ``count`` raw bytes from ``stream``; ``write`` and hash each chunk.

    Bytes the stream's decoder already holds come first; bytes beyond
    ``count`` stay there for the next frame.  ``write(view)`` must take the
    whole view.  ``progress(received)`` is called after each chunk.  With
    ``flush_fd``, that file is written back to disk as it grows.  Raises
    ``ConnectionFailed`` / ``RequestTimeout`` for the socket, whatever
    ``write`` raises (``OSError``) for the disk.
    """
    flusher = _Flusher(flush_fd) if flush_fd is not None else None
    try:
        done = _take_buffered(stream, count, write, hasher)
        if done and progress is not None:
            progress(done)  # a small file may arrive whole with its header
        while done < count:
            buffer = hasher.take()
            got = _fill(stream.sock, buffer, count - done)
            write(memoryview(buffer)[:got])
            hasher.submit(buffer, got)
            done += got
            if flusher is not None:
                flusher.wrote(got)
            if progress is not None:
                progress(done)
    finally:
        if flusher is not None:
            flusher.close()


def _take_buffered(stream, count, write, hasher):
    pending = stream.decoder.take_buffered()
    head = pending[:count]
    if len(pending) > count:
        stream.decoder.feed(pending[count:])
    if head:
        buffer = hasher.take()
        if len(head) > len(buffer):  # only if a peer pipelined megabytes early
            buffer = bytearray(len(head))
        buffer[:len(head)] = head
        write(memoryview(buffer)[:len(head)])
        hasher.submit(buffer, len(head))
    return len(head)


def _fill(sock, buffer, wanted):
    """recv_into ``buffer`` until it is full or ``wanted`` bytes arrived; return the count."""
    view = memoryview(buffer)[:min(len(buffer), wanted)]
    got = 0
    with translate_errors("receive"):
        while got < len(view):
            n = sock.recv_into(view[got:])
            if not n:
                raise ConnectionFailed("connection closed with %d bytes still expected"
                                       % (wanted - got))
            got += n
    return got


def send_file(stream, file, offset, count, *, progress=None):
    """Send ``count`` bytes of the regular file ``file`` from ``offset`` with ``sendfile``.

    ``progress(sent)`` is called every ``SEND_STEP`` bytes.  Raises
    ``ConnectionFailed`` (also when the file shrank) or ``RequestTimeout``.
    """
    sent = 0
    while sent < count:
        step = min(SEND_STEP, count - sent)
        stream.send_file(file, offset + sent, step)
        sent += step
        if progress is not None:
            progress(sent)


def send_stream(stream, source, count, hasher, *, progress=None):
    """Send ``count`` bytes read from the binary file-like ``source``, hashing them.

    Raises ``ConnectionFailed`` if ``source`` ends early, as for the socket.
    """
    sent = 0
    while sent < count:
        buffer = hasher.take()
        got = _read_into(source, memoryview(buffer)[:min(len(buffer), count - sent)])
        if not got:
            raise ConnectionFailed("local data ended %d bytes early" % (count - sent))
        stream.send_raw(memoryview(buffer)[:got])
        hasher.submit(buffer, got)
        sent += got
        if progress is not None:
            progress(sent)


def _read_into(source, view):
    readinto = getattr(source, "readinto", None)
    if readinto is not None:
        return readinto(view) or 0
    data = source.read(len(view))
    view[:len(data)] = data
    return len(data)


__all__ = ["CHUNK", "SERVER_CHUNK", "Hasher", "file_sha256", "receive", "send_file", "send_stream"]


def fsync_dir(fd):
    """Flush the entries of the directory open as ``fd`` to disk (where the file system can)."""
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some file systems cannot fsync a directory; their renames are as durable as they get.
        if exc.errno != errno.EINVAL:
            raise


def fsync_directory(path):
    """Flush ``path``'s directory entries (a rename, create or unlink) to disk.

    For local paths a client chose (the file client); servers use
    ``Location.fsync`` (:mod:`msgsrv.services.files.sandbox`).  Raises
    ``OSError`` if the directory cannot be opened or synced.
    """
    fd = os.open(os.fspath(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fsync_dir(fd)
    finally:
        os.close(fd)
