"""The daemon as a subprocess: listeners logged, signals, exit codes."""

import os
import pty
import select
import signal
import socket
import subprocess
import sys
import time

import pytest

from msgsrv.ops import config as config_module
from msgsrv.client import EchoClient
from tests.conftest import ROOT, run_msgsrv, wait_for

pytestmark = pytest.mark.timeout(60)

CONFIG = """
[msgsrv]
log_level = info
shutdown_timeout = 5

[service:echo]
handler = echo
port = 0

[service:echo-udp]
handler = echo
transport = udp
port = 0
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "server.ini"
    path.write_text(CONFIG)
    return path


def test_daemon_serves_logs_listeners_and_stops_on_sigterm(config_file, daemon_factory):
    daemon = daemon_factory(config_file)
    listeners = daemon.wait_listening(2)
    assert "handler=echo transport=tcp address=127.0.0.1:" in daemon.log
    with EchoClient(*listeners["echo"]) as client:
        assert client.echo(b"hi") == b"hi"
    with EchoClient(*listeners["echo-udp"], transport="udp") as client:
        assert client.echo(b"dgram") == b"dgram"
    held = socket.create_connection(listeners["echo"])  # an idle client must not delay stop
    held.sendall(b"x")
    assert held.recv(1) == b"x"  # served (not still in the backlog, which a stop resets)
    started = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(10) == 0
    assert time.monotonic() - started < 2.0  # the target is 1 s; the margin is for a loaded CI machine
    assert held.recv(10) == b""
    held.close()
    assert "Traceback" not in daemon.log


def test_sigint_stops_without_traceback(config_file, daemon_factory):
    daemon = daemon_factory(config_file)
    daemon.wait_listening(2)
    daemon.proc.send_signal(signal.SIGINT)
    assert daemon.proc.wait(10) == 0
    daemon.stop()
    assert "Traceback" not in daemon.log and "KeyboardInterrupt" not in daemon.log


def test_address_in_use_exits_1_naming_the_service(tmp_path, daemon_factory):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = tmp_path / "server.ini"
        path.write_text("[service:clash]\nhandler = echo\nport = %d\n" % port)
        daemon = daemon_factory(path)
        assert daemon.proc.wait(10) == 1
        daemon.stop()
    assert "[service:clash] cannot listen on 127.0.0.1:%d" % port in daemon.log


def test_bad_config_exits_2(tmp_path, daemon_factory):
    path = tmp_path / "server.ini"
    path.write_text("[service:echo]\nhandler = echo\nport = 70000\n")
    daemon = daemon_factory(path)
    assert daemon.proc.wait(10) == 2
    daemon.stop()
    assert "port must be 0..65535 (got '70000')" in daemon.log


def test_log_file_setting(tmp_path, daemon_factory):
    log_path = tmp_path / "msgsrv.log"
    path = tmp_path / "server.ini"
    path.write_text("[msgsrv]\nlog_file = %s\n[service:echo]\nhandler = echo\n" % log_path)
    daemon = daemon_factory(path)
    wait_for(lambda: log_path.exists() and "listening" in log_path.read_text())
    assert daemon.stop() == 0
    assert "stopped" in log_path.read_text()


def test_fatal_start_error_is_printed_even_when_logging_to_a_file(tmp_path):
    log_path = tmp_path / "log" / "msgsrv.log"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = tmp_path / "server.ini"
        path.write_text("[msgsrv]\nlog_file = %s\n[service:first]\nhandler = echo\n"
                        "[service:clash]\nhandler = echo\nport = %d\n" % (log_path, port))
        result = run_msgsrv("-c", str(path))
    assert result.returncode == 1
    assert result.stderr == "msgsrv: [service:clash] cannot listen on 127.0.0.1:%d: " \
        "Address already in use\n" % port
    logged = log_path.read_text()
    assert "ERROR msgsrv: [service:clash] cannot listen" in logged
    assert "listening" not in logged  # "first" was bound, never announced, and closed:
    assert "closing the 1 listeners bound so far (first), never announced" in logged


def test_logs_go_to_the_terminal_as_well_as_the_log_file(tmp_path):
    log_path = tmp_path / "msgsrv.log"
    path = tmp_path / "server.ini"
    path.write_text("[msgsrv]\nlog_file = %s\n[service:echo]\nhandler = echo\n" % log_path)
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "msgsrv", "-c", str(path)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=slave,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 10
        while b"ready pid=" not in seen and time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                seen += os.read(master, 65536)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert b"listening service=echo" in seen and b"ready pid=" in seen
    assert "listening service=echo" in log_path.read_text()


def test_log_file_dash_overrides_the_config_across_reloads(tmp_path, daemon_factory):
    log_path = tmp_path / "msgsrv.log"
    path = tmp_path / "server.ini"
    path.write_text("[msgsrv]\nlog_file = %s\nlog_level = warning\n[service:echo]\n"
                    "handler = echo\n" % log_path)
    daemon = daemon_factory(path, ["--log-file", "-", "--log-level", "info"])
    daemon.wait_listening(1)
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload: accepted" in daemon.log, message="the reload")
    assert daemon.stop() == 0
    assert not log_path.exists()


def test_no_config_given_says_which_one_it_uses(tmp_path):
    if os.path.exists(config_module.DEFAULT_PATHS[0]):
        pytest.skip("%s exists on this machine" % config_module.DEFAULT_PATHS[0])
    result = run_msgsrv("--check", cwd=str(tmp_path), env={"MSGSRV_CONFIG": ""})
    assert result.returncode == 2
    assert result.stderr == (
        "msgsrv: no configuration file: give --config FILE or set $MSGSRV_CONFIG (looked for "
        "/etc/msgsrv/server.ini, conf/server.ini; relative to the working directory %s)\n"
        % tmp_path)
    result = run_msgsrv("--check", "-c", "conf/server.ini", cwd=str(tmp_path))
    assert result.returncode == 2
    assert result.stderr == ("msgsrv: conf/server.ini: cannot read (No such file or directory; "
                             "relative to the working directory %s)\n" % tmp_path)
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "server.ini").write_text("[service:echo]\nhandler = echo\n")
    result = run_msgsrv("--check", cwd=str(tmp_path), env={"MSGSRV_CONFIG": ""})
    assert result.returncode == 0
    assert result.stderr.startswith("msgsrv: using configuration conf/server.ini (the first "
                                    "found of /etc/msgsrv/server.ini, conf/server.ini)\n")
    result = run_msgsrv("--check", env={"MSGSRV_CONFIG": str(tmp_path / "conf/server.ini")})
    assert result.returncode == 0
    assert result.stderr.startswith("msgsrv: using configuration %s (from $MSGSRV_CONFIG)\n"
                                    % (tmp_path / "conf/server.ini"))
