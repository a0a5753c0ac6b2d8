"""The chat service over real sockets: raw line clients (as nc), ChatClient and the CLI."""

import logging
import os
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from msgsrv.services.chat.protocol import History, Message, Notice, Private, parse_server_line
from msgsrv.client import ChatClient, ConnectionFailed, RequestTimeout, ServerError
from msgsrv.cli.chat import describe
from msgsrv.services.chat.handler import Outbox, word
from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.timeout(60)


class Peer:
    """A raw line client, as ``nc`` would be: send lines, read lines with a deadline."""

    def __init__(self, server, nick=None, rcvbuf=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(5)
        self.sock.connect(("127.0.0.1", server.port))
        self.buffer = b""
        self.skipped = []
        assert self.line().startswith("* welcome msgsrv ")
        if nick:
            self.send(nick)
            self.expect("* history-end lobby")

    def send(self, *lines, end="\n"):
        self.sock.sendall("".join(line + end for line in lines).encode())

    def line(self, timeout=5.0):
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("closed; buffered %r" % self.buffer)
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()

    def expect(self, prefix, timeout=5.0):
        """Read lines until one starts with ``prefix``; the others go to ``skipped``."""
        while True:
            line = self.line(timeout)
            if line.startswith(prefix):
                return line
            self.skipped.append(line)

    def closed(self, timeout=5.0):
        """True once the server closed (lines before the end go to ``skipped``)."""
        try:
            while True:
                self.skipped.append(self.line(timeout))
        except (EOFError, ConnectionResetError):
            return True

    def close(self):
        self.sock.close()


@pytest.fixture
def chat(start_service):
    def start(**options):
        options.setdefault("max_connections_per_ip", 400)
        return start_service("chat", **options)
    return start


def test_two_nc_clients_chat_in_a_room(chat):
    server = chat()
    alice, bob = Peer(server), Peer(server)
    alice.send("alice", end="\r\n")
    assert alice.line() == "* nick * alice"
    assert alice.line() == "* join lobby alice"
    assert alice.line() == "* history-end lobby"
    bob.send("/nick bob", "/join #dev")
    bob.expect("* history-end dev")
    alice.send("/join dev", "hello bob")
    assert bob.expect("* join dev") == "* join dev alice"
    assert bob.line() == "MSG dev alice hello bob"
    assert alice.expect("MSG") == "MSG dev alice hello bob"
    bob.send("/me waves", "//slash")
    assert alice.line() == "ACT dev bob waves"
    assert alice.line() == "MSG dev bob /slash"
    alice.send("/who", "/rooms")
    assert alice.line() == "* who dev bob alice"
    assert alice.line() == "* rooms dev:2 lobby:2"


def test_private_messages_reach_only_their_target(chat):
    server = chat()
    alice, bob, carol = Peer(server, "alice"), Peer(server, "bob"), Peer(server, "carol")
    alice.send("/msg BOB meet at noon", "public now")
    assert bob.expect("PRIV") == "PRIV alice bob meet at noon"
    assert alice.expect("PRIV") == "PRIV alice bob meet at noon"
    assert carol.expect("MSG") == "MSG lobby alice public now"
    assert not [line for line in carol.skipped if "PRIV" in line]
    alice.send("/msg nobody hi")
    assert alice.expect("!") .startswith("! no-such-nick ")


def test_nick_collision_is_case_insensitive_and_retry_works(chat):
    server = chat()
    owner = Peer(server, "Alice")
    peer = Peer(server)
    peer.send("alice")
    assert peer.line().startswith("! nick-taken ")
    peer.send("/nick ALICE")
    assert peer.line().startswith("! nick-taken ")
    peer.send("bad nick!")
    assert peer.line().startswith("! bad-nick ")
    peer.send("/join dev", "/msg x y", "/me hi")
    assert [peer.line().split()[1] for _ in range(3)] == ["no-nick"] * 3
    peer.send("alice2")
    assert peer.line() == "* nick * alice2"
    with pytest.raises(ServerError) as info:
        ChatClient("127.0.0.1", server.port, "ALICE", timeout=5)
    assert info.value.code == "nick-taken"
    owner.close()


def test_history_replay(chat):
    server = chat(history=3)
    alice = Peer(server, "alice")
    alice.send("one", "two", "/me three", "four")
    alice.expect("MSG lobby alice four")
    bob = Peer(server)
    bob.send("bob")
    lines = [bob.line() for _ in range(6)]
    assert lines[:2] == ["* nick * bob", "* join lobby bob"]
    assert [line.split(" ", 2)[2] for line in lines[2:5]] == [
        "MSG lobby alice two", "ACT lobby alice three", "MSG lobby alice four"]
    stamps = [float(line.split()[1]) for line in lines[2:5]]
    assert stamps == sorted(stamps) and abs(stamps[0] - time.time()) < 60
    assert lines[5] == "* history-end lobby"
    with ChatClient("127.0.0.1", server.port, "carol", timeout=5) as carol:
        replay = [carol.recv(1) for _ in range(3)]
    assert all(isinstance(event, History) for event in replay)
    assert replay[0].event == Message("lobby", "alice", "two")


def test_line_too_long_is_refused_and_the_connection_stays_usable(chat):
    server = chat(max_line=64)
    alice = Peer(server, "alice")
    alice.send("x" * 65, "y" * 64)
    assert alice.line() == "! line-too-long line longer than 64 bytes discarded"
    assert alice.line() == "MSG lobby alice " + "y" * 64
    alice.sock.sendall(b"z" * 5000)
    alice.sock.sendall(b"z" * 5000 + b"\nstill here\n")
    assert alice.line().startswith("! line-too-long")
    assert alice.line() == "MSG lobby alice still here"


def test_control_characters_are_stripped_and_bad_utf8_replaced(chat):
    server = chat()
    alice, bob = Peer(server, "alice"), Peer(server, "bob")
    alice.sock.sendall(b"\x1b[2J\x1b]0;pwned\x07red\x08 \xff tab\there\r\n")
    line = bob.expect("MSG")
    assert line == "MSG lobby alice [2J]0;pwnedred \ufffd tab here"
    assert not any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in line)
    alice.sock.sendall(b"fake\xc2\x85* join lobby admin\n")
    assert bob.expect("MSG") == "MSG lobby alice fake * join lobby admin"


def test_unknown_command_is_an_error_not_a_disconnect(chat):
    server = chat()
    alice = Peer(server, "alice")
    alice.send("/frobnicate now", "/join", "/join bad room", "/who nowhere", "   ", "still ok")
    codes = [alice.line().split()[1] for _ in range(4)]
    assert codes == ["unknown-command", "bad-args", "bad-args", "no-such-room"]
    assert alice.line() == "MSG lobby alice still ok"


def test_help_lists_every_command(chat):
    server = chat()
    alice = Peer(server)
    alice.send("/help")
    lines = [alice.line() for _ in range(10)]
    assert all(line.startswith("* help ") for line in lines)
    assert any("/msg NICK TEXT" in line for line in lines)


def test_non_reading_client_is_dropped_while_others_keep_receiving(chat, caplog):
    # The kernel absorbs a few MB for a stalled reader before the queue grows,
    # so ~5 MB goes out.
    server = chat(max_queue="64K", line_rate=0)
    stalled = Peer(server, "stalled", rcvbuf=4096)
    reader, publisher = Peer(server, "reader"), Peer(server, "publisher")
    count, delays = 1200, []

    def read():
        while len(delays) < count:
            line = reader.line(10)
            if line.startswith("MSG lobby publisher "):
                delays.append(time.monotonic() - float(line.split()[3]))
            else:
                reader.skipped.append(line)

    threads = [threading.Thread(target=read), threading.Thread(target=publisher.closed, args=(20,))]
    with caplog.at_level(logging.WARNING, "msgsrv.chat"):
        for thread in threads:
            thread.start()
        for _ in range(count):
            publisher.send("%.6f %s" % (time.monotonic(), "p" * 4000))
        threads[0].join(30)
        assert stalled.closed()
    publisher.send("/quit")
    threads[1].join(10)
    assert len(delays) == count
    assert "(stalled) disconnected: send queue exceeded (max_queue=65536 bytes)" in caplog.text
    assert any(line.startswith("* quit stalled send queue exceeded") for line in reader.skipped)
    assert max(delays) < 1.0, "others waited for the stalled client: %.3fs" % max(delays)
    assert server.counters.snapshot()["chat_send_queue_exceeded"] == 1


def test_abrupt_disconnect_frees_the_nick_and_tells_the_rooms(chat):
    server = chat()
    alice = Peer(server, "alice")
    bob = Peer(server, "bob")
    bob.send("/join dev")
    bob.expect("* history-end dev")
    alice.send("/join dev")
    bob.expect("* join dev alice")
    bob.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    bob.close()  # RST, no FIN
    assert alice.expect("* quit bob").startswith("* quit bob receive failed")
    assert not [line for line in alice.skipped if line.startswith("* quit")]  # told once
    again = Peer(server, "BOB")
    again.send("/who lobby")
    assert again.line() == "* who lobby alice BOB"


def test_half_close_is_a_quit(chat):
    server = chat()
    alice, bob = Peer(server, "alice"), Peer(server, "bob")
    bob.sock.sendall(b"last words")
    bob.sock.shutdown(socket.SHUT_WR)
    assert alice.expect("MSG") == "MSG lobby bob last words"
    assert alice.expect("* quit") == "* quit bob closed by peer"
    assert bob.closed()


def test_200_clients_in_one_room_all_receive_a_broadcast(chat):
    server = chat()
    peers = [Peer(server) for _ in range(200)]
    for index, peer in enumerate(peers):
        peer.send("n%d" % index)
    for peer in peers:
        peer.expect("* history-end lobby")
    peers[0].send("to everyone")
    for peer in peers:
        assert peer.expect("MSG") == "MSG lobby n0 to everyone"
    members = server.service.chat.snapshot()[0]["lobby"]  # in the order the server took the nicks
    assert sorted(members) == sorted("n%d" % i for i in range(200))


def test_flood_is_delayed_not_dropped_and_others_stay_served(chat):
    server = chat(line_rate=40, line_burst=5)
    flooder, other = Peer(server, "flooder"), Peer(server, "other")
    started = time.monotonic()
    flooder.send(*["line %d" % i for i in range(25)])
    assert flooder.expect("!").startswith("! flood more than 40 lines per second")
    other.send("/who")
    asked = time.monotonic()
    assert other.expect("* who") == "* who lobby flooder other"
    assert time.monotonic() - asked < 0.3
    got = [line for line in flooder.skipped if line.startswith("MSG")]
    got += [flooder.expect("MSG") for _ in range(25 - len(got))]
    assert got == ["MSG lobby flooder line %d" % i for i in range(25)]
    assert time.monotonic() - started >= 20 / 40 - 0.05
    assert not [line for line in flooder.skipped if line.startswith("!")]  # warned once
    assert server.counters.snapshot()["chat_flood_delayed"] == 1
    flooder.send("/quit")
    assert flooder.expect("* quit") == "* quit flooder quit"


def test_shutdown_tells_clients_then_closes(chat):
    server = chat()
    alice = Peer(server, "alice")
    bob = Peer(server)
    server.stop(5)
    assert alice.expect("* shutdown") == "* shutdown the server is shutting down"
    assert alice.closed() and bob.closed()
    assert not [line for line in alice.skipped if line.startswith("* quit")]


def test_idle_timeout_sends_a_notice_then_closes(chat):
    server = chat(idle_timeout=0.4)
    alice = Peer(server, "alice")
    bob = Peer(server, "bob")
    assert alice.expect("* quit alice", timeout=5).startswith("* quit alice idle timeout")
    assert alice.closed()
    bob.closed()
    assert any(line.startswith("* quit alice idle timeout") for line in bob.skipped)


def test_quit_with_a_reason(chat):
    server = chat()
    alice, bob = Peer(server, "alice"), Peer(server, "bob")
    bob.send("/quit gone fishing", "never seen")
    assert bob.expect("* quit") == "* quit bob gone fishing"
    assert bob.closed()
    assert alice.expect("* quit") == "* quit bob gone fishing"
    assert not [line for line in alice.skipped if "never seen" in line]
    wait_for(lambda: server.service.chat.lookup("bob") is None)


# ---------------------------------------------------------------------------
# ChatClient


def test_chat_client_rooms_messages_and_answers(chat):
    server = chat()
    with ChatClient("127.0.0.1", server.port, "alice", timeout=5) as alice, \
            ChatClient("127.0.0.1", server.port, "bob", timeout=5) as bob:
        assert alice.server_name == "msgsrv" and alice.room == "lobby"
        assert alice.recv(5) == Notice("join", ("lobby", "bob"))
        assert alice.join("#Dev") == "Dev" and bob.join("dev") == "Dev"
        assert alice.recv(5) == Notice("join", ("Dev", "bob"))
        assert bob.say("hello") == Message("Dev", "bob", "hello")
        assert bob.say("/not a command") == Message("Dev", "bob", "/not a command")
        assert [alice.recv(5), alice.recv(5)] == [Message("Dev", "bob", "hello"),
                                                   Message("Dev", "bob", "/not a command")]
        assert bob.me("nods").text == "nods"
        assert alice.who() == ["alice", "bob"] and alice.who("lobby") == ["alice", "bob"]
        assert alice.rooms() == {"Dev": 2, "lobby": 2}
        assert bob.msg("ALICE", "psst") == Private("bob", "alice", "psst")
        assert alice.change_nick("Ally") == "Ally"
        assert alice.leave() == "Dev" and alice.room == "lobby"
        assert [bob.recv(5), bob.recv(5)] == [Notice("nick", ("alice", "Ally")),
                                              Notice("leave", ("Dev", "Ally"))]


def test_chat_client_errors_are_raised_from_the_command(chat):
    server = chat()
    with ChatClient("127.0.0.1", server.port, "alice", timeout=5) as alice:
        with pytest.raises(ServerError) as info:
            alice.leave("elsewhere")
        assert info.value.code == "no-room"
        with pytest.raises(ServerError) as info:
            alice.msg("nobody", "hi")
        assert info.value.code == "no-such-nick"
        with pytest.raises(ServerError) as info:
            alice.who("nowhere")
        assert info.value.code == "no-such-room"
        alice.leave("lobby")
        with pytest.raises(ServerError) as info:
            alice.say("into the void")
        assert info.value.code == "no-room"
        for bad in (lambda: alice.say("two\nlines"), lambda: alice.say("  "),
                    lambda: alice.join("bad room"), lambda: alice.msg("9x", "hi"),
                    lambda: alice.send_line("a\nb")):
            with pytest.raises(ValueError):
                bad()
        alice.send_line("/bogus")
        with pytest.raises(ServerError) as info:
            alice.recv(5)
        assert info.value.code == "unknown-command"
        with pytest.raises(RequestTimeout):
            alice.recv(0.1)
        assert alice.rooms() == {"lobby": 0}  # still usable
    with pytest.raises(ValueError):
        ChatClient("127.0.0.1", server.port, "not valid", timeout=5)


def test_chat_client_skips_flood_warnings_while_waiting(chat):
    server = chat(line_rate=50, line_burst=1)
    with ChatClient("127.0.0.1", server.port, "alice", timeout=5) as alice:
        for index in range(3):
            alice.send_line("burst %d" % index)
        assert alice.who() == ["alice"]
        assert [alice.recv(5).text for _ in range(3)] == ["burst 0", "burst 1", "burst 2"]


def test_chat_client_iteration_ends_when_the_server_closes(chat):
    server = chat()
    alice = ChatClient("127.0.0.1", server.port, "alice", timeout=5)
    with ChatClient("127.0.0.1", server.port, "bob", timeout=5) as bob:
        bob.say("bye all")
        bob.quit("done")
        with pytest.raises(ConnectionFailed):
            bob.recv(1)
    server.stop(5)
    events = list(alice)
    assert events[-1] == Notice("shutdown", (), "the server is shutting down")
    assert Message("lobby", "bob", "bye all") in events
    assert Notice("quit", ("bob",), "done") in events
    with pytest.raises(ConnectionFailed):
        alice.recv()
    alice.close()


def test_chat_client_keepalive_beats_the_idle_timeout(chat):
    server = chat(idle_timeout=0.6)
    with ChatClient("127.0.0.1", server.port, "alice", timeout=5, keepalive=0.2) as alice:
        with pytest.raises(RequestTimeout):
            alice.recv(1.5)
        assert alice.who() == ["alice"]


def test_chat_client_close_wakes_a_blocked_reader(chat):
    server = chat()
    client = ChatClient("127.0.0.1", server.port, "alice", timeout=5, keepalive=None)
    outcome = []

    def read():
        try:
            client.recv()
        except ConnectionFailed as exc:
            outcome.append(exc)

    thread = threading.Thread(target=read)
    thread.start()
    wait_for(lambda: thread.is_alive())
    client.close()
    thread.join(5)
    assert outcome and not thread.is_alive()


# ---------------------------------------------------------------------------
# The interactive client


def test_cli_chat_shows_incoming_messages_and_sends_typed_lines(chat):
    server = chat()
    with ChatClient("127.0.0.1", server.port, "alice", timeout=5) as alice:
        alice.say("before you came")
        proc = subprocess.Popen(
            [sys.executable, "-m", "msgsrv.client", "chat", "127.0.0.1:%d" % server.port,
             "--nick", "zed"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        assert alice.recv(10) == Notice("join", ("lobby", "zed"))
        alice.say("hi zed")
        proc.stdin.write("hey alice\n/bogus\n")
        proc.stdin.flush()
        assert alice.recv(10) == Message("lobby", "zed", "hey alice")
        proc.stdin.write("/quit later\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("[lobby] <alice> before you came (")
    assert "[lobby] <alice> hi zed" in lines
    assert "[lobby] <zed> hey alice" in lines
    assert any(line.startswith("!! unknown-command:") for line in lines)
    assert "-- quit zed later" in lines


def test_cli_chat_end_of_input_quits(chat, tmp_path):
    server = chat()
    empty = tmp_path / "empty"
    empty.write_text("")
    with open(empty) as stdin:
        result = subprocess.run(
            [sys.executable, "-m", "msgsrv.client", "chat", "127.0.0.1:%d" % server.port,
             "--nick", "zed"], cwd=ROOT, stdin=stdin, capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    assert "-- quit zed quit" in result.stdout


def test_cli_chat_reports_a_taken_nick(chat):
    server = chat()
    with ChatClient("127.0.0.1", server.port, "zed", timeout=5):
        result = subprocess.run(
            [sys.executable, "-m", "msgsrv.client", "chat", "127.0.0.1:%d" % server.port,
             "--nick", "ZED"], cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True,
            text=True, timeout=20)
    assert result.returncode == 1
    assert "nick-taken" in result.stderr and "Traceback" not in result.stderr


def test_cli_chat_in_process_until_the_server_closes(chat):
    from msgsrv.cli import chat as cli_chat

    server = chat()
    read_fd, write_fd = os.pipe()
    out = _Lines()

    class Args:
        address = "127.0.0.1:%d" % server.port
        nick = "inproc"
        timeout = 5.0

    result = []
    thread = threading.Thread(target=lambda: result.append(cli_chat.run(Args, read_fd, out)))
    thread.start()
    wait_for(lambda: server.service.chat.lookup("inproc"))
    os.write(write_fd, b"partial ")
    os.write(write_fd, b"line\n")
    wait_for(lambda: "[lobby] <inproc> partial line" in out.lines)
    server.stop(5)
    thread.join(10)
    os.close(read_fd)
    os.close(write_fd)
    assert result == [1]
    assert out.lines[-1].startswith("-- disconnected")


def test_cli_chat_on_a_terminal_prints_above_the_line_being_typed(chat):
    import fcntl
    import pty
    import select
    import struct
    import termios

    server = chat()
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 60, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "msgsrv.client", "chat",
                             "127.0.0.1:%d" % server.port, "--nick", "zed"],
                            cwd=ROOT, stdin=slave, stdout=slave, stderr=slave)
    shown = bytearray()

    def screen_until(text):
        deadline = time.monotonic() + 10
        while text.encode() not in shown:
            assert time.monotonic() < deadline, "never shown: %r in %r" % (text, bytes(shown))
            if select.select([master], [], [], 0.1)[0]:
                shown.extend(os.read(master, 4096))
        return shown.decode()

    try:
        with ChatClient("127.0.0.1", server.port, "alice", timeout=5) as alice:
            screen_until("zed@lobby> ")
            os.write(master, b"hel")
            screen_until("zed@lobby> hel")
            alice.say("hi zed")
            # The typed line is cleared, the message printed, then the typed line redrawn.
            assert "\r\x1b[K[lobby] <alice> hi zed\r\n\r\x1b[Kzed@lobby> hel" in screen_until(
                "<alice> hi zed\r\n\r\x1b[Kzed@lobby> hel")
            os.write(master, b"lo\r")
            event = alice.recv(10)
            while not isinstance(event, Message):  # zed's join came first
                event = alice.recv(10)
            assert event == Message("lobby", "zed", "hello")
            os.write(master, b"/join ops\r")
            screen_until("zed@ops> ")
            os.write(master, b"\x04")  # Ctrl-D on an empty line
            assert proc.wait(10) == 0
        assert termios.tcgetattr(slave)[3] & (termios.ECHO | termios.ICANON) == (
            termios.ECHO | termios.ICANON)  # the terminal is given back as it was
    finally:
        proc.kill()
        os.close(master)
        os.close(slave)


class _Lines:
    def __init__(self):
        self.lines = []
        self._part = ""

    def write(self, text):
        *done, self._part = (self._part + text).split("\n")
        self.lines += done

    def flush(self):
        pass


# ---------------------------------------------------------------------------
# Small parts


def test_describe_renders_every_event():
    assert describe(parse_server_line("MSG r a hi")) == "[r] <a> hi"
    assert describe(parse_server_line("ACT r a waves")) == "[r] * a waves"
    assert describe(parse_server_line("PRIV a b psst")) == "[private] <a -> b> psst"
    assert describe(parse_server_line("* who r a b")) == "-- who r a b"
    assert describe(parse_server_line("HIST 0.000 MSG r a old")).startswith("[r] <a> old (")


def test_outbox_merges_adjacent_deliveries_to_the_same_targets():
    sent = []

    class Conn:
        def send(self, data, limit=None):
            sent.append((self, data, limit))

    one, two = Conn(), Conn()
    room, alone = (one, two), (one,)
    box = Outbox(limit=100, flush_at=1000)
    box.add([(room, b"a\n"), (room, b"b\n"), (alone, b"c\n")])
    box.add([(room, b"d\n")])
    box.flush()
    assert sent == [(one, b"a\nb\n", 100), (two, b"a\nb\n", 100), (one, b"c\n", 100),
                    (one, b"d\n", 100), (two, b"d\n", 100)]
    sent.clear()
    box = Outbox(limit=100, flush_at=4)
    box.add([(alone, b"12345")])
    assert sent == [(one, b"12345", 100)]


def test_server_name_must_be_one_word():
    assert word(" chat.example ") == "chat.example"
    with pytest.raises(ValueError):
        word("two words")
