"""msgsrv.services.files.transfer (hashing alongside I/O), msgsrv.services.files.protocol (requests), msgsrv.services.files.state."""

import hashlib
import io
import os
import socket
import threading

import pytest

from msgsrv.services.files import transfer
from msgsrv.wire.errors import ConnectionFailed, ProtocolError
from msgsrv.services.files.protocol import CODES, CONFIGURABLE, OPERATIONS, check_request, parse_operations
from msgsrv.services.files.state import DigestCache, QuotaLedger, content_key
from msgsrv.wire.frames import encode
from msgsrv.services.files.sandbox import TEMP_PREFIX, Sandbox
from msgsrv.wire.frame_stream import FrameStream
from tests.conftest import ROOT, wait_for
from tests.service.test_stream import pair  # noqa: F401  (a fixture)

pytestmark = pytest.mark.timeout(30)


def sha(data):
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def data_file(tmp_path):
    data = os.urandom(3 * transfer.CHUNK + 12345)
    path = tmp_path / "data"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    yield fd, data
    os.close(fd)


# -- Hasher ---------------------------------------------------------------------------

def test_hasher_covers_the_prefix_then_the_submitted_buffers(data_file):
    fd, data = data_file
    with transfer.Hasher((fd, 0, 1000)) as hasher:
        for start in range(1000, len(data), 700_000):
            piece = data[start:start + 700_000]
            buffer = hasher.take()
            buffer[:len(piece)] = piece
            hasher.submit(buffer, len(piece))
        assert hasher.hexdigest() == sha(data) == hasher.hexdigest()


def test_hasher_memory_is_bounded_by_its_buffers():
    hasher = transfer.Hasher(depth=2)
    first, second = hasher.take(), hasher.take()
    taken = []
    third = threading.Thread(target=lambda: taken.append(hasher.take()))
    third.start()
    third.join(0.2)
    assert third.is_alive() and not taken  # both buffers are out: take() waits
    hasher.submit(first, 0)
    third.join(5)
    assert taken == [first] and second is not first
    assert hasher.hexdigest() == sha(b"")


def test_closing_a_hasher_abandons_a_long_prefix(data_file):
    fd, data = data_file
    hasher = transfer.Hasher((fd, 0, len(data)), chunk_size=1, depth=0)
    hasher.close()
    assert not hasher._thread.is_alive()
    with pytest.raises(OSError, match="abandoned"):
        hasher.hexdigest()


def test_file_sha256_of_a_range_and_a_short_file(data_file):
    fd, data = data_file
    assert transfer.file_sha256(fd) == sha(data)
    assert transfer.file_sha256(fd, 10, 20) == sha(data[10:30])
    with pytest.raises(OSError, match="shrank"):
        transfer.file_sha256(fd, 0, len(data) + 1)


# -- receive and send ---------------------------------------------------------------------

def test_receive_takes_buffered_bytes_first_and_leaves_the_next_frame(pair, tmp_path):
    left, right = pair
    data = os.urandom(2 * transfer.CHUNK + 5)
    stream = FrameStream(right)
    stream.decoder.feed(encode({"type": "data"}) + data[:1000])
    assert stream.recv().type == "data"
    sender = threading.Thread(target=left.sendall, args=(data[1000:] + encode({"type": "end"}),))
    sender.start()
    out = io.BytesIO()
    seen = []
    with transfer.Hasher() as hasher:
        transfer.receive(stream, len(data), out.write, hasher, progress=seen.append)
        digest = hasher.hexdigest()
    sender.join()
    assert out.getvalue() == data and digest == sha(data)
    assert seen[-1] == len(data) and stream.recv().type == "end"


def test_receive_of_bytes_all_buffered_already(pair):
    data = os.urandom(transfer.CHUNK + 10)  # more than one buffer, pipelined by the peer
    stream = FrameStream(pair[1])
    stream.decoder.feed(encode({"type": "data"}) + data + encode({"type": "end"}))
    assert stream.recv().type == "data"
    out = io.BytesIO()
    with transfer.Hasher() as hasher:
        transfer.receive(stream, len(data), out.write, hasher)
        assert hasher.hexdigest() == sha(data)
    assert out.getvalue() == data and stream.recv().type == "end"


def test_receive_flushes_a_large_file_as_it_grows(pair, tmp_path, monkeypatch):
    monkeypatch.setattr(transfer, "FLUSH_EVERY", transfer.CHUNK)
    synced = []
    monkeypatch.setattr(transfer.os, "fdatasync", synced.append)
    left, right = pair
    data = os.urandom(3 * transfer.CHUNK)
    threading.Thread(target=left.sendall, args=(data,), daemon=True).start()
    with open(tmp_path / "out", "wb") as out, transfer.Hasher() as hasher:
        transfer.receive(FrameStream(right), len(data), out.write, hasher, flush_fd=out.fileno())
    assert (tmp_path / "out").read_bytes() == data
    flusher = transfer._Flusher(7)
    flusher.wrote(transfer.CHUNK - 1)
    assert flusher._thread is None  # small files never start the thread
    flusher.wrote(1)
    wait_for(lambda: 7 in synced, message="a background fdatasync")
    flusher.close()
    assert not flusher._thread.is_alive()


def test_flusher_stops_at_a_failing_sync(monkeypatch):
    def fail(fd):
        raise OSError(5, "I/O error")
    monkeypatch.setattr(transfer.os, "fdatasync", fail)
    flusher = transfer._Flusher(7)
    flusher.wrote(transfer.FLUSH_EVERY)
    flusher._thread.join(5)
    assert not flusher._thread.is_alive()
    flusher.close()


def test_receive_reports_a_peer_that_stops_early(pair):
    left, right = pair
    left.sendall(b"only this")
    left.shutdown(socket.SHUT_WR)
    with transfer.Hasher() as hasher, pytest.raises(ConnectionFailed, match="still expected"):
        transfer.receive(FrameStream(right), 100, lambda view: None, hasher)


def test_send_stream_and_send_file(pair, tmp_path):
    left, right = pair
    data = os.urandom(transfer.CHUNK + 77)
    (tmp_path / "f").write_bytes(data)
    received = bytearray()

    def read_all():
        while len(received) < 2 * len(data) + 10:
            received.extend(right.recv(1 << 20))
    reader = threading.Thread(target=read_all)
    reader.start()
    stream = FrameStream(left)
    with transfer.Hasher() as hasher:
        transfer.send_stream(stream, io.BytesIO(data), len(data), hasher,
                             progress=lambda sent: None)
        assert hasher.hexdigest() == sha(data)
    with open(tmp_path / "f", "rb") as source:
        transfer.send_file(stream, source, 0, len(data), progress=lambda sent: None)
        transfer.send_file(stream, source, 0, 0)
    transfer.send_stream(stream, _ReadOnly(b"0123456789"), 10, transfer.Hasher())
    reader.join(10)
    assert bytes(received) == data + data + b"0123456789"


class _ReadOnly:
    """A source with read() but no readinto()."""

    def __init__(self, data):
        self._data = io.BytesIO(data)

    def read(self, count):
        return self._data.read(count)


def test_send_stream_refuses_a_short_source(pair):
    with transfer.Hasher() as hasher, pytest.raises(ConnectionFailed, match="early"):
        transfer.send_stream(FrameStream(pair[0]), io.BytesIO(b"abc"), 10, hasher)


# -- fileproto ------------------------------------------------------------------------------

def test_every_operation_has_help_and_checked_arguments():
    for op in OPERATIONS.values():
        assert op.help and op.access in ("read", "write", "any")
        described = op.describe()
        assert [a["name"] for a in described["args"]] == [a.name for a in op.args]
    assert set(CONFIGURABLE) == set(OPERATIONS) - {"help"}


def test_check_request_fills_defaults_and_names_the_broken_rule():
    op, args = check_request({"type": "put", "path": "x", "size": 3, "extra": "ignored",
                              "upload_id": None, "if_sha256": None})
    assert op.name == "put"
    assert args == {"path": "x", "size": 3, "overwrite": False, "upload_id": None,
                    "if_sha256": None}
    cases = [({"type": "put", "path": "x", "size": 1.5}, "'size' must be a whole number"),
             ({"type": "put", "path": "x", "size": 1, "if_sha256": "ABC"}, "'if_sha256'"),
             ({"type": "put", "path": "x", "size": 1, "upload_id": "a/b"}, "'upload_id'"),
             ({"type": "rename", "path": "x"}, "'to' is required"),
             ({"type": "mkdir", "path": "x", "parents": "yes"}, "true or false"),
             ({"type": "list", "after": 3}, "'after' must be a string")]
    for header, text in cases:
        with pytest.raises(ProtocolError, match=text) as info:
            check_request(header)
        assert info.value.code == "bad-request"
    with pytest.raises(ProtocolError) as info:
        check_request({"type": "x" * 100})
    assert info.value.code == "unknown-operation" and "..." in info.value.message


def test_operations_setting():
    assert parse_operations("get list, stat") == ("get", "list", "stat")
    with pytest.raises(ValueError, match="unknown: chmod"):
        parse_operations("get, chmod")


def test_protocol_doc_lists_every_file_error_code_and_operation():
    with open("%s/docs/PROTOCOL.rst" % ROOT, encoding="utf-8") as stream:
        section = stream.read().split("\nFile service\n")[1]
    for code in CODES:
        assert "``%s``" % code in section, code
    for name in OPERATIONS:
        assert '"type": "%s"' % name in section, name


# -- fileroot -------------------------------------------------------------------------------

def test_digest_cache_misses_after_any_change(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"one")
    cache = DigestCache(capacity=2)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert cache.digest_of(fd) == sha(b"one")
        before = os.stat(path)
        assert cache.get(before) == sha(b"one")
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # same mtime, new ctime
        assert content_key(os.stat(path)) != content_key(before)
        assert cache.get(os.stat(path)) is None
    finally:
        os.close(fd)
    for name in "abc":
        (tmp_path / name).write_bytes(name.encode())
        cache.put(os.stat(tmp_path / name), name)
    assert cache.get(os.stat(tmp_path / "a")) is None  # the oldest went first


def test_quota_ledger(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x" * 100)
    (tmp_path / (TEMP_PREFIX + "t")).write_bytes(b"x" * 1000)
    os.symlink("d/f", tmp_path / "link")
    ledger = QuotaLedger(Sandbox(tmp_path), 250)
    assert ledger.used == 100 and ledger.available == 150
    with ledger.reserve(100):
        assert ledger.available == 50
        with pytest.raises(ProtocolError) as info, ledger.reserve(51):
            pass
        assert info.value.code == "quota"
    ledger.changed(-500)
    assert ledger.used == 0
    unlimited = QuotaLedger(Sandbox(tmp_path), 0)
    with unlimited.reserve(1 << 60):
        assert unlimited.available is None
