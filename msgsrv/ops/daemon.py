"""Run a validated Config: logging, pidfile, signals, one listener per service, live reload.

Signal handlers only record the signal (and wake the main loop through
``signal.set_wakeup_fd``); the main thread does the work in small
``handle_<signal>`` methods:

* SIGTERM: graceful stop.  Listeners close, open connections get
  ``shutdown_timeout`` to finish, the rest are aborted; exit 0.
* SIGINT: the same; a second SIGINT aborts every open connection at once.
* SIGHUP: reload the config file (:meth:`Daemon.reload`); the outcome is
  logged as ``reload: accepted (...)`` or ``reload: refused: <reason>``.
* SIGUSR1: reopen the log file (logrotate's ``postrotate``).

With ``NOTIFY_SOCKET`` set the daemon tells systemd READY, RELOADING and
STOPPING (:mod:`msgsrv.ops.notify`).
"""

import collections
import contextlib
import logging
import os
import resource
import select
import signal
import sys
import tempfile
import threading
import time

from msgsrv import __version__
from msgsrv.net.peer import format_peer
from msgsrv.net.server import listen_error, make_server
from msgsrv.wire.errors import ConfigError
from . import config as config_module, notify, privileges
from .pidfile import Pidfile
from .running import Registry

log = logging.getLogger("msgsrv")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: With several worker processes each line names the process that wrote it.
LOG_FORMAT_PROCESSES = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
SWITCH_INTERVAL = 0.001  # seconds
STOP_MARGIN = 1.0  # seconds a stop may take beyond shutdown_timeout before services are abandoned
SIGNAL_QUEUE = 5  # signals waiting for the main loop; more are dropped (as gunicorn does)
_RESTART_KEYS = ("pidfile", "user", "group", "thread_stack_size", "processes", "reuse_port",
                 "shared_addresses")


class ReopeningFileHandler(logging.FileHandler):
    """A FileHandler that can open its file again by name (after logrotate moved it)."""

    def reopen(self):
        """Switch to a fresh file at the same path; records never go to a closed stream."""
        old = self.setStream(self._open())
        if old is not None:
            old.close()


def configure_logging(options, echo=False):
    """Send logs to ``log_file`` (to standard error when it is empty, and as well with
    ``echo``) at ``log_level``.

    Creates the log file's directory if needed; closes the handlers it
    replaces.  Raises OSError if the log file cannot be opened.
    """
    install_log_handlers(log_handlers(options, echo), options["log_level"])


def log_handlers(options, echo=False):
    """New handlers for ``log_file`` and/or stderr; raises OSError if the file cannot be
    opened."""
    handlers = []
    if options["log_file"]:
        directory = os.path.dirname(options["log_file"])
        if directory:
            os.makedirs(directory, exist_ok=True)
        handlers.append(ReopeningFileHandler(options["log_file"], encoding="utf-8"))
    if echo or not options["log_file"]:
        handlers.append(logging.StreamHandler(sys.stderr))
    fmt = LOG_FORMAT_PROCESSES if options.get("processes", 1) > 1 else LOG_FORMAT
    for handler in handlers:
        handler.setFormatter(logging.Formatter(fmt))
    return handlers


def install_log_handlers(handlers, level):
    """Make ``handlers`` the root logger's only handlers, at ``level``."""
    root = logging.getLogger()
    for handler in handlers:
        root.addHandler(handler)
    for old in list(root.handlers):
        if old not in handlers:
            root.removeHandler(old)
            if isinstance(old, logging.FileHandler):
                old.close()
    root.setLevel(level.upper())


def stderr_gets_logs():
    """True when a log handler already writes to this process's standard error (the
    terminal, pipe or file it is)."""
    try:
        target = os.fstat(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # no stderr, or not a real file
        return False
    for handler in logging.getLogger().handlers:
        try:
            written = os.fstat(handler.stream.fileno())
        except (AttributeError, OSError, ValueError):
            continue
        if (written.st_dev, written.st_ino) == (target.st_dev, target.st_ino):
            return True
    return False


def report_fatal(message):
    """Log a fatal start-up error, and print it on stderr unless the log goes there."""
    log.error("%s", message)
    if not stderr_gets_logs():
        print("msgsrv: %s" % message, file=sys.stderr, flush=True)


def reopen_logs():
    """Reopen every reopenable log file; return how many."""
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, ReopeningFileHandler)]
    for handler in handlers:
        handler.reopen()
    return len(handlers)


def drop_privileges(config):
    """Switch to ``config``'s user and group when started as root (logged); raises
    RuntimeError when privileges could be regained."""
    user, group = config["user"], config["group"]
    if not (user or group):
        return
    if os.geteuid() != 0:
        log.info("not started as root: user/group settings ignored (uid %d)", os.geteuid())
        return
    uid, gid = privileges.drop(user, group)
    log.info("switched to uid=%d gid=%d (user=%s group=%s)", uid, gid, user or "-",
             group or "-")


def restart_keys_changed(old, new):
    """The ``[msgsrv]`` keys that differ between two Configs and apply only at a start."""
    return [key for key in _RESTART_KEYS if old[key] != new[key]]


def raise_open_files_limit():
    """Raise the soft RLIMIT_NOFILE to the hard limit; return (old, new)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft, soft
    return soft, max(soft, target)


#: What a reload does, by service name (see :func:`plan_reload`).
ReloadPlan = collections.namedtuple("ReloadPlan", "added removed restarted kept")


def _identity(service):
    return (service.transport, service["host"], service["port"], service["handler"],
            service.handler_class)


def plan_reload(old, new):
    """Compare two Configs: services added, removed, restarted (their transport,
    host, port or handler changed) and kept (reconfigured in place)."""
    before = {service.name: service for service in old.services}
    after = {service.name: service for service in new.services}
    common = [name for name in after if name in before]
    return ReloadPlan(
        added=[name for name in after if name not in before],
        removed=[name for name in before if name not in after],
        restarted=[n for n in common if _identity(before[n]) != _identity(after[n])],
        kept=[n for n in common if _identity(before[n]) == _identity(after[n])])


def state_path(pidfile):
    """Where the daemon lists its listeners: the pidfile's name with ``.listeners``."""
    return _beside(pidfile, ".listeners")


def workers_path(pidfile):
    """Where the master of several worker processes lists them: ``.workers``."""
    return _beside(pidfile, ".workers")


def _beside(pidfile, suffix):
    root = pidfile[:-len(".pid")] if pidfile.endswith(".pid") else pidfile
    return root + suffix


class SignalLoop:
    """Signals recorded by their handlers and dispatched by the main loop, as gunicorn's
    arbiter does: to ``handle_<name>`` methods (``handle_term`` for SIGTERM).

    Subclasses list what they act on in :meth:`handled_signals`.
    """

    def __init__(self):
        self._signals = collections.deque()  # at most SIGNAL_QUEUE (gunicorn's bound)
        self._signals_dropped = 0

    def handled_signals(self):
        """The signals this loop acts on."""
        return []

    def _install_signals(self, wake_w):
        previous = {"wakeup": signal.set_wakeup_fd(wake_w)}
        for signum in self.handled_signals():
            previous[signum] = signal.signal(signum, self._record)
        return previous

    def _restore_signals(self, previous):
        signal.set_wakeup_fd(previous.pop("wakeup"))
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def _record(self, signum, frame):
        # Only record (no logging in a signal handler); a flood beyond the queue is dropped.
        if len(self._signals) < SIGNAL_QUEUE:
            self._signals.append(signum)
        else:
            self._signals_dropped += 1

    def dispatch_signals(self):
        """Run the handler of every recorded signal; say how many were dropped."""
        while self._signals:
            signum = self._signals.popleft()
            getattr(self, "handle_" + signal.Signals(signum).name.lower()[3:])()
        if self._signals_dropped:
            dropped, self._signals_dropped = self._signals_dropped, 0
            log.warning("%d signals dropped: more than %d were waiting", dropped, SIGNAL_QUEUE)



def run_holding_pidfile(pidfile, body, side_files=(state_path,)):
    """Return ``body()`` run while holding ``pidfile`` (None: no pidfile).

    Exit 1 (reported) when another daemon holds it.  Afterwards the files
    beside it (each ``side_files`` function of the pidfile's path) are
    removed and the pidfile released.
    """
    if pidfile is None:
        return body()
    try:
        pidfile.acquire()
    except OSError as exc:
        report_fatal(exc)
        return EXIT_FAILURE
    try:
        return body()
    finally:
        for side_file in side_files:
            with contextlib.suppress(OSError):
                os.unlink(side_file(pidfile.path))
        pidfile.release()

class Daemon(SignalLoop):
    """Owns the running services of one config and the main signal loop.

    ``overrides`` (``[msgsrv]`` options from the command line) apply to every
    reloaded config too; with ``echo`` logs go to stderr as well as to the log file.
    """

    #: Longest wait of the main loop; it calls :meth:`tick` after each wait.
    tick_interval = 1.0
    #: Level of the ``listening service=...`` lines.
    listening_level = logging.INFO
    #: The last line of a clean stop.
    stopped_message = "stopped"

    def __init__(self, config, overrides=None, echo=False):
        super().__init__()
        self.overrides = dict(overrides or {})
        self.echo = echo
        self.config = config_module.with_options(config, self.overrides)
        self.registry = Registry()
        self.pidfile = Pidfile(config["pidfile"]) if config["pidfile"] else None
        self.watched = []  # descriptors the main loop waits on besides its wake pipe
        self._stopper = None
        self._stopped = threading.Event()
        self._wake_w = None
        self._drains = []  # (server, thread) of services being stopped
        self._drains_lock = threading.Lock()

    @property
    def servers(self):
        """The running servers by service name."""
        return {server.name: server for server in self.registry.servers()}

    # -- starting -----------------------------------------------------------

    def start(self):
        """Bind every service, drop privileges, then serve; raise OSError naming the
        service that failed (ConfigError when a handler refuses its settings,
        RuntimeError when privileges could be regained).

        Nothing is announced (``listening ...``) before every listener is bound
        and the user switched: a failed start closes what it had bound and says so.
        """
        if self.config["thread_stack_size"]:
            threading.stack_size(max(32768, self.config["thread_stack_size"]))
        # A thread woken by I/O waits up to the switch interval for the
        # interpreter lock when another thread keeps retaking it; 5 ms (the
        # default) showed up as the p99 of busy connections.
        sys.setswitchinterval(SWITCH_INTERVAL)
        old, new = raise_open_files_limit()
        if new > old:
            log.info("raised the open-files limit from %d to %d", old, new)
        self._announce_disabled(self.config, ())
        bound = []
        try:
            for service in self.config.services:
                server = self._create(service, self.config)
                self._bind(server)
                bound.append(server)
            self._drop_privileges()
        except BaseException as exc:
            if bound:
                log.info("start-up failed (%s): closing the %d listeners bound so far (%s), "
                         "never announced", exc, len(bound), ", ".join(s.name for s in bound))
            for server in bound:
                server.stop(0)
            raise
        for server in bound:
            self._serve(server)

    def _announce_disabled(self, config, before):
        """Say once, in the log and on the terminal, which optional services are left out
        (those not already left out by the ``before`` config)."""
        self.registry.disabled = {service.name: service for service in config.disabled}
        known = {service.name for service in before}
        for service in config.disabled:
            if service.name not in known:
                log.warning("%s", service.message)
                if not stderr_gets_logs():
                    print("msgsrv: %s" % service.message, file=sys.stderr, flush=True)

    def _create(self, service, config):
        return make_server(service, bind_and_activate=False, global_options=config.options)

    def _bind(self, server):
        """Bind and listen; on failure discard the server and raise OSError naming it."""
        try:
            server.server_bind()
            server.server_activate()
        except OSError as exc:
            server.stop(0)
            raise listen_error(server.config, exc) from None

    def _serve(self, server):
        self.registry.add(server)  # first: its first connection may ask for the registry
        server.serve_in_thread()
        log.log(self.listening_level, "listening service=%s handler=%s transport=%s address=%s",
                server.name, server.config["handler"], server.config.transport,
                format_peer(server.server_address))

    def _drop_privileges(self):
        drop_privileges(self.config)

    # -- stopping -----------------------------------------------------------

    def stop(self):
        """Stop every service in parallel, each within ``shutdown_timeout``, and
        wait for services still draining after a reload."""
        for server in self.registry.clear():
            self._drain(server)
        deadline = time.monotonic() + self.config["shutdown_timeout"] + STOP_MARGIN
        with self._drains_lock:
            drains = list(self._drains)
        for _, thread in drains:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._abandon_stuck(drains)

    def _abandon_stuck(self, drains):
        """Log and forget the services whose stop outlived the deadline (never waited again)."""
        stuck = [server for server, thread in drains if thread.is_alive()]
        for server in stuck:
            log.error("%s: not stopped within shutdown_timeout + %gs (handler %s): abandoned",
                      server.name, STOP_MARGIN, server.config["handler"])
        with self._drains_lock:
            self._drains = [d for d in self._drains if d[0] not in stuck]

    def _drain(self, server, close_now=False):
        """Stop ``server`` in a thread (its connections get shutdown_timeout); with
        ``close_now`` its listener is closed before this returns."""
        if close_now:
            server.stop_accepting(self.config["shutdown_timeout"])
        thread = threading.Thread(target=self._drain_run, args=(server,),
                                  name="%s-stop" % server.name, daemon=True)
        with self._drains_lock:
            self._drains.append((server, thread))
        thread.start()

    def _drain_run(self, server):
        try:
            server.stop(self.config["shutdown_timeout"])
        finally:
            with self._drains_lock:
                self._drains = [d for d in self._drains if d[0] is not server]

    def abort_connections(self):
        """Quick stop: abort every open connection of every service now."""
        with self._drains_lock:
            draining = [server for server, _ in self._drains]
        for server in self.registry.servers() + draining:
            server.abort_connections("quick stop")

    # -- the main loop ------------------------------------------------------

    def run(self, restore_signals=True):
        """Serve until SIGTERM or SIGINT; return the exit code.  Main thread only.

        Exit 1 when the pidfile is held by another daemon or a listener cannot
        be opened, 2 when a handler refuses its settings.  With
        ``restore_signals`` false (the caller is about to exit) the handled
        signals are ignored after the stop instead of restored: a second
        SIGTERM arriving during the shutdown must not kill a process that
        stopped cleanly, and Python resets its own handlers while it finalizes.
        """
        log.info("starting msgsrv %s pid=%d config=%s", __version__, os.getpid(),
                 os.path.abspath(self.config.path))
        return run_holding_pidfile(self.pidfile, lambda: self._run(restore_signals))

    def _run(self, restore_signals):
        wake_r, self._wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(self._wake_w, False)
        previous = self._install_signals(self._wake_w)
        try:
            code = self._start_all()
            if code == EXIT_OK:
                self._loop(wake_r)
        finally:
            self.stop()
            if not restore_signals:
                previous.update(dict.fromkeys(self.handled_signals(), signal.SIG_IGN))
            self._restore_signals(previous)
            os.close(wake_r)
            os.close(self._wake_w)
        if code == EXIT_OK:
            log.info(self.stopped_message)
        return code

    def _start_all(self):
        try:
            self.start()
        except ConfigError as exc:
            report_fatal(exc)
            return EXIT_CONFIG
        except (OSError, RuntimeError) as exc:
            report_fatal(exc)
            return EXIT_FAILURE
        self._write_state()
        log.info("ready pid=%d services=%d", os.getpid(), len(self.registry))
        notify.ready()
        return EXIT_OK

    def _loop(self, wake_r):
        while not self._stopped.is_set():
            readable = select.select([wake_r] + self.watched, [], [], self.tick_interval)[0]
            _drain_pipe(wake_r)
            self.dispatch_signals()
            self.tick(readable)

    def tick(self, readable):
        """After each wait of the main loop (``readable``: which of ``watched`` are)."""

    def handled_signals(self):
        """The signals this daemon acts on."""
        return [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1]

    def handle_term(self):
        """Graceful stop."""
        self._begin_stop("SIGTERM")

    def handle_int(self):
        """Graceful stop, as for SIGTERM; quick (connections aborted) the second time."""
        if self._stopper is None:
            self._begin_stop("SIGINT")
            return
        log.warning("second SIGINT received: aborting open connections")
        self.abort_connections()

    def _begin_stop(self, why):
        if self._stopper is not None:
            log.info("%s received, already stopping", why)
            return
        log.info("%s received, stopping", why)
        notify.stopping()
        self._stopper = threading.Thread(target=self._stop_then_wake, name="msgsrv-stop",
                                         daemon=True)
        self._stopper.start()

    def _stop_then_wake(self):
        try:
            self.stop()
        finally:
            self._stopped.set()
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"s")

    def handle_hup(self):
        """Reload the configuration file; log whether it was accepted."""
        if self._stopper is not None:
            log.info("SIGHUP received while stopping: ignored")
            return
        log.info("SIGHUP received, reloading %s", self.config.path)
        notify.reloading()
        try:
            summary = self.reload()
        except (ConfigError, OSError) as exc:
            log.error("reload: refused: %s", exc)
            self.registry.note_reload("refused", str(exc))
        except Exception as exc:  # a service object's reload broke: keep serving
            log.exception("reload: refused: unexpected error: %s", exc)
            self.registry.note_reload("refused", "unexpected error: %s" % exc)
        else:
            log.info("reload: accepted (%s)", summary)
            self.registry.note_reload("accepted", summary)
        self._write_state()
        notify.ready()

    def handle_usr1(self):
        """Reopen the log file (after logrotate moved it)."""
        count = reopen_logs()
        log.info("SIGUSR1 received, reopened %d log file(s)", count)

    # -- reload -------------------------------------------------------------

    def reload(self):
        """Re-read the config file and apply it; return a summary of what changed.

        Added services start; removed ones stop (their connections get
        ``shutdown_timeout``); a service whose transport, host, port or
        handler changed is restarted the same way.  Every other service is
        reconfigured in place, in two phases: every change is checked and
        built first (:meth:`msgsrv.net.server.TCPService.prepare_reconfigure`),
        then all are applied; new connections get the new limits, rules, TLS
        files and keys, open ones keep going, and each service object keeps
        its lasting state (chat sessions, running commands).  Raises
        ConfigError or OSError, having changed nothing, if the file is
        invalid, a service refuses its settings (naming the key), a new log
        file or listener cannot be opened.
        """
        new = config_module.with_options(config_module.load(self.config.path), self.overrides)
        plan = plan_reload(self.config, new)
        fresh, new_log = {}, []
        try:
            new_log = self._new_log_handlers(new)
            appliers = [self.registry.get(name).prepare_reconfigure(_service(new, name),
                                                                    new.options)
                        for name in plan.kept]
            late = self._create_fresh(new, plan, fresh)
        except BaseException:
            for handler in new_log:
                handler.close()
            for server in fresh.values():
                server.stop(0)
            raise
        for apply in appliers:
            apply()
        failed = self._commit(new, plan, fresh, late, new_log)
        return _summary(plan, failed)

    def _new_log_handlers(self, new):
        old, options = self.config.options, new.options
        if (old["log_file"], old["log_level"]) == (options["log_file"], options["log_level"]):
            return []
        try:
            return log_handlers(options, self.echo)
        except OSError as exc:
            raise OSError("log_file %s: %s" % (options["log_file"], exc.strerror or exc)) from None

    def _create_fresh(self, new, plan, fresh):
        """Create (and where possible bind) the new servers; return those whose address
        is still held by a service about to stop (bound after it stopped)."""
        retiring = set()
        for name in plan.removed + plan.restarted:
            server = self.registry.get(name)
            retiring.add((server.config.transport, server.config["host"], server.port))
        late = []
        for name in plan.added + plan.restarted:
            service = _service(new, name)
            fresh[name] = self._create(service, new)
            if (service.transport, service["host"], service["port"]) in retiring:
                late.append(name)
            else:
                self._bind(fresh[name])
        return late

    def _commit(self, new, plan, fresh, late, new_log):
        if new_log:
            install_log_handlers(new_log, new["log_level"])
        for key in restart_keys_changed(self.config, new):
            log.warning("reload: %s changed; it takes effect at the next start", key)
        old = self.config
        self.config = new
        self._announce_disabled(new, old.disabled)
        for name in plan.removed + plan.restarted:
            self._drain(self.registry.remove(name), close_now=True)
        failed = []
        for name in plan.added + plan.restarted:
            try:
                if name in late:
                    self._bind(fresh[name])
            except OSError as exc:
                log.error("reload: %s", exc)
                failed.append(name)
                self._restore(old, name)
                continue
            self._serve(fresh[name])
        return failed

    def _restore(self, old, name):
        # The new listener could not take over the address: bring the old one back.
        if name not in {service.name for service in old.services}:
            return
        try:
            server = self._create(_service(old, name), old)
            self._bind(server)
        except (OSError, ConfigError) as exc:
            log.error("reload: [service:%s] could not be restored: %s", name, exc)
            return
        self._serve(server)

    # -- the listeners file (for msgsrvctl status) ---------------------------

    def _write_state(self):
        if self.pidfile is None or not self.pidfile.held:
            return
        lines = ["%s %s %s %s\n" % (server.name, server.config.transport,
                                    format_peer(server.server_address),
                                    server.config["handler"])
                 for server in self.registry.servers()]
        path = state_path(self.pidfile.path)
        try:
            _write_atomically(path, "".join(lines))
        except OSError as exc:
            log.warning("cannot write %s: %s", path, exc.strerror or exc)


def _write_atomically(path, text):
    fd, temp = tempfile.mkstemp(prefix=".listeners-", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def _service(config, name):
    return next(service for service in config.services if service.name == name)


def _summary(plan, failed):
    parts = ["%s: %s" % (label, ", ".join(names)) for label, names in (
        ("added", plan.added), ("removed", plan.removed), ("restarted", plan.restarted),
        ("reconfigured", plan.kept), ("failed", failed)) if names]
    return "; ".join(parts) or "no services"


def _drain_pipe(fd):
    try:
        os.read(fd, 4096)
    except (BlockingIOError, InterruptedError):
        pass
