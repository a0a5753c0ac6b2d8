"""Slowloris on the framed auth service: deadlines close the drippers, fresh clients stay fast.

Two attacks run at once against the daemon, each ``COUNT`` connections
kept open (a closed one is replaced) that send one byte every 200 ms of a
frame that never completes: before authentication (``auth_timeout`` must
close them) and after it (``frame_timeout`` must).  Meanwhile fresh clients
connect, authenticate and make a request; their latency is compared with a
generous bound.
"""

import collections
import select
import time

import pytest

from msgsrv.wire import auth
from msgsrv.wire.frames import encode
from msgsrv.wire.frame_stream import FrameStream
from tests.conftest import recv_until_closed
from tests.hostile import campaign
from tests.hostile.attackers import Slowloris, measure_latency, open_tcp
from tests.hostile.procwatch import settle
from tests.hostile.targets import KEY_NAME, SECRET, SERVICES

pytestmark = pytest.mark.timeout(campaign.timeout(60))

COUNT = campaign.pick(100, 400)  # per attack
DEADLINE = 1.5  # auth_timeout and frame_timeout, seconds
SLACK = 1.5  # the deadline sweep runs every 0.5 s; the machine is shared and busy
ATTACK_SECONDS = campaign.pick(4.0, 60.0)
P99_BOUND = 0.250
NEVER_ENDING_FRAME = b"\x00\x00\x03\xe8{" + b" " * 400  # declares 1000 header bytes


def authenticate(sock):
    """Prelude of the post-auth attack: a correct handshake, then the drip starts."""
    stream = FrameStream(sock)
    stream.send(auth.answer_hello(stream.recv().header, KEY_NAME, SECRET))
    assert stream.recv().type == "authenticated"


def test_slowloris_is_closed_by_deadlines_while_fresh_clients_keep_their_latency(hostile_daemon):
    options = {"auth_timeout": str(DEADLINE), "frame_timeout": str(DEADLINE),
               "max_connections_per_ip": "5000", "max_connections": "5000"}
    daemon = hostile_daemon(["authed"], overrides={"authed": options})
    address = daemon.address("authed")
    fresh = lambda: SERVICES["authed"].ping(address)  # noqa: E731
    quiet = measure_latency(fresh, duration=1.0)
    baseline = daemon.probe.snapshot()
    attacks = {
        "pre-auth": Slowloris(address, COUNT, NEVER_ENDING_FRAME, interval=0.2,
                              duration=ATTACK_SECONDS, sustain=True),
        "post-auth": Slowloris(address, COUNT, NEVER_ENDING_FRAME, interval=0.2,
                               duration=ATTACK_SECONDS, sustain=True, prelude=authenticate),
    }
    for attack in attacks.values():
        attack.start()
    loaded = measure_latency(fresh, duration=ATTACK_SECONDS - 0.5)
    results = {name: attack.join() for name, attack in attacks.items()}

    # The server's own account: no connection outlived the deadline (the
    # driver's view adds its own lag when it is busy replacing connections).
    closes = daemon.closes("authed")
    longest = max(record["duration"] for record in closes)
    assert longest < DEADLINE + SLACK, "a connection lived %.2fs on the server" % longest
    timed_out = collections.Counter(r["outcome"] for r in closes if r["outcome"].endswith("timeout"))
    for name, result in results.items():
        assert result.lifetimes, "%s: the server closed no dripping connection" % name
        assert result.finished == 0, "%s: the script ran out; the test proves nothing" % name
        unexplained = [reply for reply in result.replies if b'"code":"timeout"' not in reply]
        assert not unexplained, "%s: %d closes without the timeout error, e.g. %r" % (
            name, len(unexplained), unexplained[0][-200:])
    assert loaded.p99 < P99_BOUND, "fresh clients under attack: %s (quiet: %s)" % (
        loaded.describe(), quiet.describe())
    daemon.assert_alive()
    daemon.assert_clean_log()
    after = settle(daemon.probe, baseline, timeout=15)
    campaign.record(
        "slowloris", concurrent=2 * COUNT, seconds=ATTACK_SECONDS,
        closed_by_deadline=dict(timed_out), longest_server_side=round(longest, 2),
        longest_seen_by_client={name: round(max(r.lifetimes), 2) for name, r in results.items()},
        fresh_quiet=quiet.describe(), fresh_under_attack=loaded.describe(),
        before=str(baseline), after=str(after))


@pytest.mark.parametrize("pace", [0.6, 0.0], ids=["paced", "pipelined"])
def test_failed_attempts_do_not_stretch_the_auth_deadline(hostile_daemon, pace):
    """Wrong answers, paced or back to back: the client still goes at auth_timeout (+ slack)."""
    daemon = hostile_daemon(["authed"], overrides={"authed": {
        "auth_timeout": str(DEADLINE), "max_auth_failures": "100"}})
    sock = open_tcp(daemon.address("authed"))
    started = time.monotonic()
    stream = FrameStream(sock)
    wrong = encode(auth.answer_hello(stream.recv().header, KEY_NAME, "wrong-secret-0123456789"))
    with sock:
        if not pace:
            sock.sendall(wrong * 100)  # a wrong proof fails whatever nonce it was made for
        while time.monotonic() - started < 10:
            if select.select([sock], [], [], pace or 10)[0]:
                message = stream.recv()  # a failure reply, or the verdict
                if message.header.get("code") != "auth-failed" or "nonce" not in message.header:
                    break
            elif pace:
                sock.sendall(wrong)
        lifetime = time.monotonic() - started
        assert message.header.get("code") == "timeout", message.header
        assert recv_until_closed(sock) == b""
    assert lifetime < DEADLINE + auth.FAILURE_DELAY + SLACK, "lived %.1fs" % lifetime


NEVER_ENDING_REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Drip: " + b"a" * 400


def test_slowloris_on_the_web_console_is_closed_by_request_timeout(hostile_daemon):
    """Request heads dripped a byte at a time get 408 at request_timeout; fresh page loads
    stay fast meanwhile."""
    count = campaign.pick(60, 400)
    options = {"request_timeout": str(DEADLINE), "max_connections_per_ip": "5000",
               "max_connections": "5000"}
    daemon = hostile_daemon(["web"], overrides={"web": options})
    address = daemon.address("web")
    fresh = lambda: SERVICES["web"].ping(address)  # noqa: E731
    seconds = campaign.pick(2.5, 60.0)  # one deadline and its slack, at least
    attack = Slowloris(address, count, NEVER_ENDING_REQUEST, interval=0.2, duration=seconds,
                       sustain=True).start()
    loaded = measure_latency(fresh, duration=seconds - 0.5)
    result = attack.join()
    longest = max(r["duration"] for r in daemon.closes("web") if r["outcome"] == "http-408")
    assert longest < DEADLINE + SLACK, "a dripping connection lived %.2fs" % longest
    assert result.lifetimes and result.finished == 0
    assert all(reply.startswith(b"HTTP/1.1 408 Request Timeout") for reply in result.replies)
    assert loaded.p99 < P99_BOUND, "fresh clients under attack: %s" % loaded.describe()
    daemon.assert_alive()
    daemon.assert_clean_log()
    campaign.record("slowloris-web", concurrent=count, seconds=seconds,
                    longest_server_side=round(longest, 2), fresh_under_attack=loaded.describe())
