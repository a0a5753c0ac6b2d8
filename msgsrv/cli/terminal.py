"""What the client commands draw on a terminal: the line being typed.

:class:`LineEditor` is the chat client's input line, sans-IO: key bytes go in
through :meth:`~LineEditor.feed`, finished lines and end-of-input come out,
and :meth:`~LineEditor.render` says what the line looks like in a given width.
:func:`cbreak` puts a terminal in the mode it needs (no echo, a byte at a time,
signals kept) and always puts it back.
"""

import codecs
import contextlib
import termios
import unicodedata

_ESC = "\x1b"
_FINAL = range(0x40, 0x7f)   # the byte that ends a CSI escape sequence
_HISTORY = 200               # lines kept for up / down

# Escape sequences (after ESC) -> editor method.
_SEQUENCES = {
    "[A": "history_back", "[B": "history_forward", "[C": "right", "[D": "left",
    "[H": "home", "[F": "end", "OH": "home", "OF": "end", "[1~": "home", "[4~": "end",
    "[7~": "home", "[8~": "end", "[3~": "delete",
}
# Control characters -> editor method (Emacs keys, as readline has them).
_CONTROLS = {
    "\x01": "home", "\x02": "left", "\x05": "end", "\x06": "right", "\x08": "backspace",
    "\x7f": "backspace", "\x0b": "kill_end", "\x15": "kill_start", "\x17": "kill_word",
    "\x10": "history_back", "\x0e": "history_forward",
}


def columns(char):
    """Terminal columns ``char`` takes: 0 (combining), 2 (wide) or 1."""
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


class LineEditor:
    """The line being typed: insertion at a cursor, Emacs keys, arrows and history.

    :meth:`feed` takes the bytes read from the terminal and returns the
    finished events, in order: ``("line", text)`` for Enter, ``("eof", None)``
    for Ctrl-D on an empty line.  Bytes of an escape sequence or of a UTF-8
    character split across reads are kept for the next call.
    """

    def __init__(self):
        self.text = ""
        self.cursor = 0
        self.history = []
        self._browse = None            # index into history while browsing it
        self._pending = ""             # an unfinished escape sequence
        self._after_cr = False
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, data):
        """Apply key bytes; return the list of finished events."""
        events = []
        for char in self._decoder.decode(data):
            event = self._key(char)
            if event is not None:
                events.append(event)
        return events

    def render(self, prompt, width):
        """``(text, cursor_column)``: the prompt and the part of the line that fits in
        ``width`` columns, scrolled so that the cursor shows."""
        room = max(width - _width(prompt) - 1, 8)
        start = 0
        while _width(self.text[start:self.cursor]) > room:
            start += 1
        shown, used = "", 0
        for char in self.text[start:]:
            used += columns(char)
            if used > room:
                break
            shown += char
        return prompt + shown, _width(prompt) + _width(self.text[start:self.cursor])

    # -- keys -----------------------------------------------------------------

    def _key(self, char):
        if self._pending:
            return self._escape(char)
        after_cr, self._after_cr = self._after_cr, char == "\r"
        if char in "\r\n":
            return None if char == "\n" and after_cr else self._submit()
        if char == _ESC:
            self._pending = _ESC
        elif char == "\x04":
            if not self.text:
                return ("eof", None)
            self.delete()
        elif char in _CONTROLS:
            getattr(self, _CONTROLS[char])()
        elif char.isprintable():
            self.insert(char)
        return None

    def _escape(self, char):
        self._pending += char
        body = self._pending[1:]
        if len(body) == 1 and char not in "[O":
            self._pending = ""          # Alt-key: ignored
        elif body in _SEQUENCES:
            self._pending = ""
            getattr(self, _SEQUENCES[body])()
        elif len(body) > 1 and (ord(char) in _FINAL and char != "[" or len(body) > 8):
            self._pending = ""          # a sequence we do not handle
        return None

    def _submit(self):
        line, self.text, self.cursor, self._browse = self.text, "", 0, None
        if line.strip() and (not self.history or self.history[-1] != line):
            self.history = (self.history + [line])[-_HISTORY:]
        return ("line", line)

    # -- editing --------------------------------------------------------------

    def insert(self, char):
        """Insert ``char`` at the cursor."""
        self.text = self.text[:self.cursor] + char + self.text[self.cursor:]
        self.cursor += 1

    def backspace(self):
        """Remove the character before the cursor."""
        if self.cursor:
            self.text = self.text[:self.cursor - 1] + self.text[self.cursor:]
            self.cursor -= 1

    def delete(self):
        """Remove the character under the cursor."""
        self.text = self.text[:self.cursor] + self.text[self.cursor + 1:]

    def left(self):
        """Move the cursor one character left."""
        self.cursor = max(self.cursor - 1, 0)

    def right(self):
        """Move the cursor one character right."""
        self.cursor = min(self.cursor + 1, len(self.text))

    def home(self):
        """Move the cursor to the start of the line."""
        self.cursor = 0

    def end(self):
        """Move the cursor to the end of the line."""
        self.cursor = len(self.text)

    def kill_start(self):
        """Remove everything before the cursor (Ctrl-U)."""
        self.text, self.cursor = self.text[self.cursor:], 0

    def kill_end(self):
        """Remove everything from the cursor on (Ctrl-K)."""
        self.text = self.text[:self.cursor]

    def kill_word(self):
        """Remove the word before the cursor (Ctrl-W)."""
        head = self.text[:self.cursor].rstrip()
        head = head[:len(head) - len(head.split(" ")[-1])] if head else ""
        self.text, self.cursor = head + self.text[self.cursor:], len(head)

    def history_back(self):
        """Show the previous line sent (up arrow)."""
        if self.history and self._browse != 0:
            self._browse = len(self.history) - 1 if self._browse is None else self._browse - 1
            self.text = self.history[self._browse]
            self.cursor = len(self.text)

    def history_forward(self):
        """Show the next line sent, then an empty line (down arrow)."""
        if self._browse is None:
            return
        self._browse += 1
        if self._browse == len(self.history):
            self._browse, self.text = None, ""
        else:
            self.text = self.history[self._browse]
        self.cursor = len(self.text)


def _width(text):
    return sum(columns(char) for char in text)


@contextlib.contextmanager
def cbreak(fd):
    """Give the terminal ``fd`` one byte at a time without echo (Ctrl-C, Ctrl-Z and
    output processing unchanged); restore its settings on the way out."""
    saved = termios.tcgetattr(fd)
    mode = termios.tcgetattr(fd)
    mode[3] &= ~(termios.ECHO | termios.ICANON)
    mode[6][termios.VMIN], mode[6][termios.VTIME] = 1, 0
    termios.tcsetattr(fd, termios.TCSADRAIN, mode)  # keep what was typed ahead
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSAFLUSH, saved)
