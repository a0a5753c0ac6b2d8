"""What every experiment shares: the run context and the reps x targets x cells loop."""

import sys

from benchlib import report, stats
from benchlib.targets import TARGETS, ServerProcess, TargetUnavailable
from benchlib.workers import LoadError


class RunContext:
    """Options of one benchmark run plus what was learnt on the way.

    ``unavailable`` maps the names of msgsrv targets that failed to start to
    the reason; they are skipped for the rest of the run.
    """

    def __init__(self, plan, quick=False, reps=3, duration=None, use_msgsrv=True,
                 load_procs=None, idle_conns=None, out=None):
        self.plan = plan
        self.quick = quick
        self.reps = reps
        self.duration = duration
        self.use_msgsrv = use_msgsrv
        self.load_procs = load_procs or (len(plan.load) if plan.load else 1)
        self.idle_conns = idle_conns
        self.out = out or sys.stdout
        self.unavailable = {}

    def seconds(self, normal, quick):
        """Duration of one measured cell: --duration if given, else the normal or quick value."""
        if self.duration:
            return self.duration
        return quick if self.quick else normal

    def wants(self, target):
        """Whether ``target`` is measured in this run (msgsrv may be off or broken)."""
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

    A msgsrv target that fails to start is reported once and dropped; a
    target whose load fails mid-run is reported and the loop goes on.
    """
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


RATIO_NOTE = ("x rt/s = msgsrv round trips/s divided by this server's (>1: msgsrv faster); "
              "x p99 = msgsrv p99 divided by this server's (<1: msgsrv better).")
CPU_NOTE = ("srv% / load% = CPU seconds per wall second x 100 of the server process and of "
            "all load processes (100 = one core busy).")
