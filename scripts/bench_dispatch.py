#!/usr/bin/env python3
"""Per-event cost of the pool's Python path, without epoll or a peer process.

Feeds one 64-byte message at a time through WorkerPool._dispatch on a
socketpair (the echo handler answers it) and compares with a bare
recv + send on the same socketpair.  Prints microseconds per round trip.

    python scripts/bench_dispatch.py [--count N]
"""

import argparse
import os
import select
import socket
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from msgsrv.services.echo.handler import EchoHandler  # noqa: E402
from msgsrv.net.pool import WorkerPool  # noqa: E402


class _Server:
    name = "bench"
    service = None

    class config:  # noqa: N801  (mimics ServiceConfig.options)
        options = {}


def measure(count):
    """Return (pool_us, bare_us) per round trip, medians of 5 runs."""
    pool = WorkerPool("bench", lambda conn: EchoHandler(conn, _Server), workers=0)
    pool.start()  # the epoll set, and no worker thread: this loop dispatches
    ours, peer = socket.socketpair()
    conn = pool.add(ours, ("127.0.0.1", 0))
    pool._dispatch(conn.fd, select.EPOLLOUT)  # runs connection_made
    message = b"x" * 64

    def via_pool():
        started = time.perf_counter()
        for _ in range(count):
            peer.send(message)
            pool._dispatch(conn.fd, select.EPOLLIN)
            peer.recv(100)
        return (time.perf_counter() - started) / count * 1e6

    def bare():
        started = time.perf_counter()
        for _ in range(count):
            peer.send(message)
            ours.send(ours.recv(65536))
            peer.recv(100)
        return (time.perf_counter() - started) / count * 1e6

    pool_runs, bare_runs = [], []
    for _ in range(5):
        pool_runs.append(via_pool())
        bare_runs.append(bare())
    pool.close()
    return statistics.median(pool_runs), statistics.median(bare_runs)


def main(argv=None):
    """Print the per-round-trip cost of the pool path and of bare recv+send."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50000)
    args = parser.parse_args(argv)
    pool_us, bare_us = measure(args.count)
    print("pool dispatch + echo: %.2f us per round trip" % pool_us)
    print("bare recv + send:     %.2f us per round trip" % bare_us)
    print("pool overhead:        %.2f us" % (pool_us - bare_us))
    return 0


if __name__ == "__main__":
    sys.exit(main())
