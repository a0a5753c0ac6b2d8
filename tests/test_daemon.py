"""The daemon as a subprocess: listeners logged, signals, exit codes."""

import signal
import socket
import time

import pytest

from msgsrv.client import EchoClient
from tests.conftest import wait_for

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
