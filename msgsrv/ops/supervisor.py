"""The master of ``processes = N`` (N > 1): it opens the listeners, forks N worker
processes that serve them, and supervises them, as gunicorn's arbiter does.

* **Listeners.**  The master binds every listener (so privileged ports and
  the switch of user work as with one process), then forks; the workers
  inherit the sockets (with ``reuse_port``, one per worker and service, as
  :class:`Listeners` says; else one per service, all accepting from it).  The master never
  closes a listener while a service keeps its address, so a reload or a
  replaced worker never refuses a connection: one that arrives while no
  worker accepts waits in the listen backlog.
* **Supervision.**  A worker that exits unexpectedly is logged and replaced;
  one that dies at once again and again is replaced after a growing delay
  (:func:`backoff`).  The workers share their limits through an
  :class:`~msgsrv.ops.shared.Arena` made before the first fork; the slot of
  a dead worker is freed, so what it held is no longer counted.
* **Signals** (recorded, then handled in the main loop): SIGTERM and SIGINT
  stop every worker within ``shutdown_timeout`` (a second SIGINT aborts
  their connections), SIGHUP reloads by reading and checking the
  configuration once here, then *rolling* the workers (the new generation
  starts, and only once every new worker is ready are the old ones told to
  stop; they finish their requests), SIGUSR1 reopens the logs here and in
  every worker.  One pidfile (the master's); sd_notify from the master only.
"""

import collections
import contextlib
import json
import logging
import os
import select
import signal
import time

from msgsrv import __version__
from msgsrv.net.peer import format_peer
from msgsrv.net.server import open_listener
from msgsrv.services.status import report as status
from msgsrv.wire.errors import ConfigError
from . import config as config_module, notify, preflight, shared, worker as worker_module
from .daemon import (EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, STOP_MARGIN, SignalLoop, _summary,
                     _write_atomically, drop_privileges, install_log_handlers, log_handlers,
                     plan_reload, raise_open_files_limit, reopen_logs, report_fatal,
                     restart_keys_changed, run_holding_pidfile, state_path, workers_path)
from .pidfile import Pidfile

log = logging.getLogger("msgsrv")

READY_TIMEOUT = 30.0   # seconds the workers of a reload get to become ready
QUICK_DEATH = 5.0      # a worker exiting sooner than this after its start died "at once"
BACKOFF_MAX = 30.0     # longest delay before a worker that keeps dying is started again
TICK = 1.0             # longest wait of the main loop


def backoff(quick_deaths):
    """Seconds to wait before replacing a worker that died at once ``quick_deaths``
    times in a row: none for the first, then 0.5 s doubling up to BACKOFF_MAX."""
    if quick_deaths <= 1:
        return 0.0
    return min(BACKOFF_MAX, 0.5 * 2 ** (quick_deaths - 2))


def describe_exit(status_code):
    """``exited with status 3`` or ``killed by SIGKILL`` for a waitpid status."""
    if os.WIFSIGNALED(status_code):
        number = os.WTERMSIG(status_code)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = "signal %d" % number
        return "killed by %s" % name
    return "exited with status %d" % os.WEXITSTATUS(status_code)


def serves_in_one_process(service):
    """True when ``service`` (a ServiceConfig) must run in one worker only: its
    service class keeps state that cannot be split (the memory chat state)."""
    service_class = getattr(service.handler_class, "service_class", None)
    check = getattr(service_class, "serves_in_one_process", None)
    return bool(check(service)) if check is not None else False


def one_process_services(config):
    """The names of ``config``'s services that run in worker 0 only: those that must,
    and those naming one of them as a sibling (it is in no other worker)."""
    names = {service.name for service in config.services if serves_in_one_process(service)}
    while True:
        more = {service.name for service in config.services
                if service.name not in names and names & set(_siblings(service))}
        if not more:
            return names
        names |= more


def _siblings(service):
    return [service[key] for key, _ in getattr(service.handler_class, "siblings", ())
            if service.options.get(key)]


def assigned(config, index):
    """The services worker ``index`` serves: every one for worker 0, the others those
    that can be split."""
    alone = one_process_services(config) if index else ()
    return [service for service in config.services if service.name not in alone]


class Worker:
    """The master's record of one worker process."""

    def __init__(self, pid, slot, index, generation):
        self.pid, self.slot, self.index, self.generation = pid, slot, index, generation
        self.started = time.monotonic()
        self.started_at = time.time()
        self.ready = False
        self.stop_deadline = None  # monotonic time to SIGKILL it, once told to stop
        self.failure = None        # why it could not start, as it reported

    def label(self):
        """``worker 1 (pid 123, generation 2)`` for the log."""
        return "worker %d (pid %d, generation %d)" % (self.index, self.pid, self.generation)

    def signal(self, signum):
        """Send ``signum`` unless the process is gone."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)


class Listeners:
    """The master's listening sockets, by address, so a service keeping its address
    (or taking over another service's) keeps the very same sockets.

    With ``per_worker`` each service served by all ``processes`` workers gets
    one socket per worker index (``SO_REUSEPORT``: the kernel spreads the
    connections evenly); otherwise (and for a service running in one worker)
    one socket that every worker accepts from.
    """

    def __init__(self, processes, per_worker):
        self.processes = processes
        self.per_worker = per_worker
        self._by_key = {}

    def _count(self, service, config):
        if self.per_worker and service.name not in one_process_services(config):
            return self.processes
        return 1

    def key(self, service, config):
        """One set per transport, host, port and count (per service name for port 0)."""
        port = service["port"] or "0:" + service.name
        return (service.transport, service["host"], port, self._count(service, config))

    def first(self, service, config):
        """The (first) socket open for ``service`` of ``config``, or None."""
        sockets = self._by_key.get(self.key(service, config))
        return sockets[0] if sockets else None

    def open_for(self, config):
        """Open what ``config`` needs that is not open; return the keys opened.  Raises
        OSError naming the service (what this call opened is closed again)."""
        opened = []
        try:
            for service in config.services:
                key = self.key(service, config)
                if key not in self._by_key:
                    self._by_key[key] = self._open(service, key[-1])
                    opened.append(key)
        except OSError:
            self.close(opened)
            raise
        return opened

    def _open(self, service, count):
        reuse = self.per_worker and count > 1
        sockets = [open_listener(service, reuse_port=reuse)]
        try:
            while len(sockets) < count:
                sockets.append(open_listener(service, reuse_port=True,
                                             port=sockets[0].getsockname()[1]))
        except OSError:
            for sock in sockets:
                sock.close()
            raise
        return sockets

    def for_worker(self, config, index):
        """``{service name: socket}`` worker ``index`` serves for ``config``."""
        found = {}
        for service in assigned(config, index):
            sockets = self._by_key[self.key(service, config)]
            found[service.name] = sockets[index % len(sockets)]
        return found

    def keep_only(self, configs):
        """Close every listener no config of ``configs`` uses."""
        wanted = {self.key(service, config) for config in configs
                  for service in config.services}
        self.close([key for key in self._by_key if key not in wanted])

    def close(self, keys=None):
        """Close the listeners ``keys`` (default: all)."""
        for key in list(self._by_key) if keys is None else keys:
            for sock in self._by_key.pop(key, ()):
                sock.close()

    def all(self):
        """Every open socket."""
        return [sock for sockets in self._by_key.values() for sock in sockets]


class Supervisor(SignalLoop):
    """Runs one configuration with ``processes`` workers; see the module docstring.

    ``overrides`` (command-line ``[msgsrv]`` options) apply to every reloaded
    configuration; ``echo`` also logs to stderr when logging to a file.
    """

    def __init__(self, config, overrides=None, echo=False):
        super().__init__()
        self.overrides = dict(overrides or {})
        self.echo = echo
        self.config = config_module.with_options(config, self.overrides)
        self.processes = self.config["processes"]
        self.pidfile = Pidfile(config["pidfile"]) if config["pidfile"] else None
        self.started = time.time()
        self.listeners = Listeners(self.processes, self.config["reuse_port"])
        self.arena = None
        self.generation = 1      # of the configuration in force
        self._last_generation = 1
        self.workers = {}        # pid -> Worker
        self._configs = {1: self.config}
        self._quick = collections.Counter()   # index -> deaths at once in a row
        self._respawn_at = {}                 # index -> monotonic time it may start
        self._phase = "starting"              # starting, running, stopping
        self._roll = None                     # the reload in progress
        self._retired = {}                    # service -> totals of workers that exited
        self._pipes = {}
        self._reports = b""
        self._exit_code = EXIT_OK
        self._workers_file = None

    # -- running ---------------------------------------------------------------

    def run(self, restore_signals=True):
        """Serve until SIGTERM or SIGINT; return the exit code (as Daemon.run)."""
        log.info("starting msgsrv %s pid=%d config=%s processes=%d", __version__, os.getpid(),
                 os.path.abspath(self.config.path), self.processes)
        return run_holding_pidfile(self.pidfile, lambda: self._run(restore_signals),
                                   (state_path, workers_path))

    def handled_signals(self):
        """The signals the master acts on."""
        return [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD]

    def _run(self, restore_signals):
        wake_r, wake_w = self._open_wake_pipe()
        previous = self._install_signals(wake_w)
        try:
            code = self._start()
            if code == EXIT_OK:
                self._loop(wake_r)
                code = self._exit_code
        finally:
            self._kill_all()
            self.listeners.close()
            if not restore_signals:
                previous.update(dict.fromkeys(self.handled_signals(), signal.SIG_IGN))
            self._restore_signals(previous)
            self._close_pipes()
        if code == EXIT_OK:
            log.info("stopped")
        return code

    def _open_wake_pipe(self):
        wake_r, wake_w = os.pipe()
        report_r, report_w = os.pipe()
        lifeline_r, lifeline_w = os.pipe()
        for fd in (wake_r, wake_w, report_r):
            os.set_blocking(fd, False)
        self._pipes = {"wake_r": wake_r, "wake_w": wake_w, "report_r": report_r,
                       "report_w": report_w, "lifeline_r": lifeline_r, "lifeline_w": lifeline_w}
        return wake_r, wake_w

    def _close_pipes(self):
        for fd in self._pipes.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._pipes = {}
        if self.arena is not None:
            self.arena.close()
            self.arena = None

    def _start(self):
        """Bind, switch user, make the arena, fork generation 1; EXIT_OK or the code."""
        old, new = raise_open_files_limit()
        if new > old:
            log.info("raised the open-files limit from %d to %d", old, new)
        try:
            self.listeners.open_for(self.config)
            drop_privileges(self.config)
            self.arena = shared.Arena(2 * self.processes, self.config["shared_addresses"])
        except (OSError, RuntimeError) as exc:
            bound = self.listeners.all()
            if bound:
                log.info("start-up failed (%s): closing the %d listeners bound so far, never "
                         "announced", exc, len(bound))
            self.listeners.close()
            report_fatal(exc)
            return EXIT_FAILURE
        for index in range(self.processes):
            self._spawn(index)
        return EXIT_OK

    def _loop(self, wake_r):
        report_r = self._pipes["report_r"]
        while self.workers or self._phase != "stopping":
            readable = select.select([wake_r, report_r], [], [], self._timeout())[0]
            _drain(wake_r)
            if report_r in readable:
                self._read_reports(report_r)
            self.dispatch_signals()
            self._reap()
            self._maintain()
            self._write_workers()

    def _timeout(self):
        now, due = time.monotonic(), [time.monotonic() + TICK]
        due += list(self._respawn_at.values())
        due += [w.stop_deadline for w in self.workers.values() if w.stop_deadline]
        if self._roll is not None:
            due.append(self._roll["deadline"])
        return max(0.01, min(due) - now)

    # -- workers -------------------------------------------------------------

    def _free_slot(self):
        used = {w.slot for w in self.workers.values()}
        return next((slot for slot in range(self.arena.slots) if slot not in used), None)

    def _spawn(self, index):
        """Fork the worker ``index`` of the current generation (False: no free slot yet)."""
        slot = self._free_slot()
        if slot is None:
            return False
        config, generation = self.config, self.generation
        plan = worker_module.Plan(
            config=config, overrides=self.overrides, echo=self.echo,
            context=shared.WorkerContext(self.arena, slot, index, generation,
                                         first=generation == 1 and not self._ever_ready()),
            listeners=self.listeners.for_worker(config, index),
            master_pid=os.getpid(), master_started=self.started, processes=self.processes,
            report_fd=self._pipes["report_w"], lifeline_fd=self._pipes["lifeline_r"],
            close_fds=self._fds_for_child(), close_sockets=self.listeners.all())
        self._respawn_at.pop(index, None)
        pid = os.fork()
        if pid == 0:  # the child never returns from here
            worker_module.run_child(plan, self.handled_signals())
        worker = Worker(pid, slot, index, generation)
        self.workers[pid] = worker
        log.info("%s started", worker.label())
        return True

    def _ever_ready(self):
        return self._phase != "starting" or any(w.ready for w in self.workers.values())

    def _fds_for_child(self):
        """Descriptors a worker must close: the master's pipes and its pidfile (the
        listeners it does not serve are closed by socket object, see worker.Plan)."""
        fds = [self._pipes[name] for name in ("wake_r", "wake_w", "report_r", "lifeline_w")]
        if self.pidfile is not None and self.pidfile.held:
            fds.append(self.pidfile.fileno())
        return fds

    def _read_reports(self, fd):
        try:
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                self._reports += chunk
        except BlockingIOError:
            pass
        *lines, self._reports = self._reports.split(b"\n")
        for line in lines:
            self._report(line.decode("utf-8", "replace"))

    def _report(self, line):
        kind, _, rest = line.partition(" ")
        pid_text, _, detail = rest.partition(" ")
        worker = self.workers.get(int(pid_text)) if pid_text.isdigit() else None
        if worker is None:
            return
        if kind == "ready":
            worker.ready = True
            log.info("%s ready", worker.label())
            self._on_ready(worker)
        elif kind == "failed":
            worker.failure = detail

    def _on_ready(self, worker):
        if self._phase == "starting" and self._generation_ready(self.generation):
            self._announce()
        elif self._roll is not None and self._generation_ready(self._roll["generation"]):
            self._finish_roll()

    def _generation_ready(self, generation):
        ready = {w.index for w in self.workers.values()
                 if w.generation == generation and w.ready and w.stop_deadline is None}
        return len(ready) == self.processes

    def _announce(self):
        self._phase = "running"
        self._write_state()  # before "ready": whoever reads that may read the list
        for service in self.config.services:
            sock = self.listeners.first(service, self.config)
            log.info("listening service=%s handler=%s transport=%s address=%s",
                     service.name, service["handler"], service.transport,
                     format_peer(sock.getsockname()))
        log.info("ready pid=%d services=%d processes=%d", os.getpid(), len(self.config.services),
                 self.processes)
        notify.ready()

    def _reap(self):
        self._read_reports(self._pipes["report_r"])  # what a worker said before it exited
        while True:
            try:
                pid, code = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is not None:
                self._retire(worker, code)

    def _retire(self, worker, code):
        """``worker`` exited: keep its totals, free its slot, then decide what follows."""
        with self.arena.everything():  # a status reader sees it live or retired, never both
            self._keep_totals(worker.slot)
            self._publish_retired()
            self.arena.free(worker.slot)
        lived = time.monotonic() - worker.started
        how = "%s after %.1fs" % (describe_exit(code), lived)
        if worker.stop_deadline is not None or self._phase == "stopping":
            log.info("%s stopped (%s)", worker.label(), how)
            return
        if not worker.ready:
            self._failed_to_start(worker, code, how)
            return
        self._count_death(worker.index, lived)
        self._replace(worker, how)

    def _count_death(self, index, lived):
        if lived < QUICK_DEATH:
            self._quick[index] += 1
        else:
            self._quick[index] = 0

    def _replace(self, worker, how):
        if worker.generation != self.generation:
            log.warning("%s died (%s); its generation is being replaced", worker.label(), how)
            return
        delay = backoff(self._quick[worker.index])
        if delay:
            log.error("%s died (%s); it died at once %d times in a row: starting a replacement "
                      "in %.1fs", worker.label(), how, self._quick[worker.index], delay)
        else:
            log.error("%s died (%s); starting a replacement", worker.label(), how)
        self._respawn_at[worker.index] = time.monotonic() + delay

    def _failed_to_start(self, worker, code, how):
        reason = worker.failure or how
        if self._phase == "starting":
            report_fatal(reason)
            self._exit_code = EXIT_CONFIG if os.WIFEXITED(code) and os.WEXITSTATUS(
                code) == EXIT_CONFIG else EXIT_FAILURE
            self._begin_stop(None)
        elif self._roll is not None and worker.generation == self._roll["generation"]:
            self._abort_roll("%s could not start: %s" % (worker.label(), reason))
        else:
            self._count_death(worker.index, 0.0)
            self._replace(worker, "could not start: %s" % reason)

    def _maintain(self):
        now = time.monotonic()
        for worker in list(self.workers.values()):
            if worker.stop_deadline is not None and now >= worker.stop_deadline:
                log.error("%s did not stop within shutdown_timeout + %gs: killed",
                          worker.label(), STOP_MARGIN)
                worker.signal(signal.SIGKILL)
                worker.stop_deadline = float("inf")  # reaped soon; never killed twice
        if self._phase == "stopping":
            return
        if self._roll is not None and now >= self._roll["deadline"]:
            self._abort_roll("the workers were not ready within %gs" % READY_TIMEOUT)
        for index, due in list(self._respawn_at.items()):
            if due > now:
                continue
            if self._has_worker(self.generation, index):
                del self._respawn_at[index]
            elif not self._spawn(index):
                self._respawn_at[index] = now + 0.1  # no free slot: old workers still drain

    def _has_worker(self, generation, index):
        return any(w.generation == generation and w.index == index and w.stop_deadline is None
                   for w in self.workers.values())

    def _stop_workers(self, workers, signum=signal.SIGTERM):
        deadline = time.monotonic() + self.config["shutdown_timeout"] + STOP_MARGIN
        for worker in workers:
            if worker.stop_deadline is None:
                worker.stop_deadline = deadline
            worker.signal(signum)

    def _kill_all(self):
        """Leave no worker behind (the loop ended, or the master is failing)."""
        for worker in self.workers.values():
            worker.signal(signal.SIGKILL)
        for pid in list(self.workers):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.workers.clear()

    # -- totals of workers that exited ----------------------------------------

    def _keep_totals(self, slot):
        data = self.arena.snapshots().get(slot)
        if not data:
            return
        try:
            document = json.loads(bytes(data).decode("utf-8"))
        except ValueError:
            return
        status.add_totals(self._retired, document.get("services", ()))

    def _publish_retired(self):
        data = json.dumps({"retired": self._retired}).encode("utf-8")
        with contextlib.suppress(ValueError):
            self.arena.publish(self.arena.slots, data)

    # -- signals ---------------------------------------------------------------

    def handle_chld(self):
        """A worker exited: reaped by the main loop."""

    def handle_term(self):
        """Stop every worker within shutdown_timeout."""
        self._begin_stop("SIGTERM")

    def handle_int(self):
        """As SIGTERM; the second time the workers abort their connections."""
        if self._phase != "stopping":
            self._begin_stop("SIGINT")
            return
        log.warning("second SIGINT received: aborting open connections")
        for worker in self.workers.values():
            worker.signal(signal.SIGQUIT)

    def _begin_stop(self, why):
        if self._phase == "stopping":
            log.info("%s received, already stopping", why)
            return
        if why is not None:
            log.info("%s received, stopping %d workers", why, len(self.workers))
            notify.stopping()
        self._phase = "stopping"
        self._roll = None
        self._respawn_at.clear()
        self._stop_workers(list(self.workers.values()))
        self.listeners.close()

    def handle_usr1(self):
        """Reopen the log files here and in every worker."""
        count = reopen_logs()
        for worker in self.workers.values():
            worker.signal(signal.SIGUSR1)
        log.info("SIGUSR1 received, reopened %d log file(s); told %d workers", count,
                 len(self.workers))

    def handle_hup(self):
        """Reload: check the file here, then roll the workers."""
        if self._phase != "running":
            log.info("SIGHUP received while %s: ignored", self._phase)
            return
        log.info("SIGHUP received, reloading %s", self.config.path)
        notify.reloading()
        try:
            self._begin_roll()
        except (ConfigError, OSError) as exc:
            log.error("reload: refused: %s", exc)
            notify.ready()

    # -- reload: rolling the workers -------------------------------------------

    def _begin_roll(self):
        """Check the new file, open its new listeners, start the new generation.
        Raises ConfigError or OSError, having changed nothing."""
        new = config_module.with_options(config_module.load(self.config.path), self.overrides)
        preflight.check(new)
        new = self._keep_fixed(new)
        if self._roll is not None:
            self._abort_roll("superseded by a newer SIGHUP", log_it=False)
        new_log = self._new_log_handlers(new)
        opened = self.listeners.open_for(new)
        if new_log:
            install_log_handlers(new_log, new["log_level"])
        old = self.config
        self._last_generation += 1
        self.generation = self._last_generation
        self._configs[self.generation] = new
        self._roll = {"generation": self.generation, "opened": opened,
                      "deadline": time.monotonic() + READY_TIMEOUT,
                      "summary": _summary(plan_reload(old, new), [])}
        self.config = new
        for index in range(self.processes):
            self._respawn_at[index] = 0.0  # started by _maintain as slots free up

    def _keep_fixed(self, new):
        fixed = {key: self.config[key] for key in restart_keys_changed(self.config, new)}
        for key in fixed:
            log.warning("reload: %s changed; it takes effect at the next start", key)
        return config_module.with_options(new, fixed)

    def _new_log_handlers(self, new):
        old, options = self.config.options, new.options
        if (old["log_file"], old["log_level"]) == (options["log_file"], options["log_level"]):
            return []
        try:
            return log_handlers(options, self.echo)
        except OSError as exc:
            raise OSError("log_file %s: %s" % (options["log_file"], exc.strerror or exc)) from None

    def _finish_roll(self):
        roll, self._roll = self._roll, None
        old = [w for w in self.workers.values()
               if w.generation < roll["generation"] and w.stop_deadline is None]
        self._stop_workers(old)
        self.listeners.keep_only([self.config])
        self._forget_old_configs()
        self._write_state()
        log.info("reload: accepted (%s; %d workers replaced)", roll["summary"], len(old))
        notify.ready()

    def _abort_roll(self, reason, log_it=True):
        roll, self._roll = self._roll, None
        self._stop_workers([w for w in self.workers.values()
                            if w.generation == roll["generation"]])
        self.generation = max(g for g in self._configs if g != roll["generation"])
        self.config = self._configs[self.generation]
        del self._configs[roll["generation"]]
        self._respawn_at.clear()
        for index in range(self.processes):
            if not self._has_worker(self.generation, index):
                self._respawn_at[index] = 0.0
        self.listeners.close(roll["opened"])
        if log_it:
            log.error("reload: refused: %s", reason)
            notify.ready()

    def _forget_old_configs(self):
        live = {w.generation for w in self.workers.values()} | {self.generation}
        self._configs = {g: c for g, c in self._configs.items() if g in live}

    # -- files beside the pidfile, for msgsrvctl --------------------------------

    def _write_state(self):
        if self.pidfile is None or not self.pidfile.held:
            return
        lines = []
        for service in self.config.services:
            sock = self.listeners.first(service, self.config)
            if sock is not None:
                lines.append("%s %s %s %s\n" % (service.name, service.transport,
                                                format_peer(sock.getsockname()),
                                                service["handler"]))
        _write_quietly(state_path(self.pidfile.path), "".join(lines))

    def _write_workers(self):
        if self.pidfile is None or not self.pidfile.held or self.arena is None:
            return
        connections = worker_module.connections_by_slot(self.arena)
        lines = ["%d %d %d %s %s %s\n" % (w.pid, w.index, w.generation,
                                          "ready" if w.ready else "starting",
                                          "%.3f" % w.started_at,
                                          connections.get(w.slot, "-"))
                 for w in sorted(self.workers.values(), key=lambda w: (w.generation, w.index))]
        text = "".join(lines)
        if text != self._workers_file:
            self._workers_file = text
            _write_quietly(workers_path(self.pidfile.path), text)


def _write_quietly(path, text):
    try:
        _write_atomically(path, text)
    except OSError as exc:
        log.warning("cannot write %s: %s", path, exc.strerror or exc)


def _drain(fd):
    try:
        while os.read(fd, 4096):
            pass
    except (BlockingIOError, InterruptedError):
        pass


__all__ = ["Supervisor", "backoff", "describe_exit", "serves_in_one_process", "assigned"]
