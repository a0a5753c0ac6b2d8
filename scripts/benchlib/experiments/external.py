"""The chat and file benchmarks, run from bench.py as their own scripts.

scripts/bench_chat.py and scripts/bench_files.py measure msgsrv against their
own anchors (a naive broadcast server; a sendfile/recv_into pair and
hashlib) and print their own tables; here they run as subprocesses so that
``bench.py all`` covers every experiment with one command.
"""

import os
import subprocess
import sys

from benchlib.registry import experiment

SCRIPTS = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run_script(ctx, name, args):
    command = [sys.executable, os.path.join(SCRIPTS, name)] + args
    ctx.say("running: python scripts/%s %s" % (name, " ".join(args)))
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, check=False)
    ctx.say(result.stdout.rstrip())
    if result.returncode:
        ctx.say("(scripts/%s exited with status %d)" % (name, result.returncode))
    return []


@experiment("chat", "chat fan-out to 10/100/500 subscribers vs a naive broadcast server")
def run_chat(ctx):
    """Run scripts/bench_chat.py (fewer subscribers and one rep with --quick)."""
    args = ["--reps", str(ctx.reps)]
    if ctx.quick:
        args.append("--quick")
    return _run_script(ctx, "bench_chat.py", args)


@experiment("files", "1 GiB get/put vs sendfile/recv_into and SHA-256 speed")
def run_files(ctx):
    """Run scripts/bench_files.py (64 MiB and one repeat with --quick)."""
    args = ["--size", "64M", "--repeat", "1"] if ctx.quick else ["--size", "1G", "--repeat",
                                                                     str(ctx.reps)]
    return _run_script(ctx, "bench_files.py", args)
