#!/usr/bin/env python3
"""Benchmark the file service against what the machine can do, in one run.

    python scripts/bench_files.py [--size 1G] [--repeat 2] [--dir DIR]

Transfers one file of ``--size`` random bytes over loopback with the msgsrv
daemon (a subprocess) and FileClient (this process): put (disk to disk), get
to /dev/null (checksum cached, then not cached) and get to disk.  In the same
run it measures the bounds a verified transfer cannot beat: a minimal stdlib
pair (``socket.sendfile()`` in a child process, ``recv_into`` here, to
/dev/null and to disk with fsync), and single-core ``hashlib`` SHA-256.
Prints MB/s (10^6 bytes per second, best of ``--repeat``), each msgsrv figure
as a ratio of min(floor, SHA-256), and the daemon's peak RSS (VmHWM).

``run(args)`` does the work and returns the figures, for scripts/bench.py.
"""

import argparse
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from msgsrv.wire import auth  # noqa: E402
from msgsrv.client import FileClient  # noqa: E402
from msgsrv.ops.settings import size as parse_size  # noqa: E402

CHUNK = 1 << 20
MB = 1e6


def build_parser():
    """The command-line options (also the ``args`` that ``run`` expects)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size(1), default=1 << 30,
                        help="bytes to transfer, K/M/G suffixes allowed (default 1G)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="runs of each measurement; the best counts (default 2)")
    parser.add_argument("--dir", default=None,
                        help="scratch directory on the disk to measure (default: system temp)")
    parser.add_argument("--floor-sender", nargs=2, metavar=("FILE", "PORT_FILE"),
                        help=argparse.SUPPRESS)
    return parser


# -- the bounds -------------------------------------------------------------------

def measure_sha256(size):
    """Seconds for one core to SHA-256 ``size`` bytes (1 MiB updates, in memory)."""
    block = os.urandom(CHUNK)
    digest = hashlib.sha256()
    started = time.perf_counter()
    for _ in range(size // CHUNK):
        digest.update(block)
    digest.update(block[:size % CHUNK])
    return time.perf_counter() - started


def floor_sender(path, port_file):
    """Child process: serve ``path`` with socket.sendfile() to each connection, until killed."""
    listener = socket.create_server(("127.0.0.1", 0))
    with open(port_file + ".tmp", "w") as stream:
        stream.write(str(listener.getsockname()[1]))
    os.replace(port_file + ".tmp", port_file)
    while True:
        conn, _ = listener.accept()
        with conn, open(path, "rb") as source:
            conn.sendfile(source)


def measure_floor(port, size, sink_path=None):
    """Seconds to receive ``size`` bytes from the floor sender with recv_into (to disk if asked)."""
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    sink = open(sink_path, "wb") if sink_path else None
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        got = 0
        while got < size:
            count = sock.recv_into(view)
            if not count:
                raise RuntimeError("floor sender stopped after %d bytes" % got)
            if sink is not None:
                sink.write(view[:count])
            got += count
    if sink is not None:
        sink.flush()
        os.fsync(sink.fileno())
        sink.close()
        os.unlink(sink_path)
    return time.perf_counter() - started


# -- the daemon -----------------------------------------------------------------------

class Daemon:
    """``python -m msgsrv`` serving a file service on a free loopback port."""

    def __init__(self, work, size):
        self.root = os.path.join(work, "root")
        keys = os.path.join(work, "keys", "bench.keys")
        auth.ensure_keys_file(keys, "bench")
        self.secret = auth.load_keys(keys)["bench"]
        config = os.path.join(work, "bench.ini")
        with open(config, "w") as stream:
            stream.write("[msgsrv]\nlog_level = info\n\n[service:files]\nhandler = file\n"
                         "port = 0\nroot = %s\nkeys_file = %s\nmax_file_size = %d\n"
                         "io_timeout = 120\n" % (self.root, keys, max(size, 1)))
        self.proc = subprocess.Popen([sys.executable, "-m", "msgsrv", "--config", config],
                                     cwd=ROOT, stderr=subprocess.PIPE, text=True)
        self.port = self._wait_port()
        self.rss_at_start = self.memory("VmRSS")

    def _wait_port(self):
        for line in self.proc.stderr:
            match = re.search(r"listening service=files .*address=[^ ]+:(\d+)", line)
            if match:
                threading.Thread(target=self.proc.stderr.read, daemon=True).start()
                return int(match.group(1))
        raise RuntimeError("the daemon exited before listening")

    def memory(self, field):
        """A ``VmHWM``/``VmRSS`` figure of the daemon process in bytes."""
        with open("/proc/%d/status" % self.proc.pid) as stream:
            kib = re.search(r"^%s:\s+(\d+) kB" % field, stream.read(), re.M).group(1)
        return int(kib) * 1024

    def client(self):
        return FileClient("127.0.0.1", self.port, "bench", self.secret, timeout=120)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)


def _timed(action):
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def _write_source(path, size):
    with open(path, "wb") as stream:
        left = size
        while left:
            stream.write(os.urandom(min(CHUNK, left)))
            left -= min(CHUNK, left)


def _measurements(work, source, size, port, daemon, client, null):
    """name -> a function returning the seconds one run of that measurement takes."""
    cold = os.path.join(daemon.root, "cold.bin")
    os.link(source, cold)
    local = os.path.join(work, "downloaded.bin")

    def get_cold():
        os.utime(cold)  # a new ctime: the daemon's checksum cache misses
        return _timed(lambda: client.get("cold.bin", null))

    return {
        "sha256": lambda: measure_sha256(size),
        "floor_null": lambda: measure_floor(port, size),
        "floor_disk": lambda: measure_floor(port, size, os.path.join(work, "floor.bin")),
        "put": lambda: _timed(lambda: client.put(source, "bench.bin", overwrite=True)),
        "get_null": lambda: _timed(lambda: client.get("bench.bin", null)),
        "get_null_cold": get_cold,
        "get_disk": lambda: _timed(lambda: client.get("bench.bin", local)),
    }


def run(args):
    """Measure everything for ``args`` (see build_parser); print the table; return the figures.

    The measurements take turns, ``repeat`` rounds of all of them, and the
    best of each counts: a burst of load on the machine then hits one round
    of everything rather than all the runs of one figure.
    """
    size, repeat = args.size, max(1, args.repeat)
    load_before = os.getloadavg()[0]
    work = tempfile.mkdtemp(prefix="msgsrv-bench-", dir=args.dir)
    sender = daemon = None
    try:
        source = os.path.join(work, "source.bin")
        _write_source(source, size)
        port_file = os.path.join(work, "floor.port")
        sender = subprocess.Popen([sys.executable, os.path.abspath(__file__),
                                   "--floor-sender", source, port_file])
        port = _wait_for_file(port_file)
        daemon = Daemon(work, size)
        with daemon.client() as client, open(os.devnull, "wb") as null:
            measure = _measurements(work, source, size, port, daemon, client, null)
            rounds = [{name: run_once() for name, run_once in measure.items()}
                      for _ in range(repeat)]
        seconds = {name: min(r[name] for r in rounds) for name in measure}
        figures = {"size": size, "repeat": repeat, "seconds": seconds,
                   "mb_per_s": {k: size / v / MB for k, v in seconds.items()},
                   "daemon_rss_start": daemon.rss_at_start,
                   "daemon_peak_rss": daemon.memory("VmHWM"),
                   "load": (load_before, os.getloadavg()[0])}
    finally:
        if sender is not None:
            sender.kill()
            sender.wait()
        if daemon is not None:
            daemon.stop()
        shutil.rmtree(work, ignore_errors=True)
    figures["ratios"] = _ratios(figures["mb_per_s"])
    print_table(figures)
    return figures


def _wait_for_file(path, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise RuntimeError("the floor sender did not start")
        time.sleep(0.01)
    with open(path) as stream:
        return int(stream.read())


# msgsrv figure -> the floor it is compared with (besides SHA-256)
_BOUNDS = {"put": "floor_disk", "get_null": "floor_null", "get_null_cold": "floor_null",
           "get_disk": "floor_disk"}

_LABELS = [
    ("sha256", "SHA-256, one core (hashlib)"),
    ("floor_null", "floor: sendfile -> recv_into, /dev/null"),
    ("floor_disk", "floor: sendfile -> recv_into, disk + fsync"),
    ("put", "msgsrv put, disk -> disk (+ fsync)"),
    ("get_null", "msgsrv get -> /dev/null"),
    ("get_null_cold", "msgsrv get -> /dev/null, checksum not cached"),
    ("get_disk", "msgsrv get -> disk (+ fsync)"),
]


def _ratios(speed):
    return {name: speed[name] / min(speed[bound], speed["sha256"])
            for name, bound in _BOUNDS.items()}


def print_table(figures):
    """Print the figures as a table."""
    speed, ratios = figures["mb_per_s"], figures["ratios"]
    print("msgsrv file service: %d MiB over loopback, best of %d (Python %s, %d CPUs)"
          % (figures["size"] >> 20, figures["repeat"], sys.version.split()[0], os.cpu_count()))
    print()
    print("%-46s %8s  %s" % ("transfer", "MB/s", "ratio to min(floor, SHA-256)"))
    for key, label in _LABELS:
        ratio = "%.2f" % ratios[key] if key in ratios else ""
        print(("%-46s %8.0f  %s" % (label, speed[key], ratio)).rstrip())
    print()
    print("daemon peak RSS (VmHWM): %.1f MiB (%.1f MiB after start)"
          % (figures["daemon_peak_rss"] / 2**20, figures["daemon_rss_start"] / 2**20))
    print("load average (1 min) before and after: %.2f, %.2f (other work skews the figures)"
          % figures["load"])


def main(argv=None):
    """Command-line entry point."""
    args = build_parser().parse_args(argv)
    if args.floor_sender:
        floor_sender(*args.floor_sender)
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
