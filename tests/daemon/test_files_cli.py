"""The file service end to end: the command line, the progress bar, the daemon killed mid-put."""

import os
import pty
import select
import subprocess
import sys
import time

import pytest

from msgsrv.wire import auth
from msgsrv.ops import config
from msgsrv.cli.client import main
from msgsrv.cli.files import printable
from msgsrv.cli.progress import ProgressBar, format_bytes, format_duration, render
from msgsrv.services.files.sandbox import is_temp_name
from msgsrv.wire.frame_stream import FrameStream
from tests.conftest import ROOT, wait_for
from tests.service.test_files import visible

pytestmark = pytest.mark.timeout(60)

SECRET = "s" * 24


@pytest.fixture
def keys_file(tmp_path):
    path = tmp_path / "keys"
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, ("alice %s\n" % SECRET).encode())
    os.close(fd)
    return str(path)


@pytest.fixture
def served(start_service, keys_file, tmp_path):
    root = tmp_path / "root"
    server = start_service("file", root=str(root), keys_file=keys_file)
    return "127.0.0.1:%d" % server.port, root


def cli(*argv, keys_file):
    return main(list(argv) + ["--key", "alice", "--keys-file", keys_file, "--timeout", "10"])


def test_cli_put_get_ls_rm(served, keys_file, tmp_path, capsys):
    address, root = served
    local = tmp_path / "report.txt"
    local.write_bytes(b"contents\n")
    assert cli("put", address, str(local), keys_file=keys_file) == 0
    assert cli("put", address, str(local), "copy.txt", "-q", keys_file=keys_file) == 0
    assert (root / "report.txt").read_bytes() == b"contents\n"
    capsys.readouterr()
    assert cli("put", address, str(local), keys_file=keys_file) == 1
    assert capsys.readouterr().err == ("msgsrv.client: exists: path 'report.txt' exists "
                                       "(ask to overwrite)\n")
    assert cli("put", address, str(local), "-f", keys_file=keys_file) == 0
    os.chdir(tmp_path / "root")  # restored by pytest's chdir isolation below
    assert cli("get", address, "copy.txt", str(tmp_path / "got.txt"), keys_file=keys_file) == 0
    assert (tmp_path / "got.txt").read_bytes() == b"contents\n"
    assert cli("mkdir", address, "sub", keys_file=keys_file) == 0
    assert cli("mkdir", address, "-p", "x/y", keys_file=keys_file) == 0
    assert cli("rm", address, "x/y", "x", keys_file=keys_file) == 0
    capsys.readouterr()
    assert cli("ls", address, keys_file=keys_file) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[-1] for line in lines] == ["copy.txt", "report.txt", "sub/"]
    assert lines[0].split()[:2] == ["-", "9"] and lines[2].startswith("d ")
    assert cli("rm", address, "copy.txt", "sub", keys_file=keys_file) == 0
    assert visible(root) == ["report.txt"]
    assert cli("rm", address, "copy.txt", keys_file=keys_file) == 1
    assert capsys.readouterr().err.count("\n") == 1


@pytest.fixture(autouse=True)
def _keep_cwd(monkeypatch):
    monkeypatch.chdir(os.getcwd())


def test_cli_get_names_the_local_file_and_can_write_to_stdout(served, keys_file, tmp_path,
                                                              monkeypatch, capsysbinary):
    address, root = served
    root.mkdir(exist_ok=True)
    (root / "d").mkdir()
    (root / "d" / "f.bin").write_bytes(b"\x00binary\xff")
    monkeypatch.chdir(tmp_path)
    assert cli("get", address, "d/f.bin", keys_file=keys_file) == 0
    assert (tmp_path / "f.bin").read_bytes() == b"\x00binary\xff"
    assert cli("get", address, "d/f.bin", "-", keys_file=keys_file) == 0
    assert capsysbinary.readouterr().out == b"\x00binary\xff"
    assert cli("get", address, "..", keys_file=keys_file) == 2
    assert cli("get", address, "missing", keys_file=keys_file) == 1
    assert not (tmp_path / "missing").exists()


def test_cli_shows_a_progress_bar_on_a_terminal(served, keys_file, tmp_path):
    address, root = served
    local = tmp_path / "big"
    local.write_bytes(os.urandom(3 << 20))
    master, slave = pty.openpty()
    env = dict(os.environ, MSGSRV_KEY="alice", MSGSRV_KEYS_FILE=keys_file)
    proc = subprocess.Popen([sys.executable, "-m", "msgsrv.client", "put", address, str(local)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    shown = _read_all(master, proc)
    assert proc.returncode == 0, shown
    assert "big" in shown and "3.0 MiB / 3.0 MiB" in shown and "100%" in shown
    assert "/s" in shown and "ETA" in shown and shown.endswith("\n")
    assert (root / "big").read_bytes() == local.read_bytes()


def _read_all(master, proc):
    output = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        elif proc.poll() is not None:
            break
    proc.wait(10)
    os.close(master)
    return output.decode("utf-8", "replace").replace("\r\n", "\n")


def test_cli_is_quiet_when_not_a_terminal(served, keys_file, tmp_path):
    address, _root = served
    (tmp_path / "f").write_bytes(b"x")
    env = dict(os.environ, MSGSRV_KEY="alice", MSGSRV_KEYS_FILE=keys_file)
    done = subprocess.run([sys.executable, "-m", "msgsrv.client", "put", address,
                           str(tmp_path / "f")], cwd=ROOT, env=env, capture_output=True,
                          timeout=30)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")


def test_progress_bar_rendering():
    assert [format_bytes(n) for n in (0, 1023, 1536, 5 << 30)] == [
        "0 B", "1023 B", "1.5 KiB", "5.0 GiB"]
    assert [format_duration(s) for s in (None, -1, 75, 3725)] == ["--:--", "--:--", "1:15",
                                                                  "1:02:05"]
    assert render("f", 512, 1024, 256) == "f  512 B / 1.0 KiB   50%  256 B/s  ETA 0:02"
    assert render("f", 0, 0, 0).endswith("100%  0 B/s  ETA --:--")

    class Terminal:
        text = ""

        def write(self, text):
            self.text += text

        def flush(self):
            pass

        def isatty(self):
            return True

    now = [100.0]
    term = Terminal()
    bar = ProgressBar(term, "up", clock=lambda: now[0])
    bar(1000, 4000)  # resumed at 1000: the rate counts only what moves now
    now[0] += 1.0
    bar(2000, 4000)
    bar(2500, 4000)  # too soon to redraw
    bar.finish()
    assert term.text.count("\r") == 3 and term.text.endswith("\n")
    assert "2.0 KiB / 3.9 KiB   50%  1000 B/s  ETA 0:02" in term.text
    assert "2.4 KiB / 3.9 KiB   62%  1.5 KiB/s  ETA 0:01" in term.text
    quiet = Terminal()
    ProgressBar(quiet, "x", enabled=False)(1, 2)
    assert quiet.text == ""


def test_printable_escapes_control_characters():
    assert printable("ok name") == "ok name"
    assert printable("evil\x1b[2Jname\n") == "evil\\x1b[2Jname\\n"


# -- the daemon ---------------------------------------------------------------------

def test_shipped_config_serves_var_files_on_9003():
    loaded = config.load(os.path.join(ROOT, "conf", "server.ini"))
    service = [s for s in loaded.services if s["handler"] == "file"][0]
    assert (service["host"], service["port"], service["root"]) == ("127.0.0.1", 9003, "var/files")
    assert service["keys_file"].startswith("var/keys/")
    with open(os.path.join(ROOT, ".gitignore")) as stream:
        assert "/var/" in stream.read().split()


def test_kill_9_during_a_put_leaves_no_partial_file(daemon_factory, keys_file, tmp_path):
    root = tmp_path / "root"
    ini = tmp_path / "server.ini"
    ini.write_text("[service:files]\nhandler = file\nport = 0\nroot = %s\nkeys_file = %s\n"
                   % (root, keys_file))
    daemon = daemon_factory(ini)
    host, port = daemon.wait_listening(1)["files"]
    (root / "f").write_bytes(b"old version")
    import socket
    with socket.create_connection((host, port), timeout=10) as sock:
        stream = FrameStream(sock)
        stream.send(auth.answer_hello(stream.recv().header, "alice", SECRET))
        assert stream.recv().type == "authenticated"
        stream.send({"type": "put", "path": "f", "size": 8 << 20, "overwrite": True})
        assert stream.recv().type == "ready"
        stream.send_raw(os.urandom(2 << 20))
        wait_for(lambda: _temp_sizes(root) and _temp_sizes(root)[0] > 0,
                 message="part of the upload on disk")
        daemon.proc.kill()
        daemon.proc.wait(10)
    assert (root / "f").read_bytes() == b"old version"
    assert len(_temp_sizes(root)) == 1
    restarted = daemon_factory(ini)
    restarted.wait_listening(1)
    assert _temp_sizes(root) == [] and visible(root) == ["f"]
    assert "removed 1 partial uploads" in restarted.log


def _temp_sizes(root):
    return [os.path.getsize(root / name) for name in os.listdir(root) if is_temp_name(name)]


def test_benchmark_script_runs_and_reports_every_figure(capsys, tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "bench_files", os.path.join(ROOT, "scripts", "bench_files.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    figures = bench.run(bench.build_parser().parse_args(
        ["--size", "3M", "--repeat", "1", "--dir", str(tmp_path)]))
    assert set(figures["ratios"]) == {"put", "get_null", "get_null_cold", "get_disk"}
    assert all(speed > 0 for speed in figures["mb_per_s"].values())
    assert 0 < figures["daemon_peak_rss"] < 200 << 20
    table = capsys.readouterr().out
    assert "msgsrv put" in table and "daemon peak RSS" in table
    assert os.listdir(tmp_path) == []
