"""What runs over the console's WebSockets: the status push and chat sessions.

A :class:`SocketLink` is one WebSocket over one pool connection; every
thread may send on it (the status sampler, chat members delivering to a
browser), so its wsproto state is behind a lock, held while a frame is
built and queued, never while waiting.  :class:`StatusSocket` subscribes a
dashboard to the service's pushes; :class:`ChatSocket` carries a session of
the chat service itself (``ChatService.open_session``): the browser sends
the lines a terminal client would type, one per message, and gets the chat
protocol's lines back, so every chat rule applies unchanged.
"""

import json
import logging
import threading

from .websocket import GOING_AWAY, NORMAL, Closed, Message

log = logging.getLogger("msgsrv.web")


class SocketLink:
    """A WebSocket (msgsrv.services.web.websocket) over the pool connection ``conn``."""

    def __init__(self, conn, websocket):
        self.conn = conn
        self.websocket = websocket
        self._lock = threading.Lock()

    def feed(self, data):
        """Events of received ``data``; pongs and close replies are sent at once."""
        with self._lock:
            events = self.websocket.feed(data)
            out = self.websocket.take_output()
            if out:
                self.conn.send(out)
        return events

    def send_text(self, text, limit=None):
        """Queue one text message (never blocks); False once closing.  Over ``limit``
        bytes waiting, the connection is aborted ("send queue exceeded")."""
        with self._lock:
            frame = self.websocket.send_text(text)
            return bool(frame) and self.conn.send(frame, limit=limit)

    def close(self, code, reason):
        """Send the close frame (if none was), then close the connection after it."""
        with self._lock:
            frame = self.websocket.close(code, reason)
            if frame:
                self.conn.send(frame)
        self.conn.close(reason)


class Pushes:
    """The dashboards of one service, each sent every status push."""

    def __init__(self):
        self._lock = threading.Lock()
        self._links = set()

    def subscribe(self, link):
        """Send ``link`` every push from now on."""
        with self._lock:
            self._links.add(link)

    def unsubscribe(self, link):
        """Stop pushing to ``link``."""
        with self._lock:
            self._links.discard(link)

    def __len__(self):
        with self._lock:
            return len(self._links)

    def send(self, text, limit):
        """Push ``text`` to every subscriber (a browser ``limit`` bytes behind is dropped)."""
        with self._lock:
            links = list(self._links)
        for link in links:
            link.send_text(text, limit)


class _Socket:
    """What the web handler drives once its connection is a WebSocket."""

    def __init__(self, handler, link):
        self.handler = handler
        self.link = link

    def received(self, data):
        """Bytes from the peer (``b""``: it closed the connection)."""
        events = self.link.feed(data)
        texts = [event.text for event in events if isinstance(event, Message)]
        if texts:
            self.messages(texts)
        for event in events:
            if isinstance(event, Closed):
                self.peer_closed(event)

    def start(self):
        """The handshake is done."""

    def messages(self, texts):
        """Whole text messages arrived."""

    def peer_closed(self, event):
        """The WebSocket closed: close the connection (after our close reply)."""
        self.handler.conn.close("closed by peer" if event.code in (NORMAL, GOING_AWAY, 1006)
                                else "websocket closed %d" % event.code)

    def timed_out(self, reason):
        """The idle timeout."""
        self.link.close(NORMAL, reason)

    def server_closing(self):
        """The web service stops (runs in the stopping thread: only send)."""
        self.link.close(GOING_AWAY, "server shutdown")

    def lost(self):
        """The connection is closed."""


class StatusSocket(_Socket):
    """A dashboard: the history first, then every push of the service's sampler."""

    def start(self):
        service = self.handler.service
        self.link.send_text(json.dumps({"type": "history", "window": service.history.window,
                                        "interval": service.history.interval,
                                        "samples": service.history.snapshot()},
                                       separators=(",", ":")))
        latest = service.latest
        if latest is not None:
            self.link.send_text(latest)
        service.pushes.subscribe(self.link)

    def lost(self):
        self.handler.service.pushes.unsubscribe(self.link)


class ChatLink:
    """The connection a chat session sees: its lines go out as WebSocket messages."""

    def __init__(self, link):
        self._link = link
        self._conn = link.conn

    def send(self, data, limit=None):
        """Send chat lines (UTF-8 bytes) as one text message."""
        return self._link.send_text(data.decode("utf-8", "replace"), limit)

    def close(self, reason="closed"):
        """Close the WebSocket, then the connection."""
        self._link.close(NORMAL, reason)

    def abort(self, reason="aborted"):
        """Close now, dropping queued output."""
        self._conn.abort(reason)

    def pause_reading(self):
        """Flood control: stop reading the browser."""
        self._conn.pause_reading()

    def resume_reading(self):
        """Read the browser again."""
        self._conn.resume_reading()

    def call_later(self, seconds, callback):
        """A timer of the session, run like the connection's other calls."""
        return self._conn.call_later(seconds, callback)

    @property
    def closing(self):
        """True once the connection is closing."""
        return self._conn.closing

    @property
    def address(self):
        """The browser's address."""
        return self._conn.address

    @property
    def reason(self):
        """Why the connection closed."""
        return self._conn.reason


class ChatSocket(_Socket):
    """A chat session of the chat service ``chat`` (its ChatService) over the WebSocket."""

    def __init__(self, handler, link, chat):
        super().__init__(handler, link)
        self.session = chat.open_session(ChatLink(link))

    def start(self):
        self.session.connection_made()

    def messages(self, texts):
        self.session.data_received(b"".join(
            text.encode("utf-8") + (b"" if text.endswith("\n") else b"\n") for text in texts))

    def peer_closed(self, event):
        self.session.eof_received()
        super().peer_closed(event)

    def timed_out(self, reason):
        self.session.timed_out(reason)

    def lost(self):
        self.session.connection_lost()
