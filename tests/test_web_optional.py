"""Optional services, sibling references and what --check says about the web console; the
shipped configuration starts as it is when the web extra is not installed."""

import os
import re
import subprocess
import sys

import pytest

from msgsrv.ops import config as config_module
from msgsrv.wire.errors import ConfigError
from msgsrv.ops.running import Registry
from tests.conftest import ROOT, DaemonProcess, wait_for
from tests.test_doc_examples import free_port_pair, shipped_config

pytestmark = pytest.mark.timeout(30)

NEEDS = "needs pip install msgsrv[web]"


def load(tmp_path, text):
    path = tmp_path / "server.ini"
    path.write_text(text)
    return config_module.load(str(path))


def run_msgsrv_check(path, pythonpath=ROOT):
    """``python -m msgsrv --config PATH --check`` with this PYTHONPATH."""
    return subprocess.run([sys.executable, "-m", "msgsrv", "--config", str(path), "--check"],
                          cwd=ROOT, capture_output=True, text=True, timeout=30,
                          env=dict(os.environ, PYTHONPATH=pythonpath))


@pytest.fixture
def no_hyper(tmp_path, monkeypatch):
    """h11 cannot be imported (in this process: sys.modules; for subprocesses: PYTHONPATH)."""
    fake = tmp_path / "no-hyper" / "h11"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('h11 is not installed (test)')\n")
    monkeypatch.setitem(sys.modules, "h11", None)
    return "%s%s%s" % (fake.parent, os.pathsep, ROOT)


def test_an_optional_service_without_its_extra_is_left_out(tmp_path, no_hyper):
    config = load(tmp_path, "[service:echo]\nhandler = echo\n[service:web]\nhandler = web\n"
                            "optional = yes\nchat =\nport = 0\n")
    assert [s.name for s in config.services] == ["echo"]
    (web,) = config.disabled
    assert (web.name, web.handler, web.reason) == ("web", "web", NEEDS)
    assert web.message == "[service:web] disabled: " + NEEDS
    assert "# [service:web] disabled: " + NEEDS in config_module.format_effective(config)


def test_a_service_that_is_not_optional_names_the_missing_extra(tmp_path, no_hyper):
    expected = "handler web %s (or set optional = yes" % NEEDS
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load(tmp_path, "[service:web]\nhandler = web\nchat =\n")


def test_an_optional_plugin_that_cannot_be_imported_is_left_out(tmp_path):
    config = load(tmp_path, "[service:x]\nhandler = no_such_module:Handler\noptional = yes\n")
    assert config.services == () and "cannot import 'no_such_module'" in config.disabled[0].reason
    with pytest.raises(ConfigError, match="cannot import"):
        load(tmp_path, "[service:x]\nhandler = no_such_module:Handler\n")


@pytest.mark.parametrize("chat, problem", [
    ("nope", "chat names no service of this file (got 'nope'; services: echo, web)"),
    ("echo", "chat must name a service whose handler has a ChatService (got 'echo', "
             "handler echo)"),
])
def test_the_chat_setting_must_name_a_chat_service(tmp_path, chat, problem):
    pytest.importorskip("h11")
    pytest.importorskip("wsproto")
    with pytest.raises(ConfigError, match=re.escape("[service:web] " + problem)):
        load(tmp_path, "[service:echo]\nhandler = echo\n[service:web]\nhandler = web\n"
                       "chat = %s\n" % chat)


def test_siblings_are_found_by_name_through_the_registry(start_service):
    chat, web = start_service("echo", name="chat"), start_service("echo", name="web")
    assert web.service.sibling("web") is web.service  # alone: it sees itself only
    assert web.service.sibling("chat") is None
    registry = Registry()
    for server in (chat, web):
        registry.add(server)
    assert web.service.sibling("chat") is chat.service and web.service.sibling("x") is None
    assert web.service.directory is registry and web.service.sibling("") is None
    assert web.service.counters is web.counters
    registry.note_reload("accepted", "reconfigured: chat")
    assert registry.last_reload["outcome"] == "accepted"


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
