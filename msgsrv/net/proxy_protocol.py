"""The PROXY protocol header (HAProxy's, versions 1 and 2), sans-IO: bytes in, a header out.

A load balancer that relays TCP connections (HAProxy ``send-proxy`` /
``send-proxy-v2``) puts one header in front of the client's bytes, naming
the client's address and port.  :class:`ProxyHeaderDecoder` is fed the first
bytes of a connection and returns :data:`NEED_DATA`, a :class:`ProxyHeader`
(with the ``leftover`` bytes that followed it), or raises
:class:`ProxyHeaderError`.  The first bytes decide: a connection that does
not start like a header of an accepted version is refused at once, never
after a wait.

Version 1 is one text line of at most 107 bytes ending in CRLF::

    PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\\r\\n

parsed strictly (one space between fields, no leading zeros, ports
0..65535, the family's own address format).  ``PROXY UNKNOWN ...`` is a
header without addresses.

Version 2 is a 16-byte binary prefix (12-byte signature, version and
command, family and protocol, length of the rest), then the addresses and
optional TLVs.  ``LOCAL`` (health checks by the proxy itself) and a ``PROXY``
command for a family this receiver does not serve (AF_UNSPEC, UNIX, UDP)
give a header without addresses: the connection's real endpoints apply,
as the specification says.  The declared length is checked against the
decoder's bound on the prefix, before the rest is waited for; TLVs are
walked with bounds checks and returned, never interpreted (CRC32C is not
verified: the specification leaves that to receivers that support it).

Specification: https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt
"""

import ipaddress
import re
import struct
from dataclasses import dataclass
from typing import Optional, Tuple

from msgsrv.wire.errors import ProtocolError
from msgsrv.wire.frames import NEED_DATA  # one "need more bytes" value for every sans-IO decoder

V1_PREFIX = b"PROXY "
V1_MAX = 107  # "PROXY UNKNOWN" + two IPv6 addresses + two ports + CRLF
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = struct.Struct(">12sBBH")  # signature, version|command, family|protocol, length
V2_MAX = V2_FIXED.size + 0xFFFF
#: Default bound on a version 2 header (prefix, addresses and TLVs).
DEFAULT_V2_MAX = 1024
VERSIONS = (1, 2)

_LOCAL, _PROXY = 0x0, 0x1
# family|protocol byte -> bytes of the address block (what a PROXY command must carry)
_BLOCK_SIZES = {0x00: 0, 0x11: 12, 0x12: 12, 0x21: 36, 0x22: 36, 0x31: 216, 0x32: 216}
_TCP4, _TCP6 = 0x11, 0x21
_ADDRESSES = {_TCP4: struct.Struct(">4s4sHH"), _TCP6: struct.Struct(">16s16sHH")}
_TLV = struct.Struct(">BH")

_IPV4 = re.compile(r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
                   r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\Z")
_IPV6_CHARS = re.compile(r"[0-9A-Fa-f:]{2,39}\Z")
_PORT = re.compile(r"(?:0|[1-9][0-9]{0,4})\Z")

#: code -> meaning, for every error this module raises (the refusal reasons counted).
CODES = {
    "proxy-missing": "the connection did not start with a PROXY header of an accepted version",
    "proxy-malformed": "the PROXY header broke the specification, or was longer than accepted",
}


class ProxyHeaderError(ProtocolError):
    """The first bytes are not an acceptable PROXY header; ``code`` is one of :data:`CODES`."""


@dataclass(frozen=True)
class ProxyHeader:
    """A decoded header.

    ``source`` and ``destination`` are ``(host, port)`` pairs as the proxy saw
    the client's connection, or both None (``LOCAL``, ``UNKNOWN``, a family
    not served): then the connection's real endpoints apply.  ``tlvs`` are the
    version 2 ``(type, value)`` pairs, unread; ``leftover`` the bytes fed
    after the header (the client's own); ``size`` the header's length.
    """

    version: int
    command: str  # "proxy" or "local"
    source: Optional[Tuple[str, int]]
    destination: Optional[Tuple[str, int]]
    tlvs: Tuple[Tuple[int, bytes], ...] = ()
    leftover: bytes = b""
    size: int = 0

    @property
    def local(self):
        """True when the header names no client: serve the connection's real peer."""
        return self.source is None


def _missing(message):
    return ProxyHeaderError("proxy-missing", message)


def _malformed(message):
    return ProxyHeaderError("proxy-malformed", message)


def _could_be(buffer, prefix):
    count = min(len(buffer), len(prefix))
    return buffer[:count] == prefix[:count]


class ProxyHeaderDecoder:
    """Decode the one PROXY header at the start of a connection.

    ``versions`` are the accepted versions (1, 2 or both); ``max_v2`` bounds
    a version 2 header (16..65551 bytes; version 1 is bounded at 107 by the
    specification).  Feed bytes until a :class:`ProxyHeader` comes back; the
    decoder then holds nothing and takes no more.  Never holds more than
    :attr:`wanted` bytes past what it was given before.
    """

    def __init__(self, versions=VERSIONS, max_v2=DEFAULT_V2_MAX):
        versions = tuple(sorted(set(versions)))
        if not versions or not set(versions) <= set(VERSIONS):
            raise ValueError("versions must be 1, 2 or both (got %r)" % (versions,))
        if not V2_FIXED.size <= max_v2 <= V2_MAX:
            raise ValueError("max_v2 must be %d..%d" % (V2_FIXED.size, V2_MAX))
        self.versions = versions
        self.max_v2 = max_v2
        self._buffer = bytearray()
        self._v2_size = None  # the whole v2 header's length, once its prefix is in
        self._done = False

    @property
    def buffered(self):
        """Bytes held, waiting for the rest of the header."""
        return len(self._buffer)

    @property
    def wanted(self):
        """How many more bytes the header may still take (at least 1 until it is done):
        a reader may peek this many without reading the client's own bytes for long."""
        if self._done:
            return 0
        held = len(self._buffer)
        if self._v2_size is not None:
            return self._v2_size - held
        if held and self._buffer[0] == V2_SIGNATURE[0] or self.versions == (2,):
            return V2_FIXED.size - held
        return V1_MAX - held

    def feed(self, data):
        """Take the next bytes of the connection; return :data:`NEED_DATA` or the
        :class:`ProxyHeader`.  Raises :class:`ProxyHeaderError` (the connection must be
        closed), or RuntimeError once the header was decoded."""
        if self._done:
            raise RuntimeError("the PROXY header was decoded already")
        self._buffer += data
        if 2 in self.versions and _could_be(self._buffer, V2_SIGNATURE):
            result = self._feed_v2()
        elif 1 in self.versions and _could_be(self._buffer, V1_PREFIX):
            result = self._feed_v1()
        else:
            raise _missing("the connection starts with %r, not a PROXY %s header"
                           % (bytes(self._buffer[:16]), " or ".join(
                               "v%d" % v for v in self.versions)))
        if result is not NEED_DATA:
            self._done = True
            self._buffer = bytearray()
        return result

    def eof(self):
        """The peer closed before the header was complete: raises ProxyHeaderError
        (``proxy-missing`` if it sent nothing).  No-op once the header was decoded."""
        if self._done:
            return
        if not self._buffer:
            raise _missing("closed before sending a PROXY header")
        raise _malformed("closed after %d bytes of an incomplete PROXY header"
                         % len(self._buffer))

    # -- version 1 ----------------------------------------------------------------

    def _feed_v1(self):
        buffer = self._buffer
        end = buffer.find(b"\r\n", 0, V1_MAX)
        if end < 0:
            # A lone LF, or a CR followed by anything but LF, can never end the line.
            if buffer.find(b"\n", 0, V1_MAX) >= 0 or \
                    buffer.find(b"\r", 0, min(len(buffer), V1_MAX) - 1) >= 0:
                raise _malformed("PROXY v1 line not ended by CRLF")
            if len(buffer) >= V1_MAX:
                raise _malformed("PROXY v1 line without CRLF in its first %d bytes" % V1_MAX)
            return NEED_DATA
        source, destination = _parse_v1(bytes(buffer[:end]))
        return ProxyHeader(1, "proxy", source, destination, (), bytes(buffer[end + 2:]),
                           end + 2)

    # -- version 2 ----------------------------------------------------------------

    def _feed_v2(self):
        buffer = self._buffer
        if self._v2_size is None:
            self._check_v2_prefix(buffer)  # each byte of the prefix as soon as it is in
            if len(buffer) < V2_FIXED.size:
                return NEED_DATA
            self._v2_size = self._v2_length(buffer)
        size = self._v2_size
        if len(buffer) < size:
            return NEED_DATA
        command, family = buffer[12] & 0x0F, buffer[13]
        block = bytes(buffer[V2_FIXED.size:size])
        leftover = bytes(buffer[size:])
        if command == _LOCAL:
            return ProxyHeader(2, "local", None, None, (), leftover, size)
        tlvs = _parse_tlvs(block, _BLOCK_SIZES[family]) if family else ()
        if family not in _ADDRESSES:
            # A family this receiver does not serve: the specification's UNSPEC fallback.
            return ProxyHeader(2, "proxy", None, None, tlvs, leftover, size)
        source, destination = _parse_v2_addresses(family, block)
        return ProxyHeader(2, "proxy", source, destination, tlvs, leftover, size)

    @staticmethod
    def _check_v2_prefix(buffer):
        if len(buffer) > 12:
            if buffer[12] >> 4 != 2:
                raise _malformed("PROXY v2 header with version %d" % (buffer[12] >> 4))
            if buffer[12] & 0x0F not in (_LOCAL, _PROXY):
                raise _malformed("PROXY v2 header with unknown command %#x" % (buffer[12] & 0x0F))
        if len(buffer) > 13 and buffer[13] not in _BLOCK_SIZES:
            raise _malformed("PROXY v2 header with unknown family/protocol %#04x" % buffer[13])

    def _v2_length(self, buffer):
        _, version_command, family, length = V2_FIXED.unpack_from(buffer)
        size = V2_FIXED.size + length
        if size > self.max_v2:
            raise _malformed("PROXY v2 header of %d bytes exceeds %d" % (size, self.max_v2))
        if version_command & 0x0F == _PROXY and length < _BLOCK_SIZES[family]:
            raise _malformed("PROXY v2 address block of %d bytes, family %#04x needs %d"
                             % (length, family, _BLOCK_SIZES[family]))
        return size


def _parse_v1(line):
    """``(source, destination)`` of a v1 line without its CRLF; both None for UNKNOWN."""
    if line == b"PROXY UNKNOWN" or line.startswith(b"PROXY UNKNOWN "):
        return None, None  # the receiver must ignore the rest of the line
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise _malformed("PROXY v1 line is not ASCII") from None
    fields = text.split(" ")
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise _malformed("PROXY v1 line must be 'PROXY TCP4|TCP6 SRC DST SPORT DPORT' "
                         "or 'PROXY UNKNOWN' (got %r)" % text[:V1_MAX])
    parse = _v1_ipv4 if fields[1] == "TCP4" else _v1_ipv6
    return ((parse(fields[2]), _v1_port(fields[4])), (parse(fields[3]), _v1_port(fields[5])))


def _v1_ipv4(text):
    if not _IPV4.match(text):
        raise _malformed("PROXY v1 TCP4 address %r is not a canonical IPv4 address" % text)
    return text


def _v1_ipv6(text):
    try:
        if not _IPV6_CHARS.match(text):
            raise ValueError(text)
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        raise _malformed("PROXY v1 TCP6 address %r is not an IPv6 address" % text) from None


def _v1_port(text):
    if not _PORT.match(text) or int(text) > 65535:
        raise _malformed("PROXY v1 port %r is not 0..65535 without leading zeros" % text)
    return int(text)


def _parse_v2_addresses(family, block):
    layout = _ADDRESSES[family]
    source, destination, source_port, destination_port = layout.unpack_from(block)
    make = ipaddress.IPv4Address if family == _TCP4 else ipaddress.IPv6Address
    return ((str(make(source)), source_port), (str(make(destination)), destination_port))


def _parse_tlvs(block, start):
    """The ``(type, value)`` pairs after the address block; each must fit in the header."""
    tlvs = []
    offset, end = start, len(block)
    while offset < end:
        if end - offset < _TLV.size:
            raise _malformed("PROXY v2 TLV cut short (%d bytes left)" % (end - offset))
        kind, length = _TLV.unpack_from(block, offset)
        offset += _TLV.size
        if length > end - offset:
            raise _malformed("PROXY v2 TLV %#04x of %d bytes overruns the header by %d"
                             % (kind, length, length - (end - offset)))
        tlvs.append((kind, block[offset:offset + length]))
        offset += length
    return tuple(tlvs)


# -- the sending side (tests, and a client that stands in for a proxy) -----------------

def encode_v1(source=None, destination=None):
    """A v1 line for TCP from ``source`` to ``destination`` (``(host, port)`` pairs of one
    family), or ``PROXY UNKNOWN`` when they are None.  Raises ValueError for a pair the
    receiver would refuse."""
    if source is None:
        return b"PROXY UNKNOWN\r\n"
    hosts = [ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])]
    if hosts[0].version != hosts[1].version:
        raise ValueError("source and destination must be of one family")
    ports = [_checked_port(source[1]), _checked_port(destination[1])]
    return ("PROXY TCP%d %s %s %d %d\r\n" % (hosts[0].version, hosts[0], hosts[1], *ports)
            ).encode("ascii")


def encode_v2(source=None, destination=None, tlvs=()):
    """A v2 header: ``PROXY`` for TCP from ``source`` to ``destination``, or ``LOCAL``
    when they are None; ``tlvs`` are ``(type, value)`` pairs appended."""
    extra = b"".join(_TLV.pack(kind, len(value)) + value for kind, value in tlvs)
    if source is None:
        return V2_FIXED.pack(V2_SIGNATURE, 0x20 | _LOCAL, 0x00, len(extra)) + extra
    hosts = [ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])]
    if hosts[0].version != hosts[1].version:
        raise ValueError("source and destination must be of one family")
    family = _TCP4 if hosts[0].version == 4 else _TCP6
    block = _ADDRESSES[family].pack(hosts[0].packed, hosts[1].packed,
                                    _checked_port(source[1]), _checked_port(destination[1]))
    return V2_FIXED.pack(V2_SIGNATURE, 0x20 | _PROXY, family,
                         len(block) + len(extra)) + block + extra


def _checked_port(port):
    if not 0 <= int(port) <= 65535:
        raise ValueError("port must be 0..65535 (got %r)" % (port,))
    return int(port)


__all__ = ["CODES", "NEED_DATA", "ProxyHeader", "ProxyHeaderDecoder", "ProxyHeaderError",
           "encode_v1", "encode_v2", "DEFAULT_V2_MAX", "V1_MAX", "V2_MAX", "V2_SIGNATURE"]
