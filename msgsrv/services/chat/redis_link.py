"""The two Redis connections of one chat store, each in a thread of its own.

The *link* thread owns the command connection.  Handlers never wait for it:
they queue operations (:meth:`Link.say`, :meth:`Link.call`) and go on; the
link takes whatever is queued, sends it as one pipeline (the room messages
of a batch as one script call and one PUBLISH), and hands each reply to its
callback.  It also keeps this daemon's presence alive (a heartbeat every
third of ``presence_ttl``), reaps daemons whose presence expired, and
reconnects with back-off (one log line per attempt) when Redis goes away.

The *listener* thread owns the subscriber connection (the service's event
channel and this daemon's own) and hands every batch of payloads to the
store, which delivers them to the local members.

Every Redis call is bounded by ``redis_timeout``; a call that fails or
times out makes the backend unavailable: queued and waiting operations fail
at once, and new ones are refused until the link is back and has
re-registered this daemon's members.  The ``redis`` package is imported
here, only when a store is created.
"""

import collections
import logging
import os
import threading
import time

from .redis_scripts import SCRIPTS

log = logging.getLogger("msgsrv.chat.redis")

__all__ = ["Link", "LinkLost"]

_BACKOFF_FIRST, _BACKOFF_MAX = 0.5, 5.0
_BATCH_OPS, _BATCH_BYTES = 1000, 1 << 20  # most operations and bytes in one pipeline
_LISTEN_POLL = 0.2                         # seconds between two checks of the generation
_LISTEN_BATCH = 256                        # payloads handed to the store at once


class LinkLost(ConnectionError):
    """The backend went away while an operation waited for it."""


class _Op:
    """A queued script call: ``reply(result)`` gets the list it returned or an exception."""

    __slots__ = ("script", "args", "reply", "size")

    def __init__(self, script, args, reply):
        self.script, self.args, self.reply = script, args, reply
        self.size = sum(len(a) for a in args) + 64


class _Say:
    """A queued room message: its history line and its event."""

    __slots__ = ("room", "entry", "event", "size")

    def __init__(self, room, entry, event):
        self.room, self.entry, self.event = room, entry, event
        self.size = len(entry) + len(event)


class Link:
    """Both connections of ``store`` (a RedisChatStore) to the Redis at ``backend``.

    ``store`` is called back from the link thread (``resync``,
    ``link_down``, ``reaped``) and from the listener thread (``received``).
    """

    def __init__(self, store, backend, password, ca_file, timeout, ttl, queue_limit, name):
        import redis  # the optional extra: checked by the service's start-up checks
        from redis.backoff import NoBackoff
        from redis.retry import Retry
        self._redis = redis
        self._store = store
        self.backend = backend
        self.timeout, self.ttl = timeout, ttl
        self._queue_limit = queue_limit
        self._kwargs = dict(host=backend.host, port=backend.port, db=backend.db,
                            username=backend.username, password=password, ssl=backend.tls,
                            socket_timeout=timeout, socket_connect_timeout=timeout,
                            retry=Retry(NoBackoff(), 0), health_check_interval=0,
                            client_name="msgsrv-%s" % store.daemon[:40])
        if backend.tls and ca_file:
            self._kwargs["ssl_ca_certs"] = ca_file
        self._prefix = store.prefix.encode()
        self._own_channel = store.prefix + ":to:" + store.daemon
        self._name = name
        self.available = False
        self._client = None
        self._queue = collections.deque()
        self._queued = 0  # bytes
        self._inflight = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._cond = threading.Condition()
        self._generation = 0   # of the command connection; the listener follows it
        self._target = None    # the generation the listener should serve (None: none)
        self._subscribed = None
        self._failure = None   # (generation, exception) of the listener
        self._up_since = None
        self._resync = False
        self._down_since = time.monotonic()
        self._threads = [threading.Thread(target=self._run, name="%s-redis" % name, daemon=True),
                         threading.Thread(target=self._listen_loop, name="%s-redis-sub" % name,
                                          daemon=True)]

    def start(self):
        """Start both threads (the first connection is tried at once, in the background)."""
        for thread in self._threads:
            thread.start()

    # -- what the store calls (any thread, never blocks) ---------------------------

    def say(self, room, entry, event):
        """Queue a room message (``room`` key, history ``entry``, ``event``: bytes).

        Returns False, queueing nothing, when ``redis_queue`` bytes wait already;
        raises LinkLost while the backend is unavailable.
        """
        return self._put(_Say(room, entry, event))

    def call(self, script, args, reply):
        """Queue script ``script`` with ``args`` (bytes); ``reply(result)`` gets its list
        (in the link thread), or LinkLost once the backend is unavailable (maybe at once,
        in this thread)."""
        try:
            self._put(_Op(script, args, reply), force=True)
        except LinkLost as exc:
            reply(exc)

    def _put(self, op, force=False):
        with self._lock:
            if not self.available:  # checked under the lock _down drains the queue with
                raise LinkLost("the chat backend is unavailable")
            if not force and self._queued + op.size > self._queue_limit:
                return False
            self._queue.append(op)
            self._queued += op.size
        self._wake.set()
        return True

    def request_resync(self):
        """Redis lacks members it should have (a flush?): register them again soon."""
        self._resync = True
        self._wake.set()

    def close(self):
        """Flush what is queued, withdraw this daemon's presence, stop both threads.

        Takes at most about twice ``redis_timeout`` when Redis does not answer.
        """
        self._stopping.set()
        self._wake.set()
        with self._cond:
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(2 * self.timeout + 1.0)

    # -- the link thread ----------------------------------------------------------

    def _run(self):
        failures = 0
        while not self._stopping.is_set():
            try:
                self._connect()
            except Exception as exc:  # redis errors, OSError, LinkLost: all mean "not now"
                self._unexpected(exc)
                with self._cond:
                    self._target = None
                self._disconnect()
                failures += 1
                delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** (failures - 1))
                log.warning("%s: chat backend %s unreachable (%s); chat clients get "
                            "! unavailable; next try in %gs", self._name, self.backend,
                            _describe(exc), delay)
                self._stopping.wait(delay)
                continue
            failures = 0
            try:
                self._serve()
            except Exception as exc:
                self._unexpected(exc)
                self._down(exc)
                self._stopping.wait(_BACKOFF_FIRST)
        self._disconnect()

    def _connect(self):
        self._generation += 1
        self._client = self._redis.Redis(max_connections=2, **self._kwargs)
        self._client.ping()
        for script in SCRIPTS.values():
            if self._client.script_load(script.source) != script.sha:
                raise LinkLost("the server hashes scripts differently: not Redis or Valkey?")
        had = self._heartbeat(reap=False)
        self._follow(self._generation)
        first = not self._store.registered_before
        members, rooms = self._store.resync(self)
        was_down = time.monotonic() - self._down_since
        self._up_since = time.monotonic()
        with self._lock:
            self.available = True
        if had or first:
            log.info("%s: chat backend %s connected after %.1fs; %d members in %d rooms "
                     "registered", self._name, self.backend, was_down, members, rooms)
        else:
            log.warning("%s: chat backend %s connected after %.1fs, without this server's "
                        "presence (Redis restarted, flushed, or the outage outlasted "
                        "presence_ttl): room history and the events published meanwhile are "
                        "lost; %d members in %d rooms registered again", self._name,
                        self.backend, was_down, members, rooms)

    def _serve(self):
        beat = time.monotonic() + self.ttl / 3
        while True:
            self._wake.wait(max(0.0, beat - time.monotonic()))
            self._wake.clear()
            failure = self._failure
            if failure is not None and failure[0] == self._generation:
                raise LinkLost("subscriber: %s" % _describe(failure[1]))
            if self._resync:
                self._resync = False
                self._store.resync(self)
            ops = self._take()
            if ops:
                self._execute(ops)
            elif self._stopping.is_set():
                self._depart()
                return
            if time.monotonic() >= beat:
                beat = time.monotonic() + self.ttl / 3
                self._heartbeat(reap=time.monotonic() - self._up_since >= self.ttl)

    def _take(self):
        ops, size = [], 0
        with self._lock:
            while self._queue and len(ops) < _BATCH_OPS and size < _BATCH_BYTES:
                op = self._queue.popleft()
                ops.append(op)
                size += op.size
            self._queued -= size
        if self._queue:
            self._wake.set()
        return ops

    def _execute(self, ops):
        """Send ``ops`` as one pipeline; consecutive messages become one ``say`` call."""
        self._inflight = ops
        pipe = self._client.pipeline(transaction=False)
        calls, says = [], []
        for op in ops:
            if isinstance(op, _Say):
                says.append(op)
                continue
            if says:
                self._add_says(pipe, says)
                calls.append(None)
                says = []
            pipe.execute_command("EVALSHA", SCRIPTS[op.script].sha, 0, self._prefix, *op.args)
            calls.append(op)
        if says:
            self._add_says(pipe, says)
            calls.append(None)
        results = pipe.execute(raise_on_error=False)
        self._inflight = []
        flushed = False
        for op, result in zip(calls, results):
            if isinstance(result, self._redis.ResponseError) and "NOSCRIPT" in str(result):
                flushed, result = True, LinkLost("the scripts were flushed from Redis")
            if op is not None:
                self._reply(op, result)
            elif isinstance(result, Exception):
                log.error("%s: chat backend refused room messages: %s", self._name, result)
        if flushed:
            raise LinkLost("the scripts were flushed from Redis (SCRIPT FLUSH?)")

    def _reply(self, op, result):
        try:
            op.reply(result)
        except Exception:  # a store bug must not take the link down
            log.exception("%s: error handling the reply of %s", self._name, op.script)

    def _add_says(self, pipe, says):
        rooms = collections.OrderedDict()
        for op in says:
            rooms.setdefault(op.room, []).append(op.entry)
        args = [b"%d" % self._store.history, b"\x1e".join(op.event for op in says)]
        for room, entries in rooms.items():
            args += [room, b"%d" % len(entries)] + entries
        pipe.execute_command("EVALSHA", SCRIPTS["say"].sha, 0, self._prefix, *args)

    def run_now(self, script, args):
        """Run ``script`` at once on the link thread's connection (resync); its list."""
        return self._client.execute_command("EVALSHA", SCRIPTS[script].sha, 0, self._prefix,
                                            *args)

    def run_many(self, calls):
        """Run ``(script, args)`` calls as one pipeline (link thread); their results."""
        pipe = self._client.pipeline(transaction=False)
        for script, args in calls:
            pipe.execute_command("EVALSHA", SCRIPTS[script].sha, 0, self._prefix, *args)
        return pipe.execute(raise_on_error=False) if calls else []

    def _heartbeat(self, reap):
        store = self._store
        info = ("service=%s pid=%d" % (self._name, os.getpid())).encode()
        result = self.run_now("heartbeat", [
            store.daemon.encode(), b"%d" % int(self.ttl * 1000), info, b"1" if reap else b"0",
            b"connection lost (server ", b" stopped responding)"])
        had = bool(int(result[1]))
        for daemon, count in zip(result[2::2], result[3::2]):
            store.reaped(daemon.decode("utf-8", "replace"), int(count))
        if not had and self.available:
            log.warning("%s: chat backend %s had lost this server's presence (a pause longer "
                        "than presence_ttl?); registering its members again", self._name,
                        self.backend)
            store.resync(self)
        return had

    def _depart(self):
        try:
            self.run_now("depart", [self._store.daemon.encode(), b"server shutting down"])
        except Exception as exc:
            log.warning("%s: chat backend %s: could not withdraw this server's presence (%s); "
                        "it expires in %gs", self._name, self.backend, _describe(exc), self.ttl)

    def _down(self, exc):
        with self._lock:
            self.available = False
        self._down_since = time.monotonic()
        with self._cond:
            self._target = None
            self._cond.notify_all()
        self._disconnect()
        with self._lock:
            ops, self._inflight = self._inflight + list(self._queue), []
            self._queue.clear()
            self._queued = 0
        lost = LinkLost(_describe(exc))
        for op in ops:
            if isinstance(op, _Op):
                self._reply(op, lost)
        log.warning("%s: chat backend %s lost (%s); chat clients get ! unavailable until it "
                    "is back; events published meanwhile are lost (pub/sub delivers at most "
                    "once)", self._name, self.backend, _describe(exc))
        self._store.link_down()

    def _unexpected(self, exc):
        """Log a traceback for an error that is not Redis going away (a bug)."""
        if not isinstance(exc, (self._redis.RedisError, OSError, LinkLost)):
            log.error("%s: chat backend: unexpected error", self._name, exc_info=exc)

    def _disconnect(self):
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # closing a broken connection: nothing left to do
                pass

    # -- the listener thread --------------------------------------------------------

    def _follow(self, generation):
        """Point the listener at ``generation`` and wait until it is subscribed."""
        with self._cond:
            self._target, self._failure = generation, None
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._subscribed == generation or self._failure
                                is not None or self._stopping.is_set(), self.timeout + 1.0)
            if self._subscribed != generation:
                failure = self._failure
                raise LinkLost("subscribing: %s" % (_describe(failure[1]) if failure
                                                    else "no answer"))

    def _listen_loop(self):
        served = None
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopping.is_set() or (
                    self._target is not None and self._target != served))
                if self._stopping.is_set():
                    return
                served = self._target
            try:
                self._listen(served)
            except Exception as exc:
                with self._cond:
                    if self._target == served:
                        self._failure = (served, exc)
                    self._cond.notify_all()
                self._wake.set()

    def _listen(self, generation):
        client = self._redis.Redis(max_connections=1, **self._kwargs)
        pubsub = client.pubsub()
        try:
            pubsub.subscribe(self._store.prefix + ":events", self._own_channel)
            self._await_subscribed(pubsub, 2)
            with self._cond:
                self._subscribed = generation
                self._cond.notify_all()
            while self._target == generation and not self._stopping.is_set():
                message = pubsub.get_message(timeout=_LISTEN_POLL)
                if message is None:
                    continue
                batch = [message]
                while len(batch) < _LISTEN_BATCH:
                    message = pubsub.get_message(timeout=0)
                    if message is None:
                        break
                    batch.append(message)
                self._store.received([m["data"] for m in batch if m["type"] == "message"])
        finally:
            try:
                pubsub.close()
                client.close()
            except Exception:  # the connection is broken already
                pass

    def _await_subscribed(self, pubsub, count):
        deadline = time.monotonic() + self.timeout
        while count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LinkLost("no subscription confirmed within %gs" % self.timeout)
            message = pubsub.get_message(timeout=left)
            if message is not None and message["type"] == "subscribe":
                count -= 1


def _describe(exc):
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."
