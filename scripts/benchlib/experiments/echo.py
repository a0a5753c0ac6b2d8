"""TCP echo ping-pong: payload sizes x concurrent connections, msgsrv vs two anchors."""

from benchlib import loads, report, runner
from benchlib.registry import experiment

TARGET_NAMES = ["msgsrv-tcp", "threading-tcp", "asyncio-tcp"]
SIZES = [64, 1024, 65536]
CONNECTIONS = [1, 10, 100]


@experiment("echo", "TCP echo ping-pong, payload 64 B..64 KiB, 1..100 connections")
def run_echo(ctx):
    """Measure round trips/s and latency for every size x connections cell; return one table."""
    seconds = ctx.seconds(2.0, 0.5)
    cells = [(size, conns) for size in SIZES for conns in CONNECTIONS]

    def run_cell(server, cell):
        size, conns = cell
        return loads.run_pingpong(ctx, server, conns, size, seconds)

    results = runner.measure_matrix(ctx, TARGET_NAMES, cells, run_cell)
    return [runner.matrix_table(
        "echo: TCP ping-pong, %.1f s per cell, median of %d rep(s)" % (seconds, ctx.reps),
        [("payload", lambda c: report.fmt_size(c[0])), ("conns", lambda c: c[1])],
        cells, results, TARGET_NAMES, LATENCY_COLUMNS,
        [("x rt/s", "rt_s"), ("x p99", "p99_s")],
        notes=[runner.RATIO_NOTE, runner.CPU_NOTE,
               "err = connections closed, reset or echoing wrong bytes."])]


LATENCY_COLUMNS = [
    ("rt/s", "rt_s", report.fmt_int),
    ("p50 ms", "p50_s", report.fmt_ms),
    ("p99 ms", "p99_s", report.fmt_ms),
    ("srv%", "srv_pct", report.fmt_pct),
    ("load%", "load_pct", report.fmt_pct),
    ("err", "errors", report.fmt_int),
]
