"""SIGHUP again and again under load, alternating valid and invalid configs; and what a
reload must keep (live chat sessions, a command already running).

Valid configs change the chat service's ``server_name`` (a fresh client sees
it in the welcome); invalid ones must be refused with a log line and change
nothing.  Clients hammering the echo and file services meanwhile must never
fail.
"""

import signal
import threading

import pytest

from msgsrv.services.chat.protocol import History, Message
from msgsrv.services.chat.client import ChatClient
from msgsrv.services.command.client import CommandClient
from msgsrv.wire.errors import ServerError
from tests.conftest import wait_for
from tests.hostile import campaign
from tests.hostile.targets import KEY_NAME, SECRET, render_config

pytestmark = pytest.mark.timeout(campaign.timeout(60))

SERVICES = ["echo", "file", "chat"]
ROUNDS = campaign.pick(10, 500)  # each: one valid and one invalid reload
#: Ways to break the config file, applied in turn.
BREAKAGES = [
    lambda text: text + "max_queue = banana\n",
    lambda text: text + "\n[service:bad]\nhandler = no.such:Handler\nport = 0\n",
    lambda text: text.replace("[msgsrv]", "[msgsrv\n"),
    lambda text: text + "\n[service:far]\nhandler = echo\nport = 99999\n",
]


class Load:
    """Threads making echo and file requests until stopped; failures are kept."""

    def __init__(self, daemon, threads=4):
        self.daemon, self.requests, self.failures = daemon, 0, []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(name,), daemon=True)
                         for name in ["echo", "file"] * (threads // 2)]

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        wait_for(lambda: self.requests > 20, message="the load to start")
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _run(self, name):
        while not self._stop.is_set():
            try:
                self.daemon.ping(name)
                self.requests += 1
            except Exception as exc:  # noqa: BLE001 - any failure is the finding
                self.failures.append("%s: %r" % (name, exc))


def _count(daemon, needle):
    return sum(needle in line for line in daemon.process.lines)


def _welcome_name(address):
    with ChatClient(*address, "reloader", timeout=10) as client:
        return client.server_name


def _reload(daemon, text, outcome):
    (daemon.where / "hostile.ini").write_text(text)
    before = _count(daemon, outcome)
    daemon.process.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: _count(daemon, outcome) > before, timeout=10, message=outcome)


def test_reloads_under_load_apply_valid_configs_and_refuse_invalid_ones(hostile_daemon):
    daemon = hostile_daemon(SERVICES)
    keys_file = str(daemon.where / "hostile.keys")
    chat = daemon.address("chat")
    with Load(daemon) as load:
        for index in range(ROUNDS):
            name = "gen%d" % index
            valid = render_config(SERVICES, keys_file, overrides={"chat": {"server_name": name}})
            _reload(daemon, valid, "reload: accepted (")
            assert _welcome_name(chat) == name
            _reload(daemon, BREAKAGES[index % len(BREAKAGES)](valid), "reload: refused: ")
            assert _welcome_name(chat) == name
            daemon.assert_alive()
    assert not load.failures, load.failures[:5]
    assert set(daemon.addresses) == set(daemon.process.listeners)  # nothing added or lost
    assert "Traceback" not in daemon.log
    campaign.record("reload-storm", valid=ROUNDS, invalid=ROUNDS, requests=load.requests,
                    failures=len(load.failures))


def _said(client, text):
    """Wait for ``text`` said in a room, live or replayed (other events skipped)."""
    while True:
        event = client.recv(timeout=10)
        if isinstance(event, History):
            event = event.event
        if isinstance(event, Message) and event.text == text:
            return event


def test_a_reload_keeps_the_chat_sessions_nicks_and_rooms(hostile_daemon):
    daemon = hostile_daemon(["echo", "chat"])
    keys_file = str(daemon.where / "hostile.keys")
    chat = daemon.address("chat")
    with ChatClient(*chat, "alice", timeout=10) as alice:
        alice.say("before")
        changed = render_config(["echo", "chat"], keys_file,
                                overrides={"echo": {"idle_timeout": "77"}})
        _reload(daemon, changed, "reload: accepted (")
        with pytest.raises(ServerError) as taken:
            ChatClient(*chat, "alice", timeout=10)
        assert taken.value.code == "nick-taken"
        with ChatClient(*chat, "bob", timeout=10) as bob:
            assert _said(bob, "before").nick == "alice"  # the lobby's history survived
            alice.say("after")
            assert _said(bob, "after").nick == "alice"
            bob.say("hello alice")
            assert _said(alice, "hello alice").nick == "bob"
            renamed = render_config(["echo", "chat"], keys_file, overrides={
                "chat": {"server_name": "renamed", "history": "5", "max_joined": "3"}})
            _reload(daemon, renamed, "reload: accepted (")  # the chat section changed too
            with pytest.raises(ServerError, match="nick-taken"):
                ChatClient(*chat, "bob", timeout=10)
            alice.say("still here")
            assert _said(bob, "still here").nick == "alice"


def test_a_command_running_across_a_reload_reports_its_exit(hostile_daemon):
    daemon = hostile_daemon(["command"])
    keys_file = str(daemon.where / "hostile.keys")
    with CommandClient(*daemon.address("command"), KEY_NAME, SECRET, timeout=10) as client:
        client.send({"type": "run", "command": "sleep", "args": ["2"]})
        assert client.recv().type == "started"
        fewer = render_config(["command"], keys_file, overrides={"command": {
            "max_concurrent": "1"}})
        _reload(daemon, fewer, "reload: accepted (")
        finished = client.recv()
        assert (finished.type, finished.header["exit_code"]) == ("exit", 0)
        assert client.run("echo", "again").stdout == b"again\n"  # its slot was given back
    daemon.assert_clean_log()


def test_a_reload_refused_by_one_service_changes_no_other(hostile_daemon):
    daemon = hostile_daemon(["chat", "file"])
    keys_file = str(daemon.where / "hostile.keys")
    not_a_dir = daemon.where / "plain-file"
    not_a_dir.write_text("x")
    broken = render_config(["chat", "file"], keys_file, overrides={
        "chat": {"server_name": "changed"}, "file": {"root": str(not_a_dir)}})
    (daemon.where / "hostile.ini").write_text(broken)
    daemon.process.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload: refused: [service:file] root" in daemon.log, timeout=10,
             message="the refusal")
    with ChatClient(*daemon.address("chat"), "late", timeout=10) as client:
        assert client.server_name == "msgsrv"
    daemon.ping("file")
