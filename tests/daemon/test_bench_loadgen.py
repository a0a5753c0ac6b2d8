"""Smoke tests of the benchmark's C load generator and C echo anchor (scripts/benchlib/csrc).

Tiny runs (a few tenths of a second) against msgsrv's echo service in this
process, a stdlib UDP echo and the C epoll echo; the generator's refusals
(non-loopback, over the bounds); the build cache; the fall-back to the
Python generator when there is no compiler.  Skipped without a C compiler.
"""

import json
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import ROOT

SCRIPTS = os.path.join(ROOT, "scripts")
if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)

from benchlib import cbuild, stats  # noqa: E402

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None,
                                 reason="no C compiler")]


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cbuild")
    os.chmod(path, 0o700)
    old = os.environ.get("MSGSRV_BENCH_BUILD")
    os.environ["MSGSRV_BENCH_BUILD"] = str(path)
    yield path
    if old is None:
        del os.environ["MSGSRV_BENCH_BUILD"]
    else:
        os.environ["MSGSRV_BENCH_BUILD"] = old


@pytest.fixture(scope="module")
def loadgen(build_dir):
    return cbuild.build("loadgen")


def run_generator(loadgen, mode, port, *args, warmup=0.1):
    """Run one generator to the end; return (ready, done) as dicts."""
    proc = subprocess.Popen([loadgen, mode, "--port", str(port)] + list(args),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        ready = json.loads(proc.stdout.readline())
        proc.stdin.write("go %.6f\n" % (time.monotonic() + warmup))
        proc.stdin.flush()
        done = json.loads(proc.stdout.readline())
        assert proc.wait(10) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()
    return ready, done


def check_done(done, conns):
    assert done["phase"] == "done" and done["errors"] == 0, done
    assert done["rounds"] > 0 and sum(done["per_conn"]) == done["rounds"]
    assert len(done["per_conn"]) == conns and min(done["per_conn"]) > 0
    histogram = stats.Histogram()
    histogram.add_sparse(done["hist"], done["max_ns"])
    assert histogram.total == done["rounds"]
    # The Python side reads the histogram exactly as the generator does.
    assert round(histogram.percentile(50) * 1e9) == done["p50_ns"]
    assert round(histogram.percentile(99) * 1e9) == done["p99_ns"]
    assert done["min_ns"] <= done["p50_ns"] <= done["p99_ns"] <= done["max_ns"]


def test_tcp_ping_pong_against_msgsrv(loadgen, start_service):
    server = start_service("echo")
    ready, done = run_generator(loadgen, "tcp", server.port, "--conns", "3", "--size", "1024",
                                "--seconds", "0.3", "--batch", "2")
    assert ready == {"phase": "ready", "connected": 3, "failures": 0,
                     "connect_s": ready["connect_s"], "served_s": ready["served_s"]}
    check_done(done, 3)
    assert done["mode"] == "tcp" and abs(done["seconds"] - 0.3) < 0.05
    assert done["per_second"] == [3]


class _DatagramEcho(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        sock.sendto(data, self.client_address)


def test_udp_ping_pong_counts_replies_and_losses(loadgen):
    with socketserver.UDPServer(("127.0.0.1", 0), _DatagramEcho) as server:
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        try:
            _, done = run_generator(loadgen, "udp", server.server_address[1], "--conns", "2",
                                    "--size", "100", "--seconds", "0.3")
        finally:
            server.shutdown()
            thread.join()
    check_done(done, 2)
    assert done["losses"] == 0 and done["stale"] == 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as nobody:
        nobody.bind(("127.0.0.1", 0))  # bound, never answers: every ping is lost
        _, silent = run_generator(loadgen, "udp", nobody.getsockname()[1], "--seconds", "0.3",
                                  "--reply-timeout", "0.05")
    assert silent["rounds"] == 0 and silent["losses"] >= 3


@pytest.mark.parametrize("args, message", [
    (["--host", "10.0.0.1"], "loopback"),
    (["--host", "::1"], "IPv4"),
    (["--conns", "20001"], "--conns"),
    (["--seconds", "601"], "--seconds"),
    (["--size", "4"], "--size"),  # udp needs room for its sequence number
])
def test_refuses_other_addresses_and_out_of_bounds_values(loadgen, args, message):
    done = subprocess.run([loadgen, "udp", "--port", "9"] + args, capture_output=True,
                          text=True, timeout=10, stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and message in done.stderr and not done.stdout


def test_exits_quietly_when_its_parent_closes_stdin(loadgen, start_service):
    server = start_service("echo")
    done = subprocess.run([loadgen, "tcp", "--port", str(server.port)], input="",
                          capture_output=True, text=True, timeout=10)
    assert done.returncode == 0 and json.loads(done.stdout)["phase"] == "ready"


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_epoll_echo():
    binary = cbuild.build("epoll_echo")
    for _ in range(3):  # the free port may be taken before the server binds it
        port = _free_port()
        proc = subprocess.Popen([binary, "--port", str(port), "--max-seconds", "30"],
                                stderr=subprocess.PIPE)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return proc, port
            except OSError:
                time.sleep(0.01)
        proc.kill()
        proc.wait()
        proc.stderr.close()
    pytest.fail("the C echo server did not start")


def test_c_epoll_echo_anchor_serves_large_payloads(loadgen):
    proc, port = _start_epoll_echo()
    try:
        _, done = run_generator(loadgen, "tcp", port, "--conns", "4", "--size", "200000",
                                "--seconds", "0.3")
    finally:
        proc.terminate()
        proc.wait(5)
        proc.stderr.close()
    check_done(done, 4)


def test_build_is_cached_and_refuses_a_shared_directory(build_dir, loadgen, tmp_path,
                                                        monkeypatch):
    assert cbuild.build("loadgen") == loadgen  # same source: no second compile
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    monkeypatch.setenv("MSGSRV_BENCH_BUILD", str(shared))
    with pytest.raises(cbuild.BuildUnavailable, match="closed to others"):
        cbuild.build("loadgen")


def test_bench_falls_back_to_the_python_generator_without_a_compiler(tmp_path):
    env = dict(os.environ, CC="/nonexistent/cc", MSGSRV_BENCH_BUILD=str(tmp_path / "b"))
    done = subprocess.run([sys.executable, os.path.join(SCRIPTS, "bench.py"), "echo",
                           "--quick", "--no-msgsrv", "--servers", "c-epoll"],
                          capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 0, done.stderr
    assert "warning: using the Python load generator" in done.stdout
    assert "warning: using the Python load generator" in done.stderr
    assert "anchor c-epoll skipped: cannot build the C echo server" in done.stdout


def test_histogram_buckets_are_within_two_percent():
    for ns in [0, 63, 64, 100, 127, 128, 5000, 123456, 10 ** 9]:
        middle = stats.Histogram.bucket_value(stats.Histogram.bucket_of(ns))
        assert abs(middle - ns) <= max(1, ns * 0.016)
