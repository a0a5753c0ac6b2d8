"""Tests for msgsrv.wire.auth: the keys file and the HMAC handshake, without sockets."""

import hashlib
import hmac
import os
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msgsrv.wire import auth
from msgsrv.wire.auth import (
    FAILURE_DELAY, SCHEME, HandshakeResult, ServerHandshake, answer_hello,
    check_auth_reply, compute_proof, ensure_keys_file, format_key_line,
    generate_secret, load_keys,
)
from msgsrv.wire.errors import AuthError, ConfigError, ProtocolError, ServerError

pytestmark = pytest.mark.timeout(60)

ALICE_SECRET = "alice-secret-0123456789"
BOB_SECRET = "bob-secret-abcdefghijkl"
KEYS = {"alice": ALICE_SECRET.encode(), "bob": BOB_SECRET.encode()}
GOOD_FILE = (
    "# msgsrv keys\n"
    "\n"
    "alice %s\n"
    "   # an indented comment\n"
    "bob\t%s  \r\n" % (ALICE_SECRET, BOB_SECRET)
)


def write_keys(tmp_path, text, mode=0o600):
    path = tmp_path / "keys"
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    os.chmod(path, mode)
    return path


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def open_umask():
    """Run with umask 0, so any mode we get comes from the code, not the umask."""
    old = os.umask(0)
    yield
    os.umask(old)


# --- load_keys ---------------------------------------------------------------

def test_load_keys_reads_keys_and_skips_comments_and_blank_lines(tmp_path):
    path = write_keys(tmp_path, GOOD_FILE)
    assert load_keys(path) == KEYS
    assert load_keys(str(path)) == KEYS


def test_load_keys_accepts_every_allowed_name_character(tmp_path):
    names = ["a.b_c-d@example.org", "X" * 64, "0"]
    path = write_keys(tmp_path, "".join("%s %s\n" % (n, ALICE_SECRET) for n in names))
    assert sorted(load_keys(path)) == sorted(names)


def test_load_keys_with_only_comments_gives_no_keys(tmp_path):
    assert load_keys(write_keys(tmp_path, "# nobody yet\n\n")) == {}


def test_load_keys_tolerates_a_utf8_byte_order_mark(tmp_path):
    path = write_keys(tmp_path, b"\xef\xbb\xbfalice " + ALICE_SECRET.encode() + b"\n")
    assert load_keys(path) == {"alice": ALICE_SECRET.encode()}


SECRET_IN_BAD_LINE = "p4ssword-that-is-long-enough"

MALFORMED_LINES = [
    ("alice", "2 fields, got 1"),
    ("alice %s extra" % SECRET_IN_BAD_LINE, "2 fields, got 3"),
    ("alice %s # trailing comment" % SECRET_IN_BAD_LINE, "2 fields, got 5"),
    ("bad/name %s" % SECRET_IN_BAD_LINE, "key name must match"),
    ("n\u00e4me %s" % SECRET_IN_BAD_LINE, "key name must match"),
    ("%s %s" % ("x" * 65, SECRET_IN_BAD_LINE), "key name must match"),
    ("alice short", "at least 16 characters"),
    ("alice %s" % ("y" * 15), "at least 16 characters"),
]


@pytest.mark.parametrize("line, rule", MALFORMED_LINES)
def test_malformed_line_names_file_line_and_rule_but_not_the_secret(tmp_path, line, rule):
    path = write_keys(tmp_path, "# header\nbob %s\n%s\n" % (BOB_SECRET, line))
    with pytest.raises(ConfigError) as info:
        load_keys(path)
    message = str(info.value)
    assert str(path) in message
    assert "line 3:" in message
    assert rule in message
    assert SECRET_IN_BAD_LINE not in message and "y" * 15 not in message
    assert BOB_SECRET not in message


def test_duplicate_name_is_refused_with_both_line_numbers(tmp_path):
    text = "alice %s\n# gap\nalice %s\n" % (ALICE_SECRET, BOB_SECRET)
    with pytest.raises(ConfigError) as info:
        load_keys(write_keys(tmp_path, text))
    message = str(info.value)
    assert "line 3:" in message and "first defined on line 1" in message
    assert "duplicate key name 'alice'" in message
    assert ALICE_SECRET not in message and BOB_SECRET not in message


def test_invalid_utf8_is_refused_with_its_line_number(tmp_path):
    path = write_keys(tmp_path, b"alice " + ALICE_SECRET.encode() + b"\nbob \xff" + b"z" * 20)
    with pytest.raises(ConfigError, match="line 2: not valid UTF-8"):
        load_keys(path)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606, 0o610, 0o601])
def test_keys_file_open_to_group_or_others_is_refused(tmp_path, mode):
    path = write_keys(tmp_path, GOOD_FILE, mode)
    with pytest.raises(ConfigError) as info:
        load_keys(path)
    message = str(info.value)
    assert "%04o" % mode in message
    assert "chmod 600 %s" % path in message
    assert ALICE_SECRET not in message


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_owner_only_keys_file_is_accepted(tmp_path, mode):
    assert load_keys(write_keys(tmp_path, GOOD_FILE, mode)) == KEYS


def test_missing_keys_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_keys(tmp_path / "nope")


def test_directory_is_not_a_keys_file(tmp_path):
    directory = tmp_path / "keys.d"
    directory.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_keys(directory)


# --- ensure_keys_file, generate_secret, format_key_line --------------------------

def test_ensure_keys_file_creates_private_dirs_and_file(tmp_path, open_umask):
    path = tmp_path / "etc" / "msgsrv" / "keys"
    assert ensure_keys_file(path) is True
    assert mode_of(path) == 0o600
    assert mode_of(tmp_path / "etc") == 0o700
    assert mode_of(tmp_path / "etc" / "msgsrv") == 0o700
    keys = load_keys(path)
    assert list(keys) == ["admin"]
    assert len(keys["admin"]) >= 40
    assert os.listdir(path.parent) == ["keys"]  # no temp file left behind


def test_ensure_keys_file_gives_mode_0600_even_when_the_umask_drops_owner_bits(tmp_path):
    old = os.umask(0o277)
    try:
        assert ensure_keys_file(tmp_path / "keys") is True
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "keys") == 0o600


def test_ensure_keys_file_never_touches_an_existing_file(tmp_path):
    path = tmp_path / "keys"
    assert ensure_keys_file(path, name="ops@example") is True
    before = path.read_bytes()
    assert ensure_keys_file(path, name="other") is False
    assert path.read_bytes() == before
    assert list(load_keys(path)) == ["ops@example"]


def test_ensure_keys_file_leaves_existing_loose_file_for_load_keys_to_refuse(tmp_path):
    path = write_keys(tmp_path, GOOD_FILE, 0o644)
    assert ensure_keys_file(path) is False
    assert mode_of(path) == 0o644
    with pytest.raises(ConfigError, match="chmod 600"):
        load_keys(path)


def test_ensure_keys_file_writes_a_fresh_secret_each_time(tmp_path):
    ensure_keys_file(tmp_path / "a")
    ensure_keys_file(tmp_path / "b")
    assert load_keys(tmp_path / "a") != load_keys(tmp_path / "b")


def test_ensure_keys_file_refuses_an_invalid_name_and_creates_nothing(tmp_path):
    with pytest.raises(ConfigError, match="key name must match"):
        ensure_keys_file(tmp_path / "sub" / "keys", name="no spaces")
    assert os.listdir(tmp_path) == []


def test_ensure_keys_file_reports_an_uncreatable_parent(tmp_path):
    (tmp_path / "plain").write_text("not a directory")
    with pytest.raises(ConfigError, match="cannot create keys file"):
        ensure_keys_file(tmp_path / "plain" / "keys")


def test_generated_secrets_are_long_distinct_single_tokens():
    first, second = generate_secret(), generate_secret()
    assert first != second
    assert len(first) >= 40 and first.split() == [first]


def test_format_key_line_round_trips_through_load_keys(tmp_path):
    secret = generate_secret()
    line = format_key_line("carol", secret)
    assert line == "carol " + secret
    assert load_keys(write_keys(tmp_path, line + "\n")) == {"carol": secret.encode()}


@pytest.mark.parametrize("name, secret, rule", [
    ("bad name", ALICE_SECRET, "key name must match"),
    ("", ALICE_SECRET, "key name must match"),
    ("alice", "tooshort-secret", "at least 16 characters"),
    ("alice", "has a space in the secret", "at least 16 characters"),
    ("alice", None, "at least 16 characters"),
])
def test_format_key_line_refuses_what_load_keys_would_refuse(name, secret, rule):
    with pytest.raises(ConfigError, match=rule) as info:
        format_key_line(name, secret)
    assert secret is None or secret not in str(info.value)


# --- proofs and the client side ----------------------------------------------------

def test_compute_proof_is_hmac_sha256_over_the_specified_input():
    nonce = "ab" * 32
    message = b"msgsrv-auth-v1\x00" + nonce.encode() + b"\x00" + "j\u00fcrgen".encode("utf-8")
    expected = hmac.new(b"k" * 20, message, hashlib.sha256).hexdigest()
    assert compute_proof(b"k" * 20, nonce, "j\u00fcrgen") == expected
    assert compute_proof("k" * 20, nonce, "j\u00fcrgen") == expected


def test_proof_depends_on_secret_nonce_and_name():
    base = compute_proof(b"secret", "0" * 64, "alice")
    assert compute_proof(b"secreT", "0" * 64, "alice") != base
    assert compute_proof(b"secret", "1" + "0" * 63, "alice") != base
    assert compute_proof(b"secret", "0" * 64, "alicf") != base


def test_answer_hello_builds_the_auth_header():
    hello = {"type": "hello", "auth": SCHEME, "nonce": "c" * 64, "service": "command"}
    assert answer_hello(hello, "alice", ALICE_SECRET) == {
        "type": "auth", "key": "alice",
        "proof": compute_proof(ALICE_SECRET.encode(), "c" * 64, "alice"),
    }


def _hello(**changes):
    header = {"type": "hello", "auth": SCHEME, "nonce": "0123456789abcdef" * 4}
    header.update(changes)
    return {k: v for k, v in header.items() if v is not _DROP}


_DROP = object()


@pytest.mark.parametrize("hello", [
    None, [], "hello",
    _hello(type="error"), _hello(type=_DROP),
    _hello(auth="plain"), _hello(auth=_DROP), _hello(auth=None),
    _hello(nonce=_DROP), _hello(nonce=None), _hello(nonce=12345),
    _hello(nonce="ab" * 31), _hello(nonce="ab" * 33), _hello(nonce="AB" * 32),
    _hello(nonce="zz" * 32), _hello(nonce="ab" * 32 + "\n"),
])
def test_answer_hello_rejects_a_bad_hello(hello):
    with pytest.raises(ProtocolError) as info:
        answer_hello(hello, "alice", ALICE_SECRET)
    assert info.value.code == "bad-hello"


def test_answer_hello_accepts_the_reference_hello():
    assert answer_hello(_hello(), "alice", ALICE_SECRET)["type"] == "auth"


def test_answer_hello_refuses_an_invalid_key_name():
    with pytest.raises(ConfigError):
        answer_hello(_hello(), "not valid", ALICE_SECRET)


def test_check_auth_reply_reads_success_and_errors():
    assert check_auth_reply({"type": "authenticated", "key": "alice"}) == "alice"
    with pytest.raises(AuthError) as info:
        check_auth_reply({"type": "error", "code": "auth-failed", "message": "authentication failed"})
    assert info.value.code == "auth-failed"
    with pytest.raises(ServerError) as info:
        check_auth_reply({"type": "error", "code": "busy", "message": "try later"})
    assert info.value.code == "busy" and not isinstance(info.value, AuthError)
    for junk in (None, {"type": "hello"}, {"type": "authenticated"}):
        with pytest.raises(ProtocolError) as info:
            check_auth_reply(junk)
        assert info.value.code == "bad-reply"


# --- the server handshake ----------------------------------------------------------

def is_nonce(value):
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def test_hello_offers_the_scheme_a_fresh_nonce_and_extra_fields():
    first = ServerHandshake(KEYS, extra={"service": "files", "version": "0.1.0"})
    hello = first.hello()
    assert hello["type"] == "hello" and hello["auth"] == SCHEME
    assert hello["service"] == "files" and hello["version"] == "0.1.0"
    assert is_nonce(hello["nonce"])
    assert ServerHandshake(KEYS).hello()["nonce"] != hello["nonce"]
    assert first.hello() == hello  # stable until an attempt fails
    assert not first.done and first.identity is None


@pytest.mark.parametrize("field", ["type", "auth", "nonce"])
def test_extra_fields_cannot_replace_the_hello_fields(field):
    with pytest.raises(ValueError, match=field):
        ServerHandshake(KEYS, extra={field: "x"})


@pytest.mark.parametrize("bad", [0, -1, 1.5, None])
def test_max_failures_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError):
        ServerHandshake(KEYS, max_failures=bad)


def test_round_trip_authenticates_and_names_the_identity():
    server = ServerHandshake(KEYS)
    result = server.receive(answer_hello(server.hello(), "alice", ALICE_SECRET))
    assert result.outcome == HandshakeResult.AUTHENTICATED
    assert result.identity == "alice"
    assert result.reply == {"type": "authenticated", "key": "alice"}
    assert server.identity == "alice" and server.done
    assert check_auth_reply(result.reply) == "alice"


def test_secrets_given_as_str_work_too():
    server = ServerHandshake({"alice": ALICE_SECRET})
    result = server.receive(answer_hello(server.hello(), "alice", ALICE_SECRET.encode()))
    assert result.outcome == HandshakeResult.AUTHENTICATED


def generic_failure(result):
    """Assert ``result`` is the generic failure reply and return its new nonce."""
    assert result.outcome == HandshakeResult.FAILED
    assert result.identity is None
    nonce = result.reply.pop("nonce")
    assert result.reply == {"type": "error", "code": "auth-failed", "message": "authentication failed"}
    assert is_nonce(nonce)
    return nonce


def test_wrong_secret_fails_with_a_new_nonce():
    server = ServerHandshake(KEYS)
    old = server.hello()["nonce"]
    result = server.receive(answer_hello(server.hello(), "alice", BOB_SECRET))
    new = generic_failure(result)
    assert new != old and server.hello()["nonce"] == new
    assert not server.done and server.identity is None


def test_unknown_name_gets_the_same_generic_failure():
    wrong_secret = ServerHandshake(KEYS)
    unknown = ServerHandshake(KEYS)
    known = wrong_secret.receive(answer_hello(wrong_secret.hello(), "alice", BOB_SECRET))
    missing = unknown.receive(answer_hello(unknown.hello(), "mallory", BOB_SECRET))
    generic_failure(known)
    generic_failure(missing)
    assert known == missing


def test_unknown_name_still_costs_one_hmac(monkeypatch):
    calls = []
    real = auth.compute_proof
    monkeypatch.setattr(auth, "compute_proof", lambda *a: calls.append(a) or real(*a))
    server = ServerHandshake(KEYS)
    proof = real(b"whatever-secret!", server.hello()["nonce"], "mallory")
    server.receive({"type": "auth", "key": "mallory", "proof": proof})
    assert len(calls) == 1 and calls[0][2] == "mallory"


def test_a_proof_made_with_the_dummy_secret_does_not_authenticate(monkeypatch):
    monkeypatch.setattr(auth, "_DUMMY_SECRET", b"known-dummy-secret")
    server = ServerHandshake(KEYS)
    generic_failure(server.receive(answer_hello(server.hello(), "mallory", b"known-dummy-secret")))


def test_a_valid_proof_replayed_on_a_new_handshake_fails():
    first = ServerHandshake(KEYS)
    captured = answer_hello(first.hello(), "alice", ALICE_SECRET)
    assert first.receive(dict(captured)).outcome == HandshakeResult.AUTHENTICATED
    second = ServerHandshake(KEYS)
    generic_failure(second.receive(captured))


def test_after_a_failure_only_a_proof_over_the_new_nonce_works():
    server = ServerHandshake(KEYS)
    proof_for_old = answer_hello(server.hello(), "alice", ALICE_SECRET)
    generic_failure(server.receive({"type": "auth", "key": "alice", "proof": "0" * 64}))
    new_nonce = server.hello()["nonce"]
    generic_failure(server.receive(proof_for_old))
    assert server.hello()["nonce"] != new_nonce
    result = server.receive(answer_hello(server.hello(), "alice", ALICE_SECRET))
    assert result.outcome == HandshakeResult.AUTHENTICATED


def test_max_failures_closes_the_connection():
    server = ServerHandshake(KEYS, max_failures=3)
    bad = {"type": "auth", "key": "alice", "proof": "0" * 64}
    generic_failure(server.receive(bad))
    generic_failure(server.receive(bad))
    result = server.receive(bad)
    assert result.outcome == HandshakeResult.CLOSED
    assert result.reply["type"] == "error" and result.reply["code"] == "auth-failed"
    assert "nonce" not in result.reply
    assert server.done and server.identity is None
    with pytest.raises(RuntimeError):
        server.receive(answer_hello(server.hello(), "alice", ALICE_SECRET))


def test_max_failures_of_one_closes_at_the_first_failure():
    server = ServerHandshake(KEYS, max_failures=1)
    assert server.receive({}).outcome == HandshakeResult.CLOSED


def test_receive_after_success_is_a_caller_error():
    server = ServerHandshake(KEYS)
    server.receive(answer_hello(server.hello(), "bob", BOB_SECRET))
    with pytest.raises(RuntimeError):
        server.receive(answer_hello(server.hello(), "bob", BOB_SECRET))


def _set(field, value):
    def mutate(header):
        header[field] = value
        return header
    return mutate


def _drop(field):
    def mutate(header):
        del header[field]
        return header
    return mutate


MALFORMED = {
    "not a dict": lambda h: [h],
    "None": lambda h: None,
    "json string": lambda h: '{"type": "auth"}',
    "wrong type": _set("type", "hello"),
    "type not a string": _set("type", ["auth"]),
    "no type": _drop("type"),
    "no key": _drop("key"),
    "no proof": _drop("proof"),
    "key is a number": _set("key", 7),
    "key is a dict": _set("key", {"alice": 1}),
    "key over-long": _set("key", "a" * 65),
    "key over-long by a lot": _set("key", "a" * 100000),
    "key with bad characters": _set("key", "alice\n"),
    "proof is a list": _set("proof", ["0" * 64]),
    "proof is null": _set("proof", None),
    "proof too short": lambda h: dict(h, proof=h["proof"][:-1]),
    "proof too long": lambda h: dict(h, proof=h["proof"] + "0"),
    "proof over-long": lambda h: dict(h, proof=h["proof"] * 1000),
    "proof upper-case": lambda h: dict(h, proof=h["proof"].upper()),
    "proof non-hex": lambda h: dict(h, proof="g" + h["proof"][1:]),
    "proof non-ascii": lambda h: dict(h, proof="\u00e9" + h["proof"][1:]),
}


@pytest.mark.parametrize("mutate", MALFORMED.values(), ids=list(MALFORMED))
def test_malformed_auth_header_is_a_failure_not_an_exception(mutate):
    server = ServerHandshake(KEYS)
    valid = answer_hello(server.hello(), "alice", ALICE_SECRET)
    generic_failure(server.receive(mutate(dict(valid))))
    again = server.receive(answer_hello(server.hello(), "alice", ALICE_SECRET))
    assert again.outcome == HandshakeResult.AUTHENTICATED


def test_extra_fields_in_the_auth_header_are_ignored():
    server = ServerHandshake(KEYS)
    header = dict(answer_hello(server.hello(), "alice", ALICE_SECRET), client="cli/0.1")
    assert server.receive(header).outcome == HandshakeResult.AUTHENTICATED


def test_a_keys_callable_is_asked_on_each_attempt():
    current = {}
    server = ServerHandshake(lambda: current)
    generic_failure(server.receive(answer_hello(server.hello(), "alice", ALICE_SECRET)))
    current.update(KEYS)  # a reload adds alice
    result = server.receive(answer_hello(server.hello(), "alice", ALICE_SECRET))
    assert result.outcome == HandshakeResult.AUTHENTICATED


def test_a_key_removed_by_a_reload_stops_working():
    current = dict(KEYS)
    server = ServerHandshake(lambda: current)
    del current["alice"]
    generic_failure(server.receive(answer_hello(server.hello(), "alice", ALICE_SECRET)))


def test_module_constants_and_public_names():
    assert FAILURE_DELAY == 0.5
    assert SCHEME == "hmac-sha256"
    for name in auth.__all__:
        assert hasattr(auth, name), name
    assert {"load_keys", "ensure_keys_file", "ServerHandshake", "answer_hello"} <= set(auth.__all__)


# --- property: arbitrary JSON-like input never raises, never authenticates ------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=16,
)
hex_proofs = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
near_auth_headers = st.fixed_dictionaries({
    "type": st.just("auth") | json_values,
    "key": st.sampled_from(["alice", "bob", "mallory"]) | json_values,
    "proof": hex_proofs | json_values,
})
headers = near_auth_headers | st.dictionaries(st.text(max_size=8), json_values) | json_values


@settings(max_examples=300, deadline=None)
@given(st.lists(headers, min_size=1, max_size=5))
def test_arbitrary_headers_never_raise_and_never_authenticate(attempts):
    server = ServerHandshake(KEYS, max_failures=3)
    nonce = server.hello()["nonce"]
    for count, header in enumerate(attempts, 1):
        if server.done:
            break
        result = server.receive(header)
        assert result.outcome != HandshakeResult.AUTHENTICATED
        assert result.reply["code"] == "auth-failed"
        if count < 3:
            assert result.outcome == HandshakeResult.FAILED
            assert is_nonce(result.reply["nonce"]) and result.reply["nonce"] != nonce
            nonce = result.reply["nonce"]
        else:
            assert result.outcome == HandshakeResult.CLOSED
    assert server.identity is None
