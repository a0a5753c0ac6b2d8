"""Peer addresses as text: the one ``host:port`` formatter (logs, status, access log)."""


def format_peer(address, port=None):
    """``host:port`` for an address tuple (or ``host`` and ``port``), IPv6 hosts bracketed.

    ``[::1]:7``, ``127.0.0.1:7``; anything that is not a (host, port) pair
    (a Unix socket path) is returned as ``str(address)``.
    """
    if port is None:
        if not (isinstance(address, tuple) and len(address) >= 2):
            return str(address)
        address, port = address[0], address[1]
    host = str(address)
    return ("[%s]:%s" if ":" in host else "%s:%s") % (host, port)
