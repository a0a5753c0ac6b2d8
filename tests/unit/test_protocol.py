"""The frame codec, without sockets: whole, byte by byte, in random chunks, and every error."""

import json
import struct

import pytest
from hypothesis import given, settings, strategies as st

from msgsrv.wire.errors import ProtocolError
from msgsrv.wire.frames import NEED_DATA, FrameDecoder, Message, encode, error_header

pytestmark = pytest.mark.timeout(60)


def decode_all(data, chunks=None, **limits):
    """Feed ``data`` in the given chunk sizes (default: whole); return messages."""
    decoder = FrameDecoder(**limits)
    out = []
    pieces = [data] if chunks is None else _split(data, chunks)
    for piece in pieces:
        decoder.feed(piece)
        while True:
            message = decoder.next_message()
            if message is NEED_DATA:
                break
            out.append(message)
    decoder.eof()
    return out


def _split(data, sizes):
    pieces, pos = [], 0
    for size in sizes:
        pieces.append(data[pos:pos + size])
        pos += size
    pieces.append(data[pos:])
    return pieces


def raw_frame(header_bytes, body=b""):
    return struct.pack(">I", len(header_bytes)) + header_bytes + body


def test_round_trip_whole_and_byte_at_a_time():
    frames = [({"type": "ping"}, b""), ({"type": "put", "path": "a"}, b"\x00\xffdata"),
              ({"type": "ünïcode", "n": 1.5}, b"x" * 1000)]
    data = b"".join(encode(h, b) for h, b in frames)
    expected = [Message(dict(h, **({"body_size": len(b)} if b else {})), b) for h, b in frames]
    assert decode_all(data) == expected
    assert decode_all(data, chunks=[1] * len(data)) == expected


def test_encoded_layout_is_prefix_json_body():
    data = encode({"type": "x"}, b"BODY")
    (length,) = struct.unpack(">I", data[:4])
    assert json.loads(data[4:4 + length]) == {"type": "x", "body_size": 4}
    assert data[4 + length:] == b"BODY"


def test_message_type_property():
    assert Message({"type": "hello"}).type == "hello"
    assert Message({}).type is None


def test_oversized_header_refused_on_prefix_before_buffering():
    decoder = FrameDecoder(max_header=100)
    with pytest.raises(ProtocolError) as info:
        decoder.feed(struct.pack(">I", 101))
    assert info.value.code == "too-large"


@pytest.mark.parametrize("length", [2**31, 2**32 - 1])
def test_huge_length_prefix_refused_without_allocating(length):
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError) as info:
        decoder.feed(struct.pack(">I", length) + b"{")
    assert info.value.code == "too-large"
    assert decoder.buffered < 16


def test_header_exactly_at_limit_accepted_and_one_over_refused():
    header = {"type": "x", "pad": ""}
    base = len(json.dumps(header, separators=(",", ":")))
    header["pad"] = "a" * (200 - base)
    frame = encode(header, max_header=200)
    assert decode_all(frame, max_header=200)[0].header == header
    with pytest.raises(ProtocolError) as info:
        decode_all(frame, max_header=199)
    assert info.value.code == "too-large"
    with pytest.raises(ProtocolError):
        encode(header, max_header=199)


def test_body_exactly_at_limit_accepted_and_one_over_refused():
    assert decode_all(encode({}, b"x" * 10, max_body=10), max_body=10)[0].body == b"x" * 10
    with pytest.raises(ProtocolError) as info:
        decode_all(raw_frame(b'{"body_size":11}'), max_body=10)
    assert info.value.code == "too-large"
    with pytest.raises(ProtocolError):
        encode({}, b"x" * 11, max_body=10)


@pytest.mark.parametrize("header, code", [
    (b"{not json}", "bad-header"),
    (b"[1, 2]", "bad-header"),
    (b'"text"', "bad-header"),
    (b"\xff\xfe{}", "bad-header"),
    (b'{"body_size": -1}', "bad-header"),
    (b'{"body_size": "10"}', "bad-header"),
    (b'{"body_size": true}', "bad-header"),
    (b'{"body_size": 1.5}', "bad-header"),
    (b'{"x": NaN}', "bad-header"),
    (b'{"body_size": 9223372036854775808}', "too-large"),
    (b"{", "bad-header"),
    (b"", "bad-header"),
])
def test_malformed_headers(header, code):
    with pytest.raises(ProtocolError) as info:
        decode_all(raw_frame(header))
    assert info.value.code == code


def test_deeply_nested_json_is_a_protocol_error():
    with pytest.raises(ProtocolError):
        decode_all(raw_frame(b"[" * 100000 + b"]" * 100000), max_header=1 << 20)


@pytest.mark.parametrize("cut", [1, 3, 4, 10, -1])
def test_truncated_frame_at_eof(cut):
    data = encode({"type": "x"}, b"body")
    with pytest.raises(ProtocolError) as info:
        decode_all(data[:cut])
    assert info.value.code == "truncated"


def test_take_buffered_returns_bytes_after_a_message():
    decoder = FrameDecoder()
    decoder.feed(encode({"type": "put"}) + b"raw bytes")
    assert decoder.next_message().type == "put"
    assert decoder.take_buffered() == b"raw bytes"
    assert decoder.buffered == 0


def test_take_buffered_refused_mid_frame():
    decoder = FrameDecoder()
    decoder.feed(raw_frame(b'{"body_size": 5}', b"ab"))
    assert decoder.next_message() is NEED_DATA
    with pytest.raises(RuntimeError):
        decoder.take_buffered()


def test_encode_strips_stale_body_size_and_refuses_non_dict():
    frame = encode({"type": "x", "body_size": 99})
    assert decode_all(frame)[0].header == {"type": "x"}
    with pytest.raises(TypeError):
        encode(["not", "a", "dict"])


def test_error_header_shape():
    assert error_header("denied", "no", path="a") == {
        "type": "error", "code": "denied", "message": "no", "path": "a"}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8),
                                                                      children, max_size=4),
    max_leaves=10)
headers = st.dictionaries(st.text(max_size=10).filter(lambda k: k != "body_size"),
                          json_values, max_size=5)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(headers, st.binary(max_size=300)), max_size=5),
       st.lists(st.integers(1, 50), max_size=40))
def test_property_any_chunking_gives_the_same_messages(frames, chunks):
    data = b"".join(encode(h, b) for h, b in frames)
    whole = decode_all(data)
    assert decode_all(data, chunks=chunks) == whole
    assert [(m.header.get("body_size", 0), m.body) for m in whole] == [
        (len(b), b) for _, b in frames]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(1, 30), max_size=20))
def test_property_arbitrary_bytes_raise_only_protocol_error(data, chunks):
    outcomes = []
    for pieces in (None, chunks, [1] * len(data)):
        try:
            outcomes.append(("ok", decode_all(data, chunks=pieces, max_header=256, max_body=256)))
        except ProtocolError as exc:
            outcomes.append(("error", exc.code))
    assert outcomes[0] == outcomes[1] == outcomes[2]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_property_buffer_never_exceeds_one_frame_limit(data):
    decoder = FrameDecoder(max_header=64, max_body=128)
    try:
        for byte in data:
            decoder.feed(bytes([byte]))
            while decoder.next_message() is not NEED_DATA:
                pass
            assert decoder.buffered <= 4 + 64 + 128
    except ProtocolError:
        pass


def test_frame_limit_ceilings_bound_the_settings_and_what_servers_send():
    from msgsrv.net.handler import FramedHandler
    from msgsrv.wire.frames import MAX_BODY_CEILING, MAX_HEADER_CEILING, REPLY_LIMITS
    limits = {s.name: s for s in FramedHandler.settings}
    assert limits["max_header"].parse(str(MAX_HEADER_CEILING)) == MAX_HEADER_CEILING
    assert limits["max_body"].parse(str(MAX_BODY_CEILING)) == MAX_BODY_CEILING
    for name, ceiling in (("max_header", MAX_HEADER_CEILING), ("max_body", MAX_BODY_CEILING)):
        with pytest.raises(ValueError):
            limits[name].parse(str(ceiling + 1))
    assert REPLY_LIMITS == {"max_header": MAX_HEADER_CEILING, "max_body": MAX_BODY_CEILING}

    class Oversized(bytes):
        def __len__(self):
            return MAX_BODY_CEILING + 1

    with pytest.raises(ProtocolError):  # a server never sends what no receiver accepts
        encode({"type": "x"}, Oversized(), **REPLY_LIMITS)
