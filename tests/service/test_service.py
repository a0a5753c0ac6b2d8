"""The service object: two-phase reloads, the plugin guide's example, legacy prepare_service."""

import logging
import re
import signal
import socket
import textwrap

import pytest

from msgsrv.net import service as service_module
from msgsrv.services.chat.state import ChatState, Member
from msgsrv.wire.errors import ConfigError
from msgsrv.net.authenticated import AuthenticatedHandler
from msgsrv.net.handler import Handler
from msgsrv.services.command.handler import RunSlots
from tests.conftest import ROOT, service_config, wait_for

pytestmark = pytest.mark.timeout(30)


def _guide_example():
    with open("%s/docs/PLUGINS.rst" % ROOT, encoding="utf-8") as stream:
        guide = stream.read()
    return textwrap.dedent(re.search(r"\n::\n\n(    # tally\.py.*?)\n\S", guide, re.S).group(1))


def _count(process, needle):
    return sum(needle in line for line in process.lines)


def _sighup(process, path, text, outcome):
    path.write_text(text)
    before = _count(process, outcome)
    process.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: _count(process, outcome) > before, timeout=10, message=outcome)


def _lines(sock, text, count):
    sock.sendall(text)
    got = b""
    while got.count(b"\n") < count:
        data = sock.recv(4096)
        assert data, "closed after %r" % got
        got += data
    return got


def _tally_config(**options):
    section = dict({"handler": "tally:TallyHandler", "host": "127.0.0.1", "port": "0"}, **options)
    return "[msgsrv]\nlog_level = info\n\n[service:tally]\n" + "".join(
        "%s = %s\n" % item for item in section.items())


def test_the_plugin_guide_example_keeps_its_count_across_reloads(daemon_factory, tmp_path):
    (tmp_path / "tally.py").write_text(_guide_example())
    config = tmp_path / "tally.ini"
    config.write_text(_tally_config())
    process = daemon_factory(config, env={"PYTHONPATH": "%s:%s" % (tmp_path, ROOT)})
    address = process.wait_listening(1)["tally"]
    with socket.create_connection(address, timeout=10) as sock:
        assert _lines(sock, b"a\nb\n", 2) == b"line 1\nline 2\n"
        _sighup(process, config, _tally_config(prefix="row"), "reload: accepted (")
        assert _lines(sock, b"c\n", 1) == b"row 3\n"  # same object, new prefix
        _sighup(process, config, _tally_config(prefix="row", first="7"), "reload: refused: ")
        assert "[service:tally] first cannot change while the service runs (1 -> 7)" \
            in process.log
        _sighup(process, config, _tally_config(prefix="no way"), "reload: refused: ")
        assert "[service:tally] prefix must be letters only" in process.log
        with socket.create_connection(address, timeout=10) as other:
            assert _lines(other, b"d\n", 1) == b"row 4\n"
    assert "Traceback" not in process.log


class LegacyPlugin(Handler):
    """A plugin of the previous release: state loaded onto the server."""

    @classmethod
    def prepare_service(cls, server):
        if server.config["idle_timeout"] == 13:
            raise ConfigError("[service:%s] idle_timeout: unlucky" % server.name)
        server.loaded = server.config["idle_timeout"]

    def data_received(self, data):
        self.conn.send(b"%d\n" % self.server.loaded)


def test_legacy_prepare_service_is_staged_until_applied_and_warned_once(start_service,
                                                                         caplog, monkeypatch):
    name = "tests.service.test_service:LegacyPlugin"
    monkeypatch.setattr(service_module, "_warned", set())
    with caplog.at_level(logging.WARNING, "msgsrv.service"):
        server = start_service(name, idle_timeout=30)
        start_service(name, idle_timeout=31)
    assert caplog.text.count("prepare_service(server) is deprecated") == 1
    assert server.loaded == 30
    apply = server.prepare_reconfigure(service_config(name, idle_timeout=40))
    assert server.loaded == 30 and server.config["idle_timeout"] == 30
    apply()
    assert server.loaded == 40 and server.config["idle_timeout"] == 40
    with pytest.raises(ConfigError, match="unlucky"):
        server.prepare_reconfigure(service_config(name, idle_timeout=13))
    assert server.loaded == 40


class _Conn:
    def send(self, data, limit=None):
        pass


def test_chat_state_configure_keeps_members_and_trims_history():
    state = ChatState(history=3)
    alice = Member(_Conn())
    state.set_nick(alice, "alice")
    state.join(alice, "lobby")
    for text in "abcd":
        state.say(alice, text)
    state.configure(history=2, max_joined=5)
    bob = Member(_Conn())
    state.set_nick(bob, "bob")
    replay = state.join(bob, "lobby")[1][1]
    assert [line.split()[-1] for line in replay.splitlines()] == [b"c", b"d", b"lobby"]
    assert state.snapshot() == ({"lobby": ["alice", "bob"]}, {"alice", "bob"})
    assert state.max_joined == 5


def test_run_slots_give_back_what_was_taken_under_an_older_limit():
    slots = RunSlots(2)
    assert slots.acquire() and slots.acquire() and not slots.acquire()
    slots.limit = 1  # a reload lowers max_concurrent while two runs hold slots
    slots.release()
    assert not slots.acquire()  # one still runs: the new limit is reached
    slots.release()
    assert slots.acquire() and not slots.acquire()


def test_a_file_reload_keeps_the_root_and_caches_unless_root_changes(start_service, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("alice %s\n" % ("a" * 20))
    keys.chmod(0o600)
    options = dict(keys_file=str(keys), root=str(tmp_path / "data"))
    server = start_service("file", **options)
    service = server.service
    kept = service.sandbox, service.digests, service.commit_lock, service.quota
    server.reconfigure(service_config("file", **dict(options, max_file_size="1K")))
    assert server.service is service
    assert (service.sandbox, service.digests, service.commit_lock, service.quota) == kept
    server.reconfigure(service_config("file", **dict(options, quota="1M")))
    assert service.quota is not kept[3] and service.quota.limit == 1 << 20  # usage counted now
    server.reconfigure(service_config("file", **dict(options, root=str(tmp_path / "other"))))
    assert service.sandbox is not kept[0] and service.digests is kept[1]


class LegacyAuthed(AuthenticatedHandler):
    """A previous release's subclass of a built-in handler with its own prepare_service."""

    @classmethod
    def prepare_service(cls, server):
        server.motd = "hello from %s" % server.name

    def request_received(self, message):
        self.reply({"type": "motd", "text": self.server.motd})


def test_a_legacy_subclass_of_a_builtin_handler_keeps_both(start_service, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("alice %s\n" % ("a" * 20))
    keys.chmod(0o600)
    server = start_service("tests.service.test_service:LegacyAuthed", keys_file=str(keys))
    assert server.motd == "hello from svc" and set(server.service.keys) == {"alice"}
