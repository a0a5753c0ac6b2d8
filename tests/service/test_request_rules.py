"""The request rules every framed service shares (docs/PROTOCOL.rst, "Requests").

A frame without a string ``type`` and a body on a request that takes none are ``bad-request``
everywhere; ``null`` means the default for optional fields; error texts quote values as JSON,
never as Python reprs; every hello says ``anonymous``; ``started`` sends whole seconds as an
integer.
"""

import os

import pytest

from msgsrv.wire import auth
from msgsrv.wire.frames import shown
from msgsrv.wire.frame_stream import FrameStream
from tests.conftest import connect

pytestmark = pytest.mark.timeout(30)

SECRET = "s" * 24


@pytest.fixture
def services(start_service, tmp_path):
    """name -> a running server: status, command and file services with key alice."""
    keys = str(tmp_path / "keys")
    fd = os.open(keys, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, ("alice %s\n" % SECRET).encode())
    os.close(fd)
    return {
        "status": start_service("status"),
        "command": start_service("command", keys_file=keys, user="nobody",
                                 **{"command.echo": "echo {words*}"}),
        "file": start_service("file", keys_file=keys, root=str(tmp_path / "root")),
    }


def session(server, authenticate=True):
    """A FrameStream past the hello (and authenticated when the service asks for it)."""
    stream = FrameStream(connect(server))
    hello = stream.recv().header
    if authenticate and "auth" in hello:
        stream.send(auth.answer_hello(hello, "alice", SECRET))
        assert stream.recv().type == "authenticated"
    return stream, hello


def answer(stream, header, body=b""):
    stream.send(header, body)
    return stream.recv().header


REQUESTS = {"status": {"type": "status"}, "command": {"type": "list"},
            "file": {"type": "list", "path": ""}}


@pytest.mark.parametrize("name", sorted(REQUESTS))
@pytest.mark.parametrize("authenticate", [True, False])
def test_a_frame_without_a_string_type_is_a_bad_request(services, name, authenticate):
    stream, hello = session(services[name], authenticate)
    for header, got in (({}, "null"), ({"type": 5}, "5"), ({"type": None}, "null"),
                        ({"type": True}, "true")):
        reply = answer(stream, header)
        assert (reply["code"], reply["message"]) == (
            "bad-request", "a frame needs a string 'type' (got %s)" % got), name
    # four of them, and not counted as failed authentications (max_auth_failures is 3)
    if not authenticate and "auth" in hello:
        assert answer(stream, auth.answer_hello(hello, "alice", SECRET))["type"] == "authenticated"
    assert answer(stream, REQUESTS[name])["type"] != "error"


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_a_body_on_a_request_that_takes_none_is_refused(services, name):
    stream, _ = session(services[name])
    reply = answer(stream, REQUESTS[name], b"abc")
    assert (reply["code"], reply["message"]) == (
        "bad-request", "a '%s' frame takes no body (got 3 bytes)" % REQUESTS[name]["type"])
    assert answer(stream, REQUESTS[name])["type"] != "error"


def test_null_means_the_default_in_every_service(services):
    stream, _ = session(services["status"])
    assert answer(stream, {"type": "status", "format": None})["format"] == "json"
    stream, _ = session(services["file"])
    assert answer(stream, {"type": "stat", "path": "", "sha256": None})["kind"] == "dir"
    assert answer(stream, {"type": "list", "path": None, "after": None})["type"] == "listing"
    assert answer(stream, {"type": "mkdir", "path": "d", "parents": None})["type"] == "ok"
    assert answer(stream, {"type": "put", "path": "d/f", "size": 1, "overwrite": None,
                           "upload_id": None, "if_sha256": None})["type"] == "ready"
    stream, _ = session(services["command"])
    started = answer(stream, {"type": "run", "command": "echo", "args": None, "argv": None})
    assert started["argv"][1:] == []


def test_error_texts_quote_values_as_json_never_as_python(services):
    stream, _ = session(services["file"])
    reply = answer(stream, {"type": "put", "path": "f", "size": True})
    assert reply["message"] == "'size' must be a whole number 0..%d (got true)" % (2 ** 63 - 1)
    assert answer(stream, {"type": "frob"})["message"] == "no operation 'frob' (try help)"
    stream, _ = session(services["status"])
    assert answer(stream, {"type": "status", "format": False})["message"] == (
        "format must be one of json, prometheus (got false)")
    assert answer(stream, {"type": "stats"})["message"] == (
        "expected a status request (got 'stats')")
    assert [shown(v) for v in (None, True, 2.5, [1, "a"], "a\nb", "x" * 50)] == [
        "null", "true", "2.5", '[1, "a"]', "'a\\nb'", "'" + "x" * 39 + "..."]


def test_every_hello_says_anonymous_and_started_sends_whole_seconds_as_an_integer(services):
    assert {name: session(server, False)[1]["anonymous"] for name, server in services.items()} \
        == {"status": True, "command": False, "file": False}
    stream, _ = session(services["command"])
    started = answer(stream, {"type": "run", "command": "echo", "args": ["hi"]})
    assert started["timeout"] == 10 and isinstance(started["timeout"], int)
