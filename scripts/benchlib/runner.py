"""What every experiment shares: the run context and the reps x targets x cells loop."""

import sys

from benchlib import report, stats
from benchlib.targets import TARGETS, ServerProcess, TargetUnavailable, unavailable_reason
from benchlib.workers import LoadError


class RunContext:
    """Options of one benchmark run plus what was learnt on the way.

    ``unavailable`` maps the names of msgsrv targets that failed to start to
    the reason; they are skipped for the rest of the run.  ``load_generator``
    is the path of the C load generator, or None to use the Python one;
    ``warmup`` the seconds of load before each measured window; ``servers``
    the labels of the servers to measure (None: every experiment's own).
    """

    def __init__(self, plan, quick=False, reps=3, duration=None, use_msgsrv=True,
                 load_procs=None, idle_conns=None, out=None, load_generator=None,
                 warmup=None, servers=None):
        self.plan = plan
        self.quick = quick
        self.reps = reps
        self.duration = duration
        self.load_generator = load_generator
        self.servers = servers
        self.warmup = (0.2 if quick else 0.5) if warmup is None else warmup
        self.use_msgsrv = use_msgsrv
        self.load_procs = load_procs or (len(plan.load) if plan.load else 1)
        self.idle_conns = idle_conns
        self.out = out or sys.stdout
        self.unavailable = {}

    @property
    def generator_label(self):
        """Which load generator runs, for table titles."""
        return "C generator" if self.load_generator else "Python generator"

    def seconds(self, normal, quick):
        """Duration of one measured cell: --duration if given, else the normal or quick value."""
        if self.duration:
            return self.duration
        return quick if self.quick else normal

    def wants(self, target):
        """Whether ``target`` is measured in this run (msgsrv may be off or broken)."""
        if self.servers is not None and target.label not in self.servers:
            return False
        if target.is_msgsrv:
            return self.use_msgsrv and target.name not in self.unavailable
        return True

    def say(self, line):
        """Print a line of the report right away."""
        print(line, file=self.out, flush=True)

    def progress(self, line):
        """Print a progress line to stderr (not part of the report)."""
        print("  ... " + line, file=sys.stderr, flush=True)


def for_each_server(ctx, names, body):
    """For each rep and each wanted target in ``names``, start it and call body(rep, target, server).

    A msgsrv target that fails to start is reported once and dropped; an
    anchor that cannot run here is skipped with a note; a target whose load
    fails mid-run is reported and the loop goes on.
    """
    names = [name for name in names if ctx.wants(TARGETS[name]) and _runnable(ctx, TARGETS[name])]
    for rep in range(ctx.reps):
        for name in names:
            target = TARGETS[name]
            if not ctx.wants(target):
                continue
            ctx.progress("rep %d/%d: %s" % (rep + 1, ctx.reps, target.label))
            try:
                with ServerProcess(target, ctx.plan.server) as server:
                    body(rep, target, server)
            except TargetUnavailable as exc:
                _report_unavailable(ctx, target, exc)
            except LoadError as exc:
                ctx.say("%s: measurement failed, its cells show n/a: %s" % (target.label, exc))


def _runnable(ctx, target):
    reason = unavailable_reason(target)
    if reason is not None:
        ctx.say("anchor %s skipped: %s" % (target.label, reason))
    return reason is None


def _report_unavailable(ctx, target, exc):
    if target.is_msgsrv:
        ctx.unavailable[target.name] = str(exc)
        ctx.say("msgsrv did not start (%s); continuing with the anchors, ratios show n/a" % exc)
    else:
        ctx.say("anchor %s did not start (%s); its rows show n/a" % (target.label, exc))


def measure_matrix(ctx, names, cells, run_cell):
    """Measure run_cell(server, cell) -> metrics for each target and cell, over ctx.reps.

    Returns {target name: {cell: median metrics}}; a target or cell that was
    never measured is absent.
    """
    runs = {}

    def body(rep, target, server):
        for cell in cells:
            metrics = run_cell(server, cell)
            runs.setdefault(target.name, {}).setdefault(cell, []).append(metrics)

    for_each_server(ctx, names, body)
    return {name: {cell: stats.median_runs(samples) for cell, samples in by_cell.items()}
            for name, by_cell in runs.items()}


def matrix_table(title, key_columns, cells, results, names, columns, ratio_keys, notes=()):
    """Build a table with one row per (cell, measured target) and msgsrv/anchor ratio columns.

    ``key_columns`` is a list of (header, cell -> text); ``columns`` a list of
    (header, metric key, formatter); ``ratio_keys`` a list of (header, metric
    key) giving msgsrv's value divided by the row's. The msgsrv row shows "-"
    there; anchor rows show "n/a" when msgsrv was not measured.
    """
    headers = [h for h, _ in key_columns] + ["server"] + [h for h, _, _ in columns]
    table = report.Table(title, headers + [h for h, _ in ratio_keys], notes)
    msgsrv_name = next((n for n in names if TARGETS[n].is_msgsrv), None)
    for cell in cells:
        reference = results.get(msgsrv_name, {}).get(cell, {})
        for name in names:
            metrics = results.get(name, {}).get(cell)
            if metrics is None:
                continue
            row = [text(cell) for _, text in key_columns] + [TARGETS[name].label]
            row += [fmt(metrics.get(key)) for _, key, fmt in columns]
            row += [_ratio_cell(name == msgsrv_name, reference, metrics, key)
                    for _, key in ratio_keys]
            table.add(*row)
    return table


def _ratio_cell(is_msgsrv, reference, metrics, key):
    if is_msgsrv:
        return "-"
    return report.fmt_ratio(stats.ratio(reference.get(key), metrics.get(key)))


LATENCY_COLUMNS = [
    ("rt/s", "rt_s", report.fmt_int),
    ("p50 ms", "p50_s", report.fmt_ms),
    ("p99 ms", "p99_s", report.fmt_ms),
    ("max ms", "max_s", report.fmt_ms),
    ("us/rt", "cpu_us_rt", report.fmt_us),
    ("srv%", "srv_pct", report.fmt_pct),
    ("load%", "load_pct", report.fmt_pct),
    ("err", "errors", report.fmt_int),
]
RATIO_COLUMNS = [("x rt/s", "rt_s"), ("x p99", "p99_s"), ("x us/rt", "cpu_us_rt")]

RATIO_NOTE = ("x rt/s = msgsrv round trips/s divided by this server's (>1: msgsrv faster); "
              "x p99 = msgsrv p99 divided by this server's (<1: msgsrv better); "
              "x us/rt = msgsrv CPU per round trip divided by this server's (<1: msgsrv "
              "cheaper).")
CPU_NOTE = ("us/rt = server CPU microseconds (user + system, all threads, /proc/PID/stat) "
            "per round trip over the measured window; srv% / load% = CPU seconds per wall "
            "second x 100 of the server process and of all load processes (100 = one core "
            "busy).")
