"""The terminal helpers without a terminal: the line editor fed byte by byte, quoting."""

import pytest

from msgsrv.cli.terminal import LineEditor
from msgsrv.client.base import printable, quote_greeting


def feed(editor, data, one_byte_at_a_time=True):
    if not one_byte_at_a_time:
        return editor.feed(data)
    events = []
    for index in range(len(data)):
        events += editor.feed(data[index:index + 1])
    return events


@pytest.mark.parametrize("whole", [True, False])
def test_typing_editing_and_enter(whole):
    editor = LineEditor()
    keys = ("héllo wörld".encode() + b"\x1b[D" * 5 + b"big " + b"\x01X\x05!"  # left, home, end
            + b"\x17" + b"\x7f" + b"\x1b[1~\x1b[C\x1b[3~\x1b[F\r\n")
    assert feed(editor, keys, not whole) == [("line", "Xéllo big")]
    assert (editor.text, editor.cursor) == ("", 0)


def test_kills_and_unknown_sequences():
    editor = LineEditor()
    feed(editor, b"one two three\x1b[D\x1b[D\x0b")      # Ctrl-K
    assert editor.text == "one two thr"
    feed(editor, b"\x1b[D\x15")                          # Ctrl-U
    assert (editor.text, editor.cursor) == ("r", 0)
    feed(editor, b"\x1b[15~\x1b[Z\x1bx\x1bOPok\x07")   # F5, shift-tab, Alt-x, F1, bell: ignored
    assert editor.text == "okr"


def test_history_and_end_of_input():
    editor = LineEditor()
    assert feed(editor, b"first\rsecond\n\n") == [("line", "first"), ("line", "second"),
                                                   ("line", "")]
    feed(editor, b"draft\x1b[A")
    assert editor.text == "second"
    feed(editor, b"\x1b[A\x1b[A")
    assert editor.text == "first"
    feed(editor, b"\x1b[B\x1b[B")
    assert editor.text == ""
    assert feed(editor, b"x\x04") == []                  # Ctrl-D deletes when the line has text
    assert feed(editor, b"\x01\x04\x04") == [("eof", None)]


def test_render_scrolls_to_keep_the_cursor_visible():
    editor = LineEditor()
    feed(editor, b"a" * 30 + "界".encode() * 3)
    text, column = editor.render("me@lobby> ", 30)
    assert text.startswith("me@lobby> ") and text.endswith("界界界")
    assert column == len(text) + 3 <= 29  # the cursor after the end; each 界 takes two columns
    feed(editor, b"\x01")
    text, column = editor.render("me@lobby> ", 30)
    assert (text, column) == ("me@lobby> " + "a" * 19, 10)


def test_server_text_cannot_drive_the_terminal():
    assert printable("ok\x1b[2J\x07") == "ok\\x1b[2J\\x07"
    assert quote_greeting(b"* welcome x\r\nmore") == "'* welcome x ...'"
    assert quote_greeting(b"\x00\x01\xff") == "'\\x00\\x01\\xff'"
    assert quote_greeting(b"y" * 50, 10) == "'yyyyyyyyyy ...'"
