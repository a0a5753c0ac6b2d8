"""Client-side TLS contexts (the standard ``ssl`` module), and the hardening both ends share.

The server's contexts and its non-blocking TLS transport are in
:mod:`msgsrv.net.tls`; a client needs only this module.
"""

import ssl

from .errors import ConfigError


def harden(context):
    """``context`` restricted to TLS 1.2+, without renegotiation or compression."""
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0) | ssl.OP_NO_COMPRESSION
    return context


def client_context(ca_file=None, client_cert=None, client_key=None):
    """An SSLContext for a client: TLS 1.2+, server verified against ``ca_file``
    (the system CAs when None), presenting ``client_cert`` if given.

    Raises ConfigError naming the file that cannot be loaded.
    """
    try:
        context = harden(ssl.create_default_context(cafile=ca_file))
        if client_cert:
            context.load_cert_chain(client_cert, client_key or None)
    except (OSError, ssl.SSLError) as exc:
        what = client_cert or ca_file
        raise ConfigError("TLS: cannot load %s: %s"
                          % (what, getattr(exc, "strerror", None) or exc)) from None
    return context
