"""sd_notify over a datagram socket, named and abstract."""

import os
import socket

import pytest

from msgsrv.ops import notify

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def listener(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(5)
    yield sock, str(tmp_path / "notify")
    sock.close()


def test_messages_arrive_on_a_named_socket(listener, monkeypatch):
    sock, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert notify.ready()
    fields = sock.recv(4096).decode().split("\n")
    assert "READY=1" in fields and "MAINPID=%d" % os.getpid() in fields
    assert notify.reloading()
    fields = sock.recv(4096).decode().split("\n")
    assert fields[0] == "RELOADING=1" and fields[1].startswith("MONOTONIC_USEC=")
    assert notify.stopping()
    assert sock.recv(4096).decode().startswith("STOPPING=1")


def test_abstract_socket_name():
    name = "msgsrv-test-%d" % os.getpid()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert notify.notify("STATUS=hi", environ={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(100) == b"STATUS=hi"


def test_unset_or_unreachable_socket_is_not_an_error(tmp_path):
    assert notify.notify("READY=1", environ={}) is False
    assert notify.notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False
