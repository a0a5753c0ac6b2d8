"""The client library against a scripted hostile server.

tests/service/test_files.py covers malformed file replies (bad offsets, sizes,
listings) and a server vanishing mid-upload; this module adds the attacks of
a server that wants to hurt its client: paths that point elsewhere, data
nobody asked for, a 4 GiB length prefix, an endless line, and silence.
Each client must write only what was asked where it was asked, raise a
msgsrv error, honour its timeout and keep its memory bounded.
"""

import contextlib
import hashlib
import os
import socket
import struct
import threading
import time
import tracemalloc

import pytest

from msgsrv.services.chat.client import ChatClient
from msgsrv.services.files.client import FileClient
from msgsrv.client.framed import FramedClient
from msgsrv.wire.errors import ConnectionFailed, MsgsrvError, ProtocolError, RequestTimeout
from msgsrv.wire.frames import encode
from tests.hostile import campaign

pytestmark = pytest.mark.timeout(campaign.timeout(60))

TIMEOUT = 0.5
MEMORY_BOUND = 16 << 20  # bytes the client may allocate at its peak while attacked
DATA = b"payload!"
SHA = hashlib.sha256(DATA).hexdigest()


@contextlib.contextmanager
def scripted(script):
    """A one-connection server on 127.0.0.1 running ``script(sock)``; yields its address."""
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve():
        with contextlib.suppress(OSError), listener.accept()[0] as conn:
            script(conn)
            done.wait(20)  # keep the connection open until the client is finished
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()
    finally:
        done.set()
        thread.join(5)
        listener.close()


def _read_frame(conn):
    header_len = struct.unpack(">I", _exactly(conn, 4))[0]
    return _exactly(conn, header_len)


def _exactly(conn, count):
    data = b""
    while len(data) < count:
        chunk = conn.recv(count - len(data))
        if not chunk:
            raise ConnectionError("client gone")
        data += chunk
    return data


def download_reply(*parts):
    """A file server answering one get with ``parts`` (bytes) after its hello."""
    def script(conn):
        conn.sendall(encode({"type": "hello"}))
        _read_frame(conn)
        for part in parts:
            conn.sendall(part)
    return script


def _data(path, size=len(DATA)):
    return encode({"type": "data", "path": path, "size": size, "offset": 0, "mtime": 1.0})


def _tree(root):
    return sorted(os.path.relpath(os.path.join(where, name), root)
                  for where, dirs, files in os.walk(root) for name in dirs + files)


@contextlib.contextmanager
def peak_memory(bound=MEMORY_BOUND):
    """Fail if Python allocations in the block peak above ``bound`` bytes."""
    tracemalloc.start()
    try:
        yield
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < bound, "the client allocated %d bytes at its peak" % peak


@pytest.mark.parametrize("named", ["../x", "/tmp/msgsrv-hostile-abs", "other/y", ""])
def test_a_download_naming_another_path_is_written_only_where_asked(tmp_path, named):
    target = tmp_path / "in" / "wanted.bin"
    target.parent.mkdir()
    with scripted(download_reply(_data(named), DATA, encode({"type": "end", "sha256": SHA}))) \
            as address, FileClient(*address, timeout=5) as client:
        client.get("wanted.bin", str(target))
    assert target.read_bytes() == DATA
    assert _tree(tmp_path) == ["in", os.path.join("in", "wanted.bin")]
    assert not os.path.exists("/tmp/msgsrv-hostile-abs")


EXTRA = [
    ("more bytes than announced", [_data("x"), DATA + b"unrequested" * 100,
                                   encode({"type": "end", "sha256": SHA})]),
    ("a frame where the end should be", [_data("x"), DATA, encode({"type": "data", "size": 1})]),
    ("a wrong digest", [_data("x"), DATA, encode({"type": "end", "sha256": "0" * 64})]),
    ("the end missing", [_data("x"), DATA]),
]


@pytest.mark.parametrize("parts", [row[1] for row in EXTRA], ids=[row[0] for row in EXTRA])
def test_unrequested_data_is_an_error_and_leaves_no_file(tmp_path, parts):
    target = tmp_path / "wanted.bin"
    started = time.monotonic()
    with scripted(download_reply(*parts)) as address, FileClient(*address, timeout=TIMEOUT) \
            as client, pytest.raises(MsgsrvError):
        client.get("wanted.bin", str(target))
    assert time.monotonic() - started < TIMEOUT + 2
    assert _tree(tmp_path) == []


def test_a_4_gib_length_prefix_is_refused_without_allocating_it():
    def script(conn):
        conn.sendall(encode({"type": "hello"}))
        _read_frame(conn)
        conn.sendall(struct.pack(">I", 0xFFFFFFFF) + b"{" * 65536)
    with peak_memory(), scripted(script) as address, \
            FramedClient(*address, timeout=5) as client, pytest.raises(ProtocolError) as info:
        client.request({"type": "ping"})
    assert info.value.code == "too-large"


def test_a_4_gib_download_is_refused_with_max_size_and_cut_when_the_server_stops(tmp_path):
    huge = _data("x", size=4 << 30)
    with scripted(download_reply(huge)) as address, FileClient(*address, timeout=5) as client, \
            pytest.raises(ProtocolError) as info:
        client.get("x", str(tmp_path / "x"), max_size=1 << 20)
    assert info.value.code == "too-large"
    with peak_memory(), scripted(download_reply(huge, b"z" * (8 << 20))) as address, \
            FileClient(*address, timeout=TIMEOUT) as client, \
            pytest.raises((RequestTimeout, ConnectionFailed)):
        client.get("x", str(tmp_path / "x"))
    assert _tree(tmp_path) == []


def test_an_endless_chat_line_is_refused_with_bounded_memory():
    def script(conn):
        conn.sendall(b"* welcome hostile\n")
        with contextlib.suppress(OSError):
            for _ in range(64):  # 4 MiB without a line end, more than MAX_SERVER_LINE
                conn.sendall(b"x" * 65536)
    with peak_memory(8 << 20), scripted(script) as address, pytest.raises(MsgsrvError):
        ChatClient(*address, "victim", timeout=5)


def _silent(conn):
    pass


def _hello_then_silent(conn):
    conn.sendall(encode({"type": "hello"}))


def _data_then_silent(conn):
    download_reply(_data("x", size=1 << 20), b"z" * 1000)(conn)


STALLS = [
    ("framed-no-hello", _silent, lambda a, where: FramedClient(*a, timeout=TIMEOUT)),
    ("framed-no-reply", _hello_then_silent,
     lambda a, where: FramedClient(*a, timeout=TIMEOUT).request({"type": "ping"})),
    ("file-mid-download", _data_then_silent,
     lambda a, where: FileClient(*a, timeout=TIMEOUT).get("x", str(where / "x"))),
    ("chat-no-welcome", _silent, lambda a, where: ChatClient(*a, "victim", timeout=TIMEOUT)),
]


@pytest.mark.parametrize("script, call", [row[1:] for row in STALLS], ids=[r[0] for r in STALLS])
def test_a_server_that_stalls_forever_costs_the_client_its_timeout_only(script, call, tmp_path):
    started = time.monotonic()
    with scripted(script) as address, pytest.raises(RequestTimeout):
        call(address, tmp_path)
    elapsed = time.monotonic() - started
    assert _tree(tmp_path) == []
    assert elapsed < TIMEOUT + 1.5, "the client waited %.1fs with timeout=%s" % (elapsed, TIMEOUT)
