"""The plugin guide's examples (docs/PLUGINS.rst) run as written, through the real daemon.

Each ``# NAME.py -- serve it with: ...`` block is written to a directory named by
plugin_path; one daemon serves them all (tally has its own test in tests/service/test_service.py).
"""

import hashlib
import os
import re
import socket
import textwrap

import pytest

from msgsrv.client.framed import FramedClient
from msgsrv.wire.errors import ServerError
from tests.conftest import ROOT, DaemonProcess, run_msgsrv, wait_for

pytestmark = pytest.mark.timeout(60)

SECRET = "guide-secret-0123456789"
SERVICES = {
    "upper": "case = lower\n",
    "repeat": "max_backlog = 64K\n",
    "sha256": "read_timeout = 5\n",
    "ping": "",
    "whoami": "keys_file = {keys}\n",
    "daytime": "",
}


def guide_modules():
    """NAME -> source of every example module of the guide."""
    with open(os.path.join(ROOT, "docs", "PLUGINS.rst"), encoding="utf-8") as stream:
        guide = stream.read()
    blocks = re.findall(r"::\n\n(    # (\w+)\.py -- serve it with:.*?)(?=\n\S|\Z)", guide, re.S)
    return {name: textwrap.dedent(block) for block, name in blocks}


def config_text(directory, keys, **overrides):
    text = "[msgsrv]\nplugin_path = %s\n" % directory
    for name, extra in dict(SERVICES, **overrides).items():
        handler = re.search(r"handler = (\S+)", guide_modules()[name]).group(1)
        text += "\n[service:%s]\nhandler = %s\nport = 0\n%s" % (
            name, handler, extra.format(keys=keys))
    return text


@pytest.fixture(scope="module")
def plugins(tmp_path_factory):
    """A plugin directory holding every example, and a keys file for whoami."""
    where = tmp_path_factory.mktemp("guide")
    for name, source in guide_modules().items():
        (where / ("%s.py" % name)).write_text(source)
    keys = where / "keys"
    fd = os.open(str(keys), os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, ("alice %s\n" % SECRET).encode())
    os.close(fd)
    return where, keys


@pytest.fixture(scope="module")
def daemon(plugins):
    """One daemon serving every example, its plugins found only through plugin_path."""
    config = plugins[0] / "guide.ini"
    config.write_text(config_text(*plugins))
    process = DaemonProcess(config, env={"PYTHONPATH": ROOT})
    try:
        process.wait_listening(len(SERVICES))
        yield process
    finally:
        process.stop()


def ask(address, data, *, lines=1):
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(data)
        reader = sock.makefile("rb")
        return [reader.readline() for _ in range(lines)]


def test_the_guide_has_every_example(plugins):
    assert set(SERVICES) | {"tally"} <= set(guide_modules())


def test_declared_settings_apply_and_a_bad_value_names_the_key(daemon, plugins, tmp_path):
    assert ask(daemon.listeners["upper"], b"Hello\n") == [b"hello\n"]  # case = lower
    config = tmp_path / "bad.ini"
    config.write_text(config_text(*plugins, upper="case = title\n"))
    checked = run_msgsrv("--config", str(config), "--check")
    assert checked.returncode == 2
    assert "[service:upper] case must be one of upper, lower (got 'title')" in checked.stderr


def test_send_limit_drops_a_client_that_asks_more_than_it_reads(daemon):
    address = daemon.listeners["repeat"]
    assert ask(address, b"3 hi\n", lines=3) == [b"hi\n"] * 3
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"50000 " + b"y" * 1000 + b"\n")  # 50 MB asked for, nothing read yet
        wait_for(lambda: "outcome=send-queue-exceeded" in daemon.log, timeout=10,
                 message="the slow reader dropped")
        received = 0
        try:
            while True:
                data = sock.recv(1 << 20)
                if not data:
                    break
                received += len(data)
        except ConnectionResetError:
            pass
    assert received < 50000 * 1001
    assert ask(address, b"2 ok\n", lines=2) == [b"ok\n"] * 2  # the service carries on


def test_blocking_section_reads_an_upload(daemon):
    data = os.urandom(3 << 20)
    with socket.create_connection(daemon.listeners["sha256"], timeout=10) as sock:
        sock.sendall(b"%d\n" % len(data) + data[:1000])
        sock.sendall(data[1000:])
        answer = sock.makefile("rb").readline()
    assert answer == hashlib.sha256(data).hexdigest().encode() + b"\n"
    assert ask(daemon.listeners["sha256"], b"99999999999\n") == [
        b"error: SIZE must be 0..104857600\n"]


def test_a_sticky_handler_answers_every_round_trip(daemon):
    with socket.create_connection(daemon.listeners["ping"], timeout=10) as sock:
        reader = sock.makefile("rb")
        for _ in range(200):
            sock.sendall(b"ping\n")
            assert reader.readline() == b"pong\n"


def test_an_authenticated_handler_knows_the_key(daemon):
    host, port = daemon.listeners["whoami"]
    with FramedClient(host, port, "alice", SECRET) as client:
        assert client.request({"type": "whoami"}).header["key"] == "alice"
        with pytest.raises(ServerError) as refused:
            client.request({"type": "other"})
        assert refused.value.code == "bad-request"


def test_a_plain_socketserver_handler_runs_unchanged(daemon):
    with socket.create_connection(daemon.listeners["daytime"], timeout=10) as sock:
        reader = sock.makefile("rb")
        line = reader.readline()
        assert line.endswith(b"\r\n") and len(line) > 20
        assert reader.read() == b""
    assert "Traceback" not in daemon.log
