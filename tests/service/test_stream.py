"""The blocking FrameStream over a socketpair: frames, raw runs, files, error translation."""

import socket
import threading

import pytest

from msgsrv.wire.errors import AuthError, ConnectionFailed, ProtocolError, RequestTimeout, ServerError
from msgsrv.wire.frames import Message, encode
from msgsrv.wire.frame_stream import FrameStream, check_error

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def pair():
    left, right = socket.socketpair()
    left.settimeout(5)
    right.settimeout(5)
    yield left, right
    left.close()
    right.close()


def test_frames_and_raw_bytes_share_one_buffer(pair):
    left, right = pair
    left.sendall(encode({"type": "put", "size": 10}) + b"0123456789" + encode({"type": "next"}))
    stream = FrameStream(right)
    assert stream.recv().type == "put"
    chunks = []
    stream.read_raw(10, lambda chunk: chunks.append(bytes(chunk)))
    assert b"".join(chunks) == b"0123456789"
    assert stream.recv().type == "next"


def test_read_raw_from_the_socket_in_chunks(pair):
    left, right = pair
    payload = bytes(range(256)) * 1000
    writer = threading.Thread(target=left.sendall, args=(payload,))
    writer.start()
    chunks = []
    FrameStream(right).read_raw(len(payload), lambda c: chunks.append(bytes(c)), chunk_size=4096)
    writer.join()
    assert b"".join(chunks) == payload


def test_read_raw_early_close(pair):
    left, right = pair
    left.sendall(b"abc")
    left.close()
    with pytest.raises(ConnectionFailed, match="7 bytes still expected"):
        FrameStream(right).read_raw(10, lambda chunk: None)


def test_send_and_send_file(pair, tmp_path):
    left, right = pair
    path = tmp_path / "data"
    path.write_bytes(b"hello file")
    stream = FrameStream(left)
    stream.send({"type": "x"}, b"body")
    stream.send_raw(b"raw")
    with open(path, "rb") as source:
        stream.send_file(source, 6, 4)
    reader = FrameStream(right)
    assert reader.recv() == Message({"type": "x", "body_size": 4}, b"body")
    got = []
    reader.read_raw(7, lambda c: got.append(bytes(c)))
    assert b"".join(got) == b"rawfile"


def test_send_file_that_shrank(pair, tmp_path):
    left, _ = pair
    path = tmp_path / "small"
    path.write_bytes(b"12")
    with open(path, "rb") as source, pytest.raises(ConnectionFailed, match="shrank"):
        FrameStream(left).send_file(source, 0, 10)


def test_clean_eof_truncated_and_timeout(pair):
    left, right = pair
    right.settimeout(0.2)
    with pytest.raises(RequestTimeout):
        FrameStream(right).recv()
    left.sendall(encode({"type": "x"})[:5])
    left.shutdown(socket.SHUT_WR)
    with pytest.raises(ProtocolError, match="middle of a frame"):
        FrameStream(right).recv()


def test_eof_between_frames(pair):
    left, right = pair
    left.close()
    with pytest.raises(ConnectionFailed, match="closed by peer"):
        FrameStream(right).recv()


def test_send_to_closed_peer(pair):
    left, right = pair
    right.close()
    with pytest.raises(ConnectionFailed):
        for _ in range(100):
            FrameStream(left).send({"type": "x"}, b"y" * 65536)


def test_check_error():
    ok = Message({"type": "ok"})
    assert check_error(ok) is ok
    with pytest.raises(AuthError):
        check_error(Message({"type": "error", "code": "auth-failed", "message": "no"}))
    with pytest.raises(ServerError) as info:
        check_error(Message({"type": "error", "code": "denied", "message": "not yours"}))
    assert (info.value.code, info.value.message) == ("denied", "not yours")
    assert str(info.value) == "denied: not yours"
