"""Build the benchmark's C programs (``csrc/*.c``) on demand, cached by source hash.

``build("loadgen")`` compiles ``csrc/loadgen.c`` with ``cc -O2`` (``$CC`` if
set) into a build directory and returns the executable's path; a second call,
in this or any later run, finds it there as long as the source (and compiler
command) did not change.  The directory is ``$MSGSRV_BENCH_BUILD`` or
``<tempdir>/msgsrv-bench-build-<uid>``; it must belong to us and be closed to
others (mode 0700), or nothing is built there.  No compiler, or a failed
compile, raises :class:`BuildUnavailable` saying why, and the caller falls back.
"""

import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile

SOURCE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
CFLAGS = ["-O2", "-Wall"]
COMPILE_TIMEOUT = 120.0


class BuildUnavailable(Exception):
    """A C program could not be built here (no compiler, or it failed); the message says why."""


def build_dir():
    """Return the private build directory, creating it (mode 0700) if needed.

    Raises BuildUnavailable when it exists but belongs to someone else or is
    open to others: an executable planted there must never be run.
    """
    path = os.environ.get("MSGSRV_BENCH_BUILD") or os.path.join(
        tempfile.gettempdir(), "msgsrv-bench-build-%d" % os.getuid())
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.lstat(path)
    if info.st_uid != os.getuid() or info.st_mode & 0o022 or not os.path.isdir(path):
        raise BuildUnavailable("build directory %s is not a directory of ours closed to "
                               "others; set MSGSRV_BENCH_BUILD to another one" % path)
    return path


def compiler():
    """Return the compiler command as a list (``$CC`` or ``cc``); BuildUnavailable if missing."""
    command = shlex.split(os.environ.get("CC", "cc")) or ["cc"]
    if shutil.which(command[0]) is None:
        raise BuildUnavailable("no C compiler (%r not found; set CC)" % command[0])
    return command


def build(name):
    """Return the path of the built ``csrc/<name>.c``, compiling it first if not cached."""
    source = os.path.join(SOURCE_DIR, name + ".c")
    command = compiler()
    with open(source, "rb") as handle:
        digest = hashlib.sha256(handle.read())
    digest.update(repr(command + CFLAGS).encode())
    target = os.path.join(build_dir(), "%s-%s" % (name, digest.hexdigest()[:16]))
    if os.access(target, os.X_OK):
        return target
    partial = "%s.%d.tmp" % (target, os.getpid())
    try:
        done = subprocess.run(command + CFLAGS + ["-o", partial, source],
                              capture_output=True, text=True, timeout=COMPILE_TIMEOUT)
    except (OSError, subprocess.SubprocessError) as exc:
        raise BuildUnavailable("cannot run %s: %s" % (command[0], exc)) from exc
    if done.returncode != 0:
        _remove(partial)
        raise BuildUnavailable("%s failed on %s: %s" % (
            command[0], os.path.basename(source), done.stderr.strip()[-500:]))
    os.replace(partial, target)  # atomic: a concurrent run sees all of it or nothing
    return target


def _remove(path):
    try:
        os.unlink(path)
    except OSError:
        pass
