"""Authentication over real sockets: AuthenticatedHandler with FramedClient."""

import logging
import os
import time

import pytest

from msgsrv.wire import auth
from msgsrv.client.framed import FramedClient, resolve_credentials
from msgsrv.wire.errors import AuthError, ConfigError, ConnectionFailed
from msgsrv.net.server import make_server
from msgsrv.wire.frame_stream import FrameStream
from tests.conftest import connect, recv_until_closed, service_config

pytestmark = pytest.mark.timeout(60)

SECRET = "s3cret-s3cret-s3cret"


@pytest.fixture
def keys_file(tmp_path):
    path = tmp_path / "keys"
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, ("alice %s\nbob %s\n" % (SECRET, "b" * 20)).encode())
    os.close(fd)
    return str(path)


@pytest.fixture
def authed(start_service, keys_file):
    return start_service("tests.plugins:AuthedEcho", keys_file=keys_file, auth_timeout=2)


def test_authenticated_request(authed):
    with FramedClient("127.0.0.1", authed.port, "alice", SECRET) as client:
        assert client.identity == "alice"
        reply = client.request({"type": "hi"})
    assert reply.header == {"type": "echo", "identity": "alice", "request": {"type": "hi"}}


def test_wrong_secret_is_refused_after_a_delay_and_logged(authed, caplog):
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, "msgsrv.auth"), pytest.raises(AuthError) as info:
        FramedClient("127.0.0.1", authed.port, "alice", "wrong-wrong-wrong-wrong")
    assert time.monotonic() - started >= auth.FAILURE_DELAY
    assert info.value.code == "auth-failed"
    assert "failed authentication from 127.0.0.1" in caplog.text
    assert authed.counters.snapshot()["auth_failures"] == 1


def test_unknown_key_gets_the_same_generic_error(authed):
    with pytest.raises(AuthError) as info:
        FramedClient("127.0.0.1", authed.port, "mallory", SECRET)
    assert info.value.message == "authentication failed"


def test_replayed_proof_is_refused(authed):
    with connect(authed) as sock:
        stream = FrameStream(sock)
        captured = auth.answer_hello(stream.recv().header, "alice", SECRET)
        stream.send(captured)
        assert stream.recv().type == "authenticated"
    with connect(authed) as sock:
        stream = FrameStream(sock)
        stream.recv()
        stream.send(captured)
        assert stream.recv().header["code"] == "auth-failed"


def test_requests_before_auth_count_as_failures_then_close(authed):
    with connect(authed) as sock:
        stream = FrameStream(sock)
        stream.recv()
        for _ in range(3):
            stream.send({"type": "list"})
        replies = [stream.recv().header for _ in range(3)]
        assert [r["code"] for r in replies] == ["auth-failed"] * 3
        assert "nonce" in replies[0] and "nonce" not in replies[2]
        assert recv_until_closed(sock) == b""


def test_second_attempt_with_the_new_nonce_succeeds(authed):
    with connect(authed) as sock:
        stream = FrameStream(sock)
        hello = stream.recv().header
        stream.send(auth.answer_hello(hello, "alice", "bad-bad-bad-bad-bad"))
        failure = stream.recv().header
        retry = dict(hello, nonce=failure["nonce"])
        stream.send(auth.answer_hello(retry, "alice", SECRET))
        assert stream.recv().type == "authenticated"


def test_silent_client_is_closed_at_auth_timeout(authed):
    with connect(authed) as sock:
        stream = FrameStream(sock)
        assert stream.recv().type == "hello"
        started = time.monotonic()
        assert stream.recv().header["code"] == "timeout"
        assert recv_until_closed(sock) == b""
    assert 1.5 < time.monotonic() - started < 5


def test_anonymous_when_allowed(start_service, keys_file):
    server = start_service("tests.plugins:AnonymousEcho", keys_file=keys_file)
    with FramedClient("127.0.0.1", server.port, timeout=5) as client:
        assert client.hello.header["anonymous"] is True
        assert client.request({"type": "x"}).header["identity"] is None


def test_missing_keys_file_is_created_private(tmp_path, caplog):
    path = tmp_path / "sub" / "new.keys"
    with caplog.at_level(logging.WARNING):
        server = make_server(service_config("tests.plugins:AuthedEcho", keys_file=path))
    server.server_close()
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert "created keys file" in caplog.text and str(path) in caplog.text
    assert list(auth.load_keys(str(path))) == ["admin"]


def test_loose_keys_file_refuses_to_start(keys_file):
    os.chmod(keys_file, 0o644)
    with pytest.raises(ConfigError, match=r"\[service:svc\] keys_file.*chmod 600"):
        make_server(service_config("tests.plugins:AuthedEcho", keys_file=keys_file))


def test_credentials_from_arguments_file_and_environment(keys_file):
    assert resolve_credentials("alice", "x" * 16, environ={}) == ("alice", "x" * 16)
    assert resolve_credentials("alice", keys_file=keys_file, environ={}) == (
        "alice", SECRET.encode())
    assert resolve_credentials(environ={"MSGSRV_KEY": "bob", "MSGSRV_SECRET": "y" * 16}) == (
        "bob", "y" * 16)
    assert resolve_credentials(environ={"MSGSRV_KEY": "bob", "MSGSRV_KEYS_FILE": keys_file}) == (
        "bob", b"b" * 20)
    assert resolve_credentials(environ={}) == (None, None)
    with pytest.raises(ConfigError, match="without a secret"):
        resolve_credentials("alice", environ={})
    with pytest.raises(ConfigError, match="no key named"):
        resolve_credentials("carol", keys_file=keys_file, environ={})


def test_credentials_errors_name_the_options_as_the_caller_spells_them(keys_file):
    from msgsrv.client.framed import CLI_NAMES
    with pytest.raises(ConfigError, match=r"holds several keys \(alice, bob\): choose one with "
                                          r"key_name= \(or MSGSRV_KEY\)"):
        resolve_credentials(keys_file=keys_file, environ={})
    assert resolve_credentials(keys_file=keys_file, environ={"MSGSRV_KEY": "bob"})[0] == "bob"
    with pytest.raises(ConfigError, match=r"choose one with --key \(or MSGSRV_KEY\)"):
        resolve_credentials(keys_file=keys_file, environ={}, names=CLI_NAMES)
    with pytest.raises(ConfigError, match=r"without a secret: give keys_file= \(or "
                                          r"MSGSRV_KEYS_FILE, or secret=\)"):
        resolve_credentials("alice", environ={})


def test_client_refused_when_busy(start_service, keys_file):
    server = start_service("tests.plugins:AuthedEcho", keys_file=keys_file, max_connections=1)
    with FramedClient("127.0.0.1", server.port, "alice", SECRET):
        with pytest.raises(Exception) as info:
            FramedClient("127.0.0.1", server.port, "alice", SECRET)
        assert getattr(info.value, "code", None) == "busy" or isinstance(info.value, ConnectionFailed)
