"""Chat across daemons on a real redis-server: every feature, and the faults with defined outcomes.

Each test starts its own redis-server on a free loopback port (temporary
directory, no persistence) and daemons as subprocesses against it, with a
short ``presence_ttl`` and ``redis_timeout`` so that expiry and timeouts are
quick.  Everything is stopped by PID.
"""

import signal
import time

import pytest

from msgsrv.client import ChatClient, EchoClient, RequestTimeout, ServerError
from msgsrv.services.chat.protocol import History, Message, Notice, Private
from tests.conftest import free_port, wait_for
from tests.integration.conftest import require_program
from tests.processes import alive

pytestmark = pytest.mark.timeout(60)

TTL, TIMEOUT = 2.0, 1.0


CONFIG = """\
[msgsrv]
log_level = info
shutdown_timeout = 3

[service:chat]
handler = chat
port = 0
backend = redis://127.0.0.1:{port}/0
presence_ttl = {ttl}
redis_timeout = {timeout}
history = 5
line_rate = 0

[service:echo]
handler = echo
port = 0
"""


class Fleet:
    """Daemons (subprocesses) sharing the chat of one Redis."""

    def __init__(self, tmp_path, daemon_factory, port):
        self.tmp_path, self.factory, self.port = tmp_path, daemon_factory, port
        self.daemons = []

    def start(self, count=1, connected=True):
        started = []
        for _ in range(count):
            path = self.tmp_path / ("server%d.ini" % len(self.daemons))
            path.write_text(CONFIG.format(port=self.port, ttl=TTL, timeout=TIMEOUT))
            daemon = self.factory(path)
            self.daemons.append(daemon)
            started.append(daemon)
        for daemon in started:
            daemon.wait_listening(2)
            if connected:
                wait_connected(daemon)
        return started

    @staticmethod
    def chat(daemon, nick):
        return ChatClient(*daemon.listeners["chat"], nick, timeout=5, keepalive=None)


def wait_connected(daemon, count=1, timeout=10):
    wait_for(lambda: daemon.log.count("chat backend redis://") and
             daemon.log.count(" connected after ") >= count, timeout,
             message="the daemon to connect to redis")


@pytest.fixture
def fleet(tmp_path, daemon_factory, redis_server):
    redis_server.start()
    fleet = Fleet(tmp_path, daemon_factory, redis_server.port)
    yield fleet
    for daemon in fleet.daemons:
        assert "Traceback" not in daemon.log, daemon.log


def events_until(client, predicate, timeout=5.0):
    """Events received until one matches ``predicate`` (returned last); fail on timeout."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail("no matching event within %gs; got %r" % (timeout, seen))
        try:
            event = client.recv(timeout=left)
        except RequestTimeout:
            continue
        seen.append(event)
        if predicate(event):
            return seen


def is_notice(kind, *fields):
    return lambda e: isinstance(e, Notice) and e.kind == kind and e.fields[:len(fields)] == fields


def unavailable(call):
    with pytest.raises(ServerError) as raised:
        call()
    assert raised.value.code == "unavailable", raised.value
    return raised.value


def test_every_chat_feature_works_across_three_daemons(fleet):
    one, two, three = fleet.start(3)
    alice, bob, carol = (fleet.chat(d, n) for d, n in ((one, "alice"), (two, "bob"),
                                                      (three, "carol")))
    with pytest.raises(ServerError) as taken:  # nicks are unique across daemons
        fleet.chat(two, "ALICE")
    assert taken.value.code == "nick-taken"
    alice.join("ops")
    bob.join("OPS")
    events_until(alice, is_notice("join", "ops", "bob"))
    assert carol.who("ops") == ["alice", "bob"]
    assert carol.rooms() == {"lobby": 3, "ops": 2}

    for seq in range(200):  # per-sender order, sent without waiting
        alice.send_line("line %d" % seq)
    got = events_until(bob, lambda e: isinstance(e, Message) and e.text == "line 199")
    assert [e.text for e in got if isinstance(e, Message)] == ["line %d" % i for i in range(200)]

    carol.msg("bob", "psst")  # private, to a nick on another daemon
    assert events_until(bob, lambda e: isinstance(e, Private))[-1] == Private("carol", "bob",
                                                                            "psst")
    with pytest.raises(ServerError) as nobody:
        carol.msg("nobody", "hello?")
    assert nobody.value.code == "no-such-nick"

    carol.join("ops")  # history is shared, with the same bound (history = 5)
    replay = events_until(carol, lambda e: isinstance(e, History) and e.event.room == "ops"
                          and e.event.text == "line 199")
    assert [e.event.text for e in replay if isinstance(e, History) and e.event.room == "ops"] \
        == ["line %d" % i for i in range(195, 200)]

    alice.change_nick("alicia")
    events_until(carol, is_notice("nick", "alice", "alicia"))
    bob.quit("bye now")
    quit_seen = events_until(alice, is_notice("quit", "bob"))[-1]
    assert quit_seen.text == "bye now"
    events_until(carol, is_notice("quit", "bob"))
    assert alice.who("ops") == ["alicia", "carol"]
    assert three.stop() == 0  # a daemon that stops says goodbye for its members at once
    events_until(alice, is_notice("quit", "carol"), timeout=2)
    assert alice.who("ops") == ["alicia"]
    for client in (alice, carol):
        client.close()


def test_redis_unreachable_at_start_then_back(tmp_path, daemon_factory, redis_server):
    port = free_port()  # nothing listens there yet
    fleet = Fleet(tmp_path, daemon_factory, port)
    (daemon,) = fleet.start(1, connected=False)
    with EchoClient(*daemon.listeners["echo"]) as echo:  # other services are unaffected
        assert echo.echo(b"still here") == b"still here"
    unavailable(lambda: fleet.chat(daemon, "early"))
    started = time.monotonic()
    time.sleep(2.0)  # let back-off periods pass: one log line each
    attempts = daemon.log.count("unreachable (")
    assert 1 <= attempts <= 2 + (time.monotonic() - started) / 0.5, daemon.log
    assert "next try in" in daemon.log
    redis_server.start(port)
    wait_connected(daemon)
    with fleet.chat(daemon, "late") as late:
        assert late.who() == ["late"]


def test_redis_restarted_mid_chat(fleet, redis_server):
    one, two = fleet.start(2)
    alice, bob = fleet.chat(one, "alice"), fleet.chat(two, "bob")
    alice.join("ops")
    bob.join("ops")
    alice.say("before")
    events_until(bob, lambda e: isinstance(e, Message) and e.text == "before")
    redis_server.stop()
    unavailable(lambda: alice.who("ops"))
    wait_for(lambda: " lost (" in two.log, 5, message="the other daemon to see the loss")
    redis_server.start(redis_server.port)
    for daemon in (one, two):
        wait_for(lambda: "without this server's presence" in daemon.log, 10,
                 message="re-registration after the restart")
    assert "room history and the events published meanwhile are lost" in one.log
    # Presence registered again (in the order the daemons came back).
    assert sorted(alice.who("ops")) == sorted(bob.who("lobby")) == ["alice", "bob"]
    alice.say("after")
    events_until(bob, lambda e: isinstance(e, Message) and e.text == "after")
    with pytest.raises(ServerError):
        fleet.chat(two, "alice")  # the nick is held again
    for client in (alice, bob):
        client.close()


def test_daemon_killed_its_members_quit_within_the_presence_ttl(fleet):
    one, two = fleet.start(2)
    alice, bob = fleet.chat(one, "alice"), fleet.chat(two, "bob")
    bob.join("ops")
    alice.join("ops")
    events_until(bob, is_notice("join", "ops", "alice"))
    one.proc.kill()  # SIGKILL: no goodbye
    killed = time.monotonic()
    one.proc.wait(5)
    notice = events_until(bob, is_notice("quit", "alice"), timeout=4 * TTL)[-1]
    elapsed = time.monotonic() - killed
    assert elapsed <= TTL * 4 / 3 + 1.5, elapsed
    assert "stopped responding" in notice.text
    assert bob.who("ops") == ["bob"]
    with fleet.chat(two, "alice") as again:  # the nick is free
        assert again.nick == "alice"
    assert "stopped responding (no heartbeat" in two.log
    bob.close()


def test_redis_paused_no_client_hangs(fleet, redis_server):
    one, two = fleet.start(2)
    alice, bob = fleet.chat(one, "alice"), fleet.chat(two, "bob")
    redis_server.signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        unavailable(lambda: alice.who())
        error = unavailable(lambda: bob.say("anyone?"))
        assert time.monotonic() - started < 2 * TIMEOUT + 2.0
        assert "Redis" in error.message or "messages" in error.message
        unavailable(lambda: alice.rooms())  # refused at once while it is away
    finally:
        redis_server.signal(signal.SIGCONT)
    for daemon in (one, two):
        wait_connected(daemon, count=2)
    assert alice.who() == ["alice", "bob"]
    for client in (alice, bob):
        client.close()
    assert alive(redis_server.proc.pid)



def test_rediss_with_a_password_from_a_file(tmp_path, redis_server, start_service):
    require_program("openssl")
    from tests.service.test_tls import make_ca, make_leaf
    make_ca(tmp_path, "ca")
    make_leaf(tmp_path, "ca", "redis", "serverAuth", "IP:127.0.0.1, DNS:localhost")
    ca, secret = str(tmp_path / "ca.pem"), tmp_path / "redis.pass"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    redis_server.start(tls=(str(tmp_path / "redis.pem"), str(tmp_path / "redis.key"), ca),
                       password="s3cret")
    servers = [start_service("chat", backend="rediss://localhost:%d/0" % redis_server.port,
                             redis_password_file=secret, redis_ca_file=ca,
                             redis_timeout=TIMEOUT) for _ in range(2)]
    for server in servers:
        wait_for(lambda: server.service.chat.available, 10, message="a TLS connection to redis")
    with ChatClient("127.0.0.1", servers[0].port, "tls", timeout=5) as one, \
            ChatClient("127.0.0.1", servers[1].port, "peer", timeout=5) as two:
        one.say("over TLS")
        events_until(two, lambda e: isinstance(e, Message) and e.text == "over TLS")
