#!/usr/bin/env python3
"""Chat fan-out benchmark: msgsrv's chat service against a naive threaded broadcast server.

Usage: python scripts/bench_chat.py [--subscribers 10,100,500] [--quick] [--no-pin] ...
       python scripts/bench_chat.py --redis [--subscribers 300] [--server-cpus N] ...

For each subscriber count N, with and without one stalled subscriber, and for
each server (msgsrv's chat service, and the tutorial design: a thread per
client, one lock, ``sendall`` to each client in turn), one publisher posts to
a room of N subscribers:

1. *throughput*: ``--deliveries`` deliveries in all (messages = deliveries / N)
   as fast as the slowest subscriber keeps up (at most ``--window`` messages
   ahead of it), giving up after ``--cap`` seconds;
2. *latency*: ``--rate`` messages per second for ``--duration`` seconds; each
   delivery's latency is its arrival time minus its send time (both
   CLOCK_MONOTONIC, shared by the processes of one machine).

The stalled subscriber joins and then never reads; it connects with a small
MSS and receive buffer, as a slow peer on a real network would, so the
kernel absorbs tens of kilobytes for it instead of megabytes.

Each server runs in its own process, the publisher and the subscribers in
others (with two or more CPUs the server is pinned to the first CPU and the
load to the rest).  Only 127.0.0.1 is used.

With ``--redis`` it measures chat across daemons instead: the subscribers
spread over ``--daemons`` (3) daemons whose chat uses one redis-server
(``backend = redis://``, started here on a free loopback port without
persistence), the publisher on the first, against one daemon with the
memory backend, in the same run; the latency phase runs at exactly
``--rate`` messages per second.  It prints both rows, the ratio of
deliveries per second and whether the targets hold (>= 0.5x the single
daemon flat out, p99 <= 20 ms paced).

From another script: ``bench_chat.run(bench_chat.parse_args(["--quick"]))``
returns the list of result rows (dicts) after printing the table.
"""

import argparse
import multiprocessing
import os
import resource
import selectors
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

ROOM = "bench"
_CTX = multiprocessing.get_context("fork")
SYNC, THROUGHPUT, LATENCY, STOP = 0, 1, 2, 3
_TAG = {THROUGHPUT: b"MSG bench pub T ", LATENCY: b"MSG bench pub L "}


# ---------------------------------------------------------------------------
# The servers, each in a process of its own


class NaiveChatServer(socketserver.ThreadingTCPServer):
    """The tutorial chat server: a thread per client, one lock, sendall to each in turn."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # a fair start; the tutorials' 5 only slows connecting

    def __init__(self, address):
        super().__init__(address, NaiveChatHandler)
        self.lock = threading.Lock()
        self.clients = []


class NaiveChatHandler(socketserver.StreamRequestHandler):
    """First line: the nick; lines starting with '/' are ignored; others go to everyone."""

    def handle(self):
        server = self.server
        with server.lock:
            server.clients.append(self.request)
        try:
            nick = self.rfile.readline().strip().decode("utf-8", "replace")
            for raw in self.rfile:
                if not raw.startswith(b"/"):
                    self.broadcast(("MSG %s %s " % (ROOM, nick)).encode() + raw.rstrip(b"\r\n")
                                   + b"\n")
        except OSError:
            pass
        finally:
            with server.lock:
                if self.request in server.clients:
                    server.clients.remove(self.request)

    def broadcast(self, line):
        with self.server.lock:
            for sock in list(self.server.clients):
                try:
                    sock.sendall(line)
                except OSError:
                    self.server.clients.remove(sock)


def _serve(kind, ports, stop, cpus, backend="memory"):
    _prepare_process(cpus)
    if kind == "naive":
        server = NaiveChatServer(("127.0.0.1", 0))
        threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True).start()
        ports.put(server.server_address[1])
        stop.wait()
        return
    import logging
    from msgsrv.net.server import make_server
    logging.basicConfig(level=logging.WARNING, format="  [msgsrv] %(levelname)s %(message)s")
    server = make_server(_msgsrv_config(backend))
    server.serve_in_thread()
    deadline = time.monotonic() + 30
    while not getattr(server.service.chat, "available", True) and time.monotonic() < deadline:
        time.sleep(0.01)  # a Redis backend connects in the background
    ports.put(server.port)
    stop.wait()
    server.stop(2.0)


def _msgsrv_config(backend="memory"):
    import configparser
    from msgsrv.ops import config
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str
    parser["service:chat"] = {"handler": "chat", "host": "127.0.0.1", "port": "0",
                              "line_rate": "0", "max_connections": "5000",
                              "max_connections_per_ip": "5000", "idle_timeout": "0",
                              "backend": backend}
    return config.from_parser(parser, "<bench>").services[0]


def _prepare_process(cpus):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY
                                                    else max(soft, 65536), hard))
    if cpus:
        os.sched_setaffinity(0, cpus)


# ---------------------------------------------------------------------------
# Load: subscribers and the publisher


def _connect(port, nick, stalled=False):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if stalled:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(("%s\n/join %s\n" % (nick, ROOM)).encode())
    return sock


class _Sub:
    """One subscriber socket's bookkeeping."""

    __slots__ = ("sock", "partial", "synced", "counts", "last")

    def __init__(self, sock):
        self.sock = sock
        self.partial = b""
        self.synced = False
        self.counts = {THROUGHPUT: 0, LATENCY: 0}
        self.last = 0


def _subscriber(port, nicks, slot, shared, results, plan):
    _prepare_process(plan["load_cpus"])
    subs = [_Sub(_connect(port, nick)) for nick in nicks]
    selector = selectors.DefaultSelector()
    for sub in subs:
        sub.sock.setblocking(False)
        selector.register(sub.sock, selectors.EVENT_READ, sub)
    latencies = []
    reported = {SYNC: False, THROUGHPUT: False, LATENCY: False}
    while shared.phase.value != STOP:
        # Receive (and time) everything ready first, then parse: parsing one
        # socket's lines must not delay the timestamp of the next.
        chunks = [(key.data,) + _recv(key.data.sock) for key, _ in selector.select(0.05)]
        for sub, now, chunk in chunks:
            _parse(sub, now, chunk, latencies)
        _progress(subs, slot, shared, results, plan, latencies, reported)
    for sub in subs:
        sub.sock.close()


def _recv(sock):
    try:
        chunk = sock.recv(1 << 18)
    except (BlockingIOError, InterruptedError):
        chunk = b""
    return time.monotonic_ns(), chunk


def _parse(sub, now, chunk, latencies):
    data = sub.partial + chunk
    cut = data.rfind(b"\n") + 1
    complete, sub.partial = data[:cut], data[cut:]
    if not sub.synced and b"MSG bench pub S " in complete:
        sub.synced = True
    count = complete.count(_TAG[THROUGHPUT])
    if count:
        sub.counts[THROUGHPUT] += count
        sub.last = now
    if _TAG[LATENCY] in complete:
        for line in complete.split(b"\n"):
            if line.startswith(_TAG[LATENCY]):
                latencies.append((now - int(line.split(b" ", 6)[5])) / 1e6)
                sub.counts[LATENCY] += 1


def _progress(subs, slot, shared, results, plan, latencies, reported):
    phase = shared.phase.value
    if not reported[SYNC] and all(sub.synced for sub in subs):
        reported[SYNC] = True
        with shared.ready.get_lock():
            shared.ready.value += 1
    shared.progress[slot] = min(sub.counts[THROUGHPUT] for sub in subs)
    done = all(sub.counts[THROUGHPUT] >= plan["messages"] for sub in subs)
    if not reported[THROUGHPUT] and (done or phase >= LATENCY):
        reported[THROUGHPUT] = True
        results.put(("throughput", slot, sum(s.counts[THROUGHPUT] for s in subs),
                     max(s.last for s in subs)))
    done = all(sub.counts[LATENCY] >= plan["latency_messages"] for sub in subs)
    if not reported[LATENCY] and phase >= LATENCY and (done or shared.latency_over.value):
        reported[LATENCY] = True
        results.put(("latency", slot, latencies[:]))


def _publisher(port, shared, results, plan):
    _prepare_process(plan["load_cpus"])
    sock = _connect(port, "pub")
    sock.settimeout(2.0)  # a stalled server must not hang the benchmark
    threading.Thread(target=_drain, args=(sock,), daemon=True).start()
    pad = "x" * plan["size"]
    try:
        while shared.ready.value < plan["ready"]:
            sock.sendall(b"S sync\n")
            time.sleep(0.02)
        _wait_phase(shared, THROUGHPUT)
        results.put(("sent",) + _burst(sock, shared, plan, pad))
        _wait_phase(shared, LATENCY)
        _paced(sock, shared, plan, pad)
    except OSError:  # the server stopped taking our lines: it is stalled
        results.put(("sent", time.monotonic_ns(), 0, True))
    _wait_phase(shared, STOP)
    sock.close()


def _drain(sock):
    try:
        while sock.recv(1 << 18):
            pass
    except OSError:
        pass


def _wait_phase(shared, phase):
    while shared.phase.value < phase:
        time.sleep(0.005)


def _burst(sock, shared, plan, pad):
    """Send the throughput messages, at most ``window`` ahead of the slowest subscriber."""
    started = time.monotonic_ns()
    give_up = time.monotonic() + plan["cap"]
    for seq in range(plan["messages"]):
        if seq % 32 == 0:
            while seq - min(shared.progress) >= plan["window"]:
                if time.monotonic() > give_up:
                    return started, seq, True
                time.sleep(0.0002)
        sock.sendall(b"T %d %d %s\n" % (seq, time.monotonic_ns(), pad.encode()))
    return started, plan["messages"], False


def _paced(sock, shared, plan, pad):
    interval = 1.0 / plan["rate"]
    start = time.monotonic()
    for seq in range(plan["latency_messages"]):
        delay = start + seq * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sock.sendall(b"L %d %d %s\n" % (seq, time.monotonic_ns(), pad.encode()))


# ---------------------------------------------------------------------------
# One cell: one server, N subscribers, stalled or not


class _Shared:
    def __init__(self, procs):
        self.phase = _CTX.Value("i", SYNC)
        self.ready = _CTX.Value("i", 0)
        self.latency_over = _CTX.Value("i", 0)
        self.progress = _CTX.Array("q", procs, lock=False)


def run_cell(kind, subscribers, stalled, args, cpus, daemons=1, backend="memory"):
    """Measure ``daemons`` servers (one chat) with ``subscribers`` readers spread over
    them (+1 stalled); return a result row."""
    server_cpus, load_cpus = cpus
    ports, stop = _CTX.Queue(), _CTX.Event()
    servers = [_CTX.Process(target=_serve, args=("msgsrv" if kind == "redis" else kind, ports,
                                                 stop, server_cpus, backend), daemon=True)
               for _ in range(daemons)]
    for server in servers:
        server.start()
    procs = []
    try:
        addresses = [ports.get(timeout=30) for _ in servers]
        return _measure(kind, addresses, subscribers, stalled, args, load_cpus, procs)
    finally:
        stop.set()
        for proc in procs + servers:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)


def _measure(kind, ports, subscribers, stalled, args, load_cpus, procs):
    port = ports[0]  # the publisher's (and the stalled subscriber's) server
    groups = _split(["sub%d" % i for i in range(subscribers)], args.procs_per_100, len(ports))
    shared, results = _Shared(len(groups)), _CTX.Queue()
    messages = max(100, args.deliveries // subscribers)
    rate = latency_rate(args, subscribers)
    plan = {"messages": messages, "window": args.window, "cap": args.cap, "size": args.size,
            "rate": rate, "latency_messages": max(1, int(rate * args.duration)),
            "ready": len(groups) + (1 if stalled else 0), "load_cpus": load_cpus}
    for slot, nicks in enumerate(groups):
        procs.append(_CTX.Process(target=_subscriber, daemon=True, args=(
            ports[slot % len(ports)], nicks, slot, shared, results, plan)))
    procs.append(_CTX.Process(target=_publisher, args=(port, shared, results, plan), daemon=True))
    for proc in procs:
        proc.start()
    staller = _stalled_subscriber(port, shared) if stalled else None
    try:
        _wait(lambda: shared.ready.value >= plan["ready"], 60, "subscribers to join")
        shared.phase.value = THROUGHPUT
        row = _throughput(results, shared, plan, len(groups), subscribers)
        shared.phase.value = LATENCY
        row.update(_latency(results, shared, plan, len(groups), subscribers, row["stalled"]))
    finally:
        shared.phase.value = STOP
        if staller is not None:
            staller.close()
    row.update(server=kind, subscribers=subscribers, stalled_subscriber=stalled)
    return row


def latency_rate(args, subscribers):
    """Messages per second of the latency phase for ``subscribers``."""
    return min(args.rate, args.latency_load / subscribers)


def _split(nicks, per_100, at_least=1):
    count = max(at_least, min(8, -(-len(nicks) * per_100 // 100)))
    return [nicks[i::count] for i in range(count) if nicks[i::count]]


def _stalled_subscriber(port, shared):
    """Join, read until the first sync line, then never read again."""
    sock = _connect(port, "stalled", stalled=True)
    seen = b""
    while b"MSG bench pub S " not in seen:
        seen = seen[-64:] + sock.recv(4096)
    with shared.ready.get_lock():
        shared.ready.value += 1
    return sock


def _wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting for %s" % what)
        time.sleep(0.01)


def _throughput(results, shared, plan, procs, subscribers):
    reports, sent = _collect(results, "throughput", procs, plan["cap"] + 5, shared)
    started, _, gave_up = sent
    delivered = sum(r[2] for r in reports)
    expected = plan["messages"] * subscribers
    complete = delivered >= expected and not gave_up
    end = max(r[3] for r in reports) if complete else started + int(plan["cap"] * 1e9)
    seconds = max(1e-9, (end - started) / 1e9)
    return {"deliveries_per_s": delivered / seconds, "delivered": delivered / expected,
            "stalled": not complete}


def _latency(results, shared, plan, procs, subscribers, stalled):
    if stalled:
        return {"p50_ms": None, "p99_ms": None, "latency_delivered": 0.0}
    over = threading.Timer(plan["latency_messages"] / plan["rate"] + 3.0,
                           lambda: setattr(shared.latency_over, "value", 1))
    over.start()
    try:
        reports, _ = _collect(results, "latency", procs, plan["latency_messages"] / plan["rate"]
                              + 10, shared, need_sent=False)
    finally:
        over.cancel()
    values = sorted(v for r in reports for v in r[2])
    expected = plan["latency_messages"] * subscribers
    missing = expected - len(values)
    values += [float("inf")] * max(0, missing)
    return {"p50_ms": _percentile(values, 50), "p99_ms": _percentile(values, 99),
            "latency_delivered": (expected - max(0, missing)) / expected}


def _collect(results, kind, procs, timeout, shared, need_sent=True):
    reports, sent = [], None
    deadline = time.monotonic() + timeout
    while len(reports) < procs or (need_sent and sent is None):
        left = deadline - time.monotonic()
        if left <= 0:
            if kind == "throughput" and shared.phase.value < LATENCY:
                shared.phase.value = LATENCY  # subscribers report what they have
                deadline = time.monotonic() + 5
                continue
            raise RuntimeError("timed out waiting for %s reports" % kind)
        try:
            item = results.get(timeout=min(left, 0.5))
        except Exception:  # queue.Empty
            continue
        if item[0] == "sent":
            sent = item[1:]
        elif item[0] == kind:
            reports.append(item)
    return reports, sent


def _percentile(values, pct):
    if not values:
        return None
    return values[min(len(values) - 1, int(len(values) * pct / 100))]


# ---------------------------------------------------------------------------
# The run and its table


def parse_args(argv=None):
    """Parse the command line (argparse exits with status 2 on bad arguments)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", default="10,100,500",
                        help="comma-separated subscriber counts (default: %(default)s)")
    parser.add_argument("--deliveries", type=int, default=1000000,
                        help="deliveries per throughput cell (default: %(default)s)")
    parser.add_argument("--window", type=int, default=1000,
                        help="messages the publisher may be ahead of the slowest subscriber")
    parser.add_argument("--cap", type=float, default=10.0,
                        help="seconds before a throughput cell counts as stalled")
    parser.add_argument("--rate", type=float, default=100.0,
                        help="messages per second in the latency phase, lowered so that "
                             "rate x subscribers <= --latency-load")
    parser.add_argument("--latency-load", type=float, default=20000.0,
                        help="most deliveries per second in the latency phase (the "
                             "subscribers parse every line; keep them below saturation)")
    parser.add_argument("--duration", type=float, default=3.0,
                        help="seconds of the latency phase")
    parser.add_argument("--size", type=int, default=100, help="bytes of text per message")
    parser.add_argument("--procs-per-100", type=int, default=1,
                        help="subscriber processes per 100 subscribers (at least 1, at most 8)")
    parser.add_argument("--servers", default="msgsrv,naive", help="which servers to measure")
    parser.add_argument("--reps", type=int, default=1,
                        help="repetitions per cell; the table shows medians")
    parser.add_argument("--quick", action="store_true",
                        help="fewer deliveries, shorter phases (for a smoke run)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--server-cpus", type=int, default=1,
                        help="CPUs for the servers (and redis-server); the load gets the rest")
    parser.add_argument("--redis", action="store_true",
                        help="chat across daemons: --daemons daemons on one redis-server vs "
                             "one daemon with the memory backend (default --subscribers 300)")
    parser.add_argument("--daemons", type=int, default=3, help="daemons sharing Redis (--redis)")
    parser.add_argument("--redis-server", default=shutil.which("redis-server") or
                        "/usr/bin/redis-server", help="the redis-server program (--redis)")
    args = parser.parse_args(argv)
    if args.quick:
        args.deliveries, args.cap, args.duration = 100000, 5.0, 1.0
    if args.redis:
        if args.subscribers == "10,100,500":
            args.subscribers = "300"
        # Paced at exactly --rate, whatever the subscriber count.
        top = max(int(n) for n in args.subscribers.split(","))
        args.latency_load = max(args.latency_load, args.rate * top)
    return args


def _cpus(no_pin, server_cpus=1):
    available = sorted(os.sched_getaffinity(0))
    if no_pin or len(available) < 2:
        return None, None
    cut = max(1, min(server_cpus, len(available) - 1))
    return set(available[:cut]), set(available[cut:])


def run(args):
    """Run every cell, print the table and the ratios; return the result rows."""
    if args.redis:
        return run_redis(args)
    cpus = _cpus(args.no_pin, args.server_cpus)
    rows = []
    print("chat fan-out: %d CPUs%s, %d-byte messages, window %d; latency phase: %gs at "
          "min(%g, %g/N) msg/s" % (os.cpu_count(), "" if cpus[0] is None else
                                   " (server on CPU %s)" % min(cpus[0]), args.size,
                                   args.window, args.duration, args.rate, args.latency_load),
          flush=True)
    for count in [int(n) for n in args.subscribers.split(",")]:
        for stalled in (False, True):
            for kind in args.servers.split(","):
                reps = [run_cell(kind, count, stalled, args, cpus) for _ in range(args.reps)]
                rows.append(median_row(reps))
                print("  done: %s" % _row_text(rows[-1]), flush=True)
    print()
    print(format_table(rows))
    return rows


# ---------------------------------------------------------------------------
# Chat across daemons on Redis


class RedisServer:
    """A redis-server on a free 127.0.0.1 port, no persistence, in a temporary directory."""

    def __init__(self, program, cpus):
        self.program, self.cpus = program, cpus
        self.directory = tempfile.mkdtemp(prefix="bench-redis-")
        self.proc = None
        self.port = None

    def __enter__(self):
        for _ in range(5):
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                self.port = probe.getsockname()[1]
            self.proc = subprocess.Popen(
                [self.program, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
                 self.directory, "--save", "", "--appendonly", "no", "--loglevel", "warning"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if self.cpus:
                os.sched_setaffinity(self.proc.pid, self.cpus)
            if self._answers():
                return self
            self._stop()
        raise RuntimeError("redis-server did not start")

    def _answers(self):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return True
            except OSError:
                time.sleep(0.02)
        return False

    def _stop(self):
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None

    def __exit__(self, *exc):
        self._stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def run_redis(args):
    """One daemon (memory backend) against ``--daemons`` daemons on one Redis, in one run;
    print the table, the ratio and whether the targets hold; return the rows."""
    cpus = _cpus(args.no_pin, args.server_cpus)
    print("chat across daemons: %d CPUs%s, %d-byte messages, window %d; latency phase: %gs "
          "at %g msg/s" % (os.cpu_count(), "" if cpus[0] is None else
                           " (servers and redis-server on CPUs %s)" % sorted(cpus[0]),
                           args.size, args.window, args.duration, args.rate), flush=True)
    rows = []
    with RedisServer(args.redis_server, cpus[0]) as redis:
        backend = "redis://127.0.0.1:%d/0" % redis.port
        for count in [int(n) for n in args.subscribers.split(",")]:
            for kind, daemons, store in (("memory", 1, "memory"),
                                         ("redis", args.daemons, backend)):
                reps = [run_cell(kind, count, False, args, cpus, daemons, store)
                        for _ in range(args.reps)]
                row = median_row(reps)
                row["daemons"] = daemons
                rows.append(row)
                print("  done: %s" % _row_text(row), flush=True)
    print()
    print(format_redis_table(rows, args))
    return rows


def format_redis_table(rows, args):
    """The table of a ``--redis`` run, ratios and the targets' verdicts."""
    head = ("subs", "backend", "daemons", "deliveries/s", "p50 ms", "p99 ms", "x memory")
    lines, verdicts = [], []
    memory = {}
    for row in rows:
        if row["server"] == "memory":
            memory[row["subscribers"]] = row
    for row in rows:
        base = memory.get(row["subscribers"])
        ratio = ""
        if row["server"] == "redis" and base and base["deliveries_per_s"]:
            value = row["deliveries_per_s"] / base["deliveries_per_s"]
            ratio = "%.2f" % value
            p99 = row["p99_ms"]
            verdicts.append("N=%d: flat out %.2fx the single daemon (target >= 0.5: %s); p99 "
                            "%s ms at %g msg/s (target <= 20: %s)" % (
                                row["subscribers"], value, "met" if value >= 0.5 else "MISSED",
                                _fmt_ms(p99), args.rate,
                                "met" if p99 is not None and p99 <= 20 else "MISSED"))
        lines.append((str(row["subscribers"]), row["server"], str(row["daemons"]),
                      "%.0f" % row["deliveries_per_s"] + (" (stalled)" if row["stalled"]
                                                          else ""),
                      _fmt_ms(row["p50_ms"]), _fmt_ms(row["p99_ms"]), ratio))
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    rule = "  ".join("=" * w for w in widths)
    out = [rule, "  ".join(h.ljust(w) for h, w in zip(head, widths)), rule]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    return "\n".join(out + [rule, ""] + verdicts)


def median_row(reps):
    """One row from repetitions of a cell: the median of each figure."""
    row = dict(reps[0])
    for key in ("deliveries_per_s", "p50_ms", "p99_ms", "delivered", "latency_delivered"):
        values = sorted(r[key] for r in reps if r[key] is not None)
        row[key] = values[len(values) // 2] if len(values) == len(reps) else None
    row["stalled"] = sum(r["stalled"] for r in reps) * 2 > len(reps)
    return row


def _fmt_ms(value):
    if value is None:
        return "stalled"
    return "stalled" if value == float("inf") else "%.1f" % value


def _row_text(row):
    return "%s N=%d%s: %.0f deliveries/s, p50 %s ms, p99 %s ms" % (
        row["server"], row["subscribers"], " +stalled" if row["stalled_subscriber"] else "",
        row["deliveries_per_s"], _fmt_ms(row["p50_ms"]), _fmt_ms(row["p99_ms"]))


def format_table(rows):
    """An RST simple table of the rows, with msgsrv/naive ratios per cell."""
    by_cell = {}
    for row in rows:
        by_cell.setdefault((row["subscribers"], row["stalled_subscriber"]), {})[row["server"]] = row
    head = ("subs", "stalled", "server", "deliveries/s", "p50 ms", "p99 ms", "x naive")
    lines = []
    for (count, stalled), cell in by_cell.items():
        naive = cell.get("naive")
        for kind, row in cell.items():
            ratio = ""
            if kind != "naive" and naive and naive["deliveries_per_s"]:
                ratio = "%.1f" % (row["deliveries_per_s"] / naive["deliveries_per_s"])
            lines.append((str(count), "yes" if stalled else "no", kind,
                          "%.0f" % row["deliveries_per_s"] + ("" if not row["stalled"] else
                                                                  " (stalled)"),
                          _fmt_ms(row["p50_ms"]), _fmt_ms(row["p99_ms"]), ratio))
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    rule = "  ".join("=" * w for w in widths)
    out = [rule, "  ".join(h.ljust(w) for h, w in zip(head, widths)), rule]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    return "\n".join(out + [rule])


def main(argv=None):
    """Run the benchmark from the command line; return the exit status."""
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
