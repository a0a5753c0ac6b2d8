"""The chat ``backend`` setting and its checks, and answers that come later (no Redis needed)."""

import os
import socket
import sys
import threading
import time

import pytest

from msgsrv.ops import config as config_module
from msgsrv.services.chat.protocol import ChatError
from msgsrv.services.chat.state import ChatState, Pending
from msgsrv.wire.errors import ConfigError
from msgsrv.plugin import Handler
from msgsrv.services.chat.handler import ChatHandler, ChatService
from msgsrv.services.chat import backend
from tests.conftest import run_msgsrv, service_config
from tests.test_chat import Peer

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("text, shown", [
    ("memory", "memory"),
    (" MEMORY ", "memory"),
    ("redis://127.0.0.1:6380/2", "redis://127.0.0.1:6380/2"),
    ("redis://cache.example", "redis://cache.example:6379/0"),
    ("rediss://msgsrv@cache.example:6390/", "rediss://msgsrv@cache.example:6390/0"),
    ("redis://[::1]:7000/1", "redis://[::1]:7000/1"),
])
def test_backend_values(text, shown):
    assert str(backend.backend(text)) == shown


@pytest.mark.parametrize("text, rule", [
    ("postgres://x", "must be memory, redis://"),
    ("redis://", "must name a host"),
    ("redis://h:99999/0", "port in 1..65535"),
    ("redis://h/zero", "database number"),
    ("redis://h/0/1", "database number"),
    ("redis://h/0?ssl=1", "query"),
])
def test_backend_refusals(text, rule):
    with pytest.raises(ValueError, match=rule):
        backend.backend(text)


def _load(tmp_path, **options):
    path = tmp_path / "server.ini"
    lines = ["[service:chat]", "handler = chat", "port = 0"]
    lines += ["%s = %s" % item for item in options.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("url", ["redis://:hunter2@127.0.0.1/0", "redis://me:hunter2@h:1/0"])
def test_a_password_in_the_url_is_refused_without_showing_it(tmp_path, url):
    path = _load(tmp_path, backend=url)
    with pytest.raises(ConfigError) as refused:
        config_module.load(str(path))
    message = str(refused.value)
    assert "backend must not hold a password" in message and "redis_password_file" in message
    assert "hunter2" not in message and ":***@" in message


def test_check_refuses_a_password_in_the_url(tmp_path):
    path = _load(tmp_path, backend="redis://:hunter2@127.0.0.1:6379/0")
    done = run_msgsrv("--config", str(path), "--check")
    assert done.returncode == 2
    assert "must not hold a password" in done.stderr and "hunter2" not in done.stderr + done.stdout


def _options(**values):
    return service_config("chat", **values).options


def test_password_from_a_file_or_the_environment(tmp_path):
    secret = tmp_path / "redis.pass"
    secret.write_text("s3cret\nignored\n")
    secret.chmod(0o640)
    assert backend.redis_password(_options(redis_password_file=secret), "[s]") == "s3cret"
    assert backend.redis_password(_options(redis_password_env="CHAT_PW"), "[s]",
                                  {"CHAT_PW": "fromenv"}) == "fromenv"
    assert backend.redis_password(_options(), "[s]") is None


def test_password_sources_are_checked(tmp_path):
    secret = tmp_path / "redis.pass"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    with pytest.raises(ConfigError, match="must not be readable by others"):
        backend.redis_password(_options(redis_password_file=secret), "[s]")
    secret.chmod(0o600)
    both = _options(redis_password_file=secret, redis_password_env="X")
    with pytest.raises(ConfigError, match="give one of them"):
        backend.redis_password(both, "[s]")
    with pytest.raises(ConfigError, match="redis_password_env CHAT_PW: .* not set"):
        backend.redis_password(_options(redis_password_env="CHAT_PW"), "[s]", {})
    with pytest.raises(ConfigError, match="cannot read"):
        backend.redis_password(_options(redis_password_file=tmp_path / "none"), "[s]")
    secret.write_text("\n")
    with pytest.raises(ConfigError, match="first line is empty"):
        backend.redis_password(_options(redis_password_file=secret), "[s]")


def test_a_redis_backend_without_the_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "redis", None)  # import redis now fails
    options = _options(backend="redis://127.0.0.1:6379/0")
    with pytest.raises(ConfigError, match=r"needs the Python package redis: pip install "
                                          r"msgsrv\[redis\]"):
        ChatHandler.check_service(service_config("chat", backend="redis://127.0.0.1/0"), {})
    with pytest.raises(ConfigError, match=r"msgsrv\[redis\]"):
        ChatService(service_config("chat", backend="redis://127.0.0.1/0"), {})
    backend.check(_options(), "[s]")  # memory needs nothing
    assert options["backend"].shared


def test_the_backend_cannot_change_on_a_reload():
    service = ChatService(service_config("chat"), {})
    with pytest.raises(ConfigError, match="backend cannot change while the service runs"):
        service.prepare_reconfigure(service_config("chat", backend="redis://127.0.0.1/0"), {})
    service.prepare_reconfigure(service_config("chat", history=3), {})()
    assert service.chat.history == 3


def test_the_memory_backend_imports_no_redis():
    code = ("import sys; from msgsrv.services.chat.handler import ChatService; "
            "from tests.conftest import service_config; "
            "ChatService(service_config('chat'), {}); print('redis' in sys.modules)")
    import subprocess
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.stdout.strip() == "False", done.stderr


# -- answers that come later: the handler holds the next lines ------------------------------

class LateState(ChatState):
    """The memory state, but nicks, joins and /who answer from another thread later."""

    delay = 0.02

    def _later(self, call, *args):
        pending = Pending()

        def run():
            time.sleep(self.delay)
            try:
                pending.complete(call(*args))
            except ChatError as exc:
                pending.fail(exc)
        threading.Thread(target=run, daemon=True).start()
        return pending

    def set_nick(self, member, nick):
        return self._later(super().set_nick, member, nick)

    def join(self, member, name):
        return self._later(super().join, member, name)

    def who(self, member, name=None):
        return self._later(super().who, member, name)


class LateService(ChatService):
    store_class = LateState


class LateChatHandler(ChatHandler):
    service_class = LateService


LATE = "tests.test_chat_backend:LateChatHandler"


def test_lines_after_a_late_answer_wait_for_it_in_order(start_service):
    server = start_service(LATE, line_rate=0)
    peer = Peer(server)
    peer.send("alice", "hello", "/who", "/join ops", "in ops")
    assert [peer.line() for _ in range(7)] == [
        "* nick * alice", "* join lobby alice", "* history-end lobby", "MSG lobby alice hello",
        "* who lobby alice", "* join ops alice", "* history-end ops"]
    assert peer.line() == "MSG ops alice in ops"
    rival = Peer(server)
    rival.send("alice", "bob")  # a refused late answer: the next line is tried as a nick
    assert rival.expect("! ").startswith("! nick-taken")
    assert rival.line() == "* nick * bob"
    peer.close()
    rival.close()


def test_a_late_answer_resumes_the_client_at_once(start_service):
    """Answers from another thread are picked up without waiting for the pool's poll."""
    LateState.delay = 0.0  # often done while the handler call still runs
    try:
        server = start_service(LATE, line_rate=0)
        peer = Peer(server, nick="carol")
        slowest = 0.0
        for _ in range(30):
            started = time.monotonic()
            peer.send("/who")
            assert peer.line() == "* who lobby carol"
            slowest = max(slowest, time.monotonic() - started)
        assert slowest < 0.25, slowest  # the poll timeout is 0.5 s
        peer.close()
    finally:
        LateState.delay = 0.02


class SoonHandler(Handler):
    """On each byte: another thread calls ``call_soon`` while this call still runs, blocked."""

    def data_received(self, data):
        asked = threading.Event()
        started = time.monotonic()

        def from_elsewhere():
            self.conn.call_soon(lambda: self.conn.send(b"%.3f\n" % (time.monotonic() - started)))
            asked.set()
        threading.Thread(target=from_elsewhere, daemon=True).start()
        asked.wait(5)
        with self.conn.blocking(1.0):  # hands the lead on: another worker fires the timer
            time.sleep(0.05)           # now, and finds this connection busy


def test_call_soon_meeting_a_busy_connection_runs_when_the_call_ends(start_service):
    server = start_service("tests.test_chat_backend:SoonHandler")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        stream = sock.makefile("rb")
        for _ in range(5):
            sock.sendall(b"x")
            assert float(stream.readline()) < 0.3  # not the next sweep, 0.5 s later
