#!/usr/bin/env python3
"""Where a server's time goes per echo round trip: counts that survive a busy machine.

Usage:
  python scripts/profile_pool.py counts [--conns 1,10,100] [--size 64] [--servers ...]
                                        [--set key=value ...]
  python scripts/profile_pool.py calls  [--conns 1,10,100] [--size 64]
  python scripts/profile_pool.py callgrind [--conns 1,10] [--size 64] [--set key=value ...]

``counts`` runs each server as bench.py does (msgsrv as the daemon), drives
it with the C load generator and reports per round trip: server CPU
microseconds (/proc/PID/stat), system calls by kind and context switches
(``perf stat`` on the server's threads) and the thread count.  ``calls``
serves echo with msgsrv's pool in this process and counts Python function
calls (and calls of builtins) per round trip with ``threading.setprofile``,
naming the most frequent.  ``callgrind`` runs the msgsrv daemon under
valgrind's callgrind, collecting only during the measured window, and
reports user-space instructions per round trip and the functions they go to.

``--set`` adds ``key = value`` to msgsrv's service section (``workers = 1``).
Loopback only; every process started is stopped on exit.
"""

import argparse
import collections
import glob
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchlib import cbuild, clients, machine  # noqa: E402
from benchlib.cload import CLoadGroup  # noqa: E402
from benchlib.targets import REPO_ROOT, TARGETS, ServerProcess  # noqa: E402

SYSCALLS = ["epoll_wait", "poll", "recvfrom", "sendto", "epoll_ctl", "futex", "setsockopt"]
WARMUP = 0.5


def parse_args(argv):
    """Parse the command line (argparse exits with status 2 on bad arguments)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["counts", "calls", "callgrind"])
    parser.add_argument("--conns", default="1,10,100",
                        type=lambda text: [int(n) for n in text.split(",")])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--servers", default="msgsrv-tcp",
                        type=lambda text: text.split(","),
                        help="target names (%s)" % ", ".join(TARGETS))
    parser.add_argument("--set", action="append", default=[], dest="settings",
                        help="key=value for msgsrv's service section (repeatable)")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--udp", action="store_true", help="calls: serve UDP echo")
    return parser.parse_args(argv)


def extra_ini(settings):
    """The ``--set`` pairs as INI lines."""
    return "".join("%s = %s\n" % tuple(item.split("=", 1)) for item in settings)


def load_jobs(port, conns, size, seconds, cpus):
    """One C generator job with every connection (the load CPU has room for all)."""
    return [{"port": port, "conns": conns, "size": size, "seconds": seconds, "batch": 4,
             "connect_timeout": 60.0, "go_timeout": 120.0, "reply_timeout": 0.2,
             "cpus": cpus}]


def run_window(server_pid, port, conns, size, seconds, cpus, during, mode="tcp"):
    """Drive the server; call during(start, end) in the window; return (rounds, its result)."""
    with CLoadGroup(cbuild.build("loadgen"), mode,
                    load_jobs(port, conns, size, seconds, cpus)) as group:
        group.require("ready", time.monotonic() + 120.0)
        start_at = time.monotonic() + 0.1 + WARMUP
        group.go(start_at)
        clients.sleep_until(start_at)
        measured = during(start_at, start_at + seconds)
        done = group.require("done", time.monotonic() + 60.0)
    return sum(result["rounds"] for result in done), measured


# -- counts --------------------------------------------------------------------


def perf_counts(pid, start, end):
    """System calls by kind and context switches of ``pid``'s threads from now to ``end``."""
    events = ["syscalls:sys_enter_%s" % name for name in SYSCALLS]
    events += ["raw_syscalls:sys_enter", "context-switches"]
    cpu0 = machine.process_cpu_seconds(pid)
    perf = subprocess.Popen(["perf", "stat", "-x,", "-e", ",".join(events), "-p", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    clients.sleep_until(end)
    perf.send_signal(signal.SIGINT)
    _, report = perf.communicate(timeout=10)
    counts = {"cpu_s": machine.process_cpu_seconds(pid) - cpu0,
              "threads": machine.process_status(pid)["threads"]}
    for line in report.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[0].isdigit():
            counts[fields[2].split(":")[-1].replace("sys_enter_", "")] = int(fields[0])
    return counts


def run_counts(args, plan):
    """Print one row per server and connection count: per-round-trip counts."""
    header = ["server", "conns", "rt/s", "us/rt", "syscalls", "ctx-sw"] + SYSCALLS + ["threads"]
    print("  ".join("%10s" % h for h in header))
    for name in args.servers:
        for conns in args.conns:
            with ServerProcess(TARGETS[name], plan.server, extra_ini(args.settings)) as server:
                rounds, counts = run_window(
                    server.pid, server.port, conns, args.size, args.seconds, plan.load,
                    lambda start, end: perf_counts(server.pid, start, end),
                    TARGETS[name].transport)
            per = max(rounds, 1)
            row = [TARGETS[name].label, conns, "%d" % (rounds / args.seconds),
                   "%.2f" % (counts["cpu_s"] / per * 1e6),
                   "%.2f" % (counts.get("sys_enter", 0) / per),
                   "%.3f" % (counts.get("context-switches", 0) / per)]
            row += ["%.3f" % (counts.get(call, 0) / per) for call in SYSCALLS]
            row.append(counts["threads"])
            print("  ".join("%10s" % cell for cell in row), flush=True)


# -- calls ---------------------------------------------------------------------


class CallCounter:
    """A profile function counting Python and builtin calls by name, in every thread."""

    def __init__(self):
        self.calls = collections.Counter()
        self.active = False

    def __call__(self, frame, event, arg):
        if not self.active:
            return
        if event == "call":
            code = frame.f_code
            self.calls["%s:%s" % (os.path.basename(code.co_filename), code.co_name)] += 1
        elif event == "c_call":
            self.calls["builtin:%s" % getattr(arg, "__qualname__", arg)] += 1


def run_calls(args, plan):
    """Serve echo in this process and count the calls per round trip."""
    sys.path.insert(0, REPO_ROOT)
    from tests.conftest import service_config
    from msgsrv.net.server import make_server

    for conns in args.conns:
        counter = CallCounter()
        threading.setprofile(counter)  # the pool's threads start after this
        options = dict(item.split("=", 1) for item in args.settings)
        if args.udp:
            options.update(transport="udp", reply_rate="1000000/s")
        server = make_server(service_config("echo", **options))
        server.serve_in_thread()
        try:
            def during(start, end):
                counter.active = True
                clients.sleep_until(end)
                counter.active = False
            rounds, _ = run_window(None, server.port, conns, args.size, args.seconds,
                                   plan.load, during, "udp" if args.udp else "tcp")
        finally:
            threading.setprofile(None)
            server.stop(2.0)
        _print_calls(conns, rounds, counter.calls, args.top)


def _print_calls(conns, rounds, calls, top):
    per = max(rounds, 1)
    python = sum(n for key, n in calls.items() if not key.startswith("builtin:"))
    builtin = sum(n for key, n in calls.items() if key.startswith("builtin:"))
    print("%d conns: %d round trips (profiled, slow); per round trip: %.2f Python calls, "
          "%.2f builtin calls" % (conns, rounds, python / per, builtin / per))
    for key, count in calls.most_common(top):
        print("    %8.3f  %s" % (count / per, key))


# -- callgrind -----------------------------------------------------------------


def run_callgrind(args, plan):
    """Run each server under callgrind; instructions per round trip in the window."""
    for name in args.servers:
        for conns in args.conns:
            with tempfile.TemporaryDirectory(prefix="msgsrv-callgrind-") as out:
                rounds = _callgrind_window(args, plan, TARGETS[name], conns, out)
                # cg.PID.1 is the window's dump (cg.PID, written at exit, is not).
                dumps = sorted(glob.glob(os.path.join(out, "cg.*.*")))
                _print_callgrind("%s, %d conns" % (TARGETS[name].label, conns), rounds,
                                 dumps[0] if dumps else None, args.top)


def _callgrind_window(args, plan, target, conns, out):
    wrapper = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
               "--callgrind-out-file=%s/cg.%%p" % out]
    with ServerProcess(target, plan.server, extra_ini(args.settings), wrapper=wrapper,
                       ready_timeout=180.0) as server:
        def during(start, end):
            _control(server.pid, "--instr=on")
            clients.sleep_until(end)
            _control(server.pid, "--dump")
            _control(server.pid, "--instr=off")
        rounds, _ = run_window(server.pid, server.port, conns, args.size, args.seconds,
                               plan.load, during, target.transport)
    return rounds


def _control(pid, option):
    subprocess.run(["callgrind_control", option, str(pid)], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=60)


def _total(path):
    with open(path, errors="replace") as dump:
        for line in dump:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    return 0


def _print_callgrind(what, rounds, dump, top):
    if dump is None:
        print("%s: no callgrind dump" % what)
        return
    per = max(rounds, 1)
    print("%s: %d round trips; %.0f user-space instructions per round trip"
          % (what, rounds, _total(dump) / per))
    done = subprocess.run(["callgrind_annotate", "--threshold=100", dump],
                          capture_output=True, text=True, timeout=120)
    shown = 0
    for line in done.stdout.splitlines():
        match = re.match(r"^\s*([\d,]+)\s+\([\s\d.]+%\)\s+(.*)$", line)
        if match and shown < top and "PROGRAM TOTALS" not in line:
            print("    %8.0f  %s" % (int(match.group(1).replace(",", "")) / per,
                                     match.group(2)[-110:]))
            shown += 1


def main(argv=None):
    """Run the chosen mode; return the exit status."""
    args = parse_args(argv)
    machine.raise_nofile_limit()
    plan = machine.plan_cpus()
    {"counts": run_counts, "calls": run_calls, "callgrind": run_callgrind}[args.mode](
        args, plan)
    return 0


if __name__ == "__main__":
    sys.exit(main())
