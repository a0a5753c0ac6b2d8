"""The Redis chat backend's sans-IO parts: the event codec and the local mirror (no Redis)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from msgsrv.services.chat.protocol import format_message
from msgsrv.services.chat.mirror import Mirror, SharedMember
from msgsrv.services.chat.redis_events import (RS, History, Join, Leave, Message, Nick,
                                               Private, Quit, daemon_of, decode, encode,
                                               message)

EXAMPLES = [
    Message("ops", "d1/1", b"MSG ops alice hi\n"),
    Join("ops", "Ops", "d1/1", "alice", "7"),
    History("d1/1", "ops", b"HIST 1.000 MSG ops bob a\nHIST 2.000 MSG ops bob b\n"),
    History("d1/1", "new", b""),
    Leave("ops", "Ops", "d2/9", "bob", "8"),
    Nick("d1/1", "*", "alice", "1", ()),
    Nick("d1/1", "alice", "Alice", "2", ("lobby", "ops")),
    Quit("host-1-ab/3", "carol", "connection lost (server x stopped responding)", ("lobby",)),
    Private("d2/9", "d1/1", "alice", "bob", "psst é", "9"),
]


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: type(e).__name__)
def test_each_event_round_trips(event):
    assert decode(encode(event)) == [event]


def test_a_payload_holds_events_in_order():
    payload = RS.join(encode(e) for e in EXAMPLES)
    assert decode(payload) == EXAMPLES


def test_message_fast_path_matches_encode():
    event = Message("ops", "d1/1", format_message("ops", "alice", "hi"))
    assert message(b"ops", b"d1/1", event.line) == encode(event)


@pytest.mark.parametrize("raw", [
    b"", b"Z\x1fnew kind", b"M\x1fops\x1fd1/1", b"J\x1fops", b"M\x1fa\x1fb\x1fc\x1fextra",
    b"N\x1fd1/1\x1fold", b"P\x1f1\x1f2\x1f3",
])
def test_malformed_or_unknown_events_are_skipped(raw):
    assert decode(raw + RS + encode(EXAMPLES[0])) == [EXAMPLES[0]]


def test_a_field_holding_a_separator_is_refused():
    with pytest.raises(ValueError):
        encode(Private("d2/9", "d1/1", "alice", "bob", "a\x1fb", "1"))
    with pytest.raises(ValueError):
        encode(Quit("d1/1", "alice", "x", ("a\x1eb",)))


def test_daemon_of_a_member_id():
    assert daemon_of("host-12-ab/7") == "host-12-ab"


_FIELD = st.text(st.characters(blacklist_characters="\x1e\x1f", blacklist_categories=("Cs",)),
                 max_size=12)
_EVENTS = st.one_of(
    st.builds(Message, _FIELD, _FIELD, _FIELD.map(lambda t: t.encode())),
    st.builds(Join, _FIELD, _FIELD, _FIELD, _FIELD, _FIELD),
    st.builds(Leave, _FIELD, _FIELD, _FIELD, _FIELD, _FIELD),
    st.builds(Nick, _FIELD, _FIELD, _FIELD, _FIELD, st.tuples(_FIELD, _FIELD)),
    st.builds(Quit, _FIELD, _FIELD, _FIELD, st.lists(_FIELD, max_size=3).map(tuple)),
    st.builds(Private, _FIELD, _FIELD, _FIELD, _FIELD, _FIELD, _FIELD),
)


@given(st.lists(_EVENTS, min_size=1, max_size=6))
def test_property_payloads_round_trip(events):
    payload = RS.join(encode(e) for e in events)
    decoded = decode(payload)
    # A Quit with no rooms and an empty last field cannot be told apart: compare encodings.
    assert [encode(e) for e in decoded] == [encode(e) for e in events]


@given(st.binary(max_size=200))
def test_property_decode_never_raises(payload):
    for event in decode(payload):
        assert type(event) in (Message, Join, History, Leave, Nick, Quit, Private)


# -- the mirror ---------------------------------------------------------------------------

class Conn:
    """What a member's connection is for the mirror: something deliveries name."""

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


def sent(effects):
    """{conn name: bytes} of the deliveries, in order."""
    out = {}
    for targets, data in effects.deliveries:
        for conn in targets:
            out[conn.name] = out.get(conn.name, b"") + data
    return out


@pytest.fixture
def mirror():
    mirror = Mirror("here")
    for name in ("alice", "bob"):
        member = SharedMember(Conn(name), "here/" + name)
        mirror.add(member)
        mirror.apply([Nick(member.mid, "*", name, "n", ()), Join("lobby", "lobby", member.mid,
                                                                name, "j")])
    return mirror


def test_a_local_join_gets_the_notice_then_its_history(mirror):
    alice = mirror.members["here/alice"]
    effects = mirror.apply([History(alice.mid, "ops", b"HIST 1.000 MSG ops zed old\n"),
                            Join("ops", "Ops", alice.mid, "alice", "5")])
    assert sent(effects) == {"alice": b"* join Ops alice\nHIST 1.000 MSG ops zed old\n"
                                      b"* history-end Ops\n"}
    assert effects.done == ["5"] and alice.room == "Ops"
    remote = mirror.apply([Join("ops", "ops", "there/1", "zed", "1")])
    assert sent(remote) == {"alice": b"* join Ops zed\n"} and remote.done == []
    assert sent(mirror.apply([Join("elsewhere", "x", "there/1", "zed", "2")])) == {}


def test_messages_reach_the_local_room_and_count_as_echoes(mirror):
    alice = mirror.members["here/alice"]
    effects = mirror.apply([Message("lobby", alice.mid, b"MSG lobby alice 1\n"),
                            Message("lobby", "there/1", b"MSG lobby zed 2\n"),
                            Message("nowhere", alice.mid, b"MSG nowhere alice 3\n")])
    assert sent(effects) == {"alice": b"MSG lobby alice 1\nMSG lobby zed 2\n",
                             "bob": b"MSG lobby alice 1\nMSG lobby zed 2\n"}
    assert effects.echoes == {alice: 2}


def test_leave_tells_the_room_then_drops_it_but_never_the_lobby(mirror):
    bob = mirror.members["here/bob"]
    mirror.apply([Join("ops", "ops", bob.mid, "bob", "1")])
    effects = mirror.apply([Leave("ops", "ops", bob.mid, "bob", "2")])
    assert sent(effects) == {"bob": b"* leave ops bob\n"} and effects.done == ["2"]
    assert "ops" not in mirror.rooms and bob.room == "lobby"
    mirror.apply([Leave("lobby", "lobby", bob.mid, "bob", "3")])
    assert "lobby" in mirror.rooms and bob.rooms == []


def test_nick_changes_reach_the_rooms_and_the_member(mirror):
    alice = mirror.members["here/alice"]
    effects = mirror.apply([Nick(alice.mid, "alice", "alicia", "3", ("lobby",))])
    assert sent(effects) == {"alice": b"* nick alice alicia\n", "bob": b"* nick alice alicia\n"}
    assert alice.nick == "alicia" and effects.done == ["3"]
    same = mirror.apply([Nick(alice.mid, "alicia", "alicia", "4", ("lobby",))])
    assert sent(same) == {"alice": b"* nick alicia alicia\n"}


def test_quit_reaches_the_rooms_once_and_forgets_the_member(mirror):
    alice, bob = mirror.members["here/alice"], mirror.members["here/bob"]
    mirror.apply([Join("ops", "ops", alice.mid, "alice", "1"),
                  Join("ops", "ops", bob.mid, "bob", "2")])
    remote = mirror.apply([Quit("there/1", "zed", "gone", ("lobby", "ops"))])
    assert sent(remote) == {"alice": b"* quit zed gone\n", "bob": b"* quit zed gone\n"}
    bob.gone = "bye"
    own = mirror.apply([Quit(bob.mid, "bob", "bye", ("lobby",))])
    assert sent(own) == {"alice": b"* quit bob bye\n"}
    assert bob.mid not in mirror.members and bob not in mirror.rooms["ops"].members
    # A member of this daemon forgotten while Redis was away was announced then.
    assert sent(mirror.apply([Quit("here/old", "old", "x", ("lobby",))])) == {}


def test_forget_tells_the_local_rooms_without_redis(mirror):
    bob = mirror.members["here/bob"]
    deliveries = mirror.forget(bob, "connection closed")
    assert [(tuple(c.name for c in t), d) for t, d in deliveries] == [
        (("alice",), b"* quit bob connection closed\n")]
    assert mirror.forget(bob, "again") == []


def test_private_goes_to_the_local_ends_once(mirror):
    alice, bob = mirror.members["here/alice"], mirror.members["here/bob"]
    both = mirror.apply([Private(bob.mid, alice.mid, "alice", "bob", "hi", "7")])
    assert sent(both) == {"alice": b"PRIV alice bob hi\n", "bob": b"PRIV alice bob hi\n"}
    assert both.done == ["7"]
    self_ = mirror.apply([Private(alice.mid, alice.mid, "alice", "alice", "me", "8")])
    assert sent(self_) == {"alice": b"PRIV alice alice me\n"}
    inbound = mirror.apply([Private(bob.mid, "there/1", "zed", "bob", "yo", "9")])
    assert sent(inbound) == {"bob": b"PRIV zed bob yo\n"} and inbound.done == []


def test_an_event_outside_the_grammar_is_skipped(mirror):
    effects = mirror.apply([Join("lobby", "lobby", "there/1", "not a nick", "1"),
                            Message("lobby", "there/1", b"MSG lobby zed ok\n")])
    assert sent(effects) == {"alice": b"MSG lobby zed ok\n", "bob": b"MSG lobby zed ok\n"}


def test_registrations_list_members_with_nicks_and_their_rooms(mirror):
    mirror.add(SharedMember(Conn("nameless"), "here/nameless"))
    rows = {m.nick: rooms for m, rooms in mirror.registrations()}
    assert rows == {"alice": [("lobby", "lobby")], "bob": [("lobby", "lobby")]}


def test_a_member_that_quit_gets_its_requests_answered_but_joins_nothing(mirror):
    bob = mirror.members["here/bob"]
    bob.gone = "connection closed"
    effects = mirror.apply([Join("ops", "ops", bob.mid, "bob", "4")])
    assert effects.done == ["4"] and "ops" not in mirror.rooms and sent(effects) == {}


def test_a_quit_of_a_member_still_here_leaves_it_in_place(mirror):
    """Redis dropped it (stale state cleaned up, or this daemon presumed dead in a pause)."""
    alice = mirror.members["here/alice"]
    effects = mirror.apply([Quit(alice.mid, "alice", "presumed dead", ("lobby",))])
    assert sent(effects) == {}  # here, it is still there
    assert mirror.members[alice.mid] is alice and alice.room == "lobby"
