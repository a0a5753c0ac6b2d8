#!/usr/bin/env python3
"""Benchmark msgsrv against plain standard-library servers (the anchors).

Usage: python scripts/bench.py [echo|udp|conns|idle|chat|files|all ...] [--quick] [--reps N]
                               [--no-msgsrv] [--duration S] [--servers LABELS]
                               [--python-load]

Each server runs in its own process (msgsrv as the real daemon, started with
a temporary INI file); load comes from separate processes driving many
non-blocking sockets each: the C load generator (scripts/benchlib/csrc,
built with ``cc -O2`` on first use and cached), or the Python one when no
compiler is found (with a warning: it saturates before the servers do at 10+
connections) or with --python-load. With two or more CPUs the server is
pinned to the first CPU and the load to the others. Everything talks to
127.0.0.1 only and every server and load process is stopped on exit, Ctrl-C
or error.

The output starts with the machine, then one table per experiment: medians
over --reps repetitions, the ratio msgsrv / anchor, and for echo, conns and
udp a table checking the performance targets (issue 14). Tables are valid
reStructuredText simple tables, ready to paste into the README.

This is a benchmark, not a test: pytest never runs it (only a smoke test of
``echo --quick --no-msgsrv`` does, in tests/daemon/test_bench_smoke.py).
"""

import argparse
import os
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib.experiments  # noqa: E402,F401  (importing it registers the experiments)
from benchlib import cbuild, machine  # noqa: E402
from benchlib.registry import EXPERIMENTS  # noqa: E402
from benchlib.runner import RunContext  # noqa: E402
from benchlib.targets import REPO_ROOT, TARGETS  # noqa: E402


def parse_args(argv):
    """Parse the command line; argparse exits with status 2 on bad arguments."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiments", nargs="*", default=["all"], metavar="experiment",
                        help="which experiments to run, in order: %s or all (default: all)"
                        % ", ".join(EXPERIMENTS))
    parser.add_argument("--quick", action="store_true",
                        help="1 rep, shorter cells, fewer connections")
    parser.add_argument("--reps", type=_positive_int, default=None,
                        help="repetitions per cell, medians reported (default 3, quick 1)")
    parser.add_argument("--no-msgsrv", action="store_true",
                        help="measure the anchors only")
    parser.add_argument("--duration", type=_positive_float, default=None,
                        help="seconds per measured cell of echo, udp and conns "
                             "(overrides the defaults)")
    parser.add_argument("--load-procs", type=_positive_int, default=None,
                        help="load processes per cell (default: one per load CPU)")
    parser.add_argument("--idle-conns", type=_positive_int, default=None,
                        help="idle connections to hold in 'idle' (default 10000, quick 500)")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin server and load processes to CPUs")
    parser.add_argument("--python-load", action="store_true",
                        help="use the Python load generator instead of the C one")
    parser.add_argument("--warmup", type=_non_negative_float, default=None,
                        help="seconds of load before each measured window (default 0.5, "
                             "quick 0.2)")
    parser.add_argument("--servers", type=_labels, default=None,
                        help="comma-separated server labels to measure (default: all of "
                             "each experiment's), e.g. msgsrv,uvloop")
    args = parser.parse_args(argv)
    unknown = [name for name in args.experiments if name not in EXPERIMENTS and name != "all"]
    if unknown:
        parser.error("unknown experiment %s (choose from %s, all)"
                     % (", ".join(unknown), ", ".join(EXPERIMENTS)))
    return args


def _labels(text):
    labels = {label.strip() for label in text.split(",") if label.strip()}
    known = {target.label for target in TARGETS.values()}
    if not labels or labels - known:
        raise argparse.ArgumentTypeError("unknown server %s (known: %s)" % (
            ", ".join(sorted(labels - known)) or "(none)", ", ".join(sorted(known))))
    return labels


def _non_negative_float(text):
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError("must be >= 0 (got %r)" % text)
    return value


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1 (got %r)" % text)
    return value


def _positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be > 0 (got %r)" % text)
    return value


def _on_sigterm(signum, frame):
    # Turn SIGTERM into an exception so every "finally" stops its servers and
    # load processes, exactly as on Ctrl-C.
    raise SystemExit(128 + signum)


def describe_run(plan, nofile, args):
    """Return the header lines: machine, Python, platform, pinning, code version."""
    lines = machine.describe(plan, nofile)
    lines.append("msgsrv commit: %s%s" % (_git_commit(), "  (not measured: --no-msgsrv)"
                                          if args.no_msgsrv else ""))
    return lines


def _git_commit():
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() or "unknown"


def load_generator(args):
    """Return (path of the C load generator or None, the line that says which one runs)."""
    if args.python_load:
        return None, "load generator: Python (--python-load)"
    try:
        path = cbuild.build("loadgen")
    except (cbuild.BuildUnavailable, OSError) as exc:
        return None, ("warning: using the Python load generator, which saturates before the "
                      "servers do at 10+ connections: %s" % exc)
    return path, "load generator: C (%s)" % path


def main(argv=None):
    """Run the chosen experiments and print the report; return the exit status."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    nofile = machine.raise_nofile_limit()  # servers and load processes inherit it
    plan = machine.plan_cpus(enabled=not args.no_pin)
    generator, generator_line = load_generator(args)
    ctx = RunContext(plan, quick=args.quick, reps=args.reps or (1 if args.quick else 3),
                     duration=args.duration, use_msgsrv=not args.no_msgsrv,
                     load_procs=args.load_procs, idle_conns=args.idle_conns,
                     load_generator=generator, warmup=args.warmup, servers=args.servers)
    for line in describe_run(plan, nofile, args):
        ctx.say(line)
    ctx.say(generator_line)
    if generator is None and not args.python_load:
        print(generator_line, file=sys.stderr)
    names = list(EXPERIMENTS) if "all" in args.experiments else args.experiments
    try:
        for name in names:
            ctx.say("")
            for table in EXPERIMENTS[name].run(ctx):
                ctx.say(table.render())
    except KeyboardInterrupt:
        ctx.say("interrupted; servers and load processes stopped")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
