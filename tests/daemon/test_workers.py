"""The daemon with ``processes = 2``: a master and two worker processes, as subprocesses."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from msgsrv.client import EchoClient
from msgsrv.services.status.client import StatusClient
from msgsrv.wire.frame_stream import FrameStream
from tests.conftest import ROOT, wait_for
from tests.processes import alive

pytestmark = pytest.mark.timeout(60)

CONFIG = """
[msgsrv]
processes = 2
reuse_port = {reuse_port}
shutdown_timeout = 3
pidfile = {tmp}/msgsrv.pid

[service:echo]
handler = echo

[service:limited]
handler = echo
max_connections = 4

[service:status]
handler = status

[service:chat]
handler = chat

[service:slow]
handler = tests.plugins:BlockingFramed

[service:picky]
handler = tests.plugins:PickyHandler
refuse_if = {tmp}/refuse
"""


def start(tmp_path, daemon_factory, reuse_port="yes", **env):
    path = tmp_path / "server.ini"
    path.write_text(CONFIG.format(tmp=tmp_path, reuse_port=reuse_port))
    daemon = daemon_factory(path, env=env or None)
    daemon.wait_listening(6)
    wait_for(lambda: "ready pid=%d" % daemon.proc.pid in daemon.log, message="ready")
    return daemon


def status(daemon):
    with StatusClient(*daemon.listeners["status"], timeout=5) as client:
        return client.status()


def ready_workers(daemon, count=2):
    """The status document once ``count`` workers are ready (and published)."""
    def ready():
        document = status(daemon)
        workers = [w for w in document.get("workers", ()) if w["state"] == "ready"]
        return document if len(workers) == count and all(w["services"] for w in workers) \
            else None
    return wait_for(ready, timeout=10, message="%d ready workers" % count)


def echo(address, data=b"hi"):
    with EchoClient(*address, timeout=5) as client:
        return client.echo(data)


def test_two_workers_serve_and_the_status_sums_them(tmp_path, daemon_factory):
    daemon = start(tmp_path, daemon_factory)
    document = ready_workers(daemon)
    assert document["pid"] == daemon.proc.pid and document["processes"] == 2
    pids = {w["pid"] for w in document["workers"]}
    assert len(pids) == 2 and daemon.proc.pid not in pids
    served = 0
    while served < 200:  # SO_REUSEPORT spreads connections by their addresses and ports
        for _ in range(20):
            assert echo(daemon.listeners["echo"]) == b"hi"
        served += 20
        document = wait_for(lambda: _summed(daemon, "echo", served), message="the snapshots")
        totals = {w["pid"]: _entry(w, "echo")["connections_total"] for w in document["workers"]}
        if all(totals.values()):
            break
    assert all(totals.values()), "one worker served every connection: %s" % totals
    assert sum(totals.values()) == served
    chat = [w["index"] for w in document["workers"] if _entry(w, "chat", None)]
    assert chat == [0]  # the in-process chat state runs in worker 0 only
    summed = 'msgsrv_connections_total{service="echo"} %d' % served
    metrics = wait_for(lambda: _metrics(daemon, summed), message="the summed Prometheus counter")
    for pid in pids:
        assert 'msgsrv_worker_info{worker="%d",' % pid in metrics
        assert 'msgsrv_worker_connections_total{worker="%d",service="echo"}' % pid in metrics
    table = subprocess.run([sys.executable, "-m", "msgsrv.cli.msgsrvctl", "status", "-c",
                            str(tmp_path / "server.ini")], cwd=ROOT, capture_output=True,
                           text=True, timeout=30, env=dict(os.environ, PYTHONPATH=ROOT))
    assert table.returncode == 0, table.stderr
    assert "workers:" in table.stdout and "WORKER  PID" in table.stdout
    assert all("pid %d " % pid in table.stdout for pid in pids)


def _metrics(daemon, expected):
    """The Prometheus text once it contains ``expected``."""
    with StatusClient(*daemon.listeners["status"], timeout=5) as client:
        text = client.metrics()
    return text if expected in text else None


def _summed(daemon, name, count):
    """The status document once service ``name`` counts ``count`` connections in all."""
    document = status(daemon)
    return document if _service(document, name)["connections_total"] == count else None


def _service(document, name):
    return next(s for s in document["services"] if s["name"] == name)


def _entry(worker, name, *default):
    return next((s for s in worker["services"] if s["name"] == name), *default)


def test_max_connections_holds_across_the_workers(tmp_path, daemon_factory):
    daemon = start(tmp_path, daemon_factory)  # hashed over one socket per worker
    ready_workers(daemon)
    address = daemon.listeners["limited"]
    held = []
    for attempt in range(40):  # until the 4 connections are spread over both workers
        while len(held) < 4:
            sock = socket.create_connection(address, timeout=5)
            sock.sendall(b"x")
            assert sock.recv(1) == b"x"
            held.append(sock)
        holding = wait_for(lambda: _holding(daemon, "limited", 4), message="the held connections")
        if all(holding.values()):
            break
        held.pop().close()
        wait_for(lambda: _holding(daemon, "limited", 3), message="the closed one released")
    assert all(holding.values()), holding
    for _ in range(8):  # with a limit per worker, some would reach the one holding fewer
        with socket.create_connection(address, timeout=5) as refused:
            try:
                assert refused.recv(1) == b""
            except ConnectionResetError:
                pass
    for sock in held:
        sock.close()
    document = wait_for(lambda: _refused_busy(daemon, "limited") >= 8 and status(daemon),
                        message="the refusals counted")
    assert _service(document, "limited")["connections_total"] >= 4
    assert "too many connections (max_connections=4)" in daemon.log


def _holding(daemon, name, count):
    document = status(daemon)
    if _service(document, name)["connections"] != count:
        return None
    return {w["pid"]: _entry(w, name)["connections"] for w in document["workers"]}


def _refused_busy(daemon, name):
    return _service(status(daemon), name)["refused"]["busy"]


@pytest.mark.parametrize("reuse_port", ["no", "yes"])
def test_a_killed_worker_is_replaced_and_the_service_keeps_answering(tmp_path, daemon_factory,
                                                                     reuse_port):
    # With a socket per worker, the connections hashed to the dead one's wait for its
    # replacement: none is refused either way.
    daemon = start(tmp_path, daemon_factory, reuse_port)
    before = {w["pid"] for w in ready_workers(daemon)["workers"]}
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: not alive(victim), message="the worker to die")  # not still accepting
    answered = 0

    def replaced():
        nonlocal answered
        assert echo(daemon.listeners["echo"]) == b"hi"  # never refused meanwhile
        answered += 1
        pids = {w["pid"] for w in ready_workers(daemon)["workers"]}
        return pids if victim not in pids and len(pids) == 2 else None
    after = wait_for(replaced, timeout=10, message="the replacement worker")
    assert answered and len(after - before) == 1
    assert "died (killed by SIGKILL after" in daemon.log and "starting a replacement" in daemon.log
    assert not alive(victim)


def test_a_worker_that_keeps_dying_at_once_is_replaced_after_a_delay(tmp_path, daemon_factory):
    daemon = start(tmp_path, daemon_factory)
    for deaths in (1, 2, 3):
        victim = next(w["pid"] for w in ready_workers(daemon)["workers"] if w["index"] == 1)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: victim not in {w["pid"] for w in ready_workers(daemon)["workers"]},
                 message="replacement %d" % deaths)
    assert "died at once 2 times in a row: starting a replacement in 0.5s" in daemon.log
    assert "died at once 3 times in a row: starting a replacement in 1.0s" in daemon.log


def test_sighup_rolls_the_workers_without_refusing_a_connection(tmp_path, daemon_factory):
    daemon = start(tmp_path, daemon_factory)
    before = ready_workers(daemon)
    config = tmp_path / "server.ini"
    config.write_text(config.read_text() + "\n[service:extra]\nhandler = echo\n")
    old = {w["pid"] for w in before["workers"]}
    failures, done, stop = [], [0], threading.Event()

    def client_loop():
        while not stop.is_set():
            try:
                assert echo(daemon.listeners["echo"]) == b"hi"
                done[0] += 1
            except Exception as exc:  # noqa: BLE001 - recorded and checked below
                failures.append(repr(exc))
    loop = threading.Thread(target=client_loop)
    loop.start()
    try:
        wait_for(lambda: done[0] >= 5, message="the client loop")
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload: accepted (" in daemon.log, timeout=15, message="the reload")
        wait_for(lambda: not any(alive(pid) for pid in old), message="the old workers to exit")
        at_reload = done[0]
        wait_for(lambda: done[0] >= at_reload + 5, message="connections after the roll")
    finally:
        stop.set()
        loop.join(10)
    assert failures == []
    after = ready_workers(daemon)
    assert {w["generation"] for w in after["workers"]} == {2}
    assert not old & {w["pid"] for w in after["workers"]}
    # The counters keep counting across the roll (the old workers' totals are kept).
    wait_for(lambda: _summed(daemon, "echo", done[0]), message="every connection counted")
    assert "2 workers replaced" in daemon.log and "added: extra" in daemon.log
    assert echo(_listener(tmp_path, "extra")) == b"hi"


def _listener(tmp_path, name):
    """A listener's address from the master's list beside the pidfile."""
    for line in (tmp_path / "msgsrv.listeners").read_text().splitlines():
        fields = line.split()
        if fields[0] == name:
            host, _, port = fields[2].rpartition(":")
            return host, int(port)
    raise AssertionError("no listener %s" % name)


def test_a_refused_reload_leaves_the_workers_serving(tmp_path, daemon_factory):
    daemon = start(tmp_path, daemon_factory)
    pids = {w["pid"] for w in ready_workers(daemon)["workers"]}
    config = tmp_path / "server.ini"
    good = config.read_text()
    config.write_text(good.replace("max_connections = 4", "max_connections = many"))
    daemon.proc.send_signal(signal.SIGHUP)  # refused by the master's check
    wait_for(lambda: "reload: refused: " in daemon.log, message="the first refusal")
    assert "max_connections must be a whole number" in daemon.log
    config.write_text(good)
    (tmp_path / "refuse").write_text("")
    daemon.proc.send_signal(signal.SIGHUP)  # refused by a service object in a new worker
    wait_for(lambda: daemon.log.count("reload: refused: ") == 2, message="the second refusal")
    assert "could not start: [service:picky] refuse_if:" in daemon.log
    wait_for(lambda: {w["pid"] for w in status(daemon)["workers"]} == pids,
             message="only the old workers")
    assert echo(daemon.listeners["picky"]) == b"hi"
    os.unlink(str(tmp_path / "refuse"))
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload: accepted (" in daemon.log, timeout=15, message="the reload")
    wait_for(lambda: not any(alive(pid) for pid in pids), message="the old workers to exit")
    assert echo(daemon.listeners["picky"]) == b"hi"


def test_sigterm_stops_every_process_and_lets_a_request_finish(tmp_path, daemon_factory):
    daemon = start(tmp_path, daemon_factory)
    pids = {w["pid"] for w in ready_workers(daemon)["workers"]}
    baseline = sum(_threads(pid) for pid in pids)
    sock = socket.create_connection(daemon.listeners["slow"], timeout=10)
    stream = FrameStream(sock)
    stream.send({"type": "sleep", "bytes": 100000})
    stream.send_raw(b"x" * 50000)
    wait_for(lambda: sum(_threads(pid) for pid in pids) > baseline, message="a blocked request")
    started = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "SIGTERM received, stopping 2 workers" in daemon.log, message="the stop")
    stream.send_raw(b"x" * 50000)
    assert stream.recv().type == "slept"  # the request in progress got its reply
    assert daemon.proc.wait(10) == 0
    assert time.monotonic() - started < 3 + 2.0  # shutdown_timeout, and a margin for CI
    sock.close()
    assert not any(alive(pid) for pid in pids), "a worker outlived the master"
    assert not os.path.exists(tmp_path / "msgsrv.pid")
    assert "Traceback" not in daemon.log


def _threads(pid):
    try:
        return len(os.listdir("/proc/%d/task" % pid))
    except OSError:
        return 0


def test_workers_exit_when_the_master_is_killed(tmp_path, daemon_factory):
    daemon = start(tmp_path, daemon_factory)
    pids = {w["pid"] for w in ready_workers(daemon)["workers"]}
    daemon.proc.kill()
    daemon.proc.wait(10)
    wait_for(lambda: not any(alive(pid) for pid in pids), timeout=10,
             message="the workers to notice the master is gone")


def test_sigusr1_reopens_the_log_in_every_process(tmp_path, daemon_factory):
    log_path, rotated = tmp_path / "msgsrv.log", tmp_path / "msgsrv.log.1"
    path = tmp_path / "server.ini"
    path.write_text("[msgsrv]\nprocesses = 2\nlog_file = %s\npidfile = %s/msgsrv.pid\n"
                    "[service:echo]\nhandler = echo\n" % (log_path, tmp_path))
    daemon = daemon_factory(path)
    wait_for(lambda: log_path.exists() and "ready pid=" in log_path.read_text(), message="ready")
    address = _listener(tmp_path, "echo")
    os.rename(str(log_path), str(rotated))
    daemon.proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: log_path.exists() and "told 2 workers" in log_path.read_text(),
             message="the master's new log")
    workers = set()

    def both_reopened():
        assert echo(address) == b"hi"
        for line in log_path.read_text().splitlines():
            if "msgsrv.access[" in line:
                workers.add(line.split("msgsrv.access[")[1].split("]")[0])
        return len(workers) == 2
    wait_for(both_reopened, message="both workers writing to the new log")
    assert "close service=echo" not in rotated.read_text().split("SIGUSR1 received")[-1]
    assert daemon.stop() == 0


def test_only_the_master_talks_to_systemd(tmp_path, daemon_factory):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(tmp_path / "notify"))
        daemon = start(tmp_path, daemon_factory, NOTIFY_SOCKET=str(tmp_path / "notify"))
        ready_workers(daemon)
        assert daemon.stop() == 0
        listener.setblocking(False)
        messages = []
        while True:
            try:
                messages.append(listener.recv(4096).decode())
            except BlockingIOError:
                break
    ready = [m for m in messages if "READY=1" in m.split("\n")]
    assert len(ready) == 1 and "MAINPID=%d" % daemon.proc.pid in ready[0].split("\n")
    assert sum("STOPPING=1" in m.split("\n") for m in messages) == 1
