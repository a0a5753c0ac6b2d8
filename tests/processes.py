"""Test helpers about processes: is a pid still running (zombies count as gone)."""

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
