"""msgsrvctl: start, stop, restart, reload or show the status of the daemon in the background.

The actions and exit codes are those of an LSB init script (``EXIT_STATUS``).
Whether a daemon runs is decided by the pidfile's lock (:mod:`msgsrv.ops.pidfile`),
never by the number in it.  ``start`` launches ``python -m msgsrv`` with the
same interpreter, detached (its own session, standard input from /dev/null,
output appended to the log file or ``<pidfile>.out``), and waits for its
``READY=1`` on a private notify socket (:mod:`msgsrv.ops.notify`), so it knows
the daemon is serving whatever the log level.  ``reload`` reads the daemon's
verdict from its log.
"""

import argparse
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

from msgsrv.ops import config as config_module, preflight
from msgsrv.ops.daemon import state_path, workers_path
from msgsrv.ops.notify import ENV as NOTIFY_ENV
from msgsrv.ops.pidfile import running_pid
from msgsrv.services.status.report import format_duration
from msgsrv.wire.errors import ConfigError
from .manpages import Manual, epilog, table

# LSB init-script exit codes (actions other than status), then status's own.
OK, FAILED, USAGE, NO_PRIVILEGE, NOT_CONFIGURED, NOT_RUNNING = 0, 1, 2, 4, 6, 7
STATUS_DEAD, STATUS_NOT_RUNNING, STATUS_UNKNOWN = 1, 3, 4

ACTIONS = (
    ("start", "Check the configuration, start the daemon in the background and wait until "
              "every listener accepts (the listeners are printed). Starting a running daemon "
              "succeeds and starts nothing."),
    ("stop", "SIGTERM, then wait up to shutdown_timeout + $MSGSRV_STOP_GRACE seconds; only "
             "after that SIGKILL (said so, exit 1). Stopping a stopped daemon succeeds."),
    ("restart", "stop (if running), then start."),
    ("try-restart", "restart if the daemon is running; otherwise do nothing (exit 0)."),
    ("reload", "SIGHUP, then wait for the daemon's verdict in its log: 'reload accepted' "
               "(exit 0) or 'reload refused, the old configuration stays' (exit 1)."),
    ("force-reload", "The same as reload (the daemon reloads every setting it can live)."),
    ("status", "Whether the daemon runs: its pid, its listeners and, when a status service is "
               "configured, its counters."),
)

EXIT_STATUS = (
    ("0", "Success; status: the daemon is running."),
    ("1", "Failure (the daemon did not start or become ready, a stop needed SIGKILL, a "
          "reload was refused); status: not running, but a stale pidfile is left."),
    ("2", "Invalid or excess arguments."),
    ("3", "status: the daemon is not running."),
    ("4", "Not permitted to signal the daemon, or to create its log or pidfile; status: "
          "unknown (the configuration cannot be read)."),
    ("5", "scripts/msgsrvctl: the interpreter ($MSGSRV_PYTHON, default python3) is missing."),
    ("6", "The configuration is invalid or sets no pidfile (the messages say why)."),
    ("7", "reload, force-reload: the daemon is not running."),
)

_VERDICT = re.compile(r"reload: (accepted|refused)(?::)? ?(.*)")


def build_parser():
    """The argparse parser of msgsrvctl."""
    parser = argparse.ArgumentParser(
        prog="msgsrvctl", description="Start, stop, reload or query the msgsrv daemon in the "
                                      "background.",
        epilog=table("actions", ACTIONS) + "\n\n" + epilog(EXIT_STATUS) + "\n\nThe codes are "
               "those of an LSB init script.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=[name for name, _ in ACTIONS], metavar="ACTION",
                        help="one of %(choices)s (see below)")
    parser.add_argument("-c", "--config", metavar="FILE",
                        help="configuration file; it must set pidfile (default: as for "
                             "msgsrv: $%s, else the first of %s that exists, looked for in "
                             "the --directory)"
                             % (config_module.CONFIG_ENV, ", ".join(config_module.DEFAULT_PATHS)))
    parser.add_argument("-C", "--directory", metavar="DIR",
                        help="run the daemon in DIR; relative paths in the configuration are "
                             "relative to it (default: the current directory)")
    return parser


def main(argv=None, environ=None):
    """Run one action; return its LSB exit code."""
    args = build_parser().parse_args(argv)
    environ = os.environ if environ is None else environ
    broken = STATUS_UNKNOWN if args.action == "status" else NOT_CONFIGURED
    try:
        control = Control.from_args(args, environ)
    except ConfigError as exc:
        _error(exc)
        return broken
    except ValueError as exc:
        _error(exc)
        return USAGE
    return getattr(control, args.action.replace("-", "_"))()


def _error(message):
    for line in str(message).splitlines():
        print("msgsrvctl: %s" % line, file=sys.stderr)


def _seconds(environ, name, default):
    text = environ.get(name, "")
    try:
        value = float(text) if text else default
    except ValueError:
        raise ValueError("$%s must be a number of seconds (got %r)" % (name, text)) from None
    return value


class Control:
    """The actions, for one configuration file run in one directory."""

    def __init__(self, path, directory, environ):
        self.path = path
        self.directory = directory
        self.start_timeout = _seconds(environ, "MSGSRV_START_TIMEOUT", 30)
        self.reload_timeout = _seconds(environ, "MSGSRV_RELOAD_TIMEOUT", 30)
        self.stop_grace = _seconds(environ, "MSGSRV_STOP_GRACE", 10)
        options = config_module.load_global(self._here(path)).options
        if not options["pidfile"]:
            raise ConfigError("%s: set pidfile in [msgsrv] (msgsrvctl needs one)" % path)
        self.pidfile = self._here(options["pidfile"])
        self.shutdown_timeout = options["shutdown_timeout"]
        self.outfile = self._here(options["log_file"] or os.path.splitext(
            options["pidfile"])[0] + ".out")
        self.listeners = state_path(self.pidfile)
        self.workers = workers_path(self.pidfile)

    @classmethod
    def from_args(cls, args, environ):
        """Resolve --config against the current directory, then the default in --directory."""
        directory = os.path.abspath(args.directory or ".")
        path = args.config
        if path is None:
            if environ.get(config_module.CONFIG_ENV):
                path = os.path.abspath(environ[config_module.CONFIG_ENV])
            else:
                with _chdir(directory):
                    path, _ = config_module.find(environ)
                path = os.path.join(directory, path)
        return cls(os.path.abspath(path), directory, environ)

    def _here(self, path):
        return os.path.join(self.directory, path)

    # -- actions --------------------------------------------------------------

    def start(self):
        """LSB start: 0 when started or already running."""
        pid = running_pid(self.pidfile)
        if pid is not None:
            print("msgsrv is already running (pid %s); not starting another" % (pid or "?"))
            return OK
        try:
            with _chdir(self.directory):
                preflight.check(config_module.load(self.path))
        except ConfigError as exc:
            _error(exc)
            return NOT_CONFIGURED
        return self._launch()

    def _launch(self):
        offset = _size(self.outfile)
        with tempfile.TemporaryDirectory(prefix="msgsrvctl-") as private, \
                socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as ready:
            address = os.path.join(private, "notify")
            ready.bind(address)
            try:
                proc = self._spawn(address)
            except OSError as exc:
                print("msgsrvctl: cannot start msgsrv: %s" % exc, file=sys.stderr)
                return NO_PRIVILEGE if isinstance(exc, PermissionError) else FAILED
            outcome = _wait_ready(ready, proc, self.start_timeout)
        proc.returncode = 0  # the daemon outlives us; never reap it at exit
        if outcome == "ready":
            print("msgsrv started (pid %d)" % proc.pid)
            self._show_listeners()
            return OK
        if outcome == "timeout":
            print("msgsrv (pid %d) is not ready after %gs; last lines of %s:"
                  % (proc.pid, self.start_timeout, self.outfile), file=sys.stderr)
        else:
            print("msgsrv failed to start (exit %d); last lines of %s:"
                  % (outcome, self.outfile), file=sys.stderr)
        sys.stderr.write(_tail(self.outfile, offset))
        return NOT_CONFIGURED if outcome == 2 else FAILED

    def _spawn(self, notify_address):
        """The daemon, detached, its output appended to the outfile (OSError if impossible)."""
        for path in (self.outfile, self.pidfile):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(self.outfile, "ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "msgsrv", "--config", self.path], cwd=self.directory,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, env=dict(os.environ, **{NOTIFY_ENV: notify_address}))

    def stop(self):
        """LSB stop: 0 when stopped or not running; 1 when SIGKILL was needed."""
        pid = running_pid(self.pidfile)
        if pid is None:
            print("msgsrv is not running")
            return OK
        code = self._signal(pid, signal.SIGTERM)
        if code is not None:
            return code
        deadline = self.shutdown_timeout + self.stop_grace
        if _wait_gone(pid, deadline):
            print("msgsrv stopped (pid %d)" % pid)
            return OK
        print("msgsrv (pid %d) did not stop within %gs after SIGTERM: sending SIGKILL"
              % (pid, deadline), file=sys.stderr)
        self._signal(pid, signal.SIGKILL)
        return FAILED

    def restart(self):
        """LSB restart: stop if running, then start."""
        code = self.stop()
        return code if code != OK else self.start()

    def try_restart(self):
        """LSB try-restart: restart only a running daemon."""
        if running_pid(self.pidfile) is None:
            print("msgsrv is not running; not starting it")
            return OK
        return self.restart()

    def reload(self):
        """LSB reload: 7 when not running; 1 when the daemon refused the new file."""
        pid = running_pid(self.pidfile)
        if pid is None:
            print("msgsrv is not running", file=sys.stderr)
            return NOT_RUNNING
        offset = _size(self.outfile)
        code = self._signal(pid, signal.SIGHUP)
        if code is not None:
            return code
        if not os.path.exists(self.outfile):
            print("reload requested (pid %d); no log file to read the outcome from" % pid)
            return OK
        verdict = _wait_verdict(self.outfile, offset, self.reload_timeout)
        if verdict is None:
            print("msgsrv (pid %d) did not report the reload within %gs"
                  % (pid, self.reload_timeout), file=sys.stderr)
            return FAILED
        if verdict[0] == "accepted":
            print("reload accepted: %s" % verdict[1])
            return OK
        print("reload refused, the old configuration stays: %s" % verdict[1], file=sys.stderr)
        return FAILED

    force_reload = reload

    def status(self):
        """LSB status: 0 running, 1 dead with a stale pidfile, 3 not running."""
        pid = running_pid(self.pidfile)
        if pid is None:
            if os.path.exists(self.pidfile):
                print("msgsrv is not running (stale pidfile %s)" % self.pidfile)
                return STATUS_DEAD
            print("msgsrv is not running")
            return STATUS_NOT_RUNNING
        print("msgsrv is running (pid %s)" % (pid or "?"))
        rows = self._show_listeners()
        self._show_workers()
        address = next((row[2] for row in rows if row[1] == "tcp" and row[3] == "status"), None)
        if address is not None:
            print()
            sys.stdout.flush()
            shown = subprocess.run([sys.executable, "-m", "msgsrv.client", "status", address,
                                    "--timeout", "5"], cwd=self.directory).returncode == 0
            if not shown:
                print("(the status service at %s did not answer)" % address)
        return OK

    # -- helpers --------------------------------------------------------------

    def _signal(self, pid, signum):
        """Send ``signum``; None when sent (or the daemon is gone), else the exit code."""
        if not pid:
            print("msgsrvctl: the pidfile %s is locked but names no pid" % self.pidfile,
                  file=sys.stderr)
            return FAILED
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
        except PermissionError:
            print("msgsrvctl: not permitted to signal pid %d (run as its user or root)" % pid,
                  file=sys.stderr)
            return NO_PRIVILEGE
        return None

    def _show_workers(self):
        """The worker processes the master lists (``processes`` > 1), one line each."""
        try:
            with open(self.workers, encoding="utf-8") as stream:
                rows = [line.split() for line in stream if len(line.split()) == 6]
        except OSError:
            return
        print("workers:")
        for pid, index, generation, state, started, connections in rows:
            up = format_duration(max(0.0, time.time() - float(started)))
            print("  %-3s pid %-8s generation %-3s %-9s up %-7s connections %s"
                  % (index, pid, generation, state, up, connections))

    def _show_listeners(self):
        try:
            with open(self.listeners, encoding="utf-8") as stream:
                rows = [line.split() for line in stream if len(line.split()) == 4]
        except OSError:
            return []
        print("listeners:")
        for row in rows:
            print("  %-20s %-4s %-28s %s" % tuple(row))
        return rows


@contextlib.contextmanager
def _chdir(directory):
    old = os.getcwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(old)


def _wait_ready(sock, proc, timeout):
    """"ready" once the daemon sent READY=1, its exit code if it died, or "timeout"."""
    deadline = time.monotonic() + timeout
    sock.settimeout(0.1)
    while time.monotonic() < deadline:
        try:
            fields = sock.recv(4096).decode("utf-8", "replace").split("\n")
        except socket.timeout:
            fields = []
        if "READY=1" in fields and "MAINPID=%d" % proc.pid in fields:
            return "ready"
        if proc.poll() is not None:
            return proc.returncode
    return "timeout"


def _wait_gone(pid, timeout):
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _alive(pid):
    """True while ``pid`` exists and is not a zombie (a zombie has stopped serving)."""
    try:
        with open("/proc/%d/stat" % pid, encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _wait_verdict(path, offset, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in _tail(path, offset, lines=None).splitlines():
            match = _VERDICT.search(line)
            if match:
                return match.group(1), match.group(2)
        time.sleep(0.05)
    return None


def _size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _tail(path, offset, lines=20):
    """What was written to ``path`` after byte ``offset`` (its last ``lines`` lines)."""
    try:
        with open(path, "rb") as stream:
            stream.seek(offset)
            text = stream.read().decode("utf-8", "replace")
    except OSError:
        return ""
    if lines is None:
        return text
    kept = text.splitlines(keepends=True)[-lines:]
    return "".join(kept)


def console_main():
    """Entry point of the ``msgsrvctl`` console script."""
    from msgsrv.__main__ import exit_with
    exit_with(main)


MANUAL = Manual(
    name="msgsrvctl", section=8, summary="control the msgsrv daemon in the background",
    parser=build_parser,
    description=(
        "msgsrvctl starts msgsrv(8) in the background and stops, restarts, reloads or "
        "queries it, with the actions and exit codes of an LSB init script. The "
        "configuration must set pidfile in [msgsrv]: whether a daemon runs is decided by "
        "the pidfile's lock, never by the number in it, so a stale pidfile never blocks a "
        "start. Only [msgsrv] is read to find the daemon, so a broken service section "
        "never keeps you from stopping or reloading it.",
        "The daemon runs with the interpreter running msgsrvctl, in the --directory, detached "
        "from the terminal; its output is appended to log_file, or to the pidfile's name "
        "with .out when log_file is empty. scripts/msgsrvctl in the source tree runs this "
        "command from the tree, with --directory set to the tree.",
    ),
    commands=ACTIONS,
    exit_status=EXIT_STATUS,
    files=(
        ("pidfile", "The daemon's pidfile (from the configuration); NAME.listeners beside it "
                    "lists the listeners that start and status print."),
        ("log_file", "Where the daemon's output goes and where reload reads the verdict "
                     "('reload: accepted' is logged at level info)."),
    ),
    environment=(
        ("MSGSRV_CONFIG", "The configuration file when --config is not given."),
        ("MSGSRV_START_TIMEOUT", "Seconds start waits for the daemon to be ready (30)."),
        ("MSGSRV_STOP_GRACE", "Seconds stop waits beyond shutdown_timeout before SIGKILL (10)."),
        ("MSGSRV_RELOAD_TIMEOUT", "Seconds reload waits for the verdict (30)."),
        ("MSGSRV_PYTHON", "scripts/msgsrvctl only: the interpreter to run (python3)."),
    ),
    see_also=("msgsrv(8)", "msgsrv-client(1)"),
)


if __name__ == "__main__":
    console_main()
