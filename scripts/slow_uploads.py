#!/usr/bin/env python3
"""Measure what stuck uploads cost the daemon: RSS, threads, fresh-client latency.

Usage: PYTHONPATH=. python scripts/slow_uploads.py COUNT ['{"key": "value", ...}']

Starts the daemon (``python -m msgsrv``, a temporary config with one file
service on 127.0.0.1 port 0, ``io_timeout = 30`` unless the JSON options say
otherwise), opens COUNT authenticated uploads of 1 MiB that trickle 10
bytes/s each from their ``ready`` on, then prints the daemon's VmRSS and
thread count (from /proc) and the latency of fresh clients (hello, auth,
stat, a 1000-byte get, list) for 2 s.  The daemon is stopped at the end.
The figures of docs/ROBUSTNESS.rst ("Slow transfers and the thread and
buffer budget") come from it.  It uses the hostile suite's helpers, so it
runs from a checkout; it is not a test.
"""

import json
import pathlib
import sys
import tempfile
import time

from msgsrv.wire.errors import MsgsrvError
from tests.conftest import DaemonProcess
from tests.hostile.attackers import measure_latency
from tests.hostile.targets import start_daemon
from tests.hostile.test_slow_transfers import SMALL, Trickle, _fresh_client, _start_upload


def main(count, options):
    """Run the measurement; print one line per figure."""
    where = pathlib.Path(tempfile.mkdtemp(prefix="msgsrv-slow-"))
    daemon = start_daemon(DaemonProcess, where, ["file"], None,
                          {"file": dict({"io_timeout": "30"}, **options)})
    trickle = Trickle()
    try:
        (where / "files" / "small.bin").write_bytes(SMALL)
        address = daemon.address("file")
        print("baseline", daemon.probe.snapshot())
        opened = _open_uploads(address, count, trickle)
        print("admitted", len(trickle.socks), "of", opened)
        time.sleep(1)
        print("stuck", daemon.probe.snapshot())
        print("fresh", measure_latency(lambda: _fresh_client(address), duration=2.0).describe())
    except MsgsrvError as exc:
        print("fresh client failed:", exc)
    finally:
        trickle.stop()
        daemon.process.stop()


def _open_uploads(address, count, trickle):
    for index in range(count):
        sock, _, reply = _start_upload(address, index)
        if reply.type == "ready":
            trickle.add(sock)
    return count


if __name__ == "__main__":
    main(int(sys.argv[1]), json.loads(sys.argv[2]) if len(sys.argv) > 2 else {})
