"""TCP echo ping-pong: payload sizes x concurrent connections, msgsrv vs four anchors.

The anchors: the tutorial ``ThreadingTCPServer``, asyncio streams, uvloop
(an asyncio Protocol on uvloop's loop; skipped when not installed) and a C
epoll server (the kernel's floor).  The second table checks issue 14's
targets on the same run.
"""

from benchlib import goals, report, runner
from benchlib import loads
from benchlib.registry import experiment

TARGET_NAMES = ["msgsrv-tcp", "threading-tcp", "asyncio-tcp", "uvloop-tcp", "c-epoll-tcp"]
SIZES = [64, 1024, 65536]
CONNECTIONS = [1, 10, 100]
SMALL = 1024  # the CPU goal against uvloop covers 64 B and 1 KiB

GOALS = [
    goals.RatioGoal("p99/uv", "p99_s", "uvloop-tcp", 1.5, at_most=True),
    goals.CeilingGoal("p99<2ms", "p99_s", "uvloop-tcp", 0.002, 0.001, "ms"),
    goals.RatioGoal("cpu/thr", "cpu_us_rt", "threading-tcp", 1.0, at_most=True),
    goals.RatioGoal("cpu/uv", "cpu_us_rt", "uvloop-tcp", 1.3, at_most=True,
                    applies=lambda cell: cell[0] <= SMALL),
    goals.RatioGoal("rt/thr", "rt_s", "threading-tcp", 1.0, at_most=False),
    goals.RatioGoal("rt/uv", "rt_s", "uvloop-tcp", 0.8, at_most=False,
                    applies=lambda cell: cell[1] >= 10),
]



@experiment("echo", "TCP echo ping-pong, payload 64 B..64 KiB, 1..100 connections")
def run_echo(ctx):
    """Measure every size x connections cell; return the full table and the goals table."""
    seconds = ctx.seconds(2.0, 0.5)
    cells = [(size, conns) for size in SIZES for conns in CONNECTIONS]

    def run_cell(server, cell):
        size, conns = cell
        return loads.run_pingpong(ctx, server, conns, size, seconds)

    results = runner.measure_matrix(ctx, TARGET_NAMES, cells, run_cell)
    keys = [("payload", lambda c: report.fmt_size(c[0])), ("conns", lambda c: c[1])]
    return [
        runner.matrix_table(
            "echo: TCP ping-pong, %.1f s per cell after %.1f s warm-up, median of %d rep(s), "
            "load: %s" % (seconds, ctx.warmup, ctx.reps, ctx.generator_label),
            keys, cells, results, TARGET_NAMES, runner.LATENCY_COLUMNS, runner.RATIO_COLUMNS,
            notes=[runner.RATIO_NOTE, runner.CPU_NOTE,
                   "err = connections closed, reset or echoing wrong bytes."]),
        goals.goals_table(
            "echo: targets (msgsrv / anchor, this run)", keys, cells, results, "msgsrv-tcp",
            [("p99 ms", "p99_s", report.fmt_ms, TARGET_NAMES[1:] + TARGET_NAMES[:1]),
             ("us/rt", "cpu_us_rt", report.fmt_us,
              ["threading-tcp", "uvloop-tcp", "c-epoll-tcp", "msgsrv-tcp"])],
            GOALS, [GOALS[0], GOALS[2], GOALS[3], GOALS[4], GOALS[5]]),
    ]
