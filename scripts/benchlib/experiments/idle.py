"""Idle connections: what holding N idle connections costs msgsrv in memory, threads, latency."""

from benchlib import loads, report, runner, stats
from benchlib.registry import experiment

NAIVE_MAX = 1000      # thread-per-connection anchor: one thread per idle connection
PROBE_ROUNDS = 500
PROBE_SIZE = 64


@experiment("idle", "N idle connections held open: server RSS, threads and echo latency")
def run_idle(ctx):
    """Measure msgsrv (and the naive anchor at a smaller N) before and while holding; one table."""
    held_target = ctx.idle_conns or (500 if ctx.quick else 10000)
    quiet = 0.5 if ctx.quick else 1.0
    counts = {"msgsrv-tcp": held_target, "threading-tcp": min(held_target, NAIVE_MAX)}
    runs = {}

    def body(rep, target, server):
        runs.setdefault(target.name, []).append(
            _measure(ctx, server, counts[target.name], quiet))

    runner.for_each_server(ctx, list(counts), body)
    return [_table(ctx, counts, runs)]


def _measure(ctx, server, count, quiet):
    before = server.status()
    probe_before = _probe(ctx, server)
    with loads.IdleHold(ctx, server, count) as hold:
        idle_pct = loads.server_cpu_pct(server, quiet)
        held = server.status()
        probe_held = _probe(ctx, server)
    return {"wanted": count, "held": hold.held, "connect_s": hold.connect_s,
            "rss_before": before["rss_kib"], "rss_held": held["rss_kib"],
            "threads_before": before["threads"], "threads_held": held["threads"],
            "p50_before": probe_before["p50_s"], "p99_before": probe_before["p99_s"],
            "p50_held": probe_held["p50_s"], "p99_held": probe_held["p99_s"],
            "idle_pct": idle_pct}


def _probe(ctx, server):
    # One fresh connection, a bounded number of round trips (30 s cap).
    return loads.run_pingpong(ctx, server, 1, PROBE_SIZE, 30.0, max_rounds=PROBE_ROUNDS)


def _table(ctx, counts, runs):
    table = report.Table(
        "idle: N idle connections held, %d x 64 B probe round trips, median of %d rep(s)"
        % (PROBE_ROUNDS, ctx.reps),
        ["server", "N", "held", "connect ms", "RSS MiB before", "RSS MiB held",
         "threads before", "threads held", "p50/p99 ms before", "p50/p99 ms held",
         "srv% idle"],
        notes=["held = connections that echoed one byte (so the server really accepted them);",
               "srv% idle = server CPU while holding them with no traffic."])
    for name in counts:
        if name not in runs:
            continue
        m = stats.median_runs(runs[name])
        table.add(runner.TARGETS[name].label, counts[name], report.fmt_int(m["held"]),
                  report.fmt_ms(m["connect_s"]), _mib(m["rss_before"]), _mib(m["rss_held"]),
                  report.fmt_int(m["threads_before"]), report.fmt_int(m["threads_held"]),
                  _pair(m["p50_before"], m["p99_before"]), _pair(m["p50_held"], m["p99_held"]),
                  report.fmt_pct(m["idle_pct"]))
    return table


def _mib(kib):
    return report.MISSING if kib is None else "%.1f" % (kib / 1024.0)


def _pair(p50, p99):
    return "%s/%s" % (report.fmt_ms(p50), report.fmt_ms(p99))
