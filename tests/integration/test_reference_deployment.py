"""The reference deployment of docs/SCALING.rst, on loopback: HAProxy, Redis, three daemons.

The configuration is conf/examples/scaling/ as shipped and as the guide shows
it, localized only for addresses, ports and paths: every loopback daemon gets
``msgsrv.ini`` with port 0 (the ports it bound are read from its log),
HAProxy gets ``haproxy.cfg`` pointing at them, redis-server reads
``redis.conf``, and ``msgsrv-client run --hosts`` reads ``hosts.txt``.
:func:`localize` fails when a value it replaces is no longer in the file, and
the test fails when an address or path of the example is left unreplaced, so
the files and this test cannot drift apart.

One client session of every service goes through HAProxy (``send-proxy-v2``,
``balance leastconn``): the access log of the daemon that served each
connection names the client's own port, which tells which daemon it was; two
chat clients held open at once land on two daemons and talk through Redis; a
file put through one daemon is read back through another (one shared root).
Then the operator runs one command on the three ops services at once, and a
host crashes (SIGKILL): new connections still succeed (HAProxy redispatches
the ones it sent there) and HAProxy's checks take it out within 4 s.
"""

import contextlib
import glob
import io
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from msgsrv.client import ChatClient, CommandClient, EchoClient, FileClient, StatusClient
from msgsrv.services.chat.protocol import Message, Private
from msgsrv.wire import auth
from tests.conftest import ROOT, wait_for
from tests.integration.conftest import require_program
from tests.integration.haproxy import HAProxy
from tests.integration.test_redis_chat import events_until, is_notice
from tests.processes import exited, kill_quietly

pytestmark = pytest.mark.timeout(60)

EXAMPLES = os.path.join(ROOT, "conf", "examples", "scaling")
HOSTS = {"host1": "192.0.2.11", "host2": "192.0.2.12", "host3": "192.0.2.13"}
# The services behind HAProxy (its frontends carry the same names) and the ops ones.
BALANCED = {"echo": 9000, "chat": 9001, "command": 9002, "files": 9003, "status": 9004}
DIRECT = {"ops": 9012, "ops-status": 9014}
# CPUs the daemons may use: processes = auto starts one worker per CPU.
WORKERS = 2
# What a localized file may no longer mention: the example's addresses and system paths.
LEFT_OVER = re.compile(r"192\.0\.2\.|198\.51\.100\.|/var/lib/|/run/|/etc/|/dev/")


def example(name):
    with open(os.path.join(EXAMPLES, name)) as file:
        return file.read()


def localize(text, mapping):
    """``text`` with each key of ``mapping`` (a whole address, port or path) replaced by its
    value; fails when a key is not there, or when an example address or path is left
    outside comments."""
    for old, new in mapping.items():
        pattern = re.compile(r"(?<![\w.])%s(?![\w.])" % re.escape(old))
        assert pattern.search(text), "%r is no longer in the example" % old
        text = pattern.sub(lambda _match: new, text)
    for line in text.splitlines():
        if not line.lstrip().startswith("#"):
            assert not LEFT_OVER.search(line), "not localized: %r" % line
    return text


def children(pid):
    """The pids of the children of ``pid`` (Linux /proc; empty where it does not say)."""
    found = set()
    for task in glob.glob("/proc/%d/task/*/children" % pid):
        with open(task) as listing:
            found.update(int(child) for child in listing.read().split())
    return found


def expected_workers():
    """What ``processes = auto`` gives a daemon started :func:`on_cpus` (WORKERS)."""
    return min(WORKERS, len(os.sched_getaffinity(0)))


@contextlib.contextmanager
def on_cpus(count):
    """Processes started inside run on at most ``count`` of this thread's CPUs (they
    inherit its affinity), so ``processes = auto`` starts at most ``count`` workers."""
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, sorted(saved)[:count])
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved)


def private_file(path, text):
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


class Deployment:
    """The paths of one deployment in ``tmp_path``; the processes are the fixtures'."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.root = tmp_path / "shared-root"
        self.clients_keys = str(tmp_path / "keys" / "clients.keys")
        self.ops_keys = str(tmp_path / "keys" / "ops.keys")
        auth.ensure_keys_file(self.clients_keys, "alice")
        auth.ensure_keys_file(self.ops_keys, "operator")
        self.daemons = {}
        self.crashed = set()
        self.orphans = set()  # the workers of a crashed daemon (init reaps them)

    def host_config(self, host, redis_port, redis_password):
        directory = self.tmp / host
        directory.mkdir()
        mapping = {
            "host = 0.0.0.0": "host = 127.0.0.1",
            "192.0.2.1": "127.0.0.1",  # HAProxy, as the daemons see it
            "192.0.2.5:6379": "127.0.0.1:%d" % redis_port,
            "198.51.100.0/24": "127.0.0.0/8",
            "/run/msgsrv/msgsrv.pid": str(directory / "msgsrv.pid"),
            "/etc/msgsrv/redis.pass": private_file(self.tmp / "redis.pass", redis_password),
            "/var/lib/msgsrv/keys/clients.keys": self.clients_keys,
            "/var/lib/msgsrv/keys/ops.keys": self.ops_keys,
            "/var/lib/msgsrv/files": str(self.root),
        }
        for port in list(BALANCED.values()) + list(DIRECT.values()):
            mapping["port = %d" % port] = "port = 0"
        path = directory / "server.ini"
        path.write_text(localize(example("msgsrv.ini"), mapping))
        return path

    def haproxy_config(self, proxy, ports):
        mapping = {"192.0.2.1": "127.0.0.1",
                   "/run/haproxy/admin.sock": proxy.stats_path,
                   "/dev/log": str(self.tmp / "haproxy" / "log.sock")}
        for service, port in BALANCED.items():
            bind = "bind %s:%d" % ("127.0.0.1" if service == "status" else "", port)
            mapping[bind] = "bind 127.0.0.1:%d" % ports[service]
            for host, address in HOSTS.items():
                mapping["%s:%d" % (address, port)] = "127.0.0.1:%d" % self.port(host, service)
        return localize(example("haproxy.cfg"), mapping)

    def hosts_file(self):
        mapping = {"%s:%d" % (address, DIRECT["ops"]): "127.0.0.1:%d" % self.port(host, "ops")
                   for host, address in HOSTS.items()}
        path = self.tmp / "hosts.txt"
        path.write_text(localize(example("hosts.txt"), mapping))
        return str(path)

    def crash(self, host):
        """The host dies: SIGKILL to its daemon and its workers at once (frozen first, so
        that none reacts to the others' end).  Returns ``time.monotonic()`` then."""
        self.crashed.add(host)
        proc = self.daemons[host].proc
        proc.send_signal(signal.SIGSTOP)
        self.orphans.update(children(proc.pid))
        for pid in self.orphans:
            kill_quietly(pid, signal.SIGSTOP)
        for pid in [proc.pid] + sorted(self.orphans):
            kill_quietly(pid, signal.SIGKILL)
        proc.wait(5)
        # The listening sockets close with the last thread holding them.
        wait_for(lambda: all(exited(pid) for pid in self.orphans), 5,
                 message="the killed workers to be gone")
        return time.monotonic()

    def port(self, host, service):
        return self.daemons[host].listeners[service][1]

    def served_by(self, service, client_port):
        """The host whose access log has the closed connection from ``client_port``."""
        needle = "close service=%s peer=127.0.0.1:%d " % (service, client_port)
        hosts = wait_for(lambda: [h for h, d in self.daemons.items() if needle in d.log], 5,
                         message="the access log line of %s from port %d"
                         % (service, client_port))
        assert len(hosts) == 1, hosts
        return hosts[0]


@pytest.fixture
def deployment(tmp_path, redis_server, daemon_factory):
    """Redis, then the three daemons, each connected to it; HAProxy is the test's."""
    conf = example("redis.conf")
    password = re.search(r"^requirepass (\S+)$", conf, re.M).group(1)
    redis_server.start(config=os.path.join(EXAMPLES, "redis.conf"))
    deployed = Deployment(tmp_path)
    with on_cpus(WORKERS):
        for host in HOSTS:
            config = deployed.host_config(host, redis_server.port, password + "\n")
            deployed.daemons[host] = daemon_factory(config)
    for daemon in deployed.daemons.values():
        daemon.wait_listening(len(BALANCED) + len(DIRECT))
    for daemon in deployed.daemons.values():  # the chat of every worker has its own link
        wait_for(lambda: daemon.log.count(" connected after ") >= expected_workers(), 10,
                 message="the chat of every worker to connect to redis")
    yield deployed
    for daemon in deployed.daemons.values():  # all at once: each waits for its own clients
        daemon.proc.terminate()
    for host, daemon in deployed.daemons.items():
        assert daemon.stop() == (-9 if host in deployed.crashed else 0), daemon.log
        assert "Traceback" not in daemon.log, daemon.log
    for pid in deployed.orphans:  # killed already, unless the test failed in between
        kill_quietly(pid)


@pytest.fixture
def haproxy(tmp_path, deployment):
    (tmp_path / "haproxy").mkdir()
    proxy = HAProxy(require_program("haproxy"), tmp_path / "haproxy", BALANCED,
                    lambda ports: deployment.haproxy_config(proxy, ports), standalone=True)
    yield proxy.start()
    proxy.stop()


def local_port(client):
    return client.sock.getsockname()[1]


def test_one_session_of_every_service_through_the_reference_deployment(deployment, haproxy):
    # echo
    with EchoClient(*haproxy.address("echo"), timeout=5) as echo:
        assert echo.echo(b"round trip\n") == b"round trip\n"
        echo_port = local_port(echo)
    deployment.served_by("echo", echo_port)

    # chat: two clients open at once land on two daemons (leastconn) and talk via Redis
    alice = ChatClient(*haproxy.address("chat"), "alice", timeout=5, keepalive=None)
    bob = ChatClient(*haproxy.address("chat"), "bob", timeout=5, keepalive=None)
    chat_ports = local_port(alice), local_port(bob)
    with alice, bob:
        alice.join("ops")
        bob.join("ops")
        events_until(alice, is_notice("join", "ops", "bob"))
        assert alice.who("ops") == ["alice", "bob"]
        alice.say("across daemons")
        events_until(bob, lambda e: isinstance(e, Message) and e.text == "across daemons")
        bob.msg("alice", "psst")
        assert events_until(alice, lambda e: isinstance(e, Private))[-1] == \
            Private("bob", "alice", "psst")
    assert len({deployment.served_by("chat", port) for port in chat_ports}) == 2

    # command
    with CommandClient(*haproxy.address("command"), keys_file=deployment.clients_keys) as run:
        result = run.run("echo", "through", "haproxy")
        command_port = local_port(run)
    assert (result.exit_code, result.stdout) == (0, b"through haproxy\n"), result
    deployment.served_by("command", command_port)

    # files: put through one daemon, get through another (the first is held open)
    data = os.urandom(200000)
    with FileClient(*haproxy.address("files"), keys_file=deployment.clients_keys) as putter:
        putter.mkdir("releases")
        putter.put(io.BytesIO(data), "releases/r1.bin")
        with FileClient(*haproxy.address("files"), keys_file=deployment.clients_keys) as getter:
            got = io.BytesIO()
            getter.get("releases/r1.bin", got)
            ports = local_port(putter), local_port(getter)
    assert got.getvalue() == data == (deployment.root / "releases" / "r1.bin").read_bytes()
    assert len({deployment.served_by("files", port) for port in ports}) == 2

    # status
    with StatusClient(*haproxy.address("status"), timeout=5) as status:
        document = status.status()
        status_port = local_port(status)
    assert document["processes"] == len(document["workers"]) == expected_workers()
    services = {s["name"]: s for s in document["services"]}
    assert sorted(services) == sorted(list(BALANCED) + list(DIRECT))
    assert services["echo"]["proxy_protocol"] == "v2" and services["ops"]["proxy_protocol"] == "off"
    assert "proxy_untrusted" in services["echo"]["refused"]
    assert services["status"]["counters"]["proxy_headers"] >= 1
    deployment.served_by("status", status_port)

    # the operator: one command on the three hosts, straight to their ops services
    fanout = subprocess.run(
        [sys.executable, "-m", "msgsrv.client", "run", "--hosts", deployment.hosts_file(),
         "--keys-file", deployment.ops_keys, "-b", "echo", "release", "42"],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT))
    assert fanout.returncode == 0, fanout.stdout + fanout.stderr
    assert "(3)\n---------------\nrelease 42\n" in fanout.stdout, fanout.stdout
    assert "3 hosts: 3 ok" in fanout.stderr, fanout.stderr

    # a planned stop: drained in HAProxy first, then stopped; no new connection is lost
    for backend in BALANCED:
        assert haproxy.command("set server %s/host2 state drain" % backend).strip() == ""
    assert deployment.daemons["host2"].stop() == 0
    assert served_echoes(deployment, haproxy, 6) == {"host1", "host3"}
    assert int(haproxy.server_stats("echo", "host2")["wredis"]) == 0  # none was sent there

    # a crash: no new connection is lost either, and HAProxy takes the host out within 4 s
    crashed = deployment.crash("host3")
    assert served_echoes(deployment, haproxy, 6) == {"host1"}
    assert int(haproxy.server_stats("echo", "host3")["wredis"]) >= 1  # sent there, then not
    haproxy.wait_status("echo", "host3", "DOWN", "L4CON")
    assert time.monotonic() - crashed < 2 * 2 + 1.5  # fall 2, inter 2s; refused at once


def served_echoes(deployment, haproxy, count):
    """Run ``count`` echo sessions through HAProxy, one after the other; the hosts that
    served them."""
    ports = []
    for _ in range(count):
        with EchoClient(*haproxy.address("echo"), timeout=5) as echo:
            assert echo.echo(b"still served\n") == b"still served\n"
            ports.append(local_port(echo))
    return {deployment.served_by("echo", port) for port in ports}
