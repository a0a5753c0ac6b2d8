"""UDP echo ping-pong: msgsrv vs socketserver.UDPServer and ThreadingUDPServer."""

from benchlib import loads, report, runner
from benchlib.registry import experiment

TARGET_NAMES = ["msgsrv-udp", "udp", "threading-udp"]
SIZES = [64, 1024]
CLIENTS = [1, 10]
REPLY_TIMEOUT = 0.2


@experiment("udp", "UDP echo ping-pong, 64 B and 1 KiB datagrams, 1 and 10 clients")
def run_udp(ctx):
    """Measure round trips/s, latency and losses for every size x clients cell; return one table."""
    seconds = ctx.seconds(2.0, 0.5)
    cells = [(size, count) for size in SIZES for count in CLIENTS]

    def run_cell(server, cell):
        size, count = cell
        return loads.run_udp(ctx, server, count, size, seconds, REPLY_TIMEOUT)

    results = runner.measure_matrix(ctx, TARGET_NAMES, cells, run_cell)
    columns = [
        ("rt/s", "rt_s", report.fmt_int),
        ("p50 ms", "p50_s", report.fmt_ms),
        ("p99 ms", "p99_s", report.fmt_ms),
        ("lost", "losses", report.fmt_int),
        ("srv%", "srv_pct", report.fmt_pct),
        ("load%", "load_pct", report.fmt_pct),
    ]
    return [runner.matrix_table(
        "udp: datagram ping-pong, %.1f s per cell, median of %d rep(s)" % (seconds, ctx.reps),
        [("datagram", lambda c: report.fmt_size(c[0])), ("clients", lambda c: c[1])],
        cells, results, TARGET_NAMES, columns,
        [("x rt/s", "rt_s"), ("x p99", "p99_s")],
        notes=[runner.RATIO_NOTE, runner.CPU_NOTE,
               "lost = no reply within %.0f ms (the client then sends the next datagram)."
               % (REPLY_TIMEOUT * 1000)])]
