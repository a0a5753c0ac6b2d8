"""Answers a chat store gives later (a shared backend): the handler holds the client's next
lines until then, and ``Connection.call_soon`` resumes it at once from another thread."""

import socket
import threading
import time

import pytest

from msgsrv.plugin import Handler
from msgsrv.services.chat.handler import ChatHandler, ChatService
from msgsrv.services.chat.protocol import ChatError
from msgsrv.services.chat.state import ChatState, Pending
from tests.service.test_chat import Peer

pytestmark = pytest.mark.timeout(60)


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


LATE = "tests.service.test_chat_late_answers:LateChatHandler"


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
    server = start_service("tests.service.test_chat_late_answers:SoonHandler")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        stream = sock.makefile("rb")
        for _ in range(5):
            sock.sendall(b"x")
            assert float(stream.readline()) < 0.3  # not the next sweep, 0.5 s later
