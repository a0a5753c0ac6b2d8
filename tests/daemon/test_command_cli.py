"""The command-line side: run / commands / keygen, the shipped config, the daemon end to end."""

import dataclasses
import os
import stat
import subprocess
import sys
from types import MappingProxyType

import pytest

from msgsrv.wire import auth
from msgsrv.ops import config
from msgsrv.client import Result
from msgsrv.cli.client import main
from msgsrv.net.server import make_server
from tests.conftest import ROOT
from tests.service.test_command import client, command_service, keys_file  # noqa: F401 (fixtures)

pytestmark = pytest.mark.timeout(60)


def cli(*args, env=None):
    """``python -m msgsrv.client ARGS`` as a subprocess with pipes."""
    return subprocess.Popen([sys.executable, "-m", "msgsrv.client"] + list(args), cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, **(env or {})))


def address(server):
    return "127.0.0.1:%d" % server.port


# --- run ------------------------------------------------------------------------

def test_cli_run_streams_output_and_exits_with_the_remote_code(command_service, keys_file,
                                                               tmp_path):
    flag = tmp_path / "flag"  # in a directory only root may enter
    server = command_service(user="", run_as_root="yes", **{
        "command.block": "sh -c 'echo go; echo warn >&2; while [ ! -e %s ]; do sleep 0.02; "
                         "done; echo end; exit 3'" % flag})
    proc = cli("run", "--key", "alice", "--keys-file", keys_file, address(server), "block")
    try:
        assert proc.stdout.readline() == b"go\n"
        assert proc.stderr.readline() == b"warn\n"
        assert proc.poll() is None  # the output came while the command was still running
        flag.write_text("")
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert (proc.returncode, out, err) == (3, b"end\n", b"")


def test_cli_run_passes_arguments_after_the_name_untouched(command_service, keys_file):
    server = command_service(**{"command.args": "printf '[%s]' {words*}",
                                "pattern.args": ".{0,50}"})
    proc = cli("run", "--keys-file", keys_file, address(server), "args", "-n", "--key", "$x",
               env={"MSGSRV_KEY": "alice"})
    out, err = proc.communicate(timeout=20)
    assert (proc.returncode, out, err) == (0, b"[-n][--key][$x]", b"")


def test_cli_run_reports_timeouts_and_truncation(command_service, keys_file, capsys,
                                                 monkeypatch):
    monkeypatch.setenv("MSGSRV_KEY", "alice")
    server = command_service(timeout=0.3, max_output=3, **{
        "command.slow": "sh -c 'echo 12345; sleep 10'"})
    status = main(["run", "--keys-file", keys_file, address(server), "slow"])
    out, err = capsys.readouterr()
    assert status == 124 and out == "123"
    assert "remote command timed out (killed by SIGTERM)" in err
    assert "remote command stdout truncated by the server" in err


def test_cli_run_feeds_stdin_and_reports_refusals(command_service, keys_file):
    server = command_service(**{"command.cat": "cat", "limits.cat": "max_stdin=64"})
    proc = cli("run", "--stdin", "--keys-file", keys_file, "--key", "alice", address(server),
               "cat")
    out, err = proc.communicate(b"from stdin", timeout=20)
    assert (proc.returncode, out) == (0, b"from stdin")
    proc = cli("run", "--stdin", "--keys-file", keys_file, "--key", "alice", address(server),
               "cat")
    out, err = proc.communicate(b"x" * (1024 * 1024 + 1), timeout=20)
    assert proc.returncode == 1 and b"standard input is over 1048576 bytes" in err
    proc = cli("run", "--keys-file", keys_file, "--key", "alice", address(server), "rm", "-rf")
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 1 and out == b""
    assert err == b"msgsrv.client: unknown-command: no command named 'rm'\n"


def test_cli_run_any_runs_an_argv_where_allowed(command_service, keys_file, capsys,
                                                monkeypatch):
    monkeypatch.setenv("MSGSRV_KEY", "alice")
    server = command_service(allow_any="yes")
    assert main(["run", "--any", "--keys-file", keys_file, address(server), "sh", "-c",
                 "kill -9 $$"]) == 128 + 9
    assert "killed by SIGKILL" in capsys.readouterr().err
    proc = cli("run", "--any", "--stdin", "--keys-file", keys_file, address(server), "cat")
    out, err = proc.communicate(b"x", timeout=20)
    assert proc.returncode == 1 and b"too-large" in err  # max_stdin is 0


def test_cli_commands_lists_usage_and_descriptions(command_service, keys_file, capsys,
                                                   monkeypatch):
    monkeypatch.setenv("MSGSRV_KEY", "alice")
    server = command_service(**{"command.df": "df -h", "describe.df": "Disk space.",
                                "command.echo": "echo {words*}", "describe.echo": "Say it.",
                                "command.t": "true", "command.bob": "true", "keys.bob": "bob"})
    assert main(["commands", "--keys-file", keys_file, address(server)]) == 0
    assert capsys.readouterr().out == ("df               Disk space.\n"
                                       "echo [WORDS...]  Say it.\n"
                                       "t\n")


def test_result_status_follows_shell_conventions():
    def result(**fields):
        base = dict(exit_code=None, stdout=b"", stderr=b"", duration=0.0, truncated=(),
                    timed_out=False, signal=None)
        base.update(fields)
        return Result(**base)
    assert result(exit_code=0).status == 0 and result(exit_code=0).ok
    assert result(exit_code=5).status == 5
    assert result(signal="SIGKILL", timed_out=True).status == 124
    assert result(signal="SIGTERM").status == 143
    assert result(signal="SIG200").status == 255


# --- keygen ---------------------------------------------------------------------

def test_keygen_prints_a_key_line(capsys):
    assert main(["keygen", "carol"]) == 0
    name, secret = capsys.readouterr().out.split()
    assert name == "carol" and len(secret) >= auth.MIN_SECRET_LENGTH


def test_keygen_creates_then_appends_to_a_private_keys_file(tmp_path, capsys):
    path = tmp_path / "new" / "dir" / "keys"
    assert main(["keygen", "carol", "--keys-file", str(path)]) == 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    carol = capsys.readouterr().out.split()[1]
    with open(path, "a") as keys:
        keys.write("# no newline at the end")
    assert main(["keygen", "dave", "--keys-file", str(path)]) == 0
    dave = capsys.readouterr().out.split()[1]
    assert auth.load_keys(str(path)) == {"carol": carol.encode(), "dave": dave.encode()}
    assert main(["keygen", "dave", "--keys-file", str(path)]) == 1
    assert "already has a key named 'dave'" in capsys.readouterr().err


def test_keygen_refuses_a_loose_file_and_bad_names(keys_file, capsys):
    os.chmod(keys_file, 0o644)
    assert main(["keygen", "carol", "--keys-file", keys_file]) == 1
    assert "chmod 600" in capsys.readouterr().err
    assert main(["keygen", "no spaces"]) == 1
    assert "key name must match" in capsys.readouterr().err


# --- the shipped config and the daemon --------------------------------------------

def test_shipped_config_commands_run(tmp_path):
    shipped = config.load(os.path.join(ROOT, "conf", "server.ini"))
    service = [s for s in shipped.services if s["handler"] == "command"][0]
    assert service["port"] == 9002 and service["host"] == "127.0.0.1"
    options = dict(service.options, port=0, keys_file=str(tmp_path / "keys"))
    server = make_server(dataclasses.replace(service, options=MappingProxyType(options)))
    server.serve_in_thread()
    try:
        with client(server, "admin", auth.load_keys(str(tmp_path / "keys"))["admin"]) as c:
            assert {e["name"] for e in c.list()} >= {"uptime", "df", "echo"}
            assert b"load average" in c.run("uptime").stdout
            assert c.run("echo", "hello", "world").stdout == b"hello world\n"
            assert c.run("df").exit_code is not None
    finally:
        server.stop(2)


def test_daemon_creates_the_keys_file_and_the_cli_runs_end_to_end(tmp_path, daemon_factory):
    keys = tmp_path / "var" / "keys" / "msgsrv.keys"
    ini = tmp_path / "server.ini"
    ini.write_text("[service:command]\nhandler = command\nport = 0\nkeys_file = %s\n"
                   "user = nobody\ncommand.uptime = uptime\n" % keys)
    daemon = daemon_factory(ini)
    host, port = daemon.wait_listening(1)["command"]
    assert "created keys file %s with key 'admin'" % keys in daemon.log
    assert stat.S_IMODE(os.stat(keys).st_mode) == 0o600
    proc = cli("run", "%s:%d" % (host, port), "uptime", env={"MSGSRV_KEYS_FILE": str(keys)})
    out, err = proc.communicate(timeout=20)
    assert (proc.returncode, err) == (0, b"") and b"load average" in out
    assert daemon.stop() == 0
    assert "run service=command key=admin" in daemon.log


def test_cli_names_its_own_options_for_missing_or_ambiguous_keys(command_service, keys_file,
                                                                 start_service, capsys,
                                                                 monkeypatch):
    for name in ("MSGSRV_KEY", "MSGSRV_KEYS_FILE", "MSGSRV_SECRET"):
        monkeypatch.delenv(name, raising=False)
    server = command_service(**{"command.t": "true"})
    out, err = cli("run", address(server), "t").communicate(timeout=20)
    assert err.decode() == ("msgsrv.client: auth-failed: %s needs a key: give --key and "
                            "--keys-file (or MSGSRV_KEY and MSGSRV_KEYS_FILE)\n" % address(server))
    out, err = cli("run", "--keys-file", keys_file, address(server), "t").communicate(timeout=20)
    assert err.decode() == ("msgsrv.client: the keys file %s holds several keys (alice, bob): "
                            "choose one with --key (or MSGSRV_KEY)\n" % keys_file)
    status = start_service("status")
    assert main(["run", "--key", "bob", "--keys-file", keys_file, address(status), "t"]) == 1
    assert capsys.readouterr().err == (
        "msgsrv.client: %s does not authenticate clients (its hello offers no auth scheme): "
        "is it a status service?\n" % address(status))
