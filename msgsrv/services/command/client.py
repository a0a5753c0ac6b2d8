"""CommandClient: run allow-listed commands on a command service (docs/PROTOCOL.rst)."""

import signal as _signal
from typing import NamedTuple, Optional, Tuple

from msgsrv.client.framed import FramedClient
from msgsrv.wire.errors import AuthError, ProtocolError

TIMED_OUT_STATUS = 124  # what coreutils timeout(1) exits with


class Result(NamedTuple):
    """How a remote run ended, with its output.

    ``exit_code`` is None when the command was killed by a signal
    (``signal``: its name, e.g. ``"SIGKILL"``); ``truncated`` names the
    streams that went over the server's ``max_output`` (empty if none);
    ``timed_out`` is True when the server killed the command at its timeout.
    """

    exit_code: Optional[int]
    stdout: bytes
    stderr: bytes
    duration: float
    truncated: Tuple[str, ...]
    timed_out: bool
    signal: Optional[str] = None

    @property
    def ok(self):
        """True if the command exited with status 0 on its own."""
        return self.exit_code == 0 and not self.timed_out

    @property
    def status(self):
        """One shell-style status: the exit code, 124 if timed out, 128+N if killed by signal N."""
        if self.timed_out:
            return TIMED_OUT_STATUS
        if self.exit_code is not None:
            return self.exit_code
        try:
            return 128 + _signal.Signals[self.signal].value
        except KeyError:
            return 255


def _result(header, stdout=b"", stderr=b""):
    truncated = header.get("truncated") or {}
    return Result(exit_code=header.get("exit_code"), stdout=stdout, stderr=stderr,
                  duration=float(header.get("duration", 0.0)),
                  truncated=tuple(name for name in ("stdout", "stderr") if truncated.get(name)),
                  timed_out=bool(header.get("timed_out")), signal=header.get("signal"))


class CommandClient(FramedClient):
    """An authenticated connection to a command service.

    Credentials as for FramedClient (arguments, ``keys_file``, or the
    MSGSRV_KEY / MSGSRV_SECRET / MSGSRV_KEYS_FILE environment variables);
    without any, AuthError is raised at once.  Refusals raise ServerError
    with the server's code (``unknown-command``, ``denied``, ``bad-args``,
    ``busy``...); network trouble raises ConnectionFailed or RequestTimeout.
    """

    def __init__(self, host, port, key_name=None, secret=None, **kwargs):
        super().__init__(host, port, key_name, secret, **kwargs)
        if self.identity is None:
            self.close()
            raise AuthError("auth-failed", "the command service needs a key: give key_name and "
                                           "secret, a keys file, or MSGSRV_KEYS_FILE")

    def list(self):
        """The commands this key may run: dicts with name, description, usage, args."""
        reply = self.request({"type": "list"})
        if reply.type != "commands":
            raise ProtocolError("bad-reply", "expected a commands reply, got %r" % reply.type)
        return reply.header["commands"]

    def run(self, name, *args, stdin=b""):
        """Run command ``name`` with string ``args``; return its Result once it ended."""
        return self._collect(self.run_stream(name, *args, stdin=stdin))

    def run_stream(self, name, *args, stdin=b""):
        """Run command ``name``, yielding ``(stream, bytes)`` as output arrives.

        ``stream`` is ``"stdout"`` or ``"stderr"``; the last item is
        ``("exit", Result)`` (its stdout and stderr are empty: they were
        yielded).  Leaving the loop early closes the connection, which makes
        the server kill the command.
        """
        return self._streamed_run({"type": "run", "command": name, "args": list(args)}, stdin)

    def run_argv(self, argv, stdin=b""):
        """Run any program (only where the service has ``allow_any = yes``); return its Result."""
        return self._collect(self.run_argv_stream(argv, stdin))

    def run_argv_stream(self, argv, stdin=b""):
        """Like :meth:`run_stream` for an arbitrary argv (``allow_any`` services only)."""
        return self._streamed_run({"type": "run", "argv": list(argv)}, stdin)

    def _streamed_run(self, header, stdin):
        self.send(header, stdin)
        started = self.recv()  # a refusal raises ServerError here; the connection stays usable
        if started.type != "started":
            raise ProtocolError("bad-reply", "expected started, got %r" % started.type)
        finished = False
        previous = self.sock.gettimeout()
        if previous is not None:
            # The server may stay silent for the whole command timeout: wait that long, plus ours.
            self.sock.settimeout(previous + float(started.header.get("timeout", 0)))
        try:
            for item in self._frames():
                finished = item[0] == "exit"
                yield item
        finally:
            if finished and self.sock is not None:
                self.sock.settimeout(previous)
            else:
                self.close()

    def _frames(self):
        while True:
            message = self.recv()
            if message.type == "output" and message.header.get("stream") in ("stdout", "stderr"):
                yield message.header["stream"], message.body
            elif message.type == "exit":
                yield "exit", _result(message.header)
                return
            else:
                raise ProtocolError("bad-reply", "expected output or exit, got %r" % message.type)

    @staticmethod
    def _collect(items):
        output = {"stdout": bytearray(), "stderr": bytearray()}
        for kind, data in items:  # the last item is always ("exit", Result)
            if kind != "exit":
                output[kind] += data
        return data._replace(stdout=bytes(output["stdout"]), stderr=bytes(output["stderr"]))
