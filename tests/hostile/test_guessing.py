"""Key guessing from one address against the daemon: the per-source penalty caps the guesses.

``GUESSERS`` threads connect from 127.0.0.2 for ``ATTACK_SECONDS``, each
sending ``max_auth_failures`` wrong proofs per connection (pipelined) and
reconnecting.  With the penalty on, the server checks about
``auth_penalty_failures`` guesses and answers every later attempt ``busy``
(at admission, or on a connection opened before, unchecked); with it off
(the baseline) it checks a guess per failure delay per connection.
Meanwhile fresh clients from the exempt 127.0.0.1 are served as usual.
"""

import collections
import socket
import threading
import time

import pytest

from msgsrv.wire.errors import ConnectionFailed, ProtocolError
from msgsrv.wire.frame_stream import FrameStream
from tests.hostile import campaign
from tests.hostile.attackers import measure_latency
from tests.hostile.targets import SERVICES

pytestmark = pytest.mark.timeout(campaign.timeout(60))

GUESSERS = 20
ATTACK_SECONDS = campaign.pick(2.0, 60.0)
FAILURES = 10  # auth_penalty_failures
WORKERS = 4  # attempts that may pass the penalty check at once, one per worker thread
ATTACKER, FRESH = "127.0.0.2", "127.0.0.1"
WRONG = {"type": "auth", "key": "hostile", "proof": "0" * 64}


def _guess(address, until, tally):
    """Connect, guess until the server closes, reconnect; count each reply's code."""
    while time.monotonic() < until:
        sock = socket.socket()
        sock.settimeout(5)
        try:
            sock.bind((ATTACKER, 0))
            sock.connect(address)
            stream = FrameStream(sock)
            first = stream.recv()
            if first.type == "hello":
                for _ in range(3):
                    stream.send(WRONG)
                first = stream.recv()
                while first.header.get("nonce"):
                    tally[first.header["code"]] += 1
                    first = stream.recv()
            tally[first.header.get("code", first.type)] += 1
        except (ConnectionFailed, ProtocolError, OSError):
            tally["closed"] += 1
        finally:
            sock.close()


def _attack(address):
    until = time.monotonic() + ATTACK_SECONDS
    tallies = [collections.Counter() for _ in range(GUESSERS)]
    threads = [threading.Thread(target=_guess, args=(address, until, tally), daemon=True)
               for tally in tallies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(ATTACK_SECONDS + 30)
    return sum(tallies, collections.Counter())


@pytest.mark.parametrize("penalty", ["on", "off"])
def test_guessing_from_one_address_is_capped_by_the_penalty(hostile_daemon, penalty):
    options = {"auth_penalty_failures": str(FAILURES if penalty == "on" else 0),
               "auth_penalty_exempt": FRESH, "max_connections_per_ip": "1000"}
    daemon = hostile_daemon(["authed"], overrides={"authed": options})
    address = daemon.address("authed")
    fresh = threading.Thread(target=lambda: results.append(measure_latency(
        lambda: SERVICES["authed"].ping(address), duration=ATTACK_SECONDS)), daemon=True)
    results = []
    fresh.start()
    tally = _attack(address)
    fresh.join(ATTACK_SECONDS + 30)
    checked, refused = tally["auth-failed"], tally["busy"]
    campaign.record("auth guessing", penalty=penalty, seconds=ATTACK_SECONDS,
                    guessers=GUESSERS, checked=checked, refused=refused,
                    closed=tally["closed"], fresh=results[0].describe())
    penalised = daemon.log.count(" penalised: ")
    if penalty == "on":
        assert FAILURES <= checked <= FAILURES + WORKERS, tally
        assert refused > 0 and penalised == 1, tally
    else:
        assert checked > 3 * FAILURES and refused == 0 and penalised == 0, tally
    assert results and results[0].p99 < 1.0, results  # the exempt source kept being served
    daemon.assert_alive()
    daemon.assert_clean_log()
