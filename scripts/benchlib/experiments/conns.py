"""Many connections: 1000 concurrent 64-byte ping-pong clients, fairness and starvation.

Besides the naive ThreadingTCPServer (listen backlog 5, the stdlib default)
the same server with a backlog of 1024 is measured: a burst of clients
overruns a backlog of 5, and the kernel then drops or SYN-cookies the
overflow, so many clients wait seconds before the server even sees them.
The second anchor shows what is left when only the threads are to blame.
uvloop and the C epoll server (as in ``echo``) show the fast end; the last
table checks issue 14's targets for this row.
"""

from benchlib import goals, loads, report, runner
from benchlib.registry import experiment

TARGET_NAMES = ["msgsrv-tcp", "threading-tcp", "threading-tcp-q1024", "uvloop-tcp",
                "c-epoll-tcp"]
SIZE = 64
CONNECT_TIMEOUT = 15.0
MAX_LATENCY = 0.25

GOALS = [
    goals.AbsoluteGoal("all/s", "served_share", 1.0, at_most=False,
                       text="every connection has a round trip in every second"),
    goals.AbsoluteGoal("max<=250", "max_s", MAX_LATENCY, at_most=True,
                       text="msgsrv's slowest round trip at most 250 ms"),
    goals.RatioGoal("p99/uv", "p99_s", "uvloop-tcp", 1.5, at_most=True),
]


@experiment("conns", "1000 concurrent 64 B ping-pong connections: throughput and fairness")
def run_conns(ctx):
    """Measure throughput, tail latency and per-connection fairness; return three tables."""
    seconds = ctx.seconds(5.0, 2.0)
    conns = 200 if ctx.quick else 1000
    cells = [conns]

    def run_cell(server, cell):
        # All clients arrive at once (batch=None): the burst is part of the test.
        metrics = loads.run_pingpong(ctx, server, cell, SIZE, seconds,
                                     connect_timeout=CONNECT_TIMEOUT, batch=None)
        served = metrics["per_second"]
        metrics["served_share"] = min(served) / cell if served else None
        return metrics

    results = runner.measure_matrix(ctx, TARGET_NAMES, cells, run_cell)
    title = "conns: %d connections x 64 B ping-pong, %.1f s after %.1f s warm-up, median " \
            "of %d rep(s), load: %s" % (conns, seconds, ctx.warmup, ctx.reps,
                                        ctx.generator_label)
    return [_throughput_table(title, cells, results), _fairness_table(cells, results),
            _per_second_table(conns, results), _goals_table(cells, results)]


def _goals_table(cells, results):
    shown = [("p99 ms", "p99_s", report.fmt_ms, TARGET_NAMES[1:] + TARGET_NAMES[:1]),
             ("us/rt", "cpu_us_rt", report.fmt_us,
              ["threading-tcp", "uvloop-tcp", "c-epoll-tcp", "msgsrv-tcp"]),
             ("msgsrv max ms", "max_s", report.fmt_ms, ["msgsrv-tcp"]),
             ("msgsrv served/s", "served_share", report.fmt_ratio, ["msgsrv-tcp"])]
    return goals.goals_table("conns: targets (msgsrv / anchor, this run)",
                             [("conns", lambda c: c)], cells, results, "msgsrv-tcp", shown,
                             GOALS, [GOALS[2]])


def _throughput_table(title, cells, results):
    notes = [runner.RATIO_NOTE, runner.CPU_NOTE, "max ms counts answered pings only."]
    return runner.matrix_table(title, [("conns", lambda c: c)], cells, results, TARGET_NAMES,
                               runner.LATENCY_COLUMNS, runner.RATIO_COLUMNS, notes)


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
