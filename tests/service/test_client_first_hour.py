"""The client commands as a new user meets them: keys, wrong ports, resuming, overwriting.

Each user-visible point runs ``python -m msgsrv.client ...`` as a subprocess
against a real server on 127.0.0.1 port 0 and checks the exact line printed.
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from msgsrv.client import ChatClient, ConnectionFailed, FileClient, RequestTimeout
from msgsrv.client.framed import DEFAULT_HELLO_TIMEOUT, FramedClient
from msgsrv.wire.errors import ProtocolError
from msgsrv.services.files.sandbox import is_temp_name
from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.timeout(60)

SECRET, OPS_SECRET = "s" * 24, "o" * 24


def keys(tmp_path, *names):
    path = tmp_path / ("keys-" + "-".join(names))
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, "".join("%s %s\n" % (name, SECRET if name == "alice" else OPS_SECRET)
                         for name in names).encode())
    os.close(fd)
    return str(path)


@pytest.fixture
def two_keys(tmp_path):
    return keys(tmp_path, "alice", "ops")


@pytest.fixture
def files(start_service, two_keys, tmp_path):
    root = tmp_path / "root"
    return start_service("file", root=str(root), keys_file=two_keys), root


def address(server):
    return "127.0.0.1:%d" % server.port


def client_env(**variables):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSGSRV_")}
    env.update(variables)
    return env


def cli(*argv, env=None, cwd=ROOT):
    """Run ``python -m msgsrv.client ARGV``; return ``(status, stdout, stderr, seconds)``."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "msgsrv.client"] + list(argv),
                          cwd=cwd, env=env or client_env(PYTHONPATH=ROOT),
                          capture_output=True, text=True, timeout=30)
    return done.returncode, done.stdout, done.stderr, time.monotonic() - started


# -- keys ----------------------------------------------------------------------------

def test_without_key_the_only_key_or_msgsrv_key_is_used_else_the_choice_is_asked(
        files, two_keys, tmp_path):
    server, _root = files
    status, _, err, _ = cli("ls", address(server), "--keys-file", two_keys)
    assert (status, err) == (1, "msgsrv.client: the keys file %s holds several keys (alice, ops): "
                                "choose one with --key (or MSGSRV_KEY)\n" % two_keys)
    env = client_env(PYTHONPATH=ROOT, MSGSRV_KEYS_FILE=two_keys, MSGSRV_KEY="ops")
    assert cli("ls", address(server), env=env)[:3] == (0, "", "")
    assert cli("ls", address(server), "--keys-file", two_keys, "--key", "alice")[:3] == (0, "", "")
    status, _, err, _ = cli("ls", address(server), "--keys-file", two_keys, "--key", "carol")
    assert (status, err) == (1, "msgsrv.client: the keys file %s has no key named 'carol' "
                                "(it holds: alice, ops)\n" % two_keys)
    status, _, err, _ = cli("ls", address(server), "--key", "alice")
    assert (status, err) == (1, "msgsrv.client: key 'alice' given without a secret: give "
                                "--keys-file (or MSGSRV_KEYS_FILE, or MSGSRV_SECRET)\n")


def test_a_single_key_needs_no_name_and_no_key_names_the_cli_options(start_service, tmp_path):
    one = keys(tmp_path, "alice")
    server = start_service("file", root=str(tmp_path / "root"), keys_file=one)
    assert cli("ls", address(server), "--keys-file", one)[:3] == (0, "", "")
    status, _, err, _ = cli("ls", address(server))
    assert (status, err) == (1, "msgsrv.client: auth-failed: %s needs a key: give --key and "
                                "--keys-file (or MSGSRV_KEY and MSGSRV_KEYS_FILE)\n"
                             % address(server))


# -- talking to the wrong port -------------------------------------------------------

def test_a_framed_command_on_the_chat_port_says_so_at_once(start_service, two_keys):
    chat = start_service("chat")
    status, _, err, seconds = cli("ls", address(chat), "--keys-file", two_keys, "--key", "ops")
    assert (status, err) == (1, "msgsrv.client: %s does not speak the msgsrv frame protocol (it "
                                "sent '* welcome msgsrv type a nickname (or /ni ...')\n"
                             % address(chat))
    assert seconds < DEFAULT_HELLO_TIMEOUT
    status, _, err, _ = cli("status", address(chat))
    assert status == 1 and "does not speak the msgsrv frame protocol" in err


def test_a_silent_port_is_given_up_after_the_hello_timeout(start_service):
    echo = start_service("echo")
    status, _, err, seconds = cli("status", address(echo), "--hello-timeout", "0.5")
    assert (status, err) == (1, "msgsrv.client: %s sent nothing within 0.5 s of connecting: it "
                                "does not speak the msgsrv frame protocol, or expects TLS, or is "
                                "overloaded\n" % address(echo))
    assert seconds < 5


def test_the_chat_command_on_a_framed_port_says_so_at_once(files):
    server, _root = files
    status, _, err, _ = cli("chat", address(server), "--nick", "zed")
    assert status == 1
    assert err.startswith("msgsrv.client: %s does not speak the msgsrv chat protocol (it sent "
                          "'\\x00\\x00\\x00" % address(server))
    status, _, err, _ = cli("chat", address(server), "--nick", "no spaces")
    assert (status, err.startswith("msgsrv.client: --nick: nick 'no spaces' must be")) == (2, True)


def test_a_chat_refusal_is_not_taken_for_a_foreign_server(start_service):
    chat = start_service("chat", max_connections=1)
    with ChatClient("127.0.0.1", chat.port, "first", timeout=5):
        with pytest.raises(ConnectionFailed, match="closed by server"):  # no "! busy" line
            ChatClient("127.0.0.1", chat.port, "second", timeout=5)


class _Greeter:
    """A listener that sends ``greeting`` (maybe nothing) to each client, then waits."""

    def __init__(self, greeting):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.greeting = greeting
        self.accepted = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        self.accepted.append(conn)
        conn.sendall(self.greeting)

    def close(self):
        self.sock.close()
        for conn in self.accepted:
            conn.close()
        self.thread.join(5)


@pytest.mark.parametrize("greeting, shown", [
    (b"SSH-2.0-OpenSSH_9.6\r\n", "'SSH-2.0-OpenSSH_9.6'"),
    (b"\x00\x00\x00\x05hello", "'\\x00\\x00\\x00\\x05hello'"),
    (b"\x00\x00\x00\x02[]", "'\\x00\\x00\\x00\\x02[]'"),
    (b"220 " + b"x" * 100 + b"\r\n", "'220 " + "x" * 36 + " ...'"),
])
def test_library_names_what_a_foreign_server_sent(greeting, shown):
    peer = _Greeter(greeting)
    try:
        with pytest.raises(ProtocolError) as info:
            FramedClient("127.0.0.1", peer.port, timeout=10)
    finally:
        peer.close()
    assert info.value.code == "not-msgsrv"
    assert str(info.value) == ("127.0.0.1:%d does not speak the msgsrv frame protocol (it sent "
                               "%s)" % (peer.port, shown))


def test_library_hello_timeout_is_short_and_configurable():
    assert DEFAULT_HELLO_TIMEOUT == 3.0
    peer = _Greeter(b"\x00\x00")
    started = time.monotonic()
    try:
        with pytest.raises(RequestTimeout, match=r"sent only '\\x00\\x00' within 0.2 s"):
            FileClient("127.0.0.1", peer.port, timeout=10, hello_timeout=0.2)
    finally:
        peer.close()
    assert time.monotonic() - started < 2


# -- resuming ------------------------------------------------------------------------

class StallingProxy:
    """Forwards one connection to ``port``, but only ``budget`` bytes in one direction
    (``upstream``: client to server); then it stops reading that way, so the sender
    blocks mid-transfer.  ``stop()`` closes both sides."""

    def __init__(self, port, budget, upstream):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.target, self.budget, self.upstream = port, budget, upstream
        self.stalled = threading.Event()
        self.sockets = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self):
        client, _ = self.listener.accept()
        server = socket.create_connection(("127.0.0.1", self.target))
        self.sockets += [client, server]
        for source, sink, limited in ((client, server, self.upstream),
                                      (server, client, not self.upstream)):
            thread = threading.Thread(target=self._pump, daemon=True,
                                      args=(source, sink, self.budget if limited else None))
            thread.start()
            self.threads.append(thread)

    def _pump(self, source, sink, budget):
        try:
            while budget is None or budget > 0:
                data = source.recv(65536 if budget is None else min(65536, budget))
                if not data:
                    break
                sink.sendall(data)
                budget = None if budget is None else budget - len(data)
        except OSError:
            return
        if budget == 0:
            self.stalled.set()

    def stop(self):
        self.listener.close()
        for sock in self.sockets:
            with _quiet():
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self.threads:
            thread.join(5)


class _quiet:
    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return exc_info[0] is not None and issubclass(exc_info[0], OSError)


def interrupted(argv, proxy, env, stored):
    """Start the CLI through ``proxy``; Ctrl-C it once the proxy stalls and ``stored()``
    (the bytes the receiver wrote) reaches 1 MiB; return its standard error."""
    proc = subprocess.Popen([sys.executable, "-m", "msgsrv.client"] + argv, cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        if not proxy.stalled.wait(20):
            proc.kill()
            pytest.fail("the transfer never reached the stall: %s" % proc.communicate()[1])
        wait_for(lambda: (stored() or 0) >= 1 << 20, timeout=20, message="1 MiB stored")
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
        proxy.stop()
    assert proc.returncode == 130, err
    return err


def server_part(root):
    parts = [name for name in os.listdir(root) if is_temp_name(name)]
    return os.path.getsize(root / parts[0]) if len(parts) == 1 else None


def local_part(directory, name):
    try:
        return os.path.getsize(directory / (".%s.msgsrv-part" % name))
    except FileNotFoundError:
        return None


def any_local_part(directory):
    parts = [name for name in os.listdir(directory) if name.endswith(".msgsrv-part")]
    return os.path.getsize(directory / parts[0]) if parts else None


def test_an_interrupted_put_resumes_by_default(files, two_keys, tmp_path):
    server, root = files
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(6 << 20))
    env = client_env(PYTHONPATH=ROOT, MSGSRV_KEYS_FILE=two_keys, MSGSRV_KEY="alice")
    proxy = StallingProxy(server.port, 2 << 20, upstream=True)
    err = interrupted(["put", "127.0.0.1:%d" % proxy.port, str(local)], proxy, env,
                      lambda: server_part(root))
    assert err == ("msgsrv.client: interrupted: the server keeps what it received of big.bin: "
                   "run the same command again to resume\n")
    wait_for(lambda: server.connection_count == 0, message="the server to see the close")
    kept = server_part(root)
    assert kept and 1 << 20 <= kept < 2 << 20
    status, _, err, _ = cli("put", address(server), str(local), env=env)
    assert (status, err) == (0, "msgsrv.client: resuming the upload of big.bin: the server kept "
                                "%.1f MiB (%d bytes)\n" % (kept / (1 << 20), kept))
    assert (root / "big.bin").read_bytes() == local.read_bytes()
    assert server_part(root) is None


def test_an_interrupted_get_resumes_and_a_changed_file_starts_over(files, two_keys, tmp_path):
    server, root = files
    root.mkdir(exist_ok=True)
    (root / "big.bin").write_bytes(os.urandom(6 << 20))
    here = tmp_path / "here"
    here.mkdir()
    env = client_env(PYTHONPATH=ROOT, MSGSRV_KEYS_FILE=two_keys, MSGSRV_KEY="alice")

    def get_through(proxy, *more):
        return ["get", "127.0.0.1:%d" % proxy.port, "big.bin", str(here / "big.bin")] + list(more)

    proxy = StallingProxy(server.port, 2 << 20, upstream=False)
    err = interrupted(get_through(proxy), proxy, env, lambda: local_part(here, "big.bin"))
    part = here / ".big.bin.msgsrv-part"
    kept = os.path.getsize(part)
    assert 1 << 20 <= kept < 2 << 20 and not (here / "big.bin").exists()
    assert err == ("msgsrv.client: interrupted: %.1f MiB kept in %s: run the same command again "
                   "to resume\n" % (kept / (1 << 20), part))
    status, _, err, _ = cli("get", address(server), "big.bin", str(here / "big.bin"), env=env)
    assert (status, err) == (0, "msgsrv.client: resuming the download of big.bin: kept in %s: "
                                "%.1f MiB (%d bytes)\n" % (part, kept / (1 << 20), kept))
    assert (here / "big.bin").read_bytes() == (root / "big.bin").read_bytes()
    assert sorted(os.listdir(here)) == ["big.bin"]

    proxy = StallingProxy(server.port, 2 << 20, upstream=False)
    interrupted(get_through(proxy, "-f"), proxy, env, lambda: local_part(here, "big.bin"))
    kept = os.path.getsize(part)
    (root / "big.bin").write_bytes(os.urandom(5 << 20))  # a new version meanwhile
    status, _, err, _ = cli("get", address(server), "big.bin", str(here / "big.bin"), "-f",
                            env=env)
    assert (status, err) == (0, "msgsrv.client: the part of big.bin kept from an interrupted "
                                "download (%.1f MiB (%d bytes)) is of another version of it: "
                                "downloading from byte 0\n" % (kept / (1 << 20), kept))
    assert (here / "big.bin").read_bytes() == (root / "big.bin").read_bytes()
    assert sorted(os.listdir(here)) == ["big.bin"]


def test_resume_asked_with_nothing_kept_says_so_and_no_resume_keeps_nothing(files, two_keys,
                                                                            tmp_path):
    server, root = files
    local = tmp_path / "small.txt"
    local.write_bytes(b"small\n")
    env = client_env(PYTHONPATH=ROOT, MSGSRV_KEYS_FILE=two_keys, MSGSRV_KEY="alice")
    status, _, err, _ = cli("put", address(server), str(local), "--resume", env=env)
    assert (status, err) == (0, "msgsrv.client: nothing to resume for small.txt: sending from "
                                "byte 0\n")
    status, _, err, _ = cli("get", address(server), "small.txt", str(tmp_path / "copy"),
                            "--resume", env=env)
    assert (status, err) == (0, "msgsrv.client: nothing to resume for small.txt: downloading "
                                "from byte 0\n")
    (root / "big.bin").write_bytes(os.urandom(6 << 20))
    proxy = StallingProxy(server.port, 2 << 20, upstream=False)
    here = tmp_path / "here"
    here.mkdir()
    err = interrupted(["get", "127.0.0.1:%d" % proxy.port, "big.bin", str(here / "big.bin"),
                       "--no-resume"], proxy, env, lambda: any_local_part(here))
    assert (err, os.listdir(here)) == ("", [])


# -- overwriting ---------------------------------------------------------------------

def test_get_refuses_to_replace_a_local_file_unless_forced(files, two_keys, tmp_path):
    server, root = files
    root.mkdir(exist_ok=True)
    (root / "notes.txt").write_bytes(b"remote\n")
    (tmp_path / "notes.txt").write_bytes(b"mine\n")
    env = client_env(PYTHONPATH=ROOT, MSGSRV_KEYS_FILE=two_keys, MSGSRV_KEY="alice")
    status, _, err, _ = cli("get", address(server), "notes.txt", env=env, cwd=str(tmp_path))
    assert (status, err) == (1, "msgsrv.client: notes.txt exists (use -f to overwrite it)\n")
    assert (tmp_path / "notes.txt").read_bytes() == b"mine\n"
    assert cli("get", address(server), "notes.txt", "-f", env=env, cwd=str(tmp_path))[:3] == (
        0, "", "")
    assert (tmp_path / "notes.txt").read_bytes() == b"remote\n"


def test_library_get_without_overwrite_refuses_before_and_at_the_rename(files, tmp_path,
                                                                       monkeypatch):
    server, root = files
    root.mkdir(exist_ok=True)
    (root / "f").write_bytes(b"remote")
    here = tmp_path / "here"
    here.mkdir()
    target = here / "f"
    target.write_bytes(b"mine")
    with FileClient("127.0.0.1", server.port, "alice", SECRET, timeout=10) as client:
        with pytest.raises(FileExistsError):
            client.get("f", str(target), overwrite=False)
        target.unlink()

        def appears(done, total):
            if done == total:
                target.write_bytes(b"raced")

        with pytest.raises(FileExistsError):
            client.get("f", str(target), overwrite=False, progress=appears)
        assert target.read_bytes() == b"raced" and os.listdir(here) == ["f"]
        client.get("f", str(target))
    assert target.read_bytes() == b"remote"
