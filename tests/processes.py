"""Test helpers about processes: is a pid still running (zombies count as gone)."""

import glob
import os


def alive(pid):
    """True if ``pid`` names a process that is not a zombie (/proc state other than Z or X)."""
    try:
        with open("/proc/%d/stat" % pid) as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def kill_quietly(pid, signum=9):
    """Kill ``pid`` if it still exists (test clean-up)."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def exited(pid):
    """True once every thread of ``pid`` has exited.  The leader of a multi-threaded process
    shows Z while its other threads still run (and still hold its files and sockets), so
    :func:`alive` on it can be False too early."""
    states = []
    for stat in glob.glob("/proc/%d/task/*/stat" % pid):
        try:
            with open(stat) as task:
                states.append(task.read().rsplit(")", 1)[1].split()[0])
        except (FileNotFoundError, ProcessLookupError, IndexError):
            pass
    return all(state in ("Z", "X") for state in states)
