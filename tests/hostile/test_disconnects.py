"""Abrupt disconnects (TCP reset) at every phase, then /proc and the counters must be clean.

PHASES maps each TCP service to the moments a client can vanish at; each
phase function gets the service address, goes that far and resets.  A
storm runs every phase many times at once against the daemon (checked from
/proc: threads, fds, RSS) and against in-process servers (checked from the
inside: admissions, per-address counts, pool connections and deadlines).
"""

import concurrent.futures
import hashlib
import os
import socket

import pytest

from msgsrv.wire import auth
from msgsrv.services.files import transfer
from msgsrv.wire.frames import encode
from msgsrv.services.files.sandbox import is_temp_name
from msgsrv.wire.frame_stream import FrameStream
from tests.conftest import wait_for
from tests.hostile import campaign
from tests.hostile.attackers import open_tcp, rst_close
from tests.hostile.procwatch import SelfProbe, settle
from tests.hostile.targets import KEY_NAME, SECRET, service_options, write_keys_file

pytestmark = pytest.mark.timeout(campaign.timeout(90))

REPEATS = campaign.pick(30, 1000)  # per phase
# Reset connections linger server-side until noticed (a held auth failure for
# 0.5 s): admission limits would refuse part of a storm, which is not the point here.
UNLIMITED = {"max_connections": "100000", "max_connections_per_ip": "100000",
             "max_transfers": "100000", "max_transfers_per_ip": "100000"}
#: Per-service options of the storm: every reset ``sleep`` may be running at once.
STORM_OPTIONS = {"command": {"max_concurrent": "1000", "max_stdin": "64K"}}
WORKERS = 16
# Each upload holds DEPTH + 1 buffers of SERVER_CHUNK bytes while it runs; the allocator
# keeps one peak of them for reuse (RSS plateaus there over repeated storms).
TRANSFER_PEAK_KIB = WORKERS * (transfer.DEPTH + 1) * transfer.SERVER_CHUNK // 1024


def before_greeting(address):
    """Connect and reset before reading anything (a greeting may be on its way)."""
    rst_close(open_tcp(address))


def with_unread_output(address):
    """Push 2 MiB to an echo without reading the echo back, then reset."""
    sock = open_tcp(address)
    sock.settimeout(0.5)
    try:
        for _ in range(32):
            sock.send(b"x" * 65536)
    except socket.timeout:
        pass  # the daemon stopped reading us: exactly the state we want to vanish in
    rst_close(sock)


def _hello(address):
    sock = open_tcp(address)
    stream = FrameStream(sock)
    return sock, stream, stream.recv().header


def mid_auth(address):
    """Half of a correct auth frame, then reset."""
    sock, _, hello = _hello(address)
    answer = encode(auth.answer_hello(hello, KEY_NAME, SECRET))
    sock.sendall(answer[:len(answer) // 2])
    rst_close(sock)


def during_failure_delay(address):
    """A wrong proof: the server holds the connection before answering; reset meanwhile."""
    sock, stream, hello = _hello(address)
    stream.send(auth.answer_hello(hello, KEY_NAME, "wrong-secret-0123456789"))
    rst_close(sock)


def _authenticated(address):
    sock, stream, hello = _hello(address)
    stream.send(auth.answer_hello(hello, KEY_NAME, SECRET))
    assert stream.recv().type == "authenticated"
    return sock


def _authenticated_stream(address):
    sock, stream, hello = _hello(address)
    stream.send(auth.answer_hello(hello, KEY_NAME, SECRET))
    assert stream.recv().type == "authenticated"
    return sock, stream


def mid_frame(address):
    """Authenticated, then half a request frame, then reset."""
    sock = _authenticated(address)
    sock.sendall(encode({"type": "ping"}, b"body" * 100)[:200])
    rst_close(sock)


def with_replies_pending(address):
    """Authenticated, 300 pipelined requests, reset without reading a reply."""
    sock = _authenticated(address)
    sock.sendall(encode({"type": "ping", "pad": "p" * 200}) * 300)
    rst_close(sock)


def mid_raw_stream(address):
    """BlockingFramed ``sleep``: the handler blocks reading raw bytes; reset halfway."""
    sock = open_tcp(address)
    sock.sendall(encode({"type": "sleep", "bytes": 100000}) + b"r" * 5000)
    rst_close(sock)


def mid_unauthenticated_frame(address):
    """Half a frame to a framed service without auth, then reset."""
    sock = open_tcp(address)
    sock.sendall(encode({"type": "ping"}, b"b" * 500)[:100])
    rst_close(sock)


BIG = b"d" * (2 << 20)


def mid_upload(address):
    """Authenticated, a 2 MiB put accepted (ready), half the bytes, then reset."""
    sock, stream = _authenticated_stream(address)
    stream.send({"type": "put", "path": "up.bin", "size": len(BIG), "overwrite": True})
    assert stream.recv().type == "ready"
    sock.sendall(BIG[:len(BIG) // 2])
    rst_close(sock)


def mid_download(address):
    """Authenticated, a get of a 2 MiB file, a few bytes read, then reset."""
    sock, stream = _authenticated_stream(address)
    stream.send({"type": "get", "path": "down.bin"})
    reply = stream.recv()
    if reply.type == "error":  # the first download: make the file, then go again
        assert reply.header["code"] == "not-found", reply.header
        _store(sock, stream, "down.bin", BIG)
        stream.send({"type": "get", "path": "down.bin"})
        reply = stream.recv()
    assert reply.type == "data", reply.header
    sock.recv(1000)
    rst_close(sock)


def _store(sock, stream, path, data):
    stream.send({"type": "put", "path": path, "size": len(data), "overwrite": True})
    assert stream.recv().type == "ready"
    sock.sendall(data)
    stream.send({"type": "end", "sha256": hashlib.sha256(data).hexdigest()})
    assert stream.recv().type == "ok"


def mid_command(address):
    """Authenticated, ``sleep 30`` started, then reset: the child must not outlive us."""
    sock, stream = _authenticated_stream(address)
    stream.send({"type": "run", "command": "sleep", "args": ["30"]})
    assert stream.recv().type == "started"
    rst_close(sock)


def mid_command_input(address):
    """Authenticated, ``cat`` with half of its standard input frame, then reset."""
    sock = _authenticated(address)
    sock.sendall(encode({"type": "run", "command": "cat"}, b"i" * 20000)[:10000])
    rst_close(sock)


def _welcomed(address):
    sock = open_tcp(address)
    got = b""
    while b"\n" not in got:
        chunk = sock.recv(4096)
        assert chunk, "chat closed before its welcome"
        got += chunk
    return sock


def mid_chat_line(address):
    """Welcomed, a nick and half a chat line (no line end), then reset."""
    sock = _welcomed(address)
    sock.sendall(b"/nick rst\nhalf a line without its e")
    rst_close(sock)


def chat_unread(address):
    """Welcomed, 300 /who and /help requests never read, then reset."""
    sock = _welcomed(address)
    sock.sendall(b"/help\n/who\n" * 150)
    rst_close(sock)


PHASES = {
    "echo": [before_greeting, with_unread_output],
    "authed": [before_greeting, mid_auth, during_failure_delay, mid_frame, with_replies_pending],
    "blocking": [before_greeting, mid_unauthenticated_frame, mid_raw_stream],
    "file": [mid_auth, mid_upload, mid_download],
    "command": [mid_frame, mid_command, mid_command_input],
    "chat": [before_greeting, mid_chat_line, chat_unread],
}
CASES = [(service, phase) for service, phases in PHASES.items() for phase in phases]


def storm(addresses, cases, repeats, workers=WORKERS):
    """Run every (service, phase) ``repeats`` times, ``workers`` at once; return the count."""
    jobs = [(addresses[service], phase) for service, phase in cases] * repeats
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="rst") as pool:
        for future in [pool.submit(phase, address) for address, phase in jobs]:
            future.result()
    return len(jobs)


def _children(pid):
    """PIDs of ``pid``'s live child processes (from /proc)."""
    found = []
    for task in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/children" % (pid, task)) as stream:
            found += stream.read().split()
    return found


def test_resets_at_every_phase_leave_the_daemon_as_it_was(hostile_daemon):
    overrides = {name: dict(UNLIMITED, **STORM_OPTIONS.get(name, {})) for name in PHASES}
    overrides["echo"]["max_pending_output"] = "256K"
    overrides["blocking"]["workers"] = "2"
    daemon = hostile_daemon(sorted(PHASES), overrides=overrides)
    daemon.ping_all()
    initial = daemon.probe.snapshot()
    storm(daemon.addresses, CASES, 2)  # warm-up: first-use allocations are not leaks
    settle(daemon.probe, initial, timeout=10)
    baseline = daemon.probe.snapshot()
    count = storm(daemon.addresses, CASES, REPEATS)
    daemon.assert_alive()
    daemon.ping_all()
    after = settle(daemon.probe, baseline, timeout=15,
                   rss_slack_kib=8 * 1024 + TRANSFER_PEAK_KIB)
    daemon.assert_clean_log()
    root = daemon.where / "files"
    wait_for(lambda: not [n for n in os.listdir(root) if is_temp_name(n)],
             message="the reset uploads' temp files to go")
    wait_for(lambda: not _children(daemon.process.proc.pid), timeout=10,
             message="the reset commands' children to be killed")
    campaign.record("reset-storm-daemon", resets=count, phases=len(CASES), before=str(baseline),
                    after=str(after))


@pytest.mark.parametrize("service", sorted(PHASES))
def test_resets_at_every_phase_release_every_counter(start_service, tmp_path, service,
                                                     no_thread_leak):
    options = service_options(service, write_keys_file(tmp_path / "keys"),
                              max_pending_output="256K", **dict(UNLIMITED,
                                                                **STORM_OPTIONS.get(service, {})))
    probe = SelfProbe()
    before = probe.snapshot()
    server = start_service(options.pop("handler"), **options)
    address = ("127.0.0.1", server.port)
    storm({service: address}, [(service, phase) for phase in PHASES[service]], REPEATS)

    def leftovers():
        state = {"admitted": server.connection_count,
                 "per_ip": server.connections_from("127.0.0.1"),
                 "pool connections": len(server.pool.connections()),
                 "timers": server.pool.timer_count,
                 "transfers": server.transfers.active, "buffers": server.transfers.reserved,
                 "threads": server.pool.thread_count - server.config["workers"]}
        busy = {name: value for name, value in state.items() if value}
        return "still held: %s" % busy if busy else None
    wait_for(lambda: leftovers() is None, timeout=15, message="counters to return to zero")
    counters = server.counters.snapshot()
    assert counters["connections_total"] == REPEATS * len(PHASES[service])
    assert counters.get("errors", 0) == 0
    server.stop(5)
    settle(probe, before, timeout=10)  # the server's own threads and fds are gone too
