"""ChatState without sockets: nicknames, rooms, history, deliveries, and a threaded stress test."""

import random
import threading

import pytest

from msgsrv.services.chat.protocol import ChatError, parse_server_line
from msgsrv.services.chat.state import ChatState, Member, deliver

pytestmark = pytest.mark.timeout(60)


class FakeConn:
    """Collects what was sent to it."""

    def __init__(self, name=""):
        self.name = name
        self.sent = []

    def send(self, data, limit=None):
        self.sent.append(data)
        return True

    def lines(self):
        return b"".join(self.sent).decode().splitlines()


def lines_for(deliveries, conn):
    """The lines ``conn`` would receive from ``deliveries``."""
    return b"".join(data for targets, data in deliveries if conn in targets).decode().splitlines()


@pytest.fixture
def state():
    return ChatState(history=3, max_joined=3, clock=iter(range(1000, 2000)).__next__)


def member(state, nick):
    m = Member(FakeConn(nick))
    state.set_nick(m, nick)
    state.join(m, "lobby")
    return m


def test_first_nick_is_told_to_the_member_only(state):
    alice = Member(FakeConn())
    assert state.set_nick(alice, "alice") == [(alice.own, b"* nick * alice\n")]
    assert state.lookup("ALICE") is alice


def test_nicks_are_unique_case_insensitively(state):
    alice = member(state, "alice")
    other = Member(FakeConn())
    with pytest.raises(ChatError) as info:
        state.set_nick(other, "Alice")
    assert info.value.code == "nick-taken" and other.nick is None
    assert lines_for(state.set_nick(alice, "Alice"), alice.conn) == ["* nick alice Alice"]
    assert alice.nick == "Alice" and state.lookup("alice") is alice


def test_nick_change_frees_the_old_one_and_tells_room_mates_once(state):
    alice, bob = member(state, "alice"), member(state, "bob")
    state.join(alice, "dev")
    state.join(bob, "dev")
    deliveries = state.set_nick(alice, "ally")
    assert lines_for(deliveries, bob.conn) == ["* nick alice ally"]
    assert lines_for(deliveries, alice.conn) == ["* nick alice ally"]
    carol = Member(FakeConn())
    state.set_nick(carol, "alice")
    assert state.lookup("alice") is carol and state.lookup("ally") is alice


def test_same_nick_again_answers_the_member_only(state):
    alice, bob = member(state, "alice"), member(state, "bob")
    assert state.set_nick(alice, "alice") == [(alice.own, b"* nick alice alice\n")]
    assert lines_for(state.set_nick(alice, "Alice"), bob.conn) == ["* nick alice Alice"]


def test_join_tells_the_room_then_replays_history_to_the_joiner(state):
    alice = member(state, "alice")
    for text in ("one", "two", "three", "four"):
        state.say(alice, text)
    bob = Member(FakeConn())
    state.set_nick(bob, "bob")
    deliveries = state.join(bob, "#Lobby")
    assert lines_for(deliveries, alice.conn) == ["* join lobby bob"]
    assert lines_for(deliveries, bob.conn) == [
        "* join lobby bob", "HIST 1001.000 MSG lobby alice two",
        "HIST 1002.000 MSG lobby alice three", "HIST 1003.000 MSG lobby alice four",
        "* history-end lobby"]
    assert bob.room == "lobby"


def test_rejoin_makes_current_without_replay(state):
    alice = member(state, "alice")
    state.join(alice, "dev")
    state.say(alice, "in dev")
    deliveries = state.join(alice, "LOBBY")
    assert deliveries == [(alice.own, b"* join lobby alice\n* history-end lobby\n")]
    assert alice.room == "lobby"
    assert lines_for(state.say(alice, "hi"), alice.conn) == ["MSG lobby alice hi"]


def test_room_keeps_the_name_it_was_created_with(state):
    alice, bob = member(state, "alice"), member(state, "bob")
    state.join(alice, "Dev")
    assert lines_for(state.join(bob, "dev"), bob.conn)[0] == "* join Dev bob"


def test_max_joined_is_busy(state):
    alice = member(state, "alice")
    state.join(alice, "a")
    state.join(alice, "b")
    with pytest.raises(ChatError) as info:
        state.join(alice, "c")
    assert info.value.code == "busy"
    assert state.snapshot()[0].get("c") is None


def test_leave_falls_back_to_the_previous_room_and_empty_rooms_vanish(state):
    alice, bob = member(state, "alice"), member(state, "bob")
    state.join(alice, "dev")
    state.say(alice, "remember me")
    deliveries = state.leave(alice)
    assert lines_for(deliveries, alice.conn) == ["* leave dev alice"]
    assert alice.room == "lobby"
    assert "dev" not in state.snapshot()[0]
    state.join(bob, "dev")
    state.leave(bob, "DEV")
    assert "dev" not in state.snapshot()[0]
    rejoin = state.join(alice, "dev")
    assert "HIST" not in b"".join(d for _, d in rejoin).decode()


def test_lobby_survives_empty(state):
    alice = member(state, "alice")
    state.say(alice, "kept")
    state.leave(alice, "lobby")
    assert alice.room is None
    assert state.snapshot()[0] == {"lobby": []}
    assert b"HIST 1000.000 MSG lobby alice kept" in b"".join(
        d for _, d in state.join(alice, "lobby"))


def test_errors_without_a_room(state):
    alice = member(state, "alice")
    state.leave(alice)
    for call in (lambda: state.say(alice, "x"), lambda: state.leave(alice),
                 lambda: state.who(alice)):
        with pytest.raises(ChatError) as info:
            call()
        assert info.value.code == "no-room"
    with pytest.raises(ChatError) as info:
        state.leave(alice, "dev")
    assert info.value.code == "no-room"


def test_private_reaches_the_target_and_the_sender_only(state):
    alice, bob, carol = member(state, "alice"), member(state, "bob"), member(state, "carol")
    deliveries = state.private(alice, "BOB", "psst")
    assert lines_for(deliveries, bob.conn) == ["PRIV alice bob psst"]
    assert lines_for(deliveries, alice.conn) == ["PRIV alice bob psst"]
    assert lines_for(deliveries, carol.conn) == []
    assert state.private(alice, "alice", "note") == [(alice.own, b"PRIV alice alice note\n")]
    with pytest.raises(ChatError) as info:
        state.private(alice, "nobody", "x")
    assert info.value.code == "no-such-nick"


def test_actions_are_kept_in_history(state):
    alice = member(state, "alice")
    assert state.say(alice, "waves", action=True)[0][1] == b"ACT lobby alice waves\n"
    bob = Member(FakeConn())
    state.set_nick(bob, "bob")
    assert "HIST 1000.000 ACT lobby alice waves" in lines_for(state.join(bob, "lobby"), bob.conn)


def test_who_and_rooms(state):
    alice, bob = member(state, "alice"), member(state, "bob")
    state.join(bob, "dev")
    assert state.who(alice) == b"* who lobby alice bob\n"
    assert state.who(alice, "#DEV") == b"* who dev bob\n"
    assert state.rooms() == b"* rooms dev:1 lobby:2\n"
    with pytest.raises(ChatError) as info:
        state.who(alice, "nowhere")
    assert info.value.code == "no-such-room"


def test_quit_tells_room_mates_once_and_frees_everything(state):
    alice, bob, carol = member(state, "alice"), member(state, "bob"), member(state, "carol")
    state.join(alice, "dev")
    state.join(bob, "dev")
    deliveries = state.quit(alice, "bye")
    assert lines_for(deliveries, bob.conn) == ["* quit alice bye"]
    assert lines_for(deliveries, carol.conn) == ["* quit alice bye"]
    assert lines_for(deliveries, alice.conn) == []
    assert state.quit(alice, "again") == []
    assert state.lookup("alice") is None
    assert state.snapshot() == ({"lobby": ["bob", "carol"], "dev": ["bob"]}, {"bob", "carol"})


def test_quit_without_nick_or_while_closing_delivers_nothing(state):
    assert state.quit(Member(FakeConn()), "x") == []
    alice, bob = member(state, "alice"), member(state, "bob")
    state.closing = True
    assert state.quit(alice, "shutdown") == []
    assert state.snapshot()[1] == {"bob"}


def test_deliver_passes_the_limit():
    conn = FakeConn()
    seen = []
    conn.send = lambda data, limit=None: seen.append((data, limit))
    deliver([((conn, conn), b"x")], limit=7)
    assert seen == [(b"x", 7), (b"x", 7)]


def test_concurrent_joins_leaves_and_talk_keep_the_state_consistent():
    state = ChatState(history=5, max_joined=50)
    errors = []
    rooms = ["r%d" % i for i in range(6)]

    def worker(index):
        rng = random.Random(index)
        try:
            for round_ in range(150):
                me = Member(FakeConn())
                state.set_nick(me, "n%d_%d" % (index, round_ % 3))
                for _ in range(10):
                    action = rng.random()
                    if action < 0.4:
                        state.join(me, rng.choice(rooms))
                    elif action < 0.6 and me.rooms:
                        state.leave(me)
                    elif me.rooms:
                        state.say(me, "x")
                    state.who(me, "lobby")
                    state.rooms()
                state.quit(me, "done")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def observer(stop):
        while not stop.is_set():
            members, nicks = state.snapshot()
            for room, names in members.items():
                if not set(names) <= nicks:
                    errors.append(AssertionError("%s lists unknown nicks" % room))
            for line in (state.rooms(),):
                parse_server_line(line)

    stop = threading.Event()
    watch = threading.Thread(target=observer, args=(stop,))
    watch.start()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    watch.join()
    assert errors == []
    assert state.snapshot() == ({"lobby": []}, set())


def test_concurrent_nick_claims_never_duplicate():
    state = ChatState()
    winners = []
    barrier = threading.Barrier(16)

    def claim():
        me = Member(FakeConn())
        barrier.wait()
        try:
            state.set_nick(me, "Same")
            winners.append(me)
        except ChatError:
            pass

    threads = [threading.Thread(target=claim) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1 and state.lookup("same") is winners[0]
