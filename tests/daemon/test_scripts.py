"""scripts/msgsrvctl (msgsrv.cli.msgsrvctl), start.sh and stop.sh driven for real, with temp configs and
var dirs: the actions and their LSB init-script exit codes."""

import os
import signal
import subprocess
import sys

import pytest

from msgsrv.client import EchoClient
from msgsrv.ops.pidfile import read_pid
from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.timeout(120)

SCRIPTS = os.path.join(ROOT, "scripts")


def run(script, *args, env=None, timeout=60):
    return subprocess.run([os.path.join(SCRIPTS, script)] + list(args), capture_output=True,
                          text=True, timeout=timeout,
                          env=dict(os.environ, **dict({"MSGSRV_PYTHON": sys.executable}, **(env or {}))))


class Setup:
    def __init__(self, tmp_path, services):
        self.var = tmp_path / "var"
        self.pidfile = self.var / "run" / "msgsrv.pid"
        self.log = self.var / "log" / "msgsrv.log"
        self.config = tmp_path / "server.ini"
        self.write(services)

    def write(self, services, extra_global=""):
        self.config.write_text("[msgsrv]\nshutdown_timeout = 3\npidfile = %s\nlog_file = %s\n%s\n%s"
                               % (self.pidfile, self.log, extra_global, services))

    def ctl(self, *args, **kwargs):
        return run("msgsrvctl", *(args + ("-c", str(self.config))), **kwargs)

    def listeners(self):
        lines = (self.var / "run" / "msgsrv.listeners").read_text().splitlines()
        return {name: address for name, _, address, _ in (line.split() for line in lines)}

    def address(self, name):
        host, _, port = self.listeners()[name].rpartition(":")
        return host, int(port)


SERVICES = """
[service:echo]
handler = echo

[service:status]
handler = status
"""


@pytest.fixture
def setup(tmp_path):
    setup = Setup(tmp_path, SERVICES)
    yield setup
    setup.ctl("stop")


def test_start_status_reload_stop_cycle(setup):
    result = setup.ctl("status")
    assert result.returncode == 3 and "msgsrv is not running" in result.stdout

    result = run("start.sh", "-c", str(setup.config))
    assert result.returncode == 0, result.stderr
    pid = read_pid(str(setup.pidfile))
    assert "msgsrv started (pid %d)" % pid in result.stdout
    assert "echo                 tcp  127.0.0.1:" in result.stdout
    with EchoClient(*setup.address("echo")) as client:
        assert client.echo(b"scripted") == b"scripted"

    result = setup.ctl("start")
    assert result.returncode == 0  # LSB: starting a running service succeeds
    assert "already running (pid %d); not starting another" % pid in result.stdout
    assert read_pid(str(setup.pidfile)) == pid

    result = setup.ctl("status")
    assert result.returncode == 0, result.stderr
    assert "msgsrv is running (pid %d)" % pid in result.stdout
    assert "SERVICE" in result.stdout and "REFUSED" in result.stdout  # the status table
    echo_row = next(line for line in result.stdout.splitlines() if line.startswith("echo "))
    assert echo_row.split()[3:7] == ["0", "1", "8", "8"]

    setup.write(SERVICES + "\n[service:extra]\nhandler = echo\n")
    result = setup.ctl("reload")
    assert result.returncode == 0, result.stderr
    assert "reload accepted: (added: extra; reconfigured: echo, status)" in result.stdout
    with EchoClient(*setup.address("extra")) as client:
        assert client.echo(b"new") == b"new"

    setup.write(SERVICES + "\n[service:extra]\nhandler = echo\nmax_connections = lots\n")
    result = setup.ctl("reload")
    assert result.returncode == 1
    assert "reload refused, the old configuration stays:" in result.stderr
    assert "max_connections must be a whole number (got 'lots')" in result.stderr
    with EchoClient(*setup.address("extra")) as client:
        assert client.echo(b"still") == b"still"

    result = run("stop.sh", "-c", str(setup.config))
    assert result.returncode == 0, result.stderr
    assert "msgsrv stopped (pid %d)" % pid in result.stdout
    assert not setup.pidfile.exists()
    assert not os.path.exists("/proc/%d" % pid) or _zombie(pid)
    result = setup.ctl("status")
    assert result.returncode == 3
    assert setup.ctl("stop").returncode == 0  # stopping a stopped daemon is fine
    assert setup.ctl("reload").returncode == 7
    assert setup.ctl("force-reload").returncode == 7
    result = setup.ctl("try-restart")
    assert result.returncode == 0 and "not running; not starting it" in result.stdout
    assert setup.ctl("status").returncode == 3
    assert "stopped" in setup.log.read_text()


def _zombie(pid):
    with open("/proc/%d/stat" % pid) as stream:
        return stream.read().rsplit(")", 1)[1].split()[0] == "Z"


def test_stale_pidfile_never_blocks_a_start(setup):
    setup.pidfile.parent.mkdir(parents=True)
    setup.pidfile.write_text("%d\n" % os.getpid())  # a live process that is not msgsrv
    result = setup.ctl("status")
    assert result.returncode == 1 and "stale pidfile" in result.stdout  # LSB: dead, pidfile left
    result = setup.ctl("restart")
    assert result.returncode == 0, result.stderr
    assert read_pid(str(setup.pidfile)) not in (None, os.getpid())
    assert setup.ctl("stop").returncode == 0


def test_failed_start_shows_the_log(setup):
    setup.write("[service:echo]\nhandler = echo\nport = 1\nhost = 203.0.113.9\n")
    result = setup.ctl("start")
    assert result.returncode == 1
    assert "msgsrv failed to start (exit 1); last lines of" in result.stderr
    assert "[service:echo] cannot listen on 203.0.113.9:1" in result.stderr
    setup.write("[service:echo]\nhandler = nope\n")
    result = setup.ctl("start")
    assert result.returncode == 6 and "handler must be one of" in result.stderr  # not configured
    setup.write("[service:run]\nhandler = command\nkeys_file = %s\nuser = nobody\n"
                "command.x = /no/such/prog\n" % (setup.var / "keys"))
    result = setup.ctl("start")
    assert result.returncode == 6
    assert "[service:run] command.x: program '/no/such/prog' is not an executable file" \
        in result.stderr
    assert not (setup.var / "keys").exists()  # the check creates nothing
    assert setup.ctl("status").returncode == 3


def test_usage_help_and_missing_pidfile(tmp_path):
    assert run("msgsrvctl").returncode == 2
    assert run("msgsrvctl", "start", "stop").returncode == 2
    assert "usage: msgsrvctl" in run("msgsrvctl", "frobnicate").stderr
    result = run("msgsrvctl", "--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: msgsrvctl")
    assert "exit status:" in result.stdout and "  7  reload, force-reload: the daemon is not running." in result.stdout
    config = tmp_path / "plain.ini"
    config.write_text("[service:echo]\nhandler = echo\n")
    for action, code in (("start", 6), ("stop", 6), ("status", 4)):  # 4: status unknown
        result = run("msgsrvctl", action, "--config=%s" % config)
        assert result.returncode == code and "set pidfile in [msgsrv]" in result.stderr
    result = run("msgsrvctl", "status", env={"MSGSRV_PYTHON": "/no/such/python"})
    assert result.returncode == 5 and "interpreter /no/such/python not found" in result.stderr


def test_start_waits_for_ready_whatever_the_log_level(setup):
    setup.write(SERVICES, extra_global="log_level = error\n")
    result = setup.ctl("start", env={"MSGSRV_START_TIMEOUT": "20"})
    assert result.returncode == 0, result.stderr
    assert "msgsrv started (pid %d)" % read_pid(str(setup.pidfile)) in result.stdout
    with EchoClient(*setup.address("echo")) as client:
        assert client.echo(b"quiet") == b"quiet"
    assert "ready" not in setup.log.read_text()  # nothing at info level was logged
    assert setup.ctl("stop").returncode == 0


STUBBORN = """
import signal, sys, time
from msgsrv.ops.pidfile import Pidfile
signal.signal(signal.SIGTERM, signal.SIG_IGN)
Pidfile(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_stop_kills_only_after_the_deadline_and_says_so(setup):
    setup.write(SERVICES, extra_global="")
    setup.config.write_text(setup.config.read_text().replace("shutdown_timeout = 3",
                                                             "shutdown_timeout = 0"))
    stubborn = subprocess.Popen([sys.executable, "-c", STUBBORN, str(setup.pidfile)], cwd=ROOT,
                                stdout=subprocess.PIPE, text=True)
    try:
        assert stubborn.stdout.readline() == "held\n"
        result = setup.ctl("stop", env={"MSGSRV_STOP_GRACE": "1"})
        assert result.returncode == 1
        assert ("msgsrv (pid %d) did not stop within 1s after SIGTERM: sending SIGKILL"
                % stubborn.pid) in result.stderr
        assert stubborn.wait(10) == -signal.SIGKILL
    finally:
        if stubborn.poll() is None:
            stubborn.kill()
            stubborn.wait()
    wait_for(lambda: setup.ctl("status").returncode == 1)  # killed: its pidfile is left
