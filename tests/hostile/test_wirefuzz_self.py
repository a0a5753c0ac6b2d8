"""The fuzzer itself: replayable mutations, and it does report a misbehaving service."""

import random

import pytest

from msgsrv.wire.frames import FrameDecoder, encode, error_header
from tests.hostile import campaign
from tests.hostile.wirefuzz import (
    FILE_CODES, FILE_TYPES, MUTATORS, check_frames, framed_target, fuzz, mutate,
    stream_echo_target,
)

pytestmark = pytest.mark.timeout(campaign.timeout(30))


def test_mutations_are_replayable_from_the_seed():
    corpus = [encode({"type": "ping"}), b"raw bytes"]
    runs = [[mutate(corpus[0], random.Random("7/%d" % i), corpus) for i in range(50)]
            for _ in range(2)]
    assert runs[0] == runs[1]
    assert len(set(runs[0])) > 40  # and they do vary


@pytest.mark.parametrize("mutator", MUTATORS, ids=lambda m: m.__name__)
def test_every_mutator_handles_empty_and_tiny_inputs(mutator):
    rng = random.Random(1)
    for data in (b"", b"\x00", encode({})):
        assert isinstance(mutator(data, rng, b"other"), bytes)


@pytest.mark.parametrize("reply, problem", [
    (encode({"type": "echo"}), None),
    (encode(error_header("too-large", "no")), None),
    (encode(error_header("internal", "internal server error (logged)")), "undocumented error code"),
    (encode({"type": "surprise"}), "unexpected frame type"),
    (encode({"type": "echo"})[:-1], "not well-formed frames"),
    (b"\x00\x00\x00\x02[]", "not well-formed frames"),
])
def test_check_frames(reply, problem):
    found = check_frames(FrameDecoder(), reply)
    assert (found is None) if problem is None else (problem in found)


@pytest.mark.parametrize("raw, problem", [
    (b"bcd", None),
    (b"bc", None),  # cut short inside the raw bytes: nothing more to judge
    (b"bcdX", "not well-formed frames"),  # a stray byte after the announced data
])
def test_check_frames_passes_over_a_downloads_raw_bytes(raw, problem):
    data = encode({"type": "data", "path": "f", "size": 4, "offset": 1})
    end = encode({"type": "end", "sha256": "0" * 64}) if len(raw) >= 3 else b""
    reply = data + raw[:3] + end + raw[3:]
    found = check_frames(FrameDecoder(), reply, types=FILE_TYPES, codes=FILE_CODES)
    assert (found is None) if problem is None else (problem in found)


def _fuzz_once(target):
    return fuzz([target], count=60, budget=10, health=lambda: None, seed=1)


def test_the_fuzzer_reports_an_inexact_echo(start_service):
    server = start_service("tests.hostile.plugins:UpperEcho")
    report = _fuzz_once(stream_echo_target(("127.0.0.1", server.port)))
    assert report.findings and "echo differs" in report.findings[0].problem


def test_the_fuzzer_reports_a_traceback_on_the_wire(start_service):
    server = start_service("tests.hostile.plugins:TracebackFramed")
    target = framed_target("leaky", ("127.0.0.1", server.port), authed=False, phase="post-auth")
    report = _fuzz_once(target)
    assert any("traceback" in finding.problem for finding in report.findings)
    assert "leaky/post-auth" in str(report.findings[0])
