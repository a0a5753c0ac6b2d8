"""Many connections: 1000 concurrent 64-byte ping-pong clients, fairness and starvation.

Besides the naive ThreadingTCPServer (listen backlog 5, the stdlib default)
the same server with a backlog of 1024 is measured: a burst of clients
overruns a backlog of 5, and the kernel then drops or SYN-cookies the
overflow, so many clients wait seconds before the server even sees them.
The second anchor shows what is left when only the threads are to blame.
"""

from benchlib import loads, report, runner
from benchlib.registry import experiment

TARGET_NAMES = ["msgsrv-tcp", "threading-tcp", "threading-tcp-q1024"]
SIZE = 64
CONNECT_TIMEOUT = 15.0


@experiment("conns", "1000 concurrent 64 B ping-pong connections: throughput and fairness")
def run_conns(ctx):
    """Measure throughput, tail latency and per-connection fairness; return three tables."""
    seconds = ctx.seconds(5.0, 2.0)
    conns = 200 if ctx.quick else 1000
    cells = [conns]

    def run_cell(server, cell):
        # All clients arrive at once (batch=None): the burst is part of the test.
        return loads.run_pingpong(ctx, server, cell, SIZE, seconds,
                                  connect_timeout=CONNECT_TIMEOUT, batch=None)

    results = runner.measure_matrix(ctx, TARGET_NAMES, cells, run_cell)
    title = "conns: %d connections x 64 B ping-pong, %.1f s, median of %d rep(s)" % (
        conns, seconds, ctx.reps)
    return [_throughput_table(title, cells, results), _fairness_table(cells, results),
            _per_second_table(conns, results)]


def _throughput_table(title, cells, results):
    columns = [
        ("rt/s", "rt_s", report.fmt_int),
        ("p50 ms", "p50_s", report.fmt_ms),
        ("p99 ms", "p99_s", report.fmt_ms),
        ("max ms", "max_s", report.fmt_ms),
        ("srv%", "srv_pct", report.fmt_pct),
        ("load%", "load_pct", report.fmt_pct),
        ("err", "errors", report.fmt_int),
    ]
    notes = [runner.RATIO_NOTE, runner.CPU_NOTE, "max ms counts answered pings only."]
    return runner.matrix_table(title, [("conns", lambda c: c)], cells, results, TARGET_NAMES,
                               columns, [("x rt/s", "rt_s"), ("x p99", "p99_s")], notes)


def _fairness_table(cells, results):
    columns = [
        ("connect ms", "connect_s", report.fmt_ms),
        ("served ms", "served_s", report.fmt_ms),
        ("fail", "failures", report.fmt_int),
        ("min rt", "min_rounds", report.fmt_int),
        ("mean rt", "mean_rounds", report.fmt_int),
        ("min/mean", "fairness", report.fmt_ratio),
        ("zero", "zero_conns", report.fmt_int),
    ]
    notes = ["connect ms = until the last connect() completed; served ms = until every "
             "connection had echoed one byte, before the measured window (n/a: not all did "
             "within %.0f s); fail = connections that did not, counted as zero round trips;"
             % CONNECT_TIMEOUT,
             "min rt / mean rt = round trips per connection in the window; min/mean = slowest "
             "connection / mean; zero = connections with no round trip at all."]
    return runner.matrix_table("conns: connecting and fairness", [("conns", lambda c: c)],
                               cells, results, TARGET_NAMES, columns, [], notes)


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
