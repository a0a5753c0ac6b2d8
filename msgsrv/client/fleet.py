"""One request on many msgsrv daemons at once: run a command, put a file, read the status.

Like pdsh or ClusterShell's clush: a list of hosts, at most ``fanout`` of
them served at a time by as many threads, each with a connect timeout and a
timeout for the whole exchange, and one :class:`HostResult` per host, in the
order the hosts were given, whatever happened to the others::

    from msgsrv.client.fleet import Fleet, read_hosts

    fleet = Fleet(read_hosts("hosts.txt"), keys_file="var/keys/msgsrv.keys", fanout=16)
    for result in fleet.run("uptime"):
        print(result.host, result.ok, result.exit_code, result.error, result.output)

A host that cannot be reached, times out, refuses the request or the
credentials is a result like any other (``ok`` false, ``error`` saying which
of :data:`ERROR_KINDS`), never an exception.  Each host may name its own key
(the second word of its line in a hosts file); its secret comes from the keys
file, as for one client.
"""

import functools
import ipaddress
import os
import re
import socket
import stat
import threading
import time
from typing import Any, NamedTuple, Optional, Tuple

from msgsrv.client.base import DEFAULT_HELLO_TIMEOUT
from msgsrv.client.framed import ENV_KEY, ENV_KEYS_FILE, ENV_SECRET
from msgsrv.services.command.client import CommandClient
from msgsrv.services.files import transfer
from msgsrv.services.files.client import FileClient, upload_id_for
from msgsrv.services.status.client import StatusClient
from msgsrv.wire import auth
from msgsrv.wire.errors import (AuthError, ConfigError, ConnectionFailed, MsgsrvError,
                                ProtocolError, RequestTimeout, ServerError)

DEFAULT_FANOUT = 32          # hosts served at once (pdsh's default)
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_TIMEOUT = 60.0       # the whole exchange with one host
DEFAULT_MAX_OUTPUT = 4 << 20  # bytes of output kept per host
_JOIN_WAIT = 2.0             # seconds to wait for the threads once every result is in

#: What ``HostResult.error`` may say, and what it means.
ERROR_KINDS = {
    "unreachable": "no connection: refused, no route, name unknown, closed before the greeting",
    "timeout": "no answer in time: the connection, the greeting, or the whole exchange "
               "(the command's own timeout on the server counts too)",
    "refused": "the service answered with an error (unknown-command, denied, busy, exists...)",
    "auth": "no key for this host, or the service refused it",
    "protocol": "the peer does not speak msgsrv, or broke the protocol",
    "lost": "the connection broke after it was established: the request may have run",
    "local": "a local problem (the file being sent changed or could not be read)",
}

_HOSTNAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})")


class Host(NamedTuple):
    """One daemon's service: ``host`` (a name or an address), ``port``, and the
    name of the key to present to it (None: the fleet's key)."""

    host: str
    port: int
    key: Optional[str] = None

    @property
    def label(self):
        """``HOST:PORT``, IPv6 addresses in brackets: how the host is shown."""
        shown = "[%s]" % self.host if ":" in self.host else self.host
        return "%s:%d" % (shown, self.port)


class HostResult(NamedTuple):
    """What one host did.

    ``ok`` is true when the request succeeded (a command: exited 0).
    ``exit_code`` is a command's shell-style status (124 when the server's
    timeout killed it, 128+N for signal N), 0 for a put or a status that
    succeeded, None when there was no result.  ``output`` and ``stderr`` are
    the lines of a command's two streams (without their newlines).
    ``error`` is None or one of :data:`ERROR_KINDS`; ``message`` says why in
    one line (or notes a truncated output).  ``value`` is the
    :class:`~msgsrv.services.command.client.Result`,
    :class:`~msgsrv.services.files.client.Transfer`
    or status document.
    """

    host: str
    ok: bool
    exit_code: Optional[int] = None
    output: Tuple[str, ...] = ()
    stderr: Tuple[str, ...] = ()
    error: Optional[str] = None
    message: str = ""
    value: Any = None
    duration: float = 0.0


# -- host lists --------------------------------------------------------------------

def parse_host(word, key=None):
    """``HOST:PORT`` (IPv6 as ``[ADDR]:PORT``) -> :class:`Host`; ValueError naming the rule."""
    host, sep, port = word.rpartition(":")
    if not sep or not host:
        raise ValueError("%r is not HOST:PORT" % word)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            if ipaddress.ip_address(host.split("%", 1)[0]).version != 6:
                raise ValueError
        except ValueError:
            raise ValueError("%r: only IPv6 addresses go in brackets" % word) from None
    elif ":" in host:
        raise ValueError("%r: put an IPv6 address in brackets: [ADDR]:PORT" % word)
    elif not _HOSTNAME.fullmatch(host):
        raise ValueError("%r: %r is not a host name or address" % (word, host))
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("%r: the port must be 1..65535" % word)
    return Host(host, int(port), key)


def parse_hosts(text, source="<hosts>"):
    """The hosts of a hosts file's ``text``: one ``HOST:PORT [KEY]`` per line.

    ``#`` starts a comment; blank lines are skipped; ``KEY`` names the key to
    present to that host.  Raises ConfigError naming ``source``, the line and
    the rule (a malformed line, a host listed twice, no host at all).
    """
    hosts, seen = [], {}
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        where = "%s:%d" % (source, number)
        if len(words) > 2:
            raise ConfigError("%s: expected HOST:PORT [KEY], got %r" % (where, line.strip()))
        try:
            host = parse_host(*words)
        except ValueError as exc:
            raise ConfigError("%s: %s" % (where, exc)) from None
        if host.label in seen:
            raise ConfigError("%s: %s is already listed on line %d"
                              % (where, host.label, seen[host.label]))
        seen[host.label] = number
        hosts.append(host)
    if not hosts:
        raise ConfigError("%s lists no host" % source)
    return hosts


def read_hosts(path):
    """The hosts listed in the file at ``path`` (see :func:`parse_hosts`); OSError if unreadable."""
    with open(path, encoding="utf-8") as stream:
        return parse_hosts(stream.read(), os.fspath(path))


def hosts_from_spec(spec):
    """``--hosts`` of the command line: an existing file's name, or ``HOST:PORT,...``."""
    if os.path.isfile(spec):
        return read_hosts(spec)
    return parse_hosts(spec.replace(",", "\n"), "--hosts")


# -- one exchange ------------------------------------------------------------------

class _Task:
    """One host's exchange: its deadline, and the client to shut down when it passes."""

    def __init__(self, host):
        self.host = host
        self.started = self.deadline = None
        self.result = None
        self.timed_out = False
        self.connected = False
        self._client = None
        self._lock = threading.Lock()

    def start(self, timeout):
        self.started = time.monotonic()
        self.deadline = self.started + timeout

    def remaining(self):
        """Seconds left before the deadline (at least a millisecond)."""
        return max(self.deadline - time.monotonic(), 0.001)

    def attach(self, client):
        """Adopt the connected ``client``: it is shut down if the deadline passes."""
        with self._lock:
            if self.timed_out:
                client.close()
                raise RequestTimeout("the deadline passed while connecting")
            self._client = client
            self.connected = True
        client.sock.settimeout(self.remaining())
        return client

    def expire(self):
        """The deadline passed: wake the exchange blocked on its socket."""
        with self._lock:
            self.timed_out = True
            client = self._client
            if client is not None and client.sock is not None:
                try:
                    client.sock.shutdown(socket.SHUT_RDWR)  # a blocked recv returns at once
                except OSError:
                    pass

    def release(self):
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


def _error_kind(exc, task):
    if task.timed_out or isinstance(exc, RequestTimeout):
        return "timeout"
    if isinstance(exc, (AuthError, ConfigError)):
        return "auth"
    if isinstance(exc, ServerError):
        return "refused"
    if isinstance(exc, ConnectionFailed):
        return "lost" if task.connected else "unreachable"
    if isinstance(exc, ProtocolError):
        return "protocol"
    return "local"


def _failure(task, exc, timeout):
    kind = _error_kind(exc, task)
    message = str(exc)
    if task.timed_out:
        message = "no result within %.1f s" % timeout
    return HostResult(task.host.label, False, error=kind, message=message)


class _Lines:
    """Splits a stream's bytes into lines, keeping at most a shared byte budget;
    ``emit(text)`` (if not None) is told each line as it is complete."""

    def __init__(self, budget, emit):
        self.budget, self.emit = budget, emit
        self.lines = []
        self._partial = b""

    def feed(self, data):
        data = self.budget.take(data)
        if not data:
            return
        *complete, self._partial = (self._partial + data).split(b"\n")
        for line in complete:
            self._add(line)

    def close(self):
        if self._partial:
            self._add(self._partial)
            self._partial = b""
        return tuple(self.lines)

    def _add(self, raw):
        text = raw.decode("utf-8", "replace")
        self.lines.append(text)
        if self.emit is not None:
            self.emit(text)


class _Budget:
    def __init__(self, limit):
        self.left = limit
        self.exceeded = False

    def take(self, data):
        if len(data) > self.left:
            self.exceeded = True
            data = data[:self.left]
        self.left -= len(data)
        return data


# -- the fleet ---------------------------------------------------------------------

class Fleet:
    """Many daemons addressed as one; see the module docstring.

    ``hosts`` is a list of :class:`Host` (or ``HOST:PORT`` strings).
    ``fanout`` hosts are served at once; each gets ``connect_timeout``
    seconds to connect, greet and authenticate, and ``timeout`` seconds for
    the whole exchange (its connection is shut down then).  Credentials:
    ``key_name`` and ``secret``, or ``keys_file`` (each host's own key, else
    ``key_name``, else the file's only key), or the MSGSRV_KEY /
    MSGSRV_SECRET / MSGSRV_KEYS_FILE environment variables.  The TLS options
    are those of :func:`msgsrv.client.base.connect_tcp`.
    """

    def __init__(self, hosts, *, fanout=DEFAULT_FANOUT, connect_timeout=DEFAULT_CONNECT_TIMEOUT,
                 timeout=DEFAULT_TIMEOUT, key_name=None, secret=None, keys_file=None,
                 hello_timeout=DEFAULT_HELLO_TIMEOUT, max_output=DEFAULT_MAX_OUTPUT, **tls):
        self.hosts = [parse_host(h) if isinstance(h, str) else h for h in hosts]
        if fanout < 1:
            raise ValueError("fanout must be at least 1 (got %r)" % (fanout,))
        self.fanout, self.timeout, self.max_output = fanout, timeout, max_output
        self.connect_timeout = connect_timeout
        self._connect = dict(tls, hello_timeout=min(hello_timeout, connect_timeout))
        self._keys = _Keys(key_name, secret, keys_file)

    # -- requests ------------------------------------------------------------

    def run(self, name, *args, stdin=b"", on_line=None):
        """Run command ``name`` with ``args`` on every host; return their HostResults.

        ``on_line(host_label, stream, text)`` is called (from the worker
        threads, so it must be thread-safe) for each line as it arrives,
        ``stream`` being ``"stdout"`` or ``"stderr"``.
        """
        return self.each(lambda client: client.run_stream(name, *args, stdin=stdin),
                         on_line=on_line)

    def run_argv(self, argv, stdin=b"", on_line=None):
        """Like :meth:`run` for any program (services with ``allow_any = yes`` only)."""
        return self.each(lambda client: client.run_argv_stream(list(argv), stdin),
                         on_line=on_line)

    def each(self, start, on_line=None):
        """Run ``start(command_client)`` (an iterable such as ``run_stream``) on every host."""
        def work(task):
            with task.attach(self._open(CommandClient, task)) as client:
                return self._collect(task, start(client), on_line)
        return self._fan_out(work)

    def put(self, local, remote, *, overwrite=False, resume=True):
        """Upload the local file ``local`` to ``remote`` on every host; return their HostResults.

        The file is hashed once first; each host's upload is checked end to
        end by SHA-256 (the server stores it only if it matches) and its
        acknowledged digest must be that first one (``local`` otherwise: the
        file changed meanwhile).  With ``resume`` an interrupted upload
        resumes when the same put is run again (see
        :func:`~msgsrv.services.files.client.upload_id_for`).  Raises OSError at once if
        ``local`` cannot be read, ValueError if it is not a regular file.
        """
        with open(local, "rb") as source:
            st = os.fstat(source.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ValueError("%s is not a regular file" % local)
            size = st.st_size
            digest = transfer.file_sha256(source.fileno(), 0, size)
        upload_id = upload_id_for(local) if resume else None

        def work(task):
            with task.attach(self._open(FileClient, task)) as client:
                done = client.put(local, remote, overwrite=overwrite, upload_id=upload_id)
            if (done.sha256, done.size) != (digest, size):
                return HostResult(task.host.label, False, error="local", value=done,
                                  message="%s changed while it was being sent" % local)
            line = "%s: %d bytes, sha256 %s" % (remote, done.size, done.sha256)
            return HostResult(task.host.label, True, 0, (line,), value=done)
        return self._fan_out(work)

    def status(self):
        """Every host's status document (``value``) from its status service."""
        def work(task):
            client = StatusClient(task.host.host, task.host.port, timeout=self._wait(task),
                                  **self._connect)
            with task.attach(client):
                return HostResult(task.host.label, True, 0, value=client.status())
        return self._fan_out(work)

    # -- machinery ---------------------------------------------------------------

    def _wait(self, task):
        return min(self.connect_timeout, task.remaining())

    def _open(self, client_class, task):
        key_name, secret = self._keys.for_host(task.host)
        return client_class(task.host.host, task.host.port, key_name, secret,
                            timeout=self._wait(task), **self._connect)

    def _collect(self, task, items, on_line):
        budget = _Budget(self.max_output)
        streams = {name: _Lines(budget, None if on_line is None
                                else functools.partial(on_line, task.host.label, name))
                   for name in ("stdout", "stderr")}
        result = None
        try:
            for kind, data in items:  # the last item is always ("exit", Result)
                if kind == "exit":
                    result = data
                else:
                    streams[kind].feed(data)
        except (MsgsrvError, OSError) as exc:  # keep what arrived before the failure
            return _failure(task, exc, self.timeout)._replace(
                output=streams["stdout"].close(), stderr=streams["stderr"].close())
        output, errors = streams["stdout"].close(), streams["stderr"].close()
        notes = ["timed out on the server (killed by %s)" % result.signal] if result.timed_out \
            else (["killed by %s" % result.signal] if result.signal else [])
        notes += ["%s truncated by the server" % name for name in result.truncated]
        if budget.exceeded:
            notes.append("output over %d bytes: the rest was dropped" % self.max_output)
        return HostResult(task.host.label, result.ok, result.status, output, errors,
                          "timeout" if result.timed_out else None, "; ".join(notes), result)

    def _fan_out(self, work):
        tasks = [_Task(host) for host in self.hosts]
        pending = list(reversed(tasks))
        done = threading.Condition()

        def worker():
            while True:
                with done:
                    if not pending:
                        return
                    task = pending.pop()
                    task.start(self.timeout)
                result = self._attempt(work, task)
                with done:
                    task.result = result
                    done.notify_all()

        threads = [threading.Thread(target=worker, name="fleet-%d" % n, daemon=True)
                   for n in range(min(self.fanout, len(tasks)))]
        for thread in threads:
            thread.start()
        try:
            self._watch(tasks, done)
        except BaseException:  # Ctrl-C: end every exchange before leaving
            with done:
                pending.clear()
                for task in tasks:
                    task.expire()
            raise
        finally:
            deadline = time.monotonic() + _JOIN_WAIT
            for thread in threads:  # one still connecting ends within its connect timeout
                thread.join(max(deadline - time.monotonic(), 0))
        return [task.result for task in tasks]

    def _attempt(self, work, task):
        started = time.monotonic()
        try:
            result = work(task)
        except Exception as exc:  # noqa: BLE001 -- a bug must not leave the others waiting
            result = _failure(task, exc, self.timeout)
        finally:
            task.release()
        if task.timed_out and result.error is None:
            result = _failure(task, RequestTimeout("late"), self.timeout)
        return result._replace(duration=time.monotonic() - started)

    @staticmethod
    def _watch(tasks, done):
        """Wait for every task, expiring those whose deadline passed."""
        with done:
            while True:
                running = [t for t in tasks if t.result is None and t.deadline is not None]
                if all(t.result is not None for t in tasks):
                    return
                now = time.monotonic()
                for task in running:
                    if now >= task.deadline and not task.timed_out:
                        task.expire()
                waits = [t.deadline - now for t in running if not t.timed_out]
                done.wait(max(min(waits), 0.001) if waits else 0.5)


class _Keys:
    """Each host's credentials: its own key name, else the fleet's; secrets from the
    keys file (read once), the secret given, or the environment."""

    def __init__(self, key_name, secret, keys_file, environ=None):
        environ = os.environ if environ is None else environ
        self.key_name = key_name or environ.get(ENV_KEY)
        self.secret = secret
        if secret is None and keys_file is None and ENV_SECRET in environ:
            self.secret = environ[ENV_SECRET]
        self.keys_file = keys_file or (None if self.secret is not None
                                       else environ.get(ENV_KEYS_FILE))
        self._keys = None
        self._lock = threading.Lock()

    def for_host(self, host):
        """``(name, secret)`` for ``host``; ConfigError (kind ``auth``) if it has none."""
        name = host.key or self.key_name
        if self.secret is not None and (host.key is None or host.key == self.key_name):
            return name, self.secret
        if self.keys_file is None:
            return None, None  # the client refuses: a command or file service needs a key
        keys = self._loaded()
        if name is None:
            if len(keys) != 1:
                raise ConfigError("the keys file %s holds %d keys: name one with --key (or %s) "
                                  "or after the host in the hosts file"
                                  % (self.keys_file, len(keys), ENV_KEY))
            name = next(iter(keys))
        if name not in keys:
            raise ConfigError("the keys file %s has no key named %r" % (self.keys_file, name))
        return name, keys[name]

    def _loaded(self):
        with self._lock:
            if self._keys is None:
                self._keys = auth.load_keys(self.keys_file)
            return self._keys


__all__ = ["Fleet", "Host", "HostResult", "ERROR_KINDS", "parse_host", "parse_hosts",
           "read_hosts", "hosts_from_spec", "DEFAULT_FANOUT", "DEFAULT_CONNECT_TIMEOUT",
           "DEFAULT_TIMEOUT"]
