"""The daemon as an operator sees it: reload, log reopening, graceful and quick stops,
sd_notify, the pidfile lock, privilege drop, and the command-line helpers."""

import logging
import os
import pathlib
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from msgsrv.ops import config as config_module
from msgsrv.__main__ import main
from msgsrv.client import EchoClient
from msgsrv.ops.daemon import Daemon, plan_reload, state_path
from msgsrv.wire.errors import ConfigError
from msgsrv.net.handler import Handler
from msgsrv.ops.privileges import RunAs, children_identity, drop
from msgsrv.net.server import TCPService
from msgsrv.wire.frame_stream import FrameStream
from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.timeout(60)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(path, *sections):
    path.write_text("\n".join(sections))
    return path


def logged(daemon, text, timeout=10.0):
    wait_for(lambda: text in daemon.log or daemon.proc.poll() is not None, timeout,
             message=repr(text))
    assert text in daemon.log, daemon.log
    return daemon.log


def echo(address, data=b"ping"):
    with EchoClient(*address, timeout=5) as client:
        return client.echo(data)


def refused(address):
    try:
        socket.create_connection(address, timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def task_count(pid):
    return len(os.listdir("/proc/%d/task" % pid))


GLOBAL = "[msgsrv]\nshutdown_timeout = 5\n"
KEEP = "[service:keep]\nhandler = echo\n"
GONE = "[service:gone]\nhandler = echo\n"
NEW = "[service:new]\nhandler = echo\n"


def test_sighup_adds_and_removes_services_while_a_client_keeps_working(tmp_path, daemon_factory):
    config = write_config(tmp_path / "server.ini", GLOBAL, KEEP, GONE)
    daemon = daemon_factory(config)
    listeners = daemon.wait_listening(2)
    client = EchoClient(*listeners["keep"], timeout=5)
    assert client.echo(b"before") == b"before"
    write_config(config, GLOBAL, KEEP + "max_connections = 7\n", NEW)
    daemon.proc.send_signal(signal.SIGHUP)
    log = logged(daemon, "reload: accepted (")
    assert "added: new; removed: gone; reconfigured: keep" in log
    assert client.echo(b"after") == b"after"  # same connection, never dropped
    assert echo(daemon.wait_listening(3)["new"]) == b"ping"
    wait_for(lambda: refused(listeners["gone"]), message="the removed service to close")
    client.close()
    assert daemon.stop() == 0


def test_invalid_reload_keeps_the_old_configuration(tmp_path, daemon_factory):
    config = write_config(tmp_path / "server.ini", GLOBAL, KEEP)
    daemon = daemon_factory(config)
    address = daemon.wait_listening(1)["keep"]
    write_config(config, GLOBAL, KEEP + "port = 99999\n", NEW)
    daemon.proc.send_signal(signal.SIGHUP)
    logged(daemon, "reload: refused: ")
    assert "port must be 0..65535 (got '99999')" in daemon.log
    assert echo(address) == b"ping"
    assert "new" not in daemon.listeners
    assert daemon.stop() == 0


def test_reload_that_cannot_bind_changes_nothing(tmp_path, daemon_factory):
    config = write_config(tmp_path / "server.ini", GLOBAL, KEEP + "max_connections = 1\n")
    daemon = daemon_factory(config)
    address = daemon.wait_listening(1)["keep"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        write_config(config, GLOBAL, KEEP, NEW + "port = %d\n" % taken.getsockname()[1])
        daemon.proc.send_signal(signal.SIGHUP)
        logged(daemon, "reload: refused: [service:new] cannot listen")
    held = socket.create_connection(address, timeout=5)
    with socket.create_connection(address, timeout=5) as extra:  # max_connections is still 1
        assert extra.recv(10) == b""
    held.close()
    assert daemon.stop() == 0


def test_changed_handler_on_the_same_port_restarts_the_service(tmp_path, daemon_factory):
    port = free_port()
    config = write_config(tmp_path / "server.ini", GLOBAL, KEEP + "port = %d\n" % port)
    daemon = daemon_factory(config)
    daemon.wait_listening(1)
    write_config(config, GLOBAL, "[service:keep]\nhandler = tests.plugins:ShoutHandler\n"
                 "port = %d\n" % port)
    daemon.proc.send_signal(signal.SIGHUP)
    logged(daemon, "reload: accepted (restarted: keep)")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"loud\n")
        assert sock.recv(10) == b"LOUD\n"
    assert daemon.stop() == 0


def test_sigusr1_reopens_a_moved_log_file(tmp_path, daemon_factory):
    log_path = tmp_path / "logs" / "msgsrv.log"
    config = write_config(tmp_path / "server.ini", GLOBAL + "log_file = %s\n" % log_path, KEEP)
    daemon = daemon_factory(config)
    wait_for(lambda: log_path.exists() and "ready pid=" in log_path.read_text(),
             timeout=10, message="the daemon to be ready")
    rotated = tmp_path / "logs" / "msgsrv.log.1"
    os.rename(str(log_path), str(rotated))
    daemon.proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: log_path.exists() and "reopened 1 log file" in log_path.read_text())
    assert "reopened" not in rotated.read_text()
    port = int(rotated.read_text().split("address=127.0.0.1:")[1].split()[0])
    assert echo(("127.0.0.1", port)) == b"ping"
    wait_for(lambda: "close service=keep" in log_path.read_text())
    assert daemon.stop() == 0


def start_transfer(tmp_path, daemon_factory, shutdown_timeout):
    config = write_config(tmp_path / "server.ini",
                          "[msgsrv]\nshutdown_timeout = %s\n" % shutdown_timeout,
                          "[service:slow]\nhandler = tests.plugins:BlockingFramed\n")
    daemon = daemon_factory(config)
    address = daemon.wait_listening(1)["slow"]
    wait_for(lambda: "ready pid=" in daemon.log)
    baseline = task_count(daemon.proc.pid)
    sock = socket.create_connection(address, timeout=10)
    stream = FrameStream(sock)
    stream.send({"type": "sleep", "bytes": 100000})
    stream.send_raw(b"x" * 50000)
    wait_for(lambda: task_count(daemon.proc.pid) > baseline, message="a blocked transfer")
    return daemon, sock, stream


def test_sigterm_lets_a_running_transfer_finish(tmp_path, daemon_factory):
    daemon, sock, stream = start_transfer(tmp_path, daemon_factory, 5)
    daemon.proc.send_signal(signal.SIGTERM)
    logged(daemon, "SIGTERM received, stopping")
    stream.send_raw(b"x" * 50000)
    assert stream.recv().type == "slept"
    assert daemon.proc.wait(10) == 0
    assert sock.recv(10) == b""
    sock.close()
    assert "stopped" in daemon.log


def test_second_sigint_aborts_open_connections(tmp_path, daemon_factory):
    daemon, sock, _ = start_transfer(tmp_path, daemon_factory, 30)
    daemon.proc.send_signal(signal.SIGINT)
    logged(daemon, "SIGINT received, stopping")
    started = time.monotonic()
    daemon.proc.send_signal(signal.SIGINT)
    assert daemon.proc.wait(10) == 0
    assert time.monotonic() - started < 5.0
    assert "second SIGINT received: aborting open connections" in daemon.log
    sock.close()


def test_sd_notify_ready_reloading_stopping(tmp_path, daemon_factory):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(tmp_path / "notify"))
        listener.settimeout(10)
        config = write_config(tmp_path / "server.ini", GLOBAL, KEEP)
        daemon = daemon_factory(config, env={"NOTIFY_SOCKET": str(tmp_path / "notify")})

        def next_message():
            return listener.recv(4096).decode().split("\n")
        ready = next_message()
        assert "READY=1" in ready and "MAINPID=%d" % daemon.proc.pid in ready
        log = logged(daemon, "ready pid=")  # logged just before READY=1 is sent
        assert log.index("listening service=keep") < log.index("ready pid=")
        daemon.proc.send_signal(signal.SIGHUP)
        assert next_message()[0] == "RELOADING=1"
        assert "READY=1" in next_message()
        daemon.proc.send_signal(signal.SIGTERM)
        assert next_message()[0] == "STOPPING=1"
        assert daemon.proc.wait(10) == 0


def test_pidfile_lock_refuses_a_second_daemon(tmp_path, daemon_factory):
    pidfile = tmp_path / "run" / "msgsrv.pid"
    config = write_config(tmp_path / "server.ini", GLOBAL + "pidfile = %s\n" % pidfile, KEEP)
    first = daemon_factory(config)
    first.wait_listening(1)
    wait_for(lambda: "ready pid=" in first.log)
    assert pidfile.read_text() == "%d\n" % first.proc.pid
    listeners = state_path(str(pidfile))
    assert open(listeners).read().startswith("keep tcp 127.0.0.1:")
    second = daemon_factory(config)
    assert second.proc.wait(10) == 1
    second.stop()
    assert "pidfile %s is locked by a running daemon (pid %d)" % (pidfile, first.proc.pid) \
        in second.log
    assert pidfile.read_text() == "%d\n" % first.proc.pid
    assert first.stop() == 0
    assert not pidfile.exists() and not os.path.exists(listeners)


@pytest.mark.skipif(os.geteuid() != 0, reason="privilege drop needs root")
def test_root_drops_to_the_configured_user(tmp_path, daemon_factory):
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' here")
    log_path = tmp_path / "msgsrv.log"
    config = write_config(tmp_path / "server.ini",
                          GLOBAL + "user = nobody\nlog_file = %s\n" % log_path, KEEP)
    # coverage cannot write its data as nobody: run this one unmeasured
    env = {"COVERAGE_PROCESS_START": "", "COV_CORE_SOURCE": ""}
    daemon = daemon_factory(config, env=env)
    wait_for(lambda: log_path.exists() and "ready pid=" in log_path.read_text(),
             timeout=10, message="the daemon to be ready")
    text = log_path.read_text()
    assert "switched to uid=%d gid=%d (user=nobody" % (nobody.pw_uid, nobody.pw_gid) in text
    status = open("/proc/%d/status" % daemon.proc.pid).read()
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert uids == [str(nobody.pw_uid)] * 4
    port = int(text.split("address=127.0.0.1:")[1].split()[0])
    assert echo(("127.0.0.1", port)) == b"ping"  # still serving after the drop
    assert daemon.stop() == 0


def test_privileges_errors():
    with pytest.raises(ConfigError, match="user 'no-such-user-here' does not exist"):
        drop("no-such-user-here")
    with pytest.raises(ConfigError, match="group 'no-such-group-here' does not exist"):
        drop("", "no-such-group-here")


def _nobody():
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' here")


def test_children_identity_decides_who_commands_run_as():
    nobody = _nobody()
    assert children_identity(euid=0) == RunAs(0, "root")
    switched = children_identity("nobody", euid=0)
    assert (switched.uid, switched.gid, switched.switch) == (nobody.pw_uid, nobody.pw_gid, True)
    assert switched.spawn_options() == {
        "user": nobody.pw_uid, "group": nobody.pw_gid,
        "extra_groups": tuple(os.getgrouplist("nobody", nobody.pw_gid))}
    group_only = children_identity(group=str(nobody.pw_gid), euid=0)
    assert (group_only.uid, group_only.gid, group_only.groups) == (0, nobody.pw_gid, ())
    # A root daemon that switches to [msgsrv] user runs its children as that user...
    for euid in (0, nobody.pw_uid):  # ...at start (still root) and at a reload (switched)
        dropped = children_identity(daemon_user="nobody", euid=euid)
        assert (dropped.uid, dropped.switch, dropped.note) == (nobody.pw_uid, False, "")
        assert children_identity("nobody", daemon_user="nobody", euid=euid).uid == nobody.pw_uid
        with pytest.raises(ConfigError, match=r"^user = root: the daemon runs as \[msgsrv\] "
                                              r"user = nobody, which cannot start children"):
            children_identity("root", daemon_user="nobody", euid=euid)
    # ...and a daemon some other user started keeps that user, saying why.
    tryout = children_identity("nobody", euid=4242)
    assert (tryout.uid, tryout.switch, tryout.spawn_options()) == (4242, False, {})
    assert tryout.note.startswith("user = nobody not applied: the daemon does not run as root")
    same = children_identity(str(nobody.pw_uid), euid=nobody.pw_uid)
    assert (same.uid, same.note) == (nobody.pw_uid, "")
    with pytest.raises(ConfigError, match="user 'no-such-user-here' does not exist"):
        children_identity("no-such-user-here", euid=0)


COMMANDS = "[service:cmd]\nhandler = command\nkeys_file = /nonexistent\ncommand.t = true\n"


@pytest.mark.parametrize("extra, code", [("", 2), ("user = nobody\n", 0),
                                         ("run_as_root = yes\n", 0)])
def test_check_refuses_commands_that_would_run_as_root(tmp_path, capsys, monkeypatch, extra, code):
    _nobody()
    monkeypatch.setattr("msgsrv.ops.privileges.os.geteuid", lambda: 0)
    config = write_config(tmp_path / "server.ini", GLOBAL, COMMANDS + extra)
    assert main(["-c", str(config), "--check"]) == code
    err = capsys.readouterr().err
    if code:
        assert err.startswith("msgsrv: %s: [service:cmd] commands would run as root (uid 0): "
                              "set user = NAME in [service:cmd]" % config)
        assert "user in [msgsrv]" in err and "run_as_root = yes in [service:cmd]" in err
    config = write_config(tmp_path / "global.ini", GLOBAL + "user = nobody\n", COMMANDS)
    assert main(["-c", str(config), "--check"]) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_root_daemon_refuses_to_start_commands_as_root(tmp_path, daemon_factory):
    config = write_config(tmp_path / "server.ini", GLOBAL, COMMANDS)
    daemon = daemon_factory(config)
    assert daemon.proc.wait(10) == 2
    daemon.stop()
    # the start-up checks refuse it, as --check does, before anything is opened
    assert daemon.log.startswith("msgsrv: %s: [service:cmd] commands would run as root (uid 0)"
                                 % config)


def _start_shipped(directory, log, *prefix):
    """The README's first command, from ``directory`` holding conf/server.ini."""
    env = dict(os.environ, PYTHONPATH=ROOT, COVERAGE_PROCESS_START="", COV_CORE_SOURCE="")
    proc = subprocess.Popen(list(prefix) + [sys.executable, "-m", "msgsrv", "--config",
                                            "conf/server.ini"], cwd=str(directory), env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: "ready pid=" in _text(log) or proc.poll() is not None, 15,
                 message="the daemon to be ready")
        assert "ready pid=%d" % proc.pid in _text(log), _text(log)
        proc.terminate()
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return _text(log)


def _text(path):
    return path.read_text() if path.exists() else ""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root and setpriv to start as root and as another user")
def test_shipped_config_starts_as_root_and_as_an_ordinary_user():
    nobody = _nobody()
    try:
        other = pwd.getpwnam("daemon")
    except KeyError:
        pytest.skip("no user 'daemon' here")
    as_other = [shutil.which("setpriv"), "--reuid=%d" % other.pw_uid, "--regid=%d" % other.pw_gid,
                "--clear-groups"]
    # The checkout itself must be readable by that user (a clone inside a 0700 temp dir is not).
    probe = subprocess.run(as_other + [sys.executable, "-c", "import msgsrv.__main__"],
                           capture_output=True, text=True, timeout=30,
                           env=dict(os.environ, PYTHONPATH=ROOT), cwd="/")
    if probe.returncode:
        pytest.skip("%s cannot run msgsrv as user 'daemon' here: %s"
                    % (sys.executable, probe.stderr.strip()[-200:]))
    directory = tempfile.mkdtemp(prefix="msgsrv-shipped-")
    try:
        base = pathlib.Path(directory)
        (base / "conf").mkdir()
        text = re.sub(r"(?m)^port = \d+$", "port = 0", open(os.path.join(
            ROOT, "conf", "server.ini"), encoding="utf-8").read())
        (base / "conf" / "server.ini").write_text(text)
        log = base / "var" / "log" / "msgsrv.log"
        assert "commands run as uid=%d (nobody)\n" % nobody.pw_uid in _start_shipped(base, log)
        shutil.rmtree(str(base / "var"))
        os.chown(directory, other.pw_uid, other.pw_gid)
        text = _start_shipped(base, log, *as_other)
        assert ("commands run as uid=%d (daemon); user = nobody not applied: the daemon does "
                "not run as root" % other.pw_uid) in text
    finally:
        shutil.rmtree(directory)


def test_plan_reload_classifies_services(tmp_path):
    old = write_config(tmp_path / "a.ini", KEEP, GONE, "[service:moved]\nhandler = echo\n")
    new = write_config(tmp_path / "b.ini", KEEP + "workers = 2\n", NEW,
                       "[service:moved]\nhandler = echo\nport = 1234\n")
    plan = plan_reload(config_module.load(str(old)), config_module.load(str(new)))
    assert plan == (["new"], ["gone"], ["moved"], ["keep"])


def test_print_setting_and_pid_helpers(tmp_path, capsys):
    pidfile = tmp_path / "msgsrv.pid"
    config = write_config(tmp_path / "server.ini", GLOBAL + "pidfile = %s\n" % pidfile, KEEP)
    assert main(["-c", str(config), "--print-setting", "shutdown_timeout"]) == 0
    assert main(["-c", str(config), "--print-setting", "log_file"]) == 0
    assert capsys.readouterr().out == "5\n\n"
    assert main(["-c", str(config), "--print-setting", "nope"]) == 2
    assert "no [msgsrv] setting 'nope'" in capsys.readouterr().err
    assert main(["-c", str(config), "--pid"]) == 3
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from msgsrv.ops.pidfile import Pidfile; "
         "Pidfile(sys.argv[1]).acquire(); print('held', flush=True); sys.stdin.read()",
         str(pidfile)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    assert main(["-c", str(config), "--pid"]) == 0
    assert capsys.readouterr().out == "%d\n" % holder.pid
    holder.communicate("")
    no_pidfile = write_config(tmp_path / "plain.ini", KEEP)
    assert main(["-c", str(no_pidfile), "--pid"]) == 2



# -- the daemon in-process: reload corner cases ----------------------------------

class FlakyPrepare(Handler):
    """Echo whose prepare_service can be made to fail with an unexpected error."""

    fail = False

    @classmethod
    def prepare_service(cls, server):
        if cls.fail:
            raise RuntimeError("prepare exploded")

    def data_received(self, data):
        self.conn.send(data)


@pytest.fixture
def inproc(tmp_path):
    """Factory: a started in-process Daemon for a config text; stopped at teardown."""
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    daemons = []

    def start(text):
        path = tmp_path / "inproc.ini"
        path.write_text(text)
        daemon = Daemon(config_module.load(str(path)))
        daemon.start()
        daemons.append(daemon)
        return daemon

    yield start
    for daemon in daemons:
        daemon.stop()
    for handler in list(root.handlers):
        if handler not in saved[0]:
            root.removeHandler(handler)
            handler.close()
    for handler in saved[0]:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(saved[1])


def test_failed_takeover_brings_the_old_service_back(inproc, tmp_path, monkeypatch):
    port = free_port()
    daemon = inproc(GLOBAL + "[service:keep]\nhandler = echo\nport = %d\n" % port)
    new_log = tmp_path / "new.log"
    (tmp_path / "inproc.ini").write_text(
        GLOBAL + "log_file = %s\npidfile = %s\n" % (new_log, tmp_path / "x.pid")
        + "[service:keep]\nhandler = tests.plugins:ShoutHandler\nport = %d\n" % port)
    real_bind = TCPService.server_bind

    def refuse_shout(server):
        if server.config["handler"] == "tests.plugins:ShoutHandler":
            raise OSError(98, "Address already in use")
        real_bind(server)
    monkeypatch.setattr(TCPService, "server_bind", refuse_shout)
    assert daemon.reload() == "restarted: keep; failed: keep"
    assert daemon.servers["keep"].config["handler"] == "echo"
    assert echo(("127.0.0.1", port)) == b"ping"
    text = new_log.read_text()
    assert "reload: pidfile changed; it takes effect at the next start" in text
    assert "reload: [service:keep] cannot listen on 127.0.0.1:%d" % port in text


def test_unexpected_prepare_error_refuses_the_reload(inproc, tmp_path, caplog):
    FlakyPrepare.fail = False
    daemon = inproc(GLOBAL + "[service:flaky]\nhandler = tests.daemon.test_ops:FlakyPrepare\n")
    before = daemon.config
    (tmp_path / "inproc.ini").write_text(
        GLOBAL + "[service:flaky]\nhandler = tests.daemon.test_ops:FlakyPrepare\nmax_connections = 3\n")
    FlakyPrepare.fail = True
    try:
        daemon.handle_hup()
    finally:
        FlakyPrepare.fail = False
    assert "reload: refused: unexpected error: prepare exploded" in caplog.text
    assert daemon.config is before
    assert daemon.servers["flaky"].config["max_connections"] == 1000
    assert echo(daemon.servers["flaky"].server_address) == b"ping"


def test_unopenable_new_log_file_refuses_the_reload(inproc, tmp_path):
    daemon = inproc(GLOBAL + KEEP)
    (tmp_path / "inproc.ini").write_text(
        GLOBAL + "log_file = %s\n" % (tmp_path / "inproc.ini" / "x.log") + KEEP + NEW)
    with pytest.raises(OSError, match="log_file .*x.log"):
        daemon.reload()
    assert list(daemon.servers) == ["keep"]


def test_signal_handlers_in_order(inproc, caplog):
    daemon = inproc(GLOBAL + KEEP)
    wake_r, daemon._wake_w = os.pipe()
    try:
        with caplog.at_level(logging.INFO, "msgsrv"):
            daemon.handle_usr1()
            daemon.handle_term()
            daemon.handle_term()
            daemon.handle_hup()
            daemon.handle_int()
            daemon._stopper.join(10)
        assert os.read(wake_r, 10) == b"s"
    finally:
        os.close(wake_r)
        os.close(daemon._wake_w)
    for line in ("SIGUSR1 received, reopened 0 log file(s)", "SIGTERM received, stopping",
                 "SIGTERM received, already stopping", "SIGHUP received while stopping",
                 "second SIGINT received"):
        assert line in caplog.text
    assert not daemon.servers


def test_tls_file_missing_at_start_exits_2(tmp_path, daemon_factory):
    config = write_config(tmp_path / "server.ini", GLOBAL,
                          KEEP + "tls_cert = %s\n" % (tmp_path / "missing.pem"))
    daemon = daemon_factory(config)
    assert daemon.proc.wait(10) == 2
    daemon.stop()
    assert "[service:keep] tls_cert/tls_key: cannot load" in daemon.log
