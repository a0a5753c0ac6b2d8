"""Run one child process in its own process group and pump its output to a peer socket.

:func:`spawn` starts an argv (never through a shell) in a new session, with
a given working directory, environment and identity (user, groups) and no
inherited descriptors.
:class:`ProcessRun` then runs one selector loop over the child's stdout and
stderr pipes, its stdin pipe (when there is input to feed), an exit
notification (a pidfd where the kernel has them) and the peer socket:

* output is framed (``encode(stream, data)``) and queued for the peer as
  it arrives, at most ``max_output`` bytes per stream; the rest is read and
  discarded so the child never blocks on a full pipe;
* while more than :data:`HIGH_WATER` bytes wait for a slow peer, the pipes
  are not read (the child then blocks: back-pressure, no unbounded buffer);
* at ``timeout``, when the peer disconnects, when the peer takes nothing
  for ``io_timeout`` seconds or less than ``min_rate`` bytes per second
  over ``rate_window`` seconds of waiting on it (a
  :class:`~msgsrv.net.transfer_limits.RateWatch`), and when the main process
  exits, the whole process group gets SIGTERM, then SIGKILL ``kill_grace``
  seconds later;
* when the run is cancelled (the server aborted the connection, e.g. at
  the end of its shutdown grace period) the same, with at most
  :data:`CANCEL_KILL_GRACE` seconds between the two signals.

Before the main process is reaped the group gets SIGKILL in any case, so
nothing a run started outlives it (unless it left the process group).

The leader is only reaped at the very end, so its process group id cannot be
reused by an unrelated process while we may still signal it.
"""

import contextlib
import os
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Dict, Optional

from msgsrv.net.transfer_limits import RateWatch
from msgsrv.wire.errors import TooSlow

READ_SIZE = 64 * 1024        # bytes read from a pipe at once (one output frame at most)
SEND_SIZE = 256 * 1024       # bytes handed to one socket send
HIGH_WATER = 256 * 1024      # queued output above which the pipes are not read
# Most output one run holds for its peer: below HIGH_WATER, then one read of
# each stream (and its frame header) on top.
OUTPUT_BUFFERS = HIGH_WATER + 2 * READ_SIZE + 1024
RATE_STEP = 0.5              # seconds between rate checks while output waits for the peer
EXIT_POLL = 0.05             # seconds between exit checks when there is no pidfd
HARD_STOP_MARGIN = 1.0       # seconds after timeout + kill_grace when the loop ends regardless
REAP_TIMEOUT = 5.0           # seconds to wait for a SIGKILLed leader to be reaped
CANCEL_KILL_GRACE = 0.5      # seconds from SIGTERM to SIGKILL once a run is cancelled
CANCEL_POLL = 0.1            # seconds between checks for cancellation
_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
STREAMS = ("stdout", "stderr")


def spawn(argv, *, workdir, env, stdin=False, user=None, group=None, extra_groups=None):
    """Start ``argv`` as the leader of a new session (its own process group).

    stdin is a pipe when ``stdin`` is true, else /dev/null; stdout and stderr
    are pipes; no descriptor but these three is inherited; ``env`` is the
    whole environment.  ``user``, ``group`` and ``extra_groups`` (uid, gid,
    supplementary gids; None: unchanged) are set in the child before it
    executes, so only a root daemon can give them.  Raises OSError if the
    program cannot be executed or the identity cannot be taken.
    """
    return subprocess.Popen(
        list(argv), stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=workdir, env=dict(env),
        close_fds=True, start_new_session=True, user=user, group=group,
        extra_groups=None if extra_groups is None else list(extra_groups))


@dataclass(frozen=True)
class Outcome:
    """How a run ended.

    ``exit_code`` is None when the main process was killed by a signal
    (``signal``, e.g. ``"SIGKILL"``).  ``produced`` counts every byte each
    stream wrote, ``truncated`` says which streams went over ``max_output``.
    ``ended_by`` is ``"disconnected"``, ``"stalled"`` (nothing taken for
    ``io_timeout``) or ``"too-slow"`` (below ``min_rate``) when the peer was lost,
    ``"cancelled"`` when ``cancelled()`` turned true.
    """

    exit_code: Optional[int]
    signal: Optional[str]
    duration: float
    timed_out: bool
    truncated: Dict[str, bool]
    produced: Dict[str, int]
    ended_by: Optional[str]


def _signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:
        return "SIG%d" % number


class ProcessRun:
    """One spawned child pumped to one non-blocking peer socket until it ends.

    ``encode(stream, data)`` frames output; ``on_input(data)`` receives bytes
    the peer sends meanwhile and returns False to stop reading from it;
    ``greeting`` is queued before any output; ``stdin`` is fed to the child's
    stdin pipe (if it has one); ``cancelled()`` returning true ends the run
    (polled every :data:`CANCEL_POLL` seconds and whenever the peer is lost).
    After :meth:`pump`, ``pending`` holds output the peer has not taken yet
    and ``bytes_sent`` what it did take.
    """

    def __init__(self, proc, sock, limits, *, io_timeout, encode, on_input,
                 greeting=b"", stdin=b"", cancelled=lambda: False, min_rate=0,
                 rate_window=10.0):
        self.proc = proc
        self.sock = sock
        self.limits = limits
        self.io_timeout = io_timeout
        self.pending = bytearray(greeting)
        self.bytes_sent = 0
        self._encode = encode
        self._on_input = on_input
        self._cancelled = cancelled
        self._grace = limits.kill_grace
        self._stdin = memoryview(bytes(stdin))
        self._stdin_fd = proc.stdin.fileno() if proc.stdin is not None else None
        self._streams = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr"}
        self._produced = dict.fromkeys(STREAMS, 0)
        self._forwarded = dict.fromkeys(STREAMS, 0)
        self._timed_out = self._exited = self._killed = False
        self._term_at = self._ended_by = None
        self._peer = self._reading_peer = True
        self._selector = None
        self._pidfd = None
        self._watch = RateWatch(min_rate, rate_window) if min_rate else None

    # -- the loop -------------------------------------------------------------

    def pump(self):
        """Run until the process ended and its pipes closed (or the hard stop); return Outcome."""
        self._started = self._last_send = time.monotonic()
        self._deadline = self._started + self.limits.timeout
        self._hard_stop = self._deadline + self.limits.kill_grace + HARD_STOP_MARGIN
        self._selector = selectors.DefaultSelector()
        try:
            self._prepare_descriptors()
            while not self._finished():
                self._step()
        finally:
            returncode = self._cleanup()
        return self._outcome(returncode)

    def _prepare_descriptors(self):
        self.sock.setblocking(False)
        for fd in list(self._streams) + [self._stdin_fd]:
            if fd is not None:
                os.set_blocking(fd, False)
        with contextlib.suppress(AttributeError, OSError):
            self._pidfd = os.pidfd_open(self.proc.pid)

    def _finished(self):
        return (self._exited and not self._streams) or time.monotonic() >= self._hard_stop

    def _step(self):
        if self._peer and self._cancelled():
            self._lose_peer("cancelled")
        now = time.monotonic()
        self._enforce(now)
        self._update_interest()
        waiting, sent = bool(self.pending) and self._peer, self.bytes_sent
        for key, mask in self._selector.select(self._wait(now)):
            key.data(key.fd, mask)
        if self._pidfd is None:
            self._poll_exit()
        self._check_stall(time.monotonic())
        if waiting and self._peer:
            self._check_rate(time.monotonic() - now, self.bytes_sent - sent)

    def _wait(self, now):
        times = [self._hard_stop]
        if not self._exited and not self._timed_out:
            times.append(self._deadline)
        if self._term_at is not None and not self._killed:
            times.append(self._term_at + self._grace)
        if self.pending and self._peer:
            times.append(self._last_send + self.io_timeout)
            if self._watch is not None:
                times.append(now + RATE_STEP)
        wait = min(times) - now
        if self._peer:
            wait = min(wait, CANCEL_POLL)
        if self._pidfd is None:
            wait = min(wait, EXIT_POLL)
        return max(wait, 0.0)

    def _update_interest(self):
        pipes = _READ if not self._peer or len(self.pending) < HIGH_WATER else 0
        for fd in self._streams:
            self._want(fd, pipes, self._read_stream)
        if self._stdin_fd is not None:
            self._want(self._stdin_fd, _WRITE, self._write_stdin)
        peer = (_READ if self._reading_peer else 0) | (_WRITE if self.pending else 0)
        self._want(self.sock, peer if self._peer else 0, self._peer_event)
        if self._pidfd is not None:
            self._want(self._pidfd, 0 if self._exited else _READ, self._pidfd_event)

    def _want(self, fileobj, events, callback):
        key = self._selector.get_map().get(fileobj)
        if not events:
            if key is not None:
                self._selector.unregister(fileobj)
        elif key is None:
            self._selector.register(fileobj, events, callback)
        elif key.events != events:
            self._selector.modify(fileobj, events, callback)

    # -- limits and signals ---------------------------------------------------

    def _enforce(self, now):
        if not self._exited and not self._timed_out and now >= self._deadline:
            self._timed_out = True
            self._terminate(now)
        if self._term_at is not None and not self._killed \
                and now >= self._term_at + self._grace:
            self._killed = True
            self._signal_group(signal.SIGKILL)

    def _terminate(self, now):
        if self._term_at is None:
            self._term_at = now
            self._signal_group(signal.SIGTERM)

    def _signal_group(self, signum):
        # The leader is not reaped yet, so its pid still names this group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signum)

    def _poll_exit(self):
        if self._exited:
            return
        try:
            status = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            status = True
        if status is not None:
            self._exited = True
            self._terminate(time.monotonic())  # whatever the leader left behind

    def _pidfd_event(self, fd, mask):
        self._poll_exit()

    # -- the child's pipes ----------------------------------------------------

    def _read_stream(self, fd, mask):
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._selector.unregister(fd)
            del self._streams[fd]
            return
        self._forward(self._streams[fd], data)

    def _forward(self, name, data):
        self._produced[name] += len(data)
        room = max(self.limits.max_output - self._forwarded[name], 0)
        data = data[:room]
        self._forwarded[name] += len(data)
        if data and self._peer:
            if not self.pending:
                self._last_send = time.monotonic()
            self.pending += self._encode(name, data)

    def _write_stdin(self, fd, mask):
        try:
            written = os.write(fd, self._stdin[:READ_SIZE])
        except BlockingIOError:
            return
        except OSError:
            written = len(self._stdin)  # the child closed its stdin: drop the rest
        self._stdin = self._stdin[written:]
        if not self._stdin:
            self._selector.unregister(fd)
            self.proc.stdin.close()
            self._stdin_fd = None

    # -- the peer -------------------------------------------------------------

    def _peer_event(self, fd, mask):
        if mask & _READ:
            self._read_peer()
        if self._peer and mask & _WRITE:
            self._write_peer()

    def _read_peer(self):
        try:
            data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._lose_peer("disconnected")
        else:
            self._reading_peer = bool(self._on_input(data))

    def _write_peer(self):
        try:
            with memoryview(self.pending) as view, view[:SEND_SIZE] as chunk:
                sent = self.sock.send(chunk)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._lose_peer("disconnected")
            return
        del self.pending[:sent]
        self.bytes_sent += sent
        self._last_send = time.monotonic()

    def _check_stall(self, now):
        if self._peer and self.pending and now - self._last_send >= self.io_timeout:
            self._lose_peer("stalled")

    def _check_rate(self, waited, sent):
        if self._watch is None:
            return
        try:
            self._watch.step(waited, sent)
        except TooSlow:
            self._lose_peer("too-slow")

    def _lose_peer(self, reason):
        if self._cancelled():  # the server cut the connection: this peer loss is its doing
            reason = "cancelled"
            self._grace = min(self._grace, CANCEL_KILL_GRACE)
        self._peer = False
        self._ended_by = reason
        self.pending.clear()
        self._terminate(time.monotonic())

    # -- the end --------------------------------------------------------------

    def _cleanup(self):
        self._signal_group(signal.SIGKILL)
        self._selector.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        try:
            return self.proc.wait(REAP_TIMEOUT)
        except subprocess.TimeoutExpired:
            return None

    def _outcome(self, returncode):
        killed_by = -returncode if returncode is not None and returncode < 0 else None
        return Outcome(
            exit_code=returncode if killed_by is None else None,
            signal=_signal_name(killed_by) if killed_by else None,
            duration=time.monotonic() - self._started,
            timed_out=self._timed_out,
            truncated={name: self._produced[name] > self._forwarded[name] for name in STREAMS},
            produced=dict(self._produced),
            ended_by=self._ended_by)
