"""The PROXY protocol decoder (msgsrv.net.proxy_protocol), without sockets.

Every case is fed whole and one byte at a time; the outcome must not depend on it.
"""

import struct

import pytest
from hypothesis import given, strategies as st

from msgsrv.net.proxy_protocol import (
    CODES, NEED_DATA, V1_MAX, V2_SIGNATURE, ProxyHeader, ProxyHeaderDecoder, ProxyHeaderError,
    encode_v1, encode_v2,
)

SRC, DST = ("127.0.0.2", 40001), ("127.0.0.1", 9000)
SRC6, DST6 = ("::1", 40001), ("fe80::1", 443)


def feed_whole(data, **kwargs):
    return ProxyHeaderDecoder(**kwargs).feed(data)


def feed_bytewise(data, **kwargs):
    """Feed one byte at a time until a header comes back; its leftover then holds the
    bytes not fed yet too, as if they had come with it."""
    decoder = ProxyHeaderDecoder(**kwargs)
    for index in range(len(data)):
        result = decoder.feed(data[index:index + 1])
        if result is not NEED_DATA:
            return ProxyHeader(result.version, result.command, result.source, result.destination,
                               result.tlvs, result.leftover + data[index + 1:], result.size)
    return NEED_DATA


def outcome(feed, data, **kwargs):
    try:
        return feed(data, **kwargs)
    except ProxyHeaderError as exc:
        assert exc.code in CODES
        return exc.code


def decode(data, **kwargs):
    """The outcome fed whole, checked equal to the outcome fed byte by byte."""
    whole = outcome(feed_whole, data, **kwargs)
    assert outcome(feed_bytewise, data, **kwargs) == whole
    return whole


# -- version 1 ------------------------------------------------------------------------

@pytest.mark.parametrize("line, source, destination", [
    (b"PROXY TCP4 127.0.0.2 127.0.0.1 40001 9000\r\n", SRC, DST),
    (b"PROXY TCP4 255.255.255.255 0.0.0.0 65535 0\r\n", ("255.255.255.255", 65535),
     ("0.0.0.0", 0)),
    (b"PROXY TCP6 ::1 fe80::1 40001 443\r\n", SRC6, DST6),
    (b"PROXY TCP6 FE80:0000:0000:0000:0000:0000:0000:0001 ::1 1 2\r\n", ("fe80::1", 1),
     ("::1", 2)),
    (b"PROXY UNKNOWN\r\n", None, None),
    (b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
     b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n", None, None),
    (b"PROXY UNKNOWN anything at all\r\n", None, None),
])
def test_v1_lines_give_the_addresses_and_keep_what_follows(line, source, destination):
    header = decode(line + b"GET / HTTP/1.0\r\n")
    assert (header.version, header.source, header.destination) == (1, source, destination)
    assert header.local == (source is None)
    assert header.leftover == b"GET / HTTP/1.0\r\n" and header.size == len(line)


def test_the_longest_v1_line_is_107_bytes_and_one_more_is_refused():
    longest = (b"PROXY UNKNOWN " + b"ffff:" * 7 + b"ffff " + b"ffff:" * 7 + b"ffff "
               + b"65535 65535\r\n")
    assert len(longest) == V1_MAX
    assert decode(longest).local
    assert decode(longest[:-2] + b"f\r\n") == "proxy-malformed"
    decoder = ProxyHeaderDecoder()
    assert decoder.feed(b"PROXY " + b"x" * (V1_MAX - 7)) is NEED_DATA
    with pytest.raises(ProxyHeaderError, match="107"):
        decoder.feed(b"x")  # the 107th byte, and still no CRLF


@pytest.mark.parametrize("line", [
    b"PROXY TCP4 127.0.0.02 127.0.0.1 1 2\r\n",     # leading zero in an address
    b"PROXY TCP4 127.0.0.256 127.0.0.1 1 2\r\n",
    b"PROXY TCP4 127.0.0.2 127.0.0.1 01 2\r\n",     # leading zero in a port
    b"PROXY TCP4 127.0.0.2 127.0.0.1 65536 2\r\n",
    b"PROXY TCP4 127.0.0.2 127.0.0.1 -1 2\r\n",
    b"PROXY TCP4  127.0.0.2 127.0.0.1 1 2\r\n",     # two spaces
    b"PROXY TCP4 127.0.0.2 127.0.0.1 1 2 \r\n",     # trailing space
    b"PROXY TCP4 127.0.0.2 127.0.0.1 1\r\n",
    b"PROXY TCP4 ::1 ::1 1 2\r\n",                  # the family's own format
    b"PROXY TCP6 127.0.0.2 127.0.0.1 1 2\r\n",
    b"PROXY TCP6 ::ffff:127.0.0.1 ::1 1 2\r\n",     # hex groups only
    b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
    b"PROXY TCP6 1::2::3 ::1 1 2\r\n",
    b"PROXY TCP5 127.0.0.2 127.0.0.1 1 2\r\n",
    b"PROXY tcp4 127.0.0.2 127.0.0.1 1 2\r\n",
    b"PROXY \xff\r\n",
    b"PROXY TCP4 127.0.0.2 127.0.0.1 1 2\n",        # a lone LF
    b"PROXY TCP4 127.0.0.2 127.0.0.1 1 2\rX\n",     # a CR not followed by LF
])
def test_v1_lines_that_break_the_grammar_are_malformed(line):
    assert decode(line + b"more") == "proxy-malformed"


@pytest.mark.parametrize("data", [b"G", b"GET / HTTP/1.0\r\n", b"\x16\x03\x01\x02\x00",
                                  b"proxy tcp4", b"PROXY\t", b"\x00\x00\x00\x10{}",
                                  b"\r\n\r\n\x00\r\nQUIX"])
def test_bytes_that_are_no_header_are_refused_at_once(data):
    assert decode(data) == "proxy-missing"
    decoder = ProxyHeaderDecoder()
    with pytest.raises(ProxyHeaderError) as caught:
        for index in range(len(data)):
            decoder.feed(data[index:index + 1])
    assert caught.value.code == "proxy-missing"
    assert decoder.buffered <= len(data)


def test_each_mode_refuses_the_other_version():
    assert decode(encode_v2(SRC, DST), versions=(1,)) == "proxy-missing"
    assert decode(encode_v1(SRC, DST), versions=(2,)) == "proxy-missing"
    assert decode(encode_v1(SRC, DST), versions=(1,)).source == SRC
    assert decode(encode_v2(SRC, DST), versions=(2,)).source == SRC


# -- version 2 ------------------------------------------------------------------------

def v2(command=0x21, family=0x11, block=b"", length=None):
    return struct.pack(">12sBBH", V2_SIGNATURE, command, family,
                       len(block) if length is None else length) + block


IPV4_BLOCK = bytes([127, 0, 0, 2, 127, 0, 0, 1]) + struct.pack(">HH", 40001, 9000)


@pytest.mark.parametrize("data, source, destination", [
    (encode_v2(SRC, DST), SRC, DST),
    (encode_v2(SRC6, DST6), SRC6, DST6),
    (v2(0x21, 0x11, IPV4_BLOCK), SRC, DST),
])
def test_v2_proxy_headers_give_the_addresses(data, source, destination):
    header = decode(data + b"\x16\x03\x01")
    assert (header.version, header.command, header.source, header.destination) == \
        (2, "proxy", source, destination)
    assert header.leftover == b"\x16\x03\x01" and header.size == len(data)


def test_v2_tlvs_are_walked_and_returned_unread():
    tlvs = [(0x01, b"h2"), (0x04, b""), (0x05, b"u" * 128), (0xE0, b"\x00" * 3)]
    header = decode(encode_v2(SRC, DST, tlvs) + b"rest")
    assert header.tlvs == tuple(tlvs) and header.leftover == b"rest"


@pytest.mark.parametrize("data", [
    v2(0x20, 0x00),                                    # LOCAL, as HAProxy's health checks
    v2(0x20, 0x11, IPV4_BLOCK),                        # LOCAL with addresses: ignored
    v2(0x20, 0x00, b"\xff" * 7),                       # LOCAL: the whole block is skipped
    v2(0x21, 0x00, b"whatever"),                       # PROXY, AF_UNSPEC
    v2(0x21, 0x12, IPV4_BLOCK),                        # PROXY, UDP over IPv4
    v2(0x21, 0x31, b"/tmp/a".ljust(108, b"\x00") * 2),  # PROXY, UNIX stream
])
def test_v2_headers_without_a_served_address_mean_the_real_peer(data):
    header = decode(data + b"x")
    assert header.local and header.source is None and header.leftover == b"x"


@pytest.mark.parametrize("data, message", [
    (v2(0x11), "version 1"),
    (v2(0x22), "command"),
    (v2(0x2F), "command"),
    (v2(0x21, 0x41, IPV4_BLOCK), "family"),
    (v2(0x21, 0x13, IPV4_BLOCK), "family"),
    (v2(0x21, 0x11, IPV4_BLOCK[:11]), "needs 12"),
    (v2(0x21, 0x21, IPV4_BLOCK), "needs 36"),
    (v2(0x21, 0x11, IPV4_BLOCK + b"\x01\x00"), "cut short"),
    (v2(0x21, 0x11, IPV4_BLOCK + b"\x01\x00\x05abc"), "overruns"),
    (v2(0x21, 0x11, length=2000), "exceeds 1024"),
    (v2(0x21, 0x11, length=0xFFFF), "exceeds"),
])
def test_v2_headers_that_break_the_rules_are_malformed(data, message):
    assert decode(data + IPV4_BLOCK * 3) == "proxy-malformed"
    with pytest.raises(ProxyHeaderError, match=message):
        ProxyHeaderDecoder().feed(data + IPV4_BLOCK * 3)


def test_a_bad_v2_prefix_is_refused_on_its_byte_not_after_a_wait():
    decoder = ProxyHeaderDecoder()
    assert decoder.feed(V2_SIGNATURE) is NEED_DATA
    with pytest.raises(ProxyHeaderError, match="version"):
        decoder.feed(b"\x31")
    decoder = ProxyHeaderDecoder()
    assert decoder.feed(V2_SIGNATURE + b"\x21") is NEED_DATA
    with pytest.raises(ProxyHeaderError, match="family"):
        decoder.feed(b"\x99")


def test_the_v2_length_is_checked_on_the_prefix_before_the_rest_is_waited_for():
    decoder = ProxyHeaderDecoder(max_v2=64)
    with pytest.raises(ProxyHeaderError, match="65 bytes exceeds 64"):
        decoder.feed(v2(0x21, 0x11, length=49))
    assert ProxyHeaderDecoder(max_v2=65).feed(v2(0x21, 0x11, length=49)) is NEED_DATA


def test_wanted_never_asks_past_the_header():
    data = encode_v2(SRC6, DST6, [(4, b"pad")])
    decoder = ProxyHeaderDecoder(versions=(2,))
    assert decoder.wanted == 16
    assert decoder.feed(data[:16]) is NEED_DATA
    assert decoder.wanted == len(data) - 16
    assert decoder.feed(data[16:]).leftover == b""
    assert decoder.wanted == 0
    assert ProxyHeaderDecoder().wanted == V1_MAX


# -- end of stream and misuse -----------------------------------------------------------

def test_eof_before_or_inside_the_header():
    with pytest.raises(ProxyHeaderError) as caught:
        ProxyHeaderDecoder().eof()
    assert caught.value.code == "proxy-missing"
    decoder = ProxyHeaderDecoder()
    decoder.feed(b"PROXY TCP4 1")
    with pytest.raises(ProxyHeaderError) as caught:
        decoder.eof()
    assert caught.value.code == "proxy-malformed"
    decoder = ProxyHeaderDecoder()
    decoder.feed(encode_v1())
    decoder.eof()  # done: nothing to complain about
    with pytest.raises(RuntimeError):
        decoder.feed(b"x")


def test_bad_decoder_arguments_and_unencodable_pairs():
    for kwargs in ({"versions": ()}, {"versions": (3,)}, {"max_v2": 15}, {"max_v2": 1 << 17}):
        with pytest.raises(ValueError):
            ProxyHeaderDecoder(**kwargs)
    for encode in (encode_v1, encode_v2):
        with pytest.raises(ValueError):
            encode(SRC, DST6)
        with pytest.raises(ValueError):
            encode(("127.0.0.1", 70000), DST)


# -- properties -------------------------------------------------------------------------

ipv4 = st.integers(0, 2**32 - 1).map(lambda n: "%d.%d.%d.%d" % tuple(n.to_bytes(4, "big")))
ipv6 = st.integers(0, 2**128 - 1).map(
    lambda n: str(__import__("ipaddress").IPv6Address(n)))
ports = st.integers(0, 65535)
pairs = st.one_of(st.tuples(st.tuples(ipv4, ports), st.tuples(ipv4, ports)),
                  st.tuples(st.tuples(ipv6, ports), st.tuples(ipv6, ports)))
tlv_lists = st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), max_size=5)
headers = st.one_of(
    st.builds(lambda pair: (encode_v1(*pair), pair, ()), pairs),
    st.builds(lambda pair, tlvs: (encode_v2(pair[0], pair[1], tlvs), pair, tuple(tlvs)),
              pairs, tlv_lists),
    st.just((encode_v1(), (None, None), ())),
    st.builds(lambda tlvs: (encode_v2(tlvs=tlvs), (None, None), ()), tlv_lists))


def _normal(host):
    return None if host is None else (str(__import__("ipaddress").ip_address(host[0])), host[1])


@given(headers, st.binary(max_size=200), st.lists(st.integers(0, 600), max_size=20))
def test_any_valid_header_decodes_the_same_however_split(case, rest, cuts):
    data, (source, destination), tlvs = case
    points = sorted({min(c, len(data + rest)) for c in cuts})
    edges = [0] + points + [len(data + rest)]
    chunks = [(data + rest)[a:b] for a, b in zip(edges, edges[1:]) if b > a]
    decoder = ProxyHeaderDecoder(max_v2=65551)
    for index, chunk in enumerate(chunks):
        result = decoder.feed(chunk)
        if result is not NEED_DATA:
            break
    assert result is not NEED_DATA
    assert (result.source, result.destination) == (_normal(source), _normal(destination))
    assert result.tlvs == tlvs and result.size == len(data)
    assert result.leftover + b"".join(chunks[index + 1:]) == rest


@given(st.binary(max_size=300), st.sampled_from([(1,), (2,), (1, 2)]))
def test_arbitrary_bytes_give_a_header_need_data_or_a_documented_error(data, versions):
    whole = outcome(feed_whole, data, versions=versions)
    assert outcome(feed_bytewise, data, versions=versions) == whole
    decoder = ProxyHeaderDecoder(versions)
    try:
        decoder.feed(data)
    except ProxyHeaderError:
        return
    assert decoder.buffered <= max(V1_MAX, 1024)
