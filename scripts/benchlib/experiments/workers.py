"""Worker processes: echo and command throughput with processes = 1 and 2, in one run.

Every row is the same daemon configuration (an echo service and a command
service running ``/bin/true``) with ``processes = 1``, ``2`` (one listening
socket per worker, ``SO_REUSEPORT``), and ``2`` with one socket per service
that every worker accepts from (``reuse_port = no``).  Nothing is pinned here: the workers need every CPU,
and pinning the one-process row alone would not compare like with like, so
server and load generator share the machine's CPUs in every row.

Besides throughput each cell reports the server's CPU time per round trip
(per command run), summed over the master, its workers and the commands they
ran: the figure that stays comparable on a busy or small machine.  ``spread``
is how the echo connections were divided between the workers (connections
each accepted, from the status service).
"""

import os
import sys
import time

from benchlib import loads, report, stats
from benchlib.registry import experiment
from benchlib.targets import BENCH_KEY, HOST, REPO_ROOT, TARGETS, ServerProcess, TargetUnavailable
from benchlib.workers import LoadError

ROWS = ["msgsrv-p1", "msgsrv-p2", "msgsrv-p2-shared"]
ECHO_CONNS = 50
ECHO_SIZE = 64
COMMAND_CLIENTS = 32
CHURN_CLIENTS = 8


class _Tree:
    """The server as loads.run_pingpong sees it, with the CPU of all its processes."""

    def __init__(self, server):
        self.port = server.port
        self._server = server

    def cpu_seconds(self):
        return self._server.tree_cpu_seconds()


@experiment("workers", "worker processes: echo and command runs with processes = 1 and 2")
def run_workers(ctx):
    """Measure every row ``ctx.reps`` times; return one table with the ratios to processes=1."""
    seconds = ctx.seconds(3.0, 0.5)
    runs = {}
    for rep in range(ctx.reps):
        for name in ROWS:
            ctx.progress("rep %d/%d: %s" % (rep + 1, ctx.reps, TARGETS[name].label))
            try:
                with ServerProcess(TARGETS[name], None) as server:
                    runs.setdefault(name, []).append(_measure(ctx, server, seconds))
            except (TargetUnavailable, LoadError) as exc:
                ctx.say("%s: not measured: %s" % (TARGETS[name].label, exc))
    results = {}
    for name, samples in runs.items():
        spreads = [sample.pop("spread") for sample in samples]
        results[name] = dict(stats.median_runs(samples), spread=spreads[len(spreads) // 2])
    return [_table(ctx, seconds, results)]


def _measure(ctx, server, seconds):
    echo = loads.run_pingpong(ctx, _Tree(server), ECHO_CONNS, ECHO_SIZE, seconds)
    spread = _spread(server, echo["connected"])
    churn = loads.run_churn(ctx, _Tree(server), CHURN_CLIENTS, seconds)
    command = _run_commands(ctx, server, seconds)
    return {"echo_rt_s": echo["rt_s"], "echo_us": _per_event_us(echo),
            "echo_p99_s": echo["p99_s"], "spread": spread,
            "conn_s": churn["rt_s"], "conn_us": _per_event_us(churn),
            "cmd_s": command["rt_s"], "cmd_us": _per_event_us(command),
            "errors": echo["errors"] + churn["errors"] + command["errors"]}


def _per_event_us(metrics):
    if not metrics.get("rt_s") or metrics.get("srv_pct") is None:
        return None
    return metrics["srv_pct"] / 100.0 / metrics["rt_s"] * 1e6


def _run_commands(ctx, server, seconds):
    with open(os.path.join(server.workdir, "command-port")) as stream:
        port = int(stream.read())
    return loads.run_commands(ctx, _Tree(server), port, BENCH_KEY, "true", COMMAND_CLIENTS,
                              seconds)


def _spread(server, served):
    """Echo connections each worker accepted, from the status service ("a/b")."""
    sys.path.insert(0, REPO_ROOT)
    from msgsrv.services.status.client import StatusClient
    with open(os.path.join(server.workdir, "status-port")) as stream:
        port = int(stream.read())
    deadline = time.monotonic() + 5.0  # each worker publishes its figures twice a second
    while True:
        with StatusClient(HOST, port) as client:
            document = client.status()
        counts = [next((s["connections_total"] for s in worker["services"]
                        if s["name"] == "echo"), 0)
                  for worker in document.get("workers", [{"services": document["services"]}])]
        if sum(counts) >= served or time.monotonic() > deadline:
            return "/".join(str(count) for count in counts)
        time.sleep(0.1)


def _table(ctx, seconds, results):
    table = report.Table(
        "workers: echo %d conns x %d B, connections of one echo (%d clients), command runs "
        "(%d clients of /bin/true), %.1f s per cell, median of %d rep(s), nothing pinned" % (
            ECHO_CONNS, ECHO_SIZE, CHURN_CLIENTS, COMMAND_CLIENTS, seconds, ctx.reps),
        ["server", "echo rt/s", "us/rt", "p99 ms", "spread", "conn/s", "us/conn", "runs/s",
         "us/run", "err", "x rt/s", "x us/rt", "x conn/s", "x runs/s", "x us/run"],
        notes=["us/rt, us/conn, us/run = server CPU microseconds per echo round trip, per "
               "connection, per command run, summed over the master, its workers and the "
               "commands they ran.",
               "x = this row divided by processes=1 (throughput: >1 is faster; us: <1 is "
               "cheaper).",
               "spread = echo connections each worker accepted (from the status service).",
               "err = echo errors + connections that failed + command runs that failed."])
    base = results.get("msgsrv-p1", {})
    for name in ROWS:
        row = results.get(name)
        if row is None:
            continue
        table.add(TARGETS[name].label, report.fmt_int(row["echo_rt_s"]),
                  report.fmt_int(row["echo_us"]), report.fmt_ms(row["echo_p99_s"]),
                  row["spread"], report.fmt_int(row["conn_s"]), report.fmt_int(row["conn_us"]),
                  report.fmt_int(row["cmd_s"]), report.fmt_int(row["cmd_us"]),
                  report.fmt_int(row["errors"]),
                  *[report.fmt_ratio(stats.ratio(row[key], base.get(key)))
                    for key in ("echo_rt_s", "echo_us", "conn_s", "cmd_s", "cmd_us")])
    return table
