"""Measured load runs against one running server, summarised as flat metric dicts.

Each function spreads the connections over the load processes (the C
generator, ``benchlib.cload``, unless the context has none; else the Python
one, ``benchlib.workers``), waits until they are connected, starts them
together after a warm-up, samples the server's CPU time over the measured
window and returns metrics (None where a value could not be had):

    rt_s, p50_s, p99_s, max_s, errors, srv_pct, load_pct, cpu_us_rt, and
    per experiment a few more (see each function).

``srv_pct`` and ``load_pct`` are CPU seconds per wall second x 100, so 100
means one core fully busy; they show which side was saturated.
``cpu_us_rt`` is the server's CPU (user + system, all threads, from
/proc/PID/stat) per round trip in microseconds: the figure that a busy
machine disturbs least.
"""

import time

from benchlib import clients, stats
from benchlib.cload import CLoadGroup
from benchlib.workers import LoadGroup

LEAD = 0.1       # seconds between "go" and the common start time
GRACE = 10.0     # seconds to wait for results after a window ends
GENTLE_BATCH = 4  # connections opened at a time: below the stdlib listen backlog of 5


def split(total, parts):
    """Split ``total`` items into ``parts`` near-equal positive shares (fewer if total is small)."""
    parts = max(1, min(parts, total))
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def run_pingpong(ctx, server, conns, size, seconds, max_rounds=None,
                 connect_timeout=10.0, batch=GENTLE_BATCH):
    """TCP ping-pong with ``conns`` connections of ``size``-byte payloads for ``seconds``.

    Connections are opened ``batch`` at a time (None: all at once) and each
    echoes one byte before the measured window starts (see clients.open_served).

    Extra metrics: connected, failures, connect_s, served_s (see
    clients.open_served; None unless all were served), min_rounds,
    mean_rounds, fairness (slowest/mean round trips per connection),
    zero_conns (connections with no round trip, failures included), per_second
    (connections served in each whole second), oldest_pending_s.
    Raises LoadError if a load process fails or does not report in time.
    """
    jobs = [{"port": server.port, "conns": share, "size": size, "seconds": seconds,
             "max_rounds": max_rounds, "connect_timeout": connect_timeout,
             "batch": batch, "go_timeout": connect_timeout + 30.0,
             "warmup": ctx.warmup, "cpus": ctx.plan.load}
            for share in split(conns, ctx.load_procs)]
    with _load_group(ctx, "tcp", jobs) as group:
        ready = group.require("ready", time.monotonic() + connect_timeout + 30.0)
        results, srv = _measured_window(ctx, group, server, seconds)
    metrics = _connect_metrics(ready)
    metrics.update(_latency_metrics(results, srv))
    metrics.update(_fairness_metrics(results, metrics["failures"]))
    return metrics


def run_udp(ctx, server, clients_count, size, seconds, reply_timeout):
    """UDP ping-pong with ``clients_count`` sockets of ``size``-byte datagrams for ``seconds``.

    Extra metrics: losses (replies not seen within ``reply_timeout``) and stale
    (replies that came after their deadline). Raises LoadError like run_pingpong.
    """
    jobs = [{"port": server.port, "conns": share, "size": size, "seconds": seconds,
             "reply_timeout": reply_timeout, "go_timeout": 30.0, "warmup": ctx.warmup,
             "cpus": ctx.plan.load}
            for share in split(clients_count, ctx.load_procs)]
    with _load_group(ctx, "udp", jobs) as group:
        group.require("ready", time.monotonic() + 30.0)
        results, srv = _measured_window(ctx, group, server, seconds)
    metrics = _latency_metrics(results, srv)
    metrics["losses"] = sum(result["losses"] for result in results)
    metrics["stale"] = sum(result["stale"] for result in results)
    return metrics


def run_commands(ctx, server, port, key, command, clients_count, seconds):
    """``clients_count`` authenticated command clients (``key``: name, secret) running
    ``command`` on ``port`` again and again for ``seconds``.

    Metrics as run_pingpong's latency metrics: ``rt_s`` is runs per second;
    ``server.cpu_seconds`` is sampled over the window.
    """
    return _repeated(ctx, server, "command", clients_count, seconds,
                     {"port": port, "key": key, "command": command})


def run_churn(ctx, server, clients_count, seconds):
    """``clients_count`` clients each opening a connection, having 64 bytes echoed and
    closing it, again and again for ``seconds``; ``rt_s`` is connections per second."""
    return _repeated(ctx, server, "churn", clients_count, seconds, {"port": server.port})


def _repeated(ctx, server, kind, clients_count, seconds, job):
    jobs = [dict(job, conns=share, seconds=seconds, go_timeout=60.0, cpus=ctx.plan.load)
            for share in split(clients_count, ctx.load_procs)]
    with LoadGroup(kind, jobs) as group:
        group.require("ready", time.monotonic() + 30.0)
        results, srv = _measured_window(ctx, group, server, seconds)
    return _latency_metrics(results, srv)


class IdleHold:
    """Hold ``conns`` idle TCP connections from load processes, as a context manager.

    On entry the connections are opened and each has echoed one byte; the
    ``held`` and ``connect_s`` attributes say how many and how long it took.
    On exit (or after ``hold_timeout`` s, whichever comes first) they close.
    Raises LoadError if the processes fail or take longer than ``connect_timeout``.
    """

    def __init__(self, ctx, server, conns, connect_timeout=120.0, hold_timeout=600.0):
        self.jobs = [{"port": server.port, "conns": share, "batch": GENTLE_BATCH,
                      "connect_timeout": connect_timeout, "hold_timeout": hold_timeout,
                      "cpus": ctx.plan.load}
                     for share in split(conns, ctx.load_procs)]
        self.deadline_s = connect_timeout + 30.0
        self.group = None

    def __enter__(self):
        self.group = LoadGroup("idle", self.jobs).__enter__()
        try:
            ready = self.group.require("ready", time.monotonic() + self.deadline_s)
        except BaseException:
            self.group.close()
            raise
        self.held = sum(info["connected"] for info in ready)
        self.connect_s = max(info["served_s"] for info in ready)
        return self

    def __exit__(self, *exc_info):
        try:
            self.group.release()
            self.group.receive("done", time.monotonic() + 30.0)
        finally:
            self.group.close()
        return False


def server_cpu_pct(server, seconds):
    """Return the server's CPU use (% of one core) over the next ``seconds``, or None."""
    cpu0, t0 = server.cpu_seconds(), time.monotonic()
    clients.sleep_until(t0 + seconds)
    cpu1, t1 = server.cpu_seconds(), time.monotonic()
    if cpu0 is None or cpu1 is None:
        return None
    return (cpu1 - cpu0) / (t1 - t0) * 100.0


def _load_group(ctx, kind, jobs):
    if ctx.load_generator is not None:
        return CLoadGroup(ctx.load_generator, kind, jobs)
    return LoadGroup(kind, jobs)


def _measured_window(ctx, group, server, seconds):
    """Run the window; return (results, server CPU seconds per wall second or None)."""
    start_at = time.monotonic() + LEAD + ctx.warmup
    group.go(start_at)
    clients.sleep_until(start_at)
    cpu0, t0 = server.cpu_seconds(), time.monotonic()
    group.receive("done", start_at + seconds)  # returns early when rounds ran out
    cpu1, t1 = server.cpu_seconds(), time.monotonic()
    results = group.require("done", t1 + GRACE)
    srv = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / (t1 - t0)
    return results, srv


def _connect_metrics(ready):
    failures = sum(info["failures"] for info in ready)
    return {"connected": sum(info["connected"] for info in ready),
            "failures": failures,
            "connect_s": max(info["connect_s"] for info in ready),
            "served_s": None if failures else max(info["served_s"] for info in ready)}


def _latency_metrics(results, srv):
    histogram = stats.Histogram()
    for result in results:
        histogram.add_sparse(result["hist"], result["max_ns"])
    seconds = max(result["seconds"] for result in results)
    rt_s = histogram.total / seconds if seconds > 0 else None
    return {"rt_s": rt_s,
            "p50_s": histogram.percentile(50),
            "p99_s": histogram.percentile(99),
            "max_s": histogram.max_s,
            "errors": sum(result["errors"] for result in results),
            "srv_pct": None if srv is None else srv * 100.0,
            "load_pct": (sum(result["cpu_s"] for result in results) / seconds * 100.0
                         if seconds > 0 and all("cpu_s" in r for r in results) else None),
            "cpu_us_rt": srv / rt_s * 1e6 if srv is not None and rt_s else None}


def _fairness_metrics(results, failures):
    # A connection that was never served is a connection with zero round trips.
    per_conn = [rounds for result in results for rounds in result["per_conn"]] + [0] * failures
    mean = sum(per_conn) / len(per_conn) if per_conn else None
    pending = [r["oldest_pending"] for r in results if r["oldest_pending"] is not None]
    return {"min_rounds": min(per_conn) if per_conn else None,
            "mean_rounds": mean,
            "fairness": stats.ratio(min(per_conn), mean) if per_conn else None,
            "zero_conns": sum(1 for rounds in per_conn if rounds == 0),
            "per_second": _sum_series([result["per_second"] for result in results]),
            "oldest_pending_s": max(pending) if pending else None}


def _sum_series(series):
    length = max(len(values) for values in series)
    return [sum(values[i] for values in series if i < len(values)) for i in range(length)]
