"""SIGTERM with requests in flight, against the daemon (a subprocess).

Work done is acknowledged: a request that completes within
``shutdown_timeout`` gets its reply (an upload its ``ok``, a command run its
``exit`` frame) before the connection closes; an idle connection closes at
once; what cannot finish in time fails cleanly (no file under its name, no
child process left); the daemon exits 0 soon after the grace period.
"""

import concurrent.futures
import hashlib
import os
import signal
import time

import pytest

from msgsrv.services.command.client import CommandClient
from msgsrv.services.files.client import FileClient
from msgsrv.wire.errors import ConnectionFailed
from msgsrv.services.files.sandbox import is_reserved_name, is_temp_name
from tests.conftest import recv_until_closed, wait_for
from tests.hostile import campaign
from tests.hostile.targets import KEY_NAME, SECRET
from tests.processes import alive, kill_quietly

pytestmark = pytest.mark.timeout(campaign.timeout(60))

GRACE = 2.0  # the daemons' shutdown_timeout
EXIT_SLACK = 1.5  # seconds after the grace period by which the daemon must have exited
UPLOADS = campaign.pick(10, 60)
SIZE = 1 << 20


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


class Upload:
    """One client's put, stopped half-way so it is in flight when SIGTERM comes."""

    def __init__(self, address, path, data):
        self.path, self.data = path, data
        self.client = FileClient(address[0], address[1], KEY_NAME, SECRET, timeout=10)
        ready = self.client.request({"type": "put", "path": path, "size": len(data)})
        assert ready.type == "ready" and ready.header["offset"] == 0
        self.client.sock.sendall(data[:len(data) // 2])

    def finish(self):
        """Send the rest and the end frame; return the server's reply."""
        self.client.sock.sendall(self.data[len(self.data) // 2:])
        self.client.send({"type": "end", "sha256": _sha256(self.data)})
        return self.client.recv()


def _sigterm(daemon, service, connections, busy):
    """SIGTERM; return its time once ``service``'s pool has marked its connections."""
    sent = time.monotonic()
    daemon.process.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "%s: stopping: %d connections, %d finishing a request"
             % (service, connections, busy) in daemon.log, message="the stop to begin")
    return sent


def _exit_time(daemon, since):
    """Wait for the daemon to exit 0; return the seconds since ``since``."""
    assert daemon.process.proc.wait(GRACE + EXIT_SLACK + 5) == 0, daemon.log[-4000:]
    return time.monotonic() - since


@pytest.mark.parametrize("stalled", [0, 1], ids=["all-finish", "one-stalled"])
def test_uploads_in_flight_at_sigterm_are_acknowledged(hostile_daemon, stalled):
    daemon = hostile_daemon(["file"], {"shutdown_timeout": GRACE},
                            {"file": {"max_connections_per_ip": "1000", "io_timeout": "30",
                                      # every upload comes from 127.0.0.1, all at once
                                      "max_transfers": "1000", "max_transfers_per_ip": "1000",
                                      "transfer_buffer_budget": "1G"}})
    address = daemon.address("file")
    uploads = [Upload(address, "up%d.bin" % n, os.urandom(SIZE)) for n in range(UPLOADS)]
    stuck = [Upload(address, "stalled%d.bin" % n, os.urandom(SIZE)) for n in range(stalled)]
    sent = _sigterm(daemon, "file", UPLOADS + stalled, UPLOADS + stalled)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(Upload.finish, uploads))
    acknowledged = time.monotonic() - sent
    for upload, reply in zip(uploads, replies):
        assert reply.type == "ok", reply.header
        assert reply.header["sha256"] == _sha256(upload.data)
        assert reply.header["size"] == SIZE
        assert recv_until_closed(upload.client.sock) == b""  # then closed, nothing more
        upload.client.close()
        with open(daemon.where / "files" / upload.path, "rb") as stored:
            assert _sha256(stored.read()) == _sha256(upload.data)
    for upload in stuck:  # never finishes: aborted at the deadline
        with pytest.raises(ConnectionFailed):
            upload.client.recv()
        upload.client.close()

    exited = _exit_time(daemon, sent)
    # The grace period is a limit, not a wait: with nothing stalled the daemon exits at once.
    assert exited < (GRACE + EXIT_SLACK if stalled else acknowledged + EXIT_SLACK)
    stored = [name for name in os.listdir(daemon.where / "files") if not is_reserved_name(name)]
    assert sorted(stored) == sorted(u.path for u in uploads)
    outcomes = [record["outcome"] for record in daemon.closes("file")]
    assert sorted(outcomes) == ["server-shutdown"] * UPLOADS + ["shutdown-timeout"] * stalled
    daemon.assert_clean_log()
    campaign.record("sigterm-uploads", in_flight=UPLOADS + stalled, acknowledged=len(replies),
                    acknowledged_within=round(acknowledged, 3), aborted=stalled, grace=GRACE,
                    exit_seconds=round(exited, 3))


def _commands(go):
    return {
        # Runs until the test creates ``go``: it finishes within the grace period on cue.
        "command.waiter": "sh -c 'while ! test -e %s; do sleep 0.02; done; echo done'" % go,
        # Ignores SIGTERM and outlasts the grace period: only SIGKILL ends it.
        "command.stubborn": "sh -c 'trap \"\" TERM; echo $$; exec sleep 30'",
        "kill_grace": "10",
        # ``go`` is in the test's private temp directory, which only root may enter.
        "user": "", "run_as_root": "yes",
    }


def test_command_runs_at_sigterm_finish_or_are_killed(hostile_daemon, tmp_path):
    go = tmp_path / "go"
    daemon = hostile_daemon(["command"], {"shutdown_timeout": GRACE},
                            {"command": _commands(go)})
    host, port = daemon.address("command")
    idle = CommandClient(host, port, KEY_NAME, SECRET, timeout=10)
    waiter = CommandClient(host, port, KEY_NAME, SECRET, timeout=10)
    waiter.send({"type": "run", "command": "waiter"})
    assert waiter.recv().type == "started"
    waiter.send({"type": "list"})  # pipelined after the run: must not be served
    stubborn = CommandClient(host, port, KEY_NAME, SECRET, timeout=10)
    items = stubborn.run_stream("stubborn")
    child = int(next(items)[1])
    try:
        sent = _sigterm(daemon, "command", 3, 2)
        assert recv_until_closed(idle.sock) == b""  # idle: closed at once
        assert time.monotonic() - sent < GRACE
        go.touch()
        output, done = waiter.recv(), waiter.recv()
        assert (output.type, output.body) == ("output", b"done\n")
        assert done.type == "exit" and done.header["exit_code"] == 0, done.header
        assert recv_until_closed(waiter.sock) == b""  # the pipelined list was not served
        with pytest.raises(ConnectionFailed):
            next(items)
        exited = _exit_time(daemon, sent)
        assert exited < GRACE + EXIT_SLACK
        assert not alive(child), "the stubborn command outlived the daemon"
    finally:
        kill_quietly(child)
        for client in (idle, waiter, stubborn):
            client.close()
    assert "command=stubborn" in daemon.log and "end=cancelled" in daemon.log
    daemon.assert_clean_log()
    campaign.record("sigterm-commands", finished=1, killed=1, grace=GRACE,
                    exit_seconds=round(exited, 3))
