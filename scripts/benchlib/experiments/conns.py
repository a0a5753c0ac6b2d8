"""Many connections: 1000 concurrent 64-byte ping-pong clients, fairness and starvation."""

from benchlib import loads, report, runner
from benchlib.registry import experiment

TARGET_NAMES = ["msgsrv-tcp", "threading-tcp"]
SIZE = 64


@experiment("conns", "1000 concurrent 64 B ping-pong connections: throughput and fairness")
def run_conns(ctx):
    """Measure throughput, tail latency and per-connection fairness; return two tables."""
    seconds = ctx.seconds(5.0, 2.0)
    conns = 200 if ctx.quick else 1000
    cells = [conns]

    def run_cell(server, cell):
        # All clients arrive at once (batch=None): the burst is part of the test.
        return loads.run_pingpong(ctx, server, cell, SIZE, seconds, connect_timeout=15.0,
                                  batch=None)

    results = runner.measure_matrix(ctx, TARGET_NAMES, cells, run_cell)
    title = "conns: %d connections x 64 B ping-pong, %.1f s, median of %d rep(s)" % (
        conns, seconds, ctx.reps)
    return [_summary_table(title, cells, results), _per_second_table(conns, results)]


def _summary_table(title, cells, results):
    columns = [
        ("connect ms", "connect_s", report.fmt_ms),
        ("served ms", "served_s", report.fmt_ms),
        ("fail", "failures", report.fmt_int),
        ("rt/s", "rt_s", report.fmt_int),
        ("p50 ms", "p50_s", report.fmt_ms),
        ("p99 ms", "p99_s", report.fmt_ms),
        ("max ms", "max_s", report.fmt_ms),
        ("min rt", "min_rounds", report.fmt_int),
        ("mean rt", "mean_rounds", report.fmt_int),
        ("min/mean", "fairness", report.fmt_ratio),
        ("zero", "zero_conns", report.fmt_int),
        ("srv%", "srv_pct", report.fmt_pct),
        ("load%", "load_pct", report.fmt_pct),
        ("err", "errors", report.fmt_int),
    ]
    notes = [runner.RATIO_NOTE, runner.CPU_NOTE,
             "connect ms = until the last connect() completed; served ms = until every "
             "connection had echoed one byte, before the measured window (n/a: not all did "
             "within 15 s); fail = connections that did not; they count as zero round trips "
             "below; min rt / mean rt = round trips "
             "per connection; min/mean = slowest connection / mean; zero = connections that got "
             "no reply at all; max ms counts answered pings only."]
    return runner.matrix_table(title, [("conns", lambda c: c)], cells, results, TARGET_NAMES,
                               columns, [("x rt/s", "rt_s"), ("x p99", "p99_s")], notes)


def _per_second_table(conns, results):
    rows = [(name, results[name][conns]["per_second"]) for name in TARGET_NAMES
            if conns in results.get(name, {})]
    seconds = max((len(series) for _, series in rows), default=0)
    table = report.Table("conns: connections (of %d) with at least one round trip, per second"
                         % conns, ["server"] + ["s%d" % (i + 1) for i in range(seconds)])
    for name, series in rows:
        padded = list(series) + [None] * (seconds - len(series))
        table.add(runner.TARGETS[name].label, *[report.fmt_int(v) for v in padded])
    return table
