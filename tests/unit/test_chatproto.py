"""Tests for msgsrv.services.chat.protocol: line reading, commands, server-line grammar, flood control."""

import pathlib
import re

import pytest
from hypothesis import given, settings, strategies as st

from msgsrv.services.chat.protocol import (
    COMMANDS, ERRORS, NOTICES, Action, ChatError, Command, Error, History, Line, LineReader,
    LineTooLong, Message, Notice, Private, check_nick, check_room, clean_text,
    format_action, format_error, format_event, format_help, format_history, format_message,
    format_notice, format_private, nick_key, parse_line, parse_server_line, room_key, usage,
)
from msgsrv.net.access import TokenBucket
from msgsrv.wire.errors import ProtocolError

pytestmark = pytest.mark.timeout(120)

SETTINGS = settings(max_examples=200, deadline=None)


# ---------------------------------------------------------------------------
# LineReader

def read(chunks, max_line=16):
    """Feed ``chunks`` then EOF; return all events, checking the buffer bound after each feed."""
    reader = LineReader(max_line)
    events = []
    for chunk in chunks:
        events += reader.feed(chunk)
        assert reader.buffered <= max_line + 1
    return events + reader.eof()


def bytewise(data):
    return [data[i:i + 1] for i in range(len(data))]


TOO_LONG = LineTooLong(16)

# (stream, events) with max_line=16; each is also fed byte by byte and in random chunks.
SCENARIOS = [
    (b"", []),
    (b"hello\n", [Line("hello")]),
    (b"hello\r\n", [Line("hello")]),
    (b"a\nb\r\nc\n", [Line("a"), Line("b"), Line("c")]),
    (b"\n\r\n", [Line(""), Line("")]),
    (b"tail", [Line("tail")]),
    (b"tail\r", [Line("tail")]),
    (b"\r", []),
    (b"x" * 16 + b"\n", [Line("x" * 16)]),
    (b"x" * 16 + b"\r\n", [Line("x" * 16)]),
    (b"x" * 17 + b"\nnext\n", [TOO_LONG, Line("next")]),
    (b"x" * 17 + b"\r\nnext\n", [TOO_LONG, Line("next")]),
    (b"x" * 16 + b"\r\r\nnext\n", [TOO_LONG, Line("next")]),
    (b"x" * 16 + b"\ry\nnext\n", [TOO_LONG, Line("next")]),
    (b"x" * 100 + b"\n" + b"y" * 50 + b"\nok\n", [TOO_LONG, TOO_LONG, Line("ok")]),
    (b"x" * 17, [TOO_LONG]),
    (b"x" * 16, [Line("x" * 16)]),
    (b"x" * 40 + b"\r\n", [TOO_LONG]),
    (b"caf\xc3\xa9\n", [Line("caf\u00e9")]),
    (b"bad \xff\xfe!\n", [Line("bad \ufffd\ufffd!")]),
    (b"cut \xe2\x82\n", [Line("cut \ufffd")]),
    (b"\x1b[31mred\x1b[0m\n", [Line("[31mred[0m")]),
    (b"a\tb\n", [Line("a b")]),
    (b"nul\x00del\x7f\n", [Line("nuldel")]),
    (b"csi\xc2\x9b2J\n", [Line("csi2J")]),
    (b"bs\x08\x07bell\n", [Line("bsbell")]),
    (b"lone\rcr\n", [Line("lone cr")]),
    (b"\xe2\x80\xa8sep\n", [Line(" sep")]),
]


@pytest.mark.parametrize("data,expected", SCENARIOS)
def test_reader_whole(data, expected):
    assert read([data]) == expected


@pytest.mark.parametrize("data,expected", SCENARIOS)
def test_reader_one_byte_at_a_time(data, expected):
    assert read(bytewise(data)) == expected


@SETTINGS
@given(st.sampled_from(SCENARIOS), st.lists(st.integers(min_value=0, max_value=40)))
def test_reader_random_chunks(scenario, cuts):
    data, expected = scenario
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0] + points, points + [len(data)])]
    assert read(chunks) == expected


@SETTINGS
@given(st.binary(max_size=300), st.lists(st.integers(min_value=0, max_value=300)),
       st.integers(min_value=1, max_value=24))
def test_reader_any_stream_same_events_however_split(data, cuts, max_line):
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0] + points, points + [len(data)])]
    whole = read([data], max_line)
    assert read(chunks, max_line) == whole
    assert read(bytewise(data), max_line) == whole
    for event in whole:
        if isinstance(event, Line):
            assert event.text == clean_text(event.text)
            assert len(event.text.encode("utf-8", "surrogatepass")) <= 3 * max_line


def test_reader_buffers_at_most_max_line_plus_one():
    reader = LineReader(8)
    assert reader.feed(b"x" * 8 + b"\r") == []
    assert reader.buffered == 9
    assert reader.feed(b"\n") == [Line("x" * 8)]
    assert reader.buffered == 0


def test_reader_discards_without_buffering_and_reports_once():
    reader = LineReader(8)
    assert reader.feed(b"x" * 9) == [LineTooLong(8)]
    assert reader.buffered == 0
    for _ in range(50):
        assert reader.feed(b"y" * 1000) == []
        assert reader.buffered == 0
    assert reader.feed(b"still\nfine\n") == [Line("fine")]


def test_reader_huge_chunk_with_many_lines():
    data = (b"a" * 4096 + b"\n") * 3 + b"b" * 5000 + b"\n" + b"c\n"
    reader = LineReader()
    assert reader.feed(data) == [Line("a" * 4096)] * 3 + [LineTooLong(4096), Line("c")]
    assert reader.buffered == 0


def test_reader_utf8_split_across_feeds():
    reader = LineReader()
    assert reader.feed(b"\xe2") == []
    assert reader.feed(b"\x82") == []
    assert reader.feed(b"\xac\n") == [Line("\u20ac")]


def test_reader_accepts_bytearray_and_memoryview():
    reader = LineReader()
    assert reader.feed(bytearray(b"a\n")) == [Line("a")]
    assert reader.feed(memoryview(b"b\n")) == [Line("b")]


def test_reader_eof_resets():
    reader = LineReader(4)
    reader.feed(b"abc")
    assert reader.eof() == [Line("abc")]
    assert reader.eof() == []
    reader.feed(b"toolong")
    assert reader.eof() == []
    assert reader.feed(b"ok\n") == [Line("ok")]


@pytest.mark.parametrize("bad", [0, -1, 1.5, None])
def test_reader_rejects_bad_limit(bad):
    with pytest.raises(ValueError, match="max_line"):
        LineReader(bad)


def test_clean_text():
    assert clean_text("a\nb\r\nc") == "a b  c"
    assert clean_text("\x1b]0;title\x07x") == "]0;titlex"
    assert clean_text("\u0085\u2028\u2029") == "   "
    assert clean_text("\ud800") == "\ufffd"
    assert clean_text("plain \u00e9 \U0001f600") == "plain \u00e9 \U0001f600"


@SETTINGS
@given(st.text())
def test_clean_text_is_one_safe_line(text):
    cleaned = clean_text(text)
    assert clean_text(cleaned) == cleaned
    assert len(cleaned.splitlines()) <= 1
    assert not re.search(r"[\x00-\x1f\x7f-\x9f]", cleaned)
    cleaned.encode("utf-8")


# ---------------------------------------------------------------------------
# Names

@pytest.mark.parametrize("nick", ["a", "Bob", "x" * 32, "a1_-[]{}^|", "Z9"])
def test_valid_nicks(nick):
    assert check_nick(nick) == nick


@pytest.mark.parametrize("nick", ["", "1abc", "_a", "-a", "a b", "x" * 33, "caf\u00e9",
                                  "a.b", "a#", "a\n", "\u212a"])
def test_invalid_nicks(nick):
    with pytest.raises(ChatError) as info:
        check_nick(nick)
    assert info.value.code == "bad-nick"


@pytest.mark.parametrize("room,name", [("lobby", "lobby"), ("#Lobby", "Lobby"),
                                       ("a.b-c_d", "a.b-c_d"), ("9", "9"),
                                       ("#" + "r" * 32, "r" * 32), (".x", ".x")])
def test_valid_rooms(room, name):
    assert check_room(room) == name


@pytest.mark.parametrize("room", ["", "#", "##a", "a b", "r" * 33, ".", "..", "a/b",
                                  "caf\u00e9", "a\n"])
def test_invalid_rooms(room):
    with pytest.raises(ChatError) as info:
        check_room(room)
    assert info.value.code == "bad-room"


def test_name_keys_are_case_insensitive():
    assert nick_key("BoB") == nick_key("bob") != nick_key("bobby")
    assert room_key("#Lobby") == room_key("LOBBY") == "lobby"


def test_chat_error_is_a_protocol_error():
    err = ChatError("bad-args", "usage: /join ROOM")
    assert isinstance(err, ProtocolError)
    assert (err.code, err.message) == ("bad-args", "usage: /join ROOM")


# ---------------------------------------------------------------------------
# Client lines

@pytest.mark.parametrize("line,command", [
    ("", Command("noop")),
    ("   ", Command("noop")),
    ("hello world", Command("say", ("hello world",))),
    ("  /join x", Command("say", ("  /join x",))),
    ("//shrug", Command("say", ("/shrug",))),
    ("//", Command("say", ("/",))),
    ("/nick bob", Command("nick", ("bob",))),
    ("/NICK Bob ", Command("nick", ("Bob",))),
    ("/join #Lobby", Command("join", ("Lobby",))),
    ("/join lobby", Command("join", ("lobby",))),
    ("/leave", Command("leave", (None,))),
    ("/leave #dev", Command("leave", ("dev",))),
    ("/msg alice hi  there ", Command("msg", ("alice", "hi  there "))),
    ("/msg   alice    hi", Command("msg", ("alice", "hi"))),
    ("/who", Command("who", (None,))),
    ("/who lobby", Command("who", ("lobby",))),
    ("/rooms", Command("rooms", ())),
    ("/me waves hello", Command("me", ("waves hello",))),
    ("/help", Command("help", ())),
    ("/quit", Command("quit", (None,))),
    ("/quit gone fishing", Command("quit", ("gone fishing",))),
])
def test_parse_line(line, command):
    assert parse_line(line) == command


@pytest.mark.parametrize("line,code", [
    ("/", "unknown-command"),
    ("/ join x", "unknown-command"),
    ("/frobnicate", "unknown-command"),
    ("/join#x", "unknown-command"),
    ("/nick", "bad-args"),
    ("/nick a b", "bad-args"),
    ("/join", "bad-args"),
    ("/join a b", "bad-args"),
    ("/leave a b", "bad-args"),
    ("/msg", "bad-args"),
    ("/msg bob", "bad-args"),
    ("/msg bob   ", "bad-args"),
    ("/who a b", "bad-args"),
    ("/rooms x", "bad-args"),
    ("/me", "bad-args"),
    ("/me   ", "bad-args"),
    ("/help me", "bad-args"),
    ("/nick 9lives", "bad-nick"),
    ("/msg b@d hi", "bad-nick"),
    ("/join bad/room", "bad-room"),
    ("/leave ..", "bad-room"),
    ("/who " + "r" * 33, "bad-room"),
])
def test_parse_line_errors(line, code):
    with pytest.raises(ChatError) as info:
        parse_line(line)
    assert info.value.code == code
    assert info.value.message


def test_usage_errors_show_usage():
    with pytest.raises(ChatError, match=re.escape("/msg NICK TEXT")):
        parse_line("/msg bob")


def test_unknown_command_name_is_truncated_in_error():
    with pytest.raises(ChatError) as info:
        parse_line("/" + "z" * 1000)
    assert len(info.value.message) < 200


def test_help_lists_every_command():
    lines = format_help().decode().splitlines()
    assert len(lines) == len(COMMANDS) + 1
    events = [parse_server_line(line) for line in lines]
    assert all(e.kind == "help" and e.fields == () for e in events)
    for name in COMMANDS:
        assert any(e.text.startswith(usage(name) + " ") for e in events)


# ---------------------------------------------------------------------------
# Server lines

def test_formatter_exact_bytes():
    assert format_message("lobby", "bob", "hi") == b"MSG lobby bob hi\n"
    assert format_action("lobby", "bob", "waves") == b"ACT lobby bob waves\n"
    assert format_private("alice", "bob", "psst") == b"PRIV alice bob psst\n"
    assert format_history("lobby", "bob", 1700000000.25, "old") == (
        b"HIST 1700000000.250 MSG lobby bob old\n")
    assert format_history("lobby", "bob", 5, "w", action=True) == b"HIST 5.000 ACT lobby bob w\n"
    assert format_notice("join", "lobby", "bob") == b"* join lobby bob\n"
    assert format_notice("nick", "*", "bob") == b"* nick * bob\n"
    assert format_notice("who", "lobby", "a", "b") == b"* who lobby a b\n"
    assert format_notice("rooms") == b"* rooms\n"
    assert format_notice("quit", "bob", "gone") == b"* quit bob gone\n"
    assert format_notice("welcome", "msgsrv", "choose a nick with /nick NAME") == (
        b"* welcome msgsrv choose a nick with /nick NAME\n")
    assert format_error("nick-taken", "nick 'bob' is already in use") == (
        b"! nick-taken nick 'bob' is already in use\n")
    assert format_message("lobby", "bob", "\u00e9") == "MSG lobby bob \u00e9\n".encode()


def test_forged_prefix_is_flattened():
    line = format_message("lobby", "mallory", "hi\n* join x y")
    assert line == b"MSG lobby mallory hi * join x y\n"
    assert parse_server_line(line) == Message("lobby", "mallory", "hi * join x y")
    assert format_private("a", "b", "x\r\n! busy go away") == b"PRIV a b x  ! busy go away\n"
    assert format_notice("quit", "bob", "bye\n* shutdown now") == b"* quit bob bye * shutdown now\n"
    assert format_error("flood", "slow\x1b[2J\ndown") == b"! flood slow[2J down\n"


@SETTINGS
@given(st.text())
def test_any_text_stays_on_its_line(text):
    for line in (format_message("r", "n", text), format_action("r", "n", text),
                 format_private("a", "b", text), format_history("r", "n", 1.0, text),
                 format_notice("quit", "n", text), format_error("busy", text)):
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        assert b"\r" not in line and b"\x1b" not in line
        assert len(line.decode().splitlines()) == 1


@pytest.mark.parametrize("call", [
    lambda: format_message("#lobby", "bob", "x"),
    lambda: format_message("lobby", "b b", "x"),
    lambda: format_message("..", "bob", "x"),
    lambda: format_action("lobby", "", "x"),
    lambda: format_private("bob", "9", "x"),
    lambda: format_history("lobby", "bob", -1, "x"),
    lambda: format_history("lobby", "bob", float("nan"), "x"),
    lambda: format_notice("nope"),
    lambda: format_notice("join", "lobby"),
    lambda: format_notice("join", "lobby", "bob", "extra"),
    lambda: format_notice("who"),
    lambda: format_notice("who", "lobby", "two words"),
    lambda: format_notice("quit", "bob"),
    lambda: format_notice("history-end", ""),
    lambda: format_error("Bad Code", "x"),
    lambda: format_error("", "x"),
])
def test_formatter_refuses_bad_fields(call):
    with pytest.raises(ValueError):
        call()


@pytest.mark.parametrize("line,event", [
    ("MSG lobby bob hello there", Message("lobby", "bob", "hello there")),
    ("MSG lobby bob ", Message("lobby", "bob", "")),
    ("MSG lobby bob", Message("lobby", "bob", "")),
    ("MSG lobby bob  two  spaces ", Message("lobby", "bob", " two  spaces ")),
    ("ACT lobby bob waves\r\n", Action("lobby", "bob", "waves")),
    (b"PRIV alice bob hi\n", Private("alice", "bob", "hi")),
    ("HIST 17.500 MSG lobby bob old", History(17.5, Message("lobby", "bob", "old"))),
    ("HIST 3 ACT lobby bob w", History(3.0, Action("lobby", "bob", "w"))),
    ("* join lobby bob", Notice("join", ("lobby", "bob"))),
    ("* nick * bob", Notice("nick", ("*", "bob"))),
    ("* who lobby a b c", Notice("who", ("lobby", "a", "b", "c"))),
    ("* rooms", Notice("rooms")),
    ("* rooms lobby:2 dev:1", Notice("rooms", ("lobby:2", "dev:1"))),
    ("* history-end lobby", Notice("history-end", ("lobby",))),
    ("* quit bob gone fishing", Notice("quit", ("bob",), "gone fishing")),
    ("* welcome msgsrv pick a nick", Notice("welcome", ("msgsrv",), "pick a nick")),
    ("* help", Notice("help", (), "")),
    ("* shutdown bye", Notice("shutdown", (), "bye")),
    ("* topic lobby new topic", Notice("topic", (), "lobby new topic")),
    ("* join lobby bob and more", Notice("join", ("lobby", "bob"), "and more")),
    ("! nick-taken nick 'bob' is in use", Error("nick-taken", "nick 'bob' is in use")),
    ("! busy", Error("busy", "")),
])
def test_parse_server_line(line, event):
    assert parse_server_line(line) == event


@pytest.mark.parametrize("line", [
    "", "hello", "msg lobby bob hi", "MSG", "MSG lobby", "MSG #lobby bob hi",
    "MSG lobby 9bob hi", "MSG  lobby bob hi", "PRIV alice", "ACT .. bob x",
    "HIST x MSG lobby bob hi", "HIST 1.0 PRIV a b hi", "HIST -1 MSG lobby bob hi",
    "HIST 1.0", "HIST 1.0 MSG lobby", "*", "* ", "* join lobby", "* who",
    "!", "! Bad code", "! ", "MSG lobby bob hi\nMSG x y z", "MSG lobby bob a\rb",
])
def test_parse_server_line_rejects(line):
    with pytest.raises(ProtocolError) as info:
        parse_server_line(line)
    assert info.value.code == "bad-line"


def test_parse_server_line_cleans_text():
    assert parse_server_line("MSG lobby bob \x1b[1mhi") == Message("lobby", "bob", "[1mhi")


nicks = st.from_regex(r"\A[A-Za-z][A-Za-z0-9_\-\[\]{}^|]{0,31}\Z")
rooms = st.from_regex(r"\A[A-Za-z0-9_\-.]{0,31}[A-Za-z0-9_\-]\Z")
tokens = st.from_regex(r"\A[!-~]{1,20}\Z")
texts = st.text().map(clean_text)
codes = st.from_regex(r"\A[a-z][a-z0-9-]{0,20}\Z")
timestamps = st.integers(min_value=0, max_value=10 ** 13).map(lambda ms: ms / 1000)


def notices():
    def build(kind, data):
        spec = NOTICES[kind]
        fields = data.draw(st.lists(tokens, min_size=len(spec.fields), max_size=len(spec.fields)))
        if spec.rest == "tokens":
            fields += data.draw(st.lists(tokens, max_size=5))
        text = data.draw(texts) if spec.rest == "text" else ""
        return Notice(kind, tuple(fields), text)
    return st.builds(build, st.sampled_from(sorted(NOTICES)), st.data())


events = st.one_of(
    st.builds(Message, rooms, nicks, texts),
    st.builds(Action, rooms, nicks, texts),
    st.builds(Private, nicks, nicks, texts),
    st.builds(History, timestamps, st.one_of(st.builds(Message, rooms, nicks, texts),
                                              st.builds(Action, rooms, nicks, texts))),
    notices(),
    st.builds(Error, codes, texts),
)


@SETTINGS
@given(events)
def test_event_round_trip(event):
    line = format_event(event)
    assert parse_server_line(line) == event
    assert format_event(parse_server_line(line.decode())) == line


@SETTINGS
@given(rooms, nicks, st.text())
def test_any_text_round_trips_cleaned(room, nick, text):
    assert parse_server_line(format_message(room, nick, text)) == (
        Message(room, nick, clean_text(text)))
    assert parse_server_line(format_error("bad-args", text)) == Error("bad-args", clean_text(text))


@SETTINGS
@given(st.floats(min_value=0, max_value=1e11))
def test_history_timestamp_keeps_milliseconds(ts):
    event = parse_server_line(format_history("lobby", "bob", ts, "x"))
    assert event.ts == float("%.3f" % ts)
    assert abs(event.ts - ts) <= 0.0005 + 1e-6 * ts / 1e6


def test_format_event_rejects_non_events():
    with pytest.raises(TypeError):
        format_event("MSG a b c")
    with pytest.raises(ValueError):
        format_event(Notice("topic", (), "x"))


# ---------------------------------------------------------------------------
# Flood control

class FakeClock:
    def __init__(self, now=100.0):
        self.now = now

    def __call__(self):
        return self.now


def test_bucket_allows_burst_then_rate():
    clock = FakeClock()
    bucket = TokenBucket(rate=2, burst=3, clock=clock)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)
    assert bucket.take() == pytest.approx(0.5)
    clock.now += 0.25
    assert bucket.take() == pytest.approx(0.25)
    clock.now += 0.25
    assert bucket.take() == 0.0
    assert bucket.take() == pytest.approx(0.5)


def test_bucket_waiting_the_answer_always_suffices():
    clock = FakeClock(0.1)
    bucket = TokenBucket(rate=3, burst=1, clock=clock)
    for _ in range(1000):
        wait = bucket.take()
        if wait:
            clock.now += wait
            assert bucket.take() == 0.0
    assert clock.now == pytest.approx(0.1 + 999 / 3, rel=1e-6)


def test_bucket_refill_is_capped_at_burst():
    clock = FakeClock()
    bucket = TokenBucket(rate=1, burst=2, clock=clock)
    clock.now += 1000
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]


def test_bucket_ignores_a_clock_going_backwards():
    clock = FakeClock()
    bucket = TokenBucket(rate=1, burst=1, clock=clock)
    assert bucket.take() == 0.0
    clock.now -= 50
    assert bucket.take() == pytest.approx(1.0)
    clock.now += 50.5
    assert bucket.take() == pytest.approx(0.5)


def test_bucket_default_clock_is_monotonic():
    bucket = TokenBucket(rate=1, burst=1)
    assert bucket.take() == 0.0
    assert 0 < bucket.take() <= 1.0


@pytest.mark.parametrize("rate,burst", [(0, 1), (-1, 1), (float("inf"), 1), (float("nan"), 1),
                                        (1, 0), (1, 0.5), (1, float("nan")), ("1", 1)])
def test_bucket_rejects_bad_settings(rate, burst):
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, clock=FakeClock())


# ---------------------------------------------------------------------------
# The spec names everything the tables hold

SPEC = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.rst").read_text("utf-8")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_spec_lists_command(name):
    assert "``%s``" % usage(name) in SPEC
    assert COMMANDS[name].help in SPEC


@pytest.mark.parametrize("kind", sorted(NOTICES))
def test_spec_lists_notice_kind(kind):
    assert "``%s``" % kind in SPEC


@pytest.mark.parametrize("code", sorted(ERRORS))
def test_spec_lists_error_code(code):
    assert "``%s``" % code in SPEC
