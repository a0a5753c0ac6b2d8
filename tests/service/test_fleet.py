"""One request on many daemons: msgsrv.client.fleet and run/put/status --hosts."""

import hashlib
import io
import os
import socket
import subprocess
import sys
import threading

import pytest

from msgsrv.cli.client import main
from msgsrv.cli.fanout import FleetOutput, gathered, tally
from msgsrv.client.fleet import Fleet, Host, HostResult, hosts_from_spec, parse_hosts
from msgsrv.wire.errors import ConfigError
from tests.conftest import ROOT, wait_for
from tests.service.test_command import command_service, keys_file  # noqa: F401 (fixtures)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def commands(command_service):
    """commands(**templates) -> a running command service; commands may run 20 s."""
    return lambda **options: command_service(**dict({"timeout": 20}, **options))


def stopped_port():
    """A loopback port nobody listens on: connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def label(server):
    return "127.0.0.1:%d" % server.port


@pytest.fixture
def five(commands):
    """Two hosts that agree, one that exits 3, one whose command hangs, one stopped."""
    same = {"command.job": "sh -c 'echo same; echo note >&2'"}
    servers = [commands(**same), commands(**same),
               commands(**{"command.job": "sh -c 'echo other; exit 3'"}),
               commands(**{"command.job": "sh -c 'echo started; exec sleep 30'"})]
    return [label(s) for s in servers] + ["127.0.0.1:%d" % stopped_port()]


# -- host lists --------------------------------------------------------------------

def test_hosts_file_lines_comments_ipv6_and_keys():
    hosts = parse_hosts("# the web tier\n\nweb1.example.org:9002\n"
                        "[2001:db8::1]:9002   bob  # a key of its own\n10.0.0.5:1\n")
    assert hosts == [Host("web1.example.org", 9002), Host("2001:db8::1", 9002, "bob"),
                     Host("10.0.0.5", 1)]
    assert [h.label for h in hosts] == ["web1.example.org:9002", "[2001:db8::1]:9002",
                                        "10.0.0.5:1"]


@pytest.mark.parametrize("text, rule", [
    ("2001:db8::1:9002", "put an IPv6 address in brackets"),
    ("[10.0.0.1]:9002", "only IPv6 addresses go in brackets"),
    ("web1:0", "the port must be 1..65535"),
    ("web1:http", "the port must be 1..65535"),
    ("web1", "is not HOST:PORT"),
    ("bad/name:1", "is not a host name"),
    ("a:1 key extra", "expected HOST:PORT [KEY]"),
    ("a:1\n# again\na:1", "a:1 is already listed on line 1"),
    ("# nothing\n", "lists no host"),
])
def test_hosts_file_errors_name_the_line_and_the_rule(text, rule):
    with pytest.raises(ConfigError, match="^hosts") as info:
        parse_hosts(text, "hosts")
    assert rule in str(info.value)
    if "\n" in text.strip() and "listed" in rule:
        assert str(info.value).startswith("hosts:3: ")


def test_hosts_spec_is_a_file_or_a_list(tmp_path):
    listing = tmp_path / "hosts"
    listing.write_text("a:1\nb:2 bob\n")
    assert hosts_from_spec(str(listing)) == [Host("a", 1), Host("b", 2, "bob")]
    assert hosts_from_spec("a:1,[::1]:2") == [Host("a", 1), Host("::1", 2)]


# -- output shapes, without sockets ------------------------------------------------

def test_gathering_groups_identical_outputs_in_host_order():
    results = [HostResult("a:1", True, 0, ("x", "y")), HostResult("b:1", True, 0, ("z",)),
               HostResult("c:1", True, 0, ("x", "y")), HostResult("d:1", False, error="timeout")]
    assert gathered(results) == ["-" * 15, "a:1,c:1 (2)", "-" * 15, "x", "y",
                                 "-" * 15, "b:1 (1)", "-" * 15, "z"]
    assert tally(results) == "3 ok, 1 timeout"


def test_summary_names_each_failure_and_sets_the_exit_status():
    out, err = io.StringIO(), io.StringIO()
    shown = FleetOutput(False, out, err)
    ok = HostResult("a:1", True, 0, ("x",))
    assert shown.summary([ok]) == 0
    assert err.getvalue() == "msgsrv.client: 1 host: 1 ok\n"
    assert shown.summary([ok, HostResult("b:1", False, 2), HostResult(
        "c:1", False, error="unreachable", message="refused")]) == 1
    assert err.getvalue().splitlines()[1:] == [
        "msgsrv.client: b:1: exit 2", "msgsrv.client: c:1: unreachable: refused",
        "msgsrv.client: 3 hosts: 1 ok, 1 exit 2, 1 unreachable"]


# -- the library -------------------------------------------------------------------

def test_run_says_which_host_did_what(five, keys_file):
    fleet = Fleet(five, key_name="alice", keys_file=keys_file, timeout=1.5, fanout=5)
    results = fleet.run("job")
    assert [r.host for r in results] == five  # in the order given
    same, same2, other, hung, stopped = results
    assert (same.ok, same.exit_code, same.output, same.stderr, same.error) == (
        True, 0, ("same",), ("note",), None)
    assert same2.output == same.output and same2.ok
    assert (other.ok, other.exit_code, other.output, other.error) == (False, 3, ("other",), None)
    assert (hung.ok, hung.error, hung.exit_code) == (False, "timeout", None)
    assert hung.output == ("started",)  # what came before the deadline is kept
    assert hung.message == "no result within 1.5 s" and 1.4 < hung.duration < 3
    assert (stopped.ok, stopped.error) == (False, "unreachable")
    assert "Connection refused" in stopped.message


def test_a_host_that_never_greets_times_out_within_the_connect_timeout(keys_file):
    with socket.socket() as silent:  # the kernel accepts; nobody ever answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        result, = Fleet(["127.0.0.1:%d" % silent.getsockname()[1]], key_name="alice",
                        keys_file=keys_file, connect_timeout=0.3, timeout=10).run("job")
    assert (result.ok, result.error) == (False, "timeout") and result.duration < 2
    assert "sent nothing within 0.3 s" in result.message


def test_the_servers_own_timeout_is_a_timeout_too(commands, keys_file):
    server = commands(timeout=0.3, **{"command.job": "sleep 10"})
    result, = Fleet([label(server)], key_name="alice", keys_file=keys_file).run("job")
    assert (result.ok, result.exit_code, result.error) == (False, 124, "timeout")
    assert "timed out on the server" in result.message


def test_output_past_max_output_is_dropped_and_said(commands, keys_file):
    server = commands(**{"command.job": "sh -c 'echo 0123456789; echo abcdefghij'"})
    result, = Fleet([label(server)], key_name="alice", keys_file=keys_file,
                    max_output=15).run("job")
    assert result.ok and result.output == ("0123456789", "abcd")
    assert result.message == "output over 15 bytes: the rest was dropped"


def test_credentials_per_host_from_the_keys_file(commands, keys_file, tmp_path, monkeypatch):
    for name in ("MSGSRV_KEY", "MSGSRV_KEYS_FILE", "MSGSRV_SECRET"):
        monkeypatch.delenv(name, raising=False)
    bob_only = {"command.job": "echo yes", "keys.job": "bob"}
    servers = [commands(**bob_only) for _ in range(4)]
    hosts = tmp_path / "hosts"
    hosts.write_text("%s bob\n%s\n%s nobody\n%s alice\n" % tuple(label(s) for s in servers))
    results = Fleet(hosts_from_spec(str(hosts)), key_name="alice", keys_file=keys_file).run("job")
    assert [(r.ok, r.error) for r in results] == [
        (True, None), (False, "refused"), (False, "auth"), (False, "refused")]
    assert "denied" in results[1].message
    assert "has no key named 'nobody'" in results[2].message
    no_key, = Fleet([label(servers[0])], keys_file=None, secret=None).run("job")
    assert no_key.error == "auth"


def test_at_most_fanout_hosts_at_once(commands, keys_file):
    servers = [commands(**{"command.job": "echo x"}) for _ in range(5)]
    active, peak, lock = [0], [0], threading.Lock()

    def start(client):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            yield from client.run_stream("job")
        finally:
            with lock:
                active[0] -= 1

    fleet = Fleet([label(s) for s in servers], key_name="alice", keys_file=keys_file, fanout=2)
    assert all(r.ok for r in fleet.each(start))
    assert peak[0] == 2
    assert not [t for t in threading.enumerate() if t.name.startswith("fleet-")]


@pytest.fixture
def file_hosts(start_service, keys_file, tmp_path):
    """Three file services, each with a root of its own."""
    roots = [tmp_path / ("root%d" % n) for n in range(3)]
    servers = []
    for root in roots:
        root.mkdir()
        servers.append(start_service("file", keys_file=keys_file, root=str(root),
                                     auth_timeout=5))
    return [label(s) for s in servers], roots


def test_put_to_three_hosts_each_verified(file_hosts, keys_file, tmp_path):
    hosts, roots = file_hosts
    data = os.urandom(300_000)
    local = tmp_path / "app.tar.gz"
    local.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    fleet = Fleet(hosts, key_name="alice", keys_file=keys_file)
    results = fleet.put(str(local), "app.tar.gz")
    assert [(r.ok, r.exit_code, r.value.sha256) for r in results] == [(True, 0, digest)] * 3
    assert results[0].output == ("app.tar.gz: 300000 bytes, sha256 %s" % digest,)
    assert all((root / "app.tar.gz").read_bytes() == data for root in roots)
    again = fleet.put(str(local), "app.tar.gz")  # no overwrite: each host refuses
    assert [(r.ok, r.error) for r in again] == [(False, "refused")] * 3
    assert "exists" in again[0].message


# -- the command line --------------------------------------------------------------

def test_cli_run_prefixes_each_line_and_sums_up(five, keys_file, capsys):
    status = main(["run", "--hosts", ",".join(five), "--key", "alice", "--keys-file", keys_file,
                   "--timeout", "1.5", "job"])
    out, err = capsys.readouterr()
    assert status == 1
    assert sorted(out.splitlines()) == sorted(["%s: same" % five[0], "%s: same" % five[1],
                                               "%s: other" % five[2], "%s: started" % five[3]])
    summary = err.splitlines()
    assert "%s: note" % five[0] in summary
    assert summary[-4:] == [
        "msgsrv.client: %s: exit 3" % five[2],
        "msgsrv.client: %s: timeout: no result within 1.5 s" % five[3],
        "msgsrv.client: %s: unreachable: cannot connect to %s: Connection refused"
        % (five[4], five[4]),
        "msgsrv.client: 5 hosts: 2 ok, 1 exit 3, 1 timeout, 1 unreachable"]


def test_cli_run_gathers_identical_outputs(five, keys_file, capsys, tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("".join(h + "\n" for h in five[:3]))
    status = main(["run", "--hosts", str(hosts), "-b", "--key", "alice", "--keys-file",
                   keys_file, "job"])
    out, err = capsys.readouterr()
    assert status == 1
    assert out.splitlines() == ["-" * 15, "%s,%s (2)" % (five[0], five[1]), "-" * 15, "same",
                                "-" * 15, "%s (1)" % five[2], "-" * 15, "other"]
    assert err.splitlines()[-1] == "msgsrv.client: 3 hosts: 2 ok, 1 exit 3"


def test_cli_run_exits_0_when_every_host_succeeds_and_passes_arguments(commands, keys_file,
                                                                       capsys):
    args = {"command.args": "printf '[%s]\\n' {words*}", "pattern.args": ".{0,50}"}
    servers = [commands(**args), commands(**args)]
    status = main(["run", "--hosts", ",".join(label(s) for s in servers), "--key", "alice",
                   "--keys-file", keys_file, "-b", "args", "-n", "--key"])
    out, err = capsys.readouterr()
    assert status == 0
    assert out.splitlines()[1:] == ["%s,%s (2)" % (label(servers[0]), label(servers[1])),
                                    "-" * 15, "[-n]", "[--key]"]
    assert err == "msgsrv.client: 2 hosts: 2 ok\n"
    assert main(["run", "args"]) == 2  # neither HOST:PORT nor --hosts
    assert "give HOST:PORT or --hosts" in capsys.readouterr().err


def test_cli_put_and_status_on_hosts(file_hosts, keys_file, tmp_path, capsys, start_service):
    hosts, roots = file_hosts
    local = tmp_path / "conf.ini"
    local.write_bytes(b"[x]\n")
    digest = hashlib.sha256(b"[x]\n").hexdigest()
    assert main(["put", "--hosts", ",".join(hosts), "-b", "--key", "alice", "--keys-file",
                 keys_file, str(local), "etc/conf.ini"]) == 1  # no directory etc/ yet
    assert capsys.readouterr().err.splitlines()[-1] == "msgsrv.client: 3 hosts: 3 refused"
    assert main(["put", "--hosts", ",".join(hosts), "-b", "--key", "alice", "--keys-file",
                 keys_file, str(local)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[1:] == ["%s (3)" % ",".join(hosts), "-" * 15,
                                    "conf.ini: 4 bytes, sha256 %s" % digest]
    assert all((root / "conf.ini").read_bytes() == b"[x]\n" for root in roots)
    status = start_service("status")
    down = "127.0.0.1:%d" % stopped_port()
    assert main(["status", "--hosts", "%s,%s" % (label(status), down)]) == 1
    out, err = capsys.readouterr()
    assert out and all(line.startswith(label(status) + ": ") for line in out.splitlines())
    assert err.splitlines()[-1] == "msgsrv.client: 2 hosts: 1 ok, 1 unreachable"


def test_cli_end_to_end_against_a_daemon(tmp_path, keys_file, daemon_factory, commands):
    ini = tmp_path / "server.ini"
    ini.write_text("[service:command]\nhandler = command\nport = 0\nkeys_file = %s\n"
                   "user = nobody\ncommand.job = echo from-daemon\n" % keys_file)
    daemon = daemon_factory(ini)
    host, port = daemon.wait_listening(1)["command"]
    other = commands(**{"command.job": "echo from-daemon"})
    proc = subprocess.run(
        [sys.executable, "-m", "msgsrv.client", "run", "--hosts",
         "%s:%d,%s" % (host, port, label(other)), "-b", "--key", "bob", "job"],
        cwd=ROOT, capture_output=True, text=True, timeout=20,
        env=dict(os.environ, MSGSRV_KEYS_FILE=keys_file))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1:] == ["%s:%d,%s (2)" % (host, port, label(other)),
                                            "-" * 15, "from-daemon"]
    wait_for(lambda: "run service=command key=bob" in daemon.log, message="the audit line")
