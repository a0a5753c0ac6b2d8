"""The command service over real sockets, with real child processes."""

import logging
import os
import pwd
import shutil
import socket
import struct
import time

import pytest

from msgsrv.client import CommandClient
from msgsrv.wire.errors import AuthError, ConfigError, ConnectionFailed, ServerError
from msgsrv.services.command.handler import CODES, CommandHandler
from msgsrv.net.server import make_server
from tests.conftest import ROOT, recv_until_closed, service_config, wait_for
from tests.processes import alive
from tests.service.test_authed import SECRET as AUTHED_SECRET
from tests.service.test_authed import test_replayed_proof_is_refused as replayed_proof_is_refused

pytestmark = pytest.mark.timeout(30)

SECRET = AUTHED_SECRET
BOB_SECRET = "b" * 20


@pytest.fixture
def keys_file(tmp_path):
    path = tmp_path / "keys"
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, ("alice %s\nbob %s\n" % (SECRET, BOB_SECRET)).encode())
    os.close(fd)
    return str(path)


@pytest.fixture
def command_service(start_service, keys_file):
    """start(**options): a command service with fast test limits; templates as options."""
    def start(**options):
        settings = {"keys_file": keys_file, "timeout": 5, "kill_grace": 0.2, "auth_timeout": 2,
                    "user": "nobody"}
        settings.update(options)
        return start_service("command", **settings)
    return start


def client(server, key="alice", secret=SECRET, timeout=5):
    return CommandClient("127.0.0.1", server.port, key, secret, timeout=timeout)


def refused(code, call, *args, **kwargs):
    with pytest.raises(ServerError) as info:
        call(*args, **kwargs)
    assert info.value.code == code, info.value
    return info.value.message


def first_chunk(items):
    kind, data = next(items)
    assert kind == "stdout", (kind, data)
    return data


# --- what runs and what does not ----------------------------------------------

def test_allowed_command_returns_exit_code_stdout_and_stderr(command_service, caplog):
    server = command_service(**{"command.mix": "sh -c 'echo out; echo err >&2; exit 3'"})
    with caplog.at_level(logging.INFO, "msgsrv.command"), client(server) as c:
        result = c.run("mix")
    assert (result.exit_code, result.stdout, result.stderr) == (3, b"out\n", b"err\n")
    assert result.signal is None and not result.timed_out and result.truncated == ()
    assert 0 < result.duration < 5 and not result.ok
    audit = [r.getMessage() for r in caplog.records if r.getMessage().startswith("run ")]
    assert len(audit) == 1
    assert audit[0].startswith("run service=svc key=alice peer=127.0.0.1:")
    assert (' command=mix argv=["%s","-c","echo out; echo err >&2; exit 3"] exit=3 signal=- '
            % shutil.which("sh")) in audit[0]
    assert audit[0].endswith("stdout=4 stderr=4 truncated=- timed_out=no end=exited")
    assert server.counters.snapshot()["runs"] == 1


def test_disallowed_names_are_refused_and_the_connection_stays_usable(command_service, caplog):
    server = command_service(**{"command.date": "date +%s", "command.secret": "echo hidden",
                                "keys.secret": "bob"})
    with caplog.at_level(logging.WARNING, "msgsrv.command"), client(server) as c:
        assert "no command named 'rm'" in refused("unknown-command", c.run, "rm", "-rf", "/")
        assert "alice may not run secret" in refused("denied", c.run, "secret")
        assert [entry["name"] for entry in c.list()] == ["date"]
        assert c.run("date").exit_code == 0
    with client(server, "bob", BOB_SECRET) as c:
        assert c.run("secret").stdout == b"hidden\n"
        assert [entry["name"] for entry in c.list()] == ["date", "secret"]
    assert 'refused service=svc key=alice peer=127.0.0.1:' in caplog.text
    assert 'command="rm" code=unknown-command' in caplog.text
    assert server.counters.snapshot()["runs_refused"] == 2


def test_argument_patterns_are_enforced(command_service):
    server = command_service(**{"command.greet": "echo hello {name}",
                                "command.tail": "tail -n {lines} /etc/hostname",
                                "pattern.tail.lines": "[0-9]{1,3}"})
    with client(server) as c:
        assert c.run("greet", "world").stdout == b"hello world\n"
        refused("bad-args", c.run, "greet", "-n")
        refused("bad-args", c.run, "greet", "a", "b")
        refused("bad-args", c.run, "greet")
        assert "must match [0-9]{1,3}" in refused("bad-args", c.run, "tail", "1; id")
        assert c.run("tail", "1").exit_code == 0


def test_shell_metacharacters_are_passed_literally(command_service, tmp_path):
    (tmp_path / "existing-file").write_text("x")
    server = command_service(**{"command.args": "printf '%s\\n' {words*}",
                                "pattern.args": ".{0,200}",
                                "limits.args": "workdir=%s" % tmp_path})
    words = ["; touch %s/pwned" % tmp_path, "$(touch pwned2)", "`touch pwned3`", "*",
             "a | tee pwned4", "x && y", "> pwned5", "'single'", '"double"', "$HOME", "~",
             "two words", "\\n", "-n"]
    with client(server) as c:
        result = c.run("args", *words)
    assert result.exit_code == 0
    assert result.stdout.decode().split("\n")[:-1] == words
    assert sorted(os.listdir(tmp_path)) == ["existing-file", "keys"]


def test_a_request_with_a_bad_type_or_shape_is_refused(command_service):
    server = command_service(**{"command.t": "true"})
    with client(server) as c:
        refused("bad-request", c.request, {"type": "delete"})
        refused("bad-request", c.request, {"type": "run"})
        refused("bad-args", c.request, {"type": "run", "command": "t", "args": "x"})
        refused("denied", c.request, {"type": "run", "argv": ["true"]})
        assert c.run("t").ok


# --- authentication -------------------------------------------------------------

def test_wrong_secret_is_refused_and_logged(command_service, caplog):
    server = command_service(**{"command.t": "true"})
    with caplog.at_level(logging.WARNING, "msgsrv.auth"), pytest.raises(AuthError):
        client(server, secret="wrong-wrong-wrong-wrong")
    assert "failed authentication from 127.0.0.1" in caplog.text and "'alice'" in caplog.text
    assert server.counters.snapshot()["auth_failures"] == 1


def test_replayed_auth_response_is_refused(command_service):
    # The shared handshake check, run against this service (same key and secret).
    replayed_proof_is_refused(command_service(**{"command.t": "true"}))


def test_client_without_credentials_is_stopped_early(command_service, monkeypatch):
    for name in ("MSGSRV_KEY", "MSGSRV_SECRET", "MSGSRV_KEYS_FILE"):
        monkeypatch.delenv(name, raising=False)
    server = command_service(**{"command.t": "true"})
    with pytest.raises(AuthError, match="needs a key"):
        CommandClient("127.0.0.1", server.port)


def test_keys_file_with_loose_permissions_refuses_start(keys_file):
    os.chmod(keys_file, 0o640)
    with pytest.raises(ConfigError, match=r"\[service:svc\] keys_file.*chmod 600"):
        make_server(service_config("command", keys_file=keys_file, user="nobody",
                                   **{"command.t": "true"}))


# --- who commands run as ------------------------------------------------------------

def test_commands_never_run_as_root_by_accident(keys_file, monkeypatch):
    monkeypatch.setattr("msgsrv.ops.privileges.os.geteuid", lambda: 0)
    with pytest.raises(ConfigError, match=r"^\[service:svc\] commands would run as root "
                                          r"\(uid 0\): set user = NAME in \[service:svc\]"):
        make_server(service_config("command", keys_file=keys_file, **{"command.t": "true"}))
    with pytest.raises(ConfigError, match=r"^\[service:svc\] user 'no-such-user-here' does"):
        make_server(service_config("command", keys_file=keys_file, user="no-such-user-here",
                                   **{"command.t": "true"}))


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_commands_run_as_the_configured_user_or_as_root_when_allowed(command_service, caplog):
    nobody = pwd.getpwnam("nobody")
    ids = {"command.uid": "id -u", "command.groups": "id -G"}
    with caplog.at_level(logging.INFO, "msgsrv.command"):
        server = command_service(**ids)
    assert "svc: commands run as uid=%d (nobody)" % nobody.pw_uid in caplog.text
    with client(server) as c:
        assert c.run("uid").stdout == b"%d\n" % nobody.pw_uid
        groups = sorted(int(g) for g in c.run("groups").stdout.split())
    assert groups == sorted(set(os.getgrouplist("nobody", nobody.pw_gid)))
    # A reload that would make them root is refused; the service keeps its user.
    with pytest.raises(ConfigError, match="commands would run as root"):
        server.reconfigure(service_config("command", keys_file=server.config["keys_file"], **ids))
    with client(server) as c:
        assert c.run("uid").stdout == b"%d\n" % nobody.pw_uid
    with caplog.at_level(logging.WARNING, "msgsrv.command"):
        root = command_service(user="", run_as_root="yes", **ids)
    assert "svc: run_as_root = yes: commands run as root" in caplog.text
    with client(root) as c:
        assert c.run("uid").stdout == b"0\n"


# --- limits -----------------------------------------------------------------------

def test_timeout_kills_a_child_that_ignores_sigterm(command_service, caplog):
    server = command_service(timeout=0.5, **{
        "command.stubborn": "sh -c \"(trap '' TERM; exec sleep 30) & echo $!; wait\""})
    with caplog.at_level(logging.INFO, "msgsrv.command"), client(server) as c:
        result = c.run("stubborn")
    child = int(result.stdout)
    assert result.timed_out and result.exit_code is None and result.signal == "SIGTERM"
    assert 0.5 <= result.duration < 3
    wait_for(lambda: not alive(child), 5, message="the TERM-proof child to be killed")
    assert server.counters.snapshot()["timeouts"] == 1
    assert "timed_out=yes" in caplog.text


def test_output_over_the_cap_is_truncated_and_flagged(command_service):
    server = command_service(max_output="1K", **{
        "command.big": "sh -c 'head -c 5000 /dev/zero; head -c 3000 /dev/zero >&2; echo done >&2'",
        "command.small": "echo fits", "limits.small": "max_output=5"})
    with client(server) as c:
        result = c.run("big")
        assert result.exit_code == 0 and result.truncated == ("stdout", "stderr")
        assert result.stdout == b"\0" * 1024 and result.stderr == b"\0" * 1024
        small = c.run("small")
    assert small.stdout == b"fits\n" and small.truncated == ()
    assert server.counters.snapshot()["truncations"] == 1


def test_client_disconnect_kills_the_run(command_service, caplog):
    server = command_service(max_concurrent=1, timeout=60, **{
        "command.hang": "sh -c 'sleep 30 & echo $!; wait'", "command.t": "true"})
    with caplog.at_level(logging.INFO, "msgsrv.command"):
        with client(server) as c:
            items = c.run_stream("hang")
            child = int(first_chunk(items))
            assert alive(child)
            items.close()  # leaving the loop early closes the connection
            assert c.sock is None
        wait_for(lambda: not alive(child), 2, message="the run to be killed")
        wait_for(lambda: "end=disconnected" in caplog.text, 2, message="the audit line")
    with client(server) as c:  # the slot was given back
        assert c.run("t").ok


def test_concurrent_runs_over_the_limit_are_refused(no_thread_leak, command_service, tmp_path):
    flag = tmp_path / "flag"  # in a directory only root may enter
    server = command_service(max_concurrent=1, user="", run_as_root="yes", **{
        "command.block": "sh -c 'echo go; while [ ! -e %s ]; do sleep 0.02; done'" % flag})
    with client(server) as first, client(server) as second:
        items = first.run_stream("block")
        assert first_chunk(items) == b"go\n"
        message = refused("busy", second.run, "block")
        assert "max_concurrent" in message
        flag.write_text("")
        assert [kind for kind, _ in items] == ["exit"]
        assert second.run("block").ok
    assert server.counters.snapshot()["runs_refused"] == 1


def test_environment_does_not_leak_daemon_variables(command_service, monkeypatch):
    monkeypatch.setenv("MSGSRV_TEST_LEAK", "leaked")
    monkeypatch.setenv("MSGSRV_TEST_PASS", "passed")
    server = command_service(passenv="MSGSRV_TEST_PASS", path="/usr/bin:/bin",
                             **{"command.env": "env", "env.TZ": "UTC"})
    with client(server) as c:
        lines = c.run("env").stdout.decode().splitlines()
    assert sorted(lines) == ["LANG=C.UTF-8", "MSGSRV_TEST_PASS=passed", "PATH=/usr/bin:/bin",
                             "TZ=UTC"]


def test_stdin_comes_from_the_request_body_within_max_stdin(command_service):
    server = command_service(**{"command.cat": "cat", "limits.cat": "max_stdin=1K",
                                "command.t": "true"})
    with client(server) as c:
        assert c.run("cat", stdin=b"hello\n").stdout == b"hello\n"
        assert c.run("cat").stdout == b""
        assert "max_stdin=1024" in refused("too-large", c.run, "cat", stdin=b"x" * 1025)
        refused("too-large", c.run, "t", stdin=b"x")


def test_server_shutdown_kills_running_commands(command_service):
    server = command_service(timeout=60, **{"command.hang": "sh -c 'sleep 30 & echo $!; wait'"})
    with client(server) as c:
        items = c.run_stream("hang")
        child = int(first_chunk(items))
        started = time.monotonic()
        server.stop(0.3)
        assert time.monotonic() - started < 3
        assert not alive(child)
        with pytest.raises(ConnectionFailed):
            next(items)


# --- protocol details ------------------------------------------------------------

def test_requests_sent_during_a_run_are_answered_after_it(command_service):
    server = command_service(**{"command.nap": "sh -c 'sleep 0.3; echo awake'"})
    with client(server) as c:
        c.send({"type": "run", "command": "nap"})
        assert c.recv().type == "started"
        c.send({"type": "list"})
        assert [c.recv().type for _ in range(3)] == ["output", "exit", "commands"]


def test_a_flood_during_a_run_is_left_unread_until_the_run_ends(command_service):
    server = command_service(max_header="128", max_body="0", **{
        "command.nap": "sh -c 'sleep 0.3; echo awake'"})
    with client(server) as c:
        c.send({"type": "run", "command": "nap"})
        assert c.recv().type == "started"
        for _ in range(20):
            c.send({"type": "list"})
        assert [c.recv().type for _ in range(22)] == ["output", "exit"] + ["commands"] * 20


def test_a_broken_frame_during_a_run_ends_the_connection_after_the_run(command_service):
    server = command_service(**{"command.nap": "sh -c 'sleep 0.3; echo awake'"})
    with client(server) as c:
        c.send({"type": "run", "command": "nap"})
        assert c.recv().type == "started"
        c.sock.sendall(b"\xff\xff\xff\xff")
        assert [c.recv().type for _ in range(2)] == ["output", "exit"]
        assert refused("too-large", c.recv)
        assert recv_until_closed(c.sock) == b""


def test_a_client_reset_kills_the_run(command_service):
    server = command_service(timeout=60, **{"command.hang": "sh -c 'sleep 30 & echo $!; wait'"})
    c = client(server)
    items = c.run_stream("hang")
    child = int(first_chunk(items))
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()  # linger 0: the server gets a reset, not an orderly end
    wait_for(lambda: not alive(child), 2, message="the run to be killed")


def test_client_refuses_a_server_that_is_not_a_command_service(start_service, keys_file):
    from msgsrv.wire.errors import ProtocolError
    server = start_service("tests.plugins:AuthedEcho", keys_file=keys_file)
    with client(server) as c:
        with pytest.raises(ProtocolError, match="expected a commands reply"):
            c.list()
        with pytest.raises(ProtocolError, match="expected started"):
            c.run("x")


def test_started_and_exit_frames_carry_the_run_facts(command_service):
    server = command_service(timeout=7, **{"command.greet": "echo hello {name}"})
    with client(server) as c:
        c.send({"type": "run", "command": "greet", "args": ["you"]})
        started, output, final = c.recv(), c.recv(), c.recv()
    assert started.header == {"type": "started", "command": "greet", "timeout": 7.0,
                              "argv": [shutil.which("echo"), "hello", "you"]}
    assert output.header == {"type": "output", "stream": "stdout", "body_size": 10}
    assert set(final.header) == {"type", "exit_code", "signal", "duration", "timed_out",
                                 "truncated", "bytes"}
    assert final.header["truncated"] == {"stdout": False, "stderr": False}
    assert final.header["bytes"] == {"stdout": 10, "stderr": 0}


def test_a_program_that_vanished_after_start_up_is_reported(command_service, tmp_path):
    program = tmp_path / "tool"
    shutil.copy(shutil.which("true"), program)
    server = command_service(**{"command.tool": str(program)})
    program.unlink()
    with client(server) as c:
        assert "cannot start tool" in refused("exec-failed", c.run, "tool")


def test_allow_any_runs_any_argv_without_a_shell(command_service, caplog):
    with caplog.at_level(logging.WARNING, "msgsrv.command"):
        server = command_service(allow_any="yes", allow_any_keys="alice")
    assert "allow_any = yes: alice may run ANY program" in caplog.text
    with client(server) as c:
        assert c.run_argv(["printf", "%s", "a;b $(id)"]).stdout == b"a;b $(id)"
    with client(server, "bob", BOB_SECRET) as c:
        refused("denied", c.run_argv, ["true"])


def test_keys_naming_no_known_key_are_warned_about(command_service, caplog):
    with caplog.at_level(logging.WARNING, "msgsrv.command"):
        command_service(**{"command.t": "true", "keys.t": "alice, alcie"})
    assert "keys.t names alcie, not in" in caplog.text


def test_handler_declares_its_settings_once():
    names = [s.name for s in CommandHandler.settings]
    assert len(names) == len(set(names)) and "keys_file" in names and "command.*" in names


def test_protocol_doc_lists_every_command_error_code():
    with open(os.path.join(ROOT, "docs", "PROTOCOL.rst"), encoding="utf-8") as doc:
        section = doc.read().split("\nCommand service\n")[1].split("\nFile service\n")[0]
    for code in CODES:
        assert "``%s``\n" % code in section, code
