"""The pidfile: atomic, locked for the daemon's lifetime, stale files never block."""

import os
import subprocess
import sys

import pytest

from msgsrv.wire.errors import AlreadyRunning
from msgsrv.ops.pidfile import Pidfile, read_pid, running_pid
from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(30)

HOLDER = """
import sys, time
from msgsrv.ops.pidfile import Pidfile
pidfile = Pidfile(sys.argv[1])
pidfile.acquire()
print("held", flush=True)
sys.stdin.read()
pidfile.release()
"""


def hold_in_subprocess(path):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "held\n"
    return proc


def test_acquire_writes_our_pid_creating_directories_and_release_removes(tmp_path):
    path = tmp_path / "run" / "deep" / "msgsrv.pid"
    pidfile = Pidfile(str(path))
    pidfile.acquire()
    assert path.read_text() == "%d\n" % os.getpid()
    assert pidfile.held and running_pid(str(path)) == os.getpid()
    assert [p.name for p in path.parent.iterdir()] == ["msgsrv.pid"]  # no temp file left
    pidfile.release()
    assert not path.exists() and not pidfile.held
    pidfile.release()  # idempotent


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    path = tmp_path / "msgsrv.pid"
    holder = hold_in_subprocess(path)
    try:
        with pytest.raises(AlreadyRunning, match=r"locked by a running daemon \(pid %d\)"
                           % holder.pid):
            Pidfile(str(path)).acquire()
        assert running_pid(str(path)) == holder.pid
        assert read_pid(str(path)) == holder.pid
    finally:
        holder.communicate("")
    assert holder.returncode == 0 and not path.exists()
    assert running_pid(str(path)) is None


def test_stale_pidfile_of_a_dead_process_does_not_block(tmp_path):
    path = tmp_path / "msgsrv.pid"
    holder = hold_in_subprocess(path)
    holder.kill()  # no chance to clean up: the file stays, the lock dies with it
    holder.wait()
    assert read_pid(str(path)) == holder.pid
    assert running_pid(str(path)) is None
    pidfile = Pidfile(str(path))
    pidfile.acquire()
    assert read_pid(str(path)) == os.getpid()
    pidfile.release()


def test_pid_reused_by_an_unrelated_live_process_does_not_block(tmp_path):
    path = tmp_path / "msgsrv.pid"
    path.write_text("%d\n" % os.getppid())  # alive, but not holding the lock
    assert running_pid(str(path)) is None
    pidfile = Pidfile(str(path))
    pidfile.acquire(pid=12345)
    assert read_pid(str(path)) == 12345
    pidfile.release()


def test_release_never_removes_a_file_that_is_no_longer_ours(tmp_path):
    path = tmp_path / "msgsrv.pid"
    pidfile = Pidfile(str(path))
    pidfile.acquire()
    os.unlink(str(path))
    path.write_text("999\n")  # someone else's file now
    pidfile.release()
    assert path.read_text() == "999\n"


def test_garbage_and_missing_files(tmp_path):
    path = tmp_path / "msgsrv.pid"
    assert read_pid(str(path)) is None and running_pid(str(path)) is None
    path.write_text("not a pid\n")
    assert read_pid(str(path)) is None
    pidfile = Pidfile(str(path))
    pidfile.acquire()
    assert read_pid(str(path)) == os.getpid()
    pidfile.release()


def test_write_failure_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "msgsrv.pid"

    def broken_rename(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "rename", broken_rename)
    with pytest.raises(OSError, match="No space"):
        Pidfile(str(path)).acquire()
    assert [p.name for p in tmp_path.iterdir()] == ["msgsrv.pid"]
    assert running_pid(str(path)) is None
