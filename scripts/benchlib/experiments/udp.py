"""UDP echo ping-pong: msgsrv vs socketserver.UDPServer and ThreadingUDPServer.

msgsrv runs with its reflection guard and counters on (as always); the
second table checks issue 14's target against ``UDPServer``.
"""

from benchlib import goals, loads, report, runner
from benchlib.registry import experiment

TARGET_NAMES = ["msgsrv-udp", "udp", "threading-udp"]
SIZES = [64, 1024, 8192]
CLIENTS = [1, 10, 100]
REPLY_TIMEOUT = 0.2
GOALS = [goals.RatioGoal("rt/udp", "rt_s", "udp", 1.0, at_most=False)]


@experiment("udp", "UDP echo ping-pong, 64 B..8 KiB datagrams, 1..100 clients")
def run_udp(ctx):
    """Measure round trips/s, latency and losses for every size x clients cell; return one table."""
    seconds = ctx.seconds(2.0, 0.5)
    cells = [(size, count) for size in SIZES for count in CLIENTS]

    def run_cell(server, cell):
        size, count = cell
        return loads.run_udp(ctx, server, count, size, seconds, REPLY_TIMEOUT)

    results = runner.measure_matrix(ctx, TARGET_NAMES, cells, run_cell)
    keys = [("datagram", lambda c: report.fmt_size(c[0])), ("clients", lambda c: c[1])]
    columns = [
        ("rt/s", "rt_s", report.fmt_int),
        ("p50 ms", "p50_s", report.fmt_ms),
        ("p99 ms", "p99_s", report.fmt_ms),
        ("lost", "losses", report.fmt_int),
        ("us/rt", "cpu_us_rt", report.fmt_us),
        ("srv%", "srv_pct", report.fmt_pct),
        ("load%", "load_pct", report.fmt_pct),
    ]
    return [runner.matrix_table(
        "udp: datagram ping-pong, %.1f s per cell after %.1f s warm-up, median of %d rep(s), "
        "load: %s" % (seconds, ctx.warmup, ctx.reps, ctx.generator_label),
        keys, cells, results, TARGET_NAMES, columns,
        [("x rt/s", "rt_s"), ("x p99", "p99_s"), ("x us/rt", "cpu_us_rt")],
        notes=[runner.RATIO_NOTE, runner.CPU_NOTE,
               "lost = no reply within %.0f ms (the client then sends the next datagram)."
               % (REPLY_TIMEOUT * 1000)]),
        goals.goals_table("udp: targets (msgsrv / anchor, this run)", keys, cells, results,
                          "msgsrv-udp",
                          [("rt/s", "rt_s", report.fmt_int, TARGET_NAMES[1:] + TARGET_NAMES[:1]),
                           ("us/rt", "cpu_us_rt", report.fmt_us,
                            TARGET_NAMES[1:] + TARGET_NAMES[:1])],
                          GOALS, GOALS)]
