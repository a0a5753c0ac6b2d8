"""What --check says about the web console and optional services; the shipped configuration
starts as it is when the web extra is not installed."""

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT, DaemonProcess, wait_for
from tests.daemon.test_doc_examples import free_port_pair, shipped_config

pytestmark = pytest.mark.timeout(30)

NEEDS = "needs pip install msgsrv[web]"


def run_msgsrv_check(path, pythonpath=ROOT):
    """``python -m msgsrv --config PATH --check`` with this PYTHONPATH."""
    return subprocess.run([sys.executable, "-m", "msgsrv", "--config", str(path), "--check"],
                          cwd=ROOT, capture_output=True, text=True, timeout=30,
                          env=dict(os.environ, PYTHONPATH=pythonpath))


def test_check_warns_about_a_disabled_service(tmp_path, no_hyper):
    path = tmp_path / "server.ini"
    path.write_text("[service:echo]\nhandler = echo\n[service:web]\nhandler = web\n"
                    "optional = yes\nchat =\n")
    result = run_msgsrv_check(path, no_hyper)
    assert result.returncode == 0, result.stderr
    assert "msgsrv: warning: [service:web] disabled: %s\n" % NEEDS in result.stderr
    assert "(1 service, 1 disabled)" in result.stderr


def test_check_says_a_key_is_needed_off_loopback_and_refuses_auth_none(tmp_path):
    pytest.importorskip("h11")
    pytest.importorskip("wsproto")
    path = tmp_path / "server.ini"
    keys = tmp_path / "web.keys"
    path.write_text("[service:web]\nhandler = web\nhost = 0.0.0.0\nchat =\nkeys_file = %s\n"
                    % keys)
    result = run_msgsrv_check(path)
    assert result.returncode == 0, result.stderr
    assert ("note: every page needs a key from keys_file %s (auth = auto, host 0.0.0.0 is not "
            "loopback) ([service:web])" % keys) in result.stderr
    assert "without tls_cert, session cookies cross the network in clear" in result.stderr
    assert "would create keys file" in result.stderr and not keys.exists()
    path.write_text("[service:web]\nhandler = web\nhost = 0.0.0.0\nchat =\nauth = none\n")
    result = run_msgsrv_check(path)
    assert result.returncode == 2
    assert "auth = none is refused on host 0.0.0.0" in result.stderr


def test_the_shipped_config_starts_without_the_web_extra(tmp_path, no_hyper):
    """Everything else runs; the daemon says once, in the log and on the terminal, why."""
    with open(os.path.join(ROOT, "conf", "server.ini"), encoding="utf-8") as stream:
        shipped = sorted({int(p) for p in re.findall(r"(?m)^port = (\d+)$", stream.read())})
    assert 9005 in shipped
    log_file = tmp_path / "msgsrv.log"
    path = shipped_config(str(tmp_path), {port: free_port_pair() for port in shipped})
    with open(path, encoding="utf-8") as stream:
        text = stream.read().replace("log_file =", "log_file = %s" % log_file, 1)
    with open(path, "w", encoding="utf-8") as stream:
        stream.write(text)
    daemon = DaemonProcess(path, env={"PYTHONPATH": no_hyper})
    try:
        wait_for(lambda: log_file.exists() and " ready " in log_file.read_text()
                 or daemon.proc.poll() is not None, 20, message="the daemon to be ready")
        logged = log_file.read_text()
        assert " ready pid=" in logged and "services=6" in logged, daemon.log + logged
    finally:
        assert daemon.stop() == 0
    line = "[service:web] disabled: " + NEEDS
    assert logged.count(line) == 1 and "WARNING" in logged.split(line)[0].splitlines()[-1]
    assert daemon.log.count("msgsrv: " + line + "\n") == 1  # the terminal (stderr) too
