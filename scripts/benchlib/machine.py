"""The machine under the benchmark: CPUs, pinning, file limits and /proc readings.

Everything that reads /proc returns None where /proc is missing (not Linux),
so tables show "n/a" instead of failing.
"""

import collections
import os
import platform
import resource
import sys

CpuPlan = collections.namedtuple("CpuPlan", "server load")
CpuPlan.__doc__ = """CPU sets for the server process and the load processes (None: no pinning)."""


def available_cpus():
    """Return the sorted CPU numbers this process may run on (all of them if unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def plan_cpus(enabled=True):
    """Split the usable CPUs: the first one for the server, the rest for load.

    With fewer than two CPUs, without sched_setaffinity, or when ``enabled``
    is false, nothing is pinned and both sets are None.
    """
    cpus = available_cpus()
    if not enabled or len(cpus) < 2 or not hasattr(os, "sched_setaffinity"):
        return CpuPlan(None, None)
    return CpuPlan(frozenset(cpus[:1]), frozenset(cpus[1:]))


def pin_process(pid, cpus):
    """Pin every current thread of ``pid`` to ``cpus`` (threads made later inherit it).

    Does nothing when ``cpus`` is None; raises OSError if the process is gone.
    """
    if cpus is None:
        return
    for tid in _thread_ids(pid):
        try:
            os.sched_setaffinity(tid, cpus)
        except ProcessLookupError:
            pass  # that thread ended between listing and pinning
    os.sched_setaffinity(pid, cpus)


def _thread_ids(pid):
    try:
        return [int(name) for name in os.listdir("/proc/%d/task" % pid)]
    except OSError:
        return [pid]


def raise_nofile_limit():
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the (soft, hard) now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass  # keep what we have; the experiment reports how many sockets it got
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def process_cpu_seconds(pid):
    """Return user + system CPU seconds used so far by ``pid`` (all threads), or None."""
    try:
        with open("/proc/%d/stat" % pid) as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return None
    ticks = int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid):
    """CPU seconds of ``pid`` and of its live children, each with what its waited-for
    children used (a daemon's worker processes and the commands they ran), or None."""
    total = 0.0
    for member in [pid] + _children(pid):
        try:
            with open("/proc/%d/stat" % member) as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            if member == pid:
                return None
            continue
        total += sum(int(field) for field in fields[11:15])  # utime stime cutime cstime
    return total / os.sysconf("SC_CLK_TCK")


def _children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as children:
            return [int(child) for child in children.read().split()]
    except OSError:
        return []


def own_cpu_seconds():
    """Return user + system CPU seconds used so far by the calling process."""
    times = os.times()
    return times.user + times.system


def process_status(pid):
    """Return {"rss_kib": int, "threads": int} from /proc/PID/status, values None if unknown."""
    found = {"rss_kib": None, "threads": None}
    try:
        with open("/proc/%d/status" % pid) as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    found["rss_kib"] = int(line.split()[1])
                elif line.startswith("Threads:"):
                    found["threads"] = int(line.split()[1])
    except OSError:
        pass
    return found


def describe(plan, nofile):
    """Return the lines that describe this machine and how the benchmark uses it."""
    cpus = available_cpus()
    lines = [
        "machine: os.cpu_count()=%s, sched_getaffinity=%s (%d usable)"
        % (os.cpu_count(), _cpu_list(cpus), len(cpus)),
        "python:  %s %s" % (platform.python_implementation(), sys.version.split()[0]),
        "platform: %s" % platform.platform(),
        "open files limit (soft/hard): %s/%s" % nofile,
    ]
    if plan.server is None:
        lines.append("pinning: none (fewer than 2 usable CPUs or pinning unavailable)")
    else:
        lines.append("pinning: server -> CPU %s, load generators -> CPU %s"
                     % (_cpu_list(plan.server), _cpu_list(plan.load)))
    return lines


def _cpu_list(cpus):
    return ",".join(str(cpu) for cpu in sorted(cpus))
