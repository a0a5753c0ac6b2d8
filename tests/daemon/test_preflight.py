"""--check runs every check a start runs (msgsrv.ops.preflight), creates nothing, and says what a
start would create; the daemon refuses to start on the same problems with the same messages."""

import os

import pytest

from msgsrv.ops import config as config_module, preflight
from msgsrv.wire.errors import CheckFailed
from tests.conftest import run_msgsrv

pytestmark = pytest.mark.timeout(60)


def problems(tmp_path, text):
    path = tmp_path / "server.ini"
    path.write_text(text)
    with pytest.raises(CheckFailed) as info:
        preflight.check(config_module.load(str(path)))
    return info.value.problems


def test_missing_program_fails_check_and_start_alike(tmp_path):
    path = tmp_path / "server.ini"
    keys = tmp_path / "keys" / "msgsrv.keys"
    path.write_text("[service:run]\nhandler = command\nkeys_file = %s\nuser = nobody\n"
                    "command.x = /no/such/prog\n" % keys)
    expected = ("msgsrv: %s: [service:run] command.x: program '/no/such/prog' is not an "
                "executable file\n" % path)
    check = run_msgsrv("-c", str(path), "--check")
    assert (check.returncode, check.stderr, check.stdout) == (2, expected, "")
    start = run_msgsrv("-c", str(path))
    assert (start.returncode, start.stderr) == (2, expected)
    assert not keys.parent.exists()


def test_every_problem_is_reported_one_line_each(tmp_path):
    keys = tmp_path / "open.keys"
    keys.write_text("admin %s\n" % ("x" * 43))
    keys.chmod(0o644)
    plain = tmp_path / "plain"
    plain.write_text("")
    found = problems(tmp_path, "\n".join([
        "[msgsrv]", "group = no-such-group-here", "pidfile = %s/pid" % plain,
        "[service:run]", "handler = command", "keys_file = %s" % keys, "run_as_root = yes",
        "command.x = true",
        "[service:files]", "handler = file", "keys_file = %s/k" % tmp_path, "root = %s" % plain,
        "[service:tls]", "handler = echo", "tls_cert = %s/missing.pem" % tmp_path,
        "[service:udp]", "handler = echo", "transport = udp",
        "tls_cert = %s/missing.pem" % tmp_path, ""]))
    where = str(tmp_path / "server.ini") + ": "
    expected = ["[msgsrv] group 'no-such-group-here' does not exist",
                "[msgsrv] pidfile %s/pid: %s is not a writable directory" % (plain, plain),
                "[service:run] keys_file: keys file '%s' has mode 0644" % keys,
                "[service:files] root '%s': sandbox root '%s' is not a directory" % (plain, plain),
                "[service:tls] tls_cert/tls_key: cannot load",
                "[service:udp] tls_cert needs transport tcp (TLS over UDP is not supported)"]
    assert len(found) == len(expected), found
    for problem, start in zip(found, expected):
        assert problem.startswith(where + start), problem


def test_check_creates_nothing_and_says_what_a_start_would_create(tmp_path):
    var = tmp_path / "var"
    path = tmp_path / "server.ini"
    path.write_text("[msgsrv]\npidfile = %s/run/msgsrv.pid\nlog_file = %s/log/msgsrv.log\n"
                    "[service:files]\nhandler = file\nroot = %s/files\nkeys_file = %s/keys/k\n"
                    % (var, var, var, var))
    result = run_msgsrv("-c", str(path), "--check")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "msgsrv: note: would create directory %s/run ([msgsrv] pidfile)" % var,
        "msgsrv: note: would create directory %s/log ([msgsrv] log_file)" % var,
        "msgsrv: note: would create keys file with one random key 'admin': %s/keys/k "
        "([service:files] keys_file)" % var,
        "msgsrv: note: would create file root %s/files ([service:files] root)" % var,
        "msgsrv: %s: every start-up check passed (1 service)" % path]
    assert not var.exists()
    assert "[service:files]\nhandler = file\n" in result.stdout


def test_a_running_daemon_is_noted_not_refused(tmp_path, daemon_factory):
    pidfile = tmp_path / "msgsrv.pid"
    path = tmp_path / "server.ini"
    path.write_text("[msgsrv]\npidfile = %s\n[service:echo]\nhandler = echo\n" % pidfile)
    daemon = daemon_factory(path)
    daemon.wait_listening(1)
    assert preflight.check(config_module.load(str(path))) == [
        "pidfile %s is held by a running daemon (pid %d): a start would exit 1; SIGHUP "
        "(msgsrvctl reload) applies this file" % (pidfile, daemon.proc.pid)]
    assert daemon.stop() == 0


def test_identity_when_not_root(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    path = tmp_path / "server.ini"
    path.write_text("[msgsrv]\nuser = 0\n")
    assert preflight.check(config_module.load(str(path))) == [
        "not started as root (uid 1000): user and group would be ignored ([msgsrv])"]


def test_check_refuses_a_proxy_header_nobody_may_send(tmp_path):
    path = tmp_path / "proxy.ini"
    path.write_text("[msgsrv]\n[service:echo]\nhandler = echo\nproxy_protocol = any\n")
    check = run_msgsrv("-c", str(path), "--check")
    assert check.returncode != 0
    assert "[service:echo] proxy_protocol = any needs proxy_trusted" in check.stderr
