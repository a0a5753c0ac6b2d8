"""sd_notify over ``$NOTIFY_SOCKET`` with the standard library (systemd Type=notify).

Nothing happens when the variable is unset, so the daemon calls these
unconditionally.  A name starting with ``@`` is an abstract socket.
"""

import logging
import os
import socket
import time

log = logging.getLogger("msgsrv.notify")

ENV = "NOTIFY_SOCKET"


def notify(*fields, environ=None):
    """Send ``fields`` (``"READY=1"``...) as one datagram; return True if it was sent.

    Never raises: a failure is logged at debug level (the service manager
    may be gone, and the daemon must keep serving).
    """
    address = (os.environ if environ is None else environ).get(ENV, "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto("\n".join(fields).encode("utf-8"), address)
    except OSError as exc:
        log.debug("sd_notify to %r failed: %s", address, exc)
        return False
    return True


def ready(status="serving"):
    """Tell the service manager that every listener is up."""
    return notify("READY=1", "STATUS=" + status, "MAINPID=%d" % os.getpid())


def reloading():
    """Tell the service manager that a reload started (READY=1 ends it)."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", "MONOTONIC_USEC=%d" % usec, "STATUS=reloading")


def stopping():
    """Tell the service manager that shutdown began."""
    return notify("STOPPING=1", "STATUS=stopping")
