"""plugin_path through the real daemon: plugins load from it at start and at a reload."""

import signal
import socket

import pytest

from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.timeout(30)

PLUGIN = '''from msgsrv.plugin import Handler


class Hello(Handler):
    def connection_made(self):
        self.conn.send(b"hello from %s\\n")
        self.conn.close()
'''


def _config(directories, services):
    text = "[msgsrv]\nplugin_path = %s\n" % ", ".join(str(d) for d in directories)
    for name in services:
        text += "\n[service:%s]\nhandler = %s:Hello\nport = 0\n" % (name, name)
    return text


def _greeting(address):
    with socket.create_connection(address, timeout=10) as sock:
        return sock.makefile("rb").readline()


def test_plugins_load_from_plugin_path_at_start_and_at_reload(daemon_factory, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for directory, name in ((first, "pp_first"), (second, "pp_second")):
        directory.mkdir()
        (directory / ("%s.py" % name)).write_text(PLUGIN % name)
    config = tmp_path / "server.ini"
    config.write_text(_config([first], ["pp_first"]))
    daemon = daemon_factory(config, env={"PYTHONPATH": ROOT})  # the plugins are not on it
    listeners = daemon.wait_listening(1)
    assert _greeting(listeners["pp_first"]) == b"hello from pp_first\n"

    config.write_text(_config([first, second], ["pp_first", "pp_second"]))
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "pp_second" in daemon.listeners or "reload: refused" in daemon.log,
             timeout=10, message="the reload")
    assert _greeting(daemon.listeners["pp_second"]) == b"hello from pp_second\n"
    assert _greeting(listeners["pp_first"]) == b"hello from pp_first\n"
    assert "Traceback" not in daemon.log
