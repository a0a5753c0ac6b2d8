"""One worker process of ``processes = N``: what runs in the child after the fork.

:func:`run_child` undoes what the child inherited from the master and must not
keep (its signal handlers and wake-up descriptor, its pipes, its pidfile
descriptor, the listeners this worker does not serve, ``$NOTIFY_SOCKET``),
installs the shared :class:`~msgsrv.ops.shared.WorkerContext`, and runs a
:class:`WorkerDaemon`: the single-process Daemon serving the master's
sockets instead of binding its own.  It never returns (``os._exit``).

A worker tells the master ``ready PID`` or ``failed PID REASON`` on the report
pipe, publishes its status document to its slot every PUBLISH_INTERVAL
seconds (and once more when it stops), and stops when the master tells it
(SIGTERM; SIGQUIT aborts the connections) or when the master is gone (the
lifeline pipe reaches end of file).  SIGINT and SIGHUP are the master's: a
worker ignores them.
"""

import json
import logging
import os
import signal
import time
from dataclasses import dataclass, replace
from typing import Any

from msgsrv.services.status import report as status
from msgsrv.wire.errors import ConfigError
from . import shared
from .daemon import Daemon, EXIT_CONFIG, EXIT_FAILURE, EXIT_OK
from .notify import ENV as NOTIFY_ENV

log = logging.getLogger("msgsrv")

PUBLISH_INTERVAL = 0.5  # seconds between two status snapshots of a worker
# Seconds a stopping worker keeps serving after it stopped accepting: a connection it
# accepted just before has its first request served instead of being closed as idle.
STOP_GRACE = 0.25
_REPORT_MAX = 3000      # bytes of one report line (below PIPE_BUF: written whole)


@dataclass
class Plan:
    """What the master hands a worker it forks (in memory: the child has a copy)."""

    config: Any            # the whole Config (the worker serves ``listeners`` only)
    overrides: Any
    echo: bool
    context: Any           # shared.WorkerContext
    listeners: Any         # {service name: socket} this worker serves
    master_pid: int
    master_started: float  # epoch
    processes: int
    report_fd: int
    lifeline_fd: int
    close_fds: Any         # master descriptors the child closes
    close_sockets: Any     # every master listener (those not in ``listeners`` are closed)


def run_child(plan, master_signals):
    """The forked child's whole life: reset, serve, ``os._exit`` with the exit code."""
    code = EXIT_FAILURE
    try:
        _reset(plan, master_signals)
        code = WorkerDaemon(plan).run_worker()
    except BaseException:  # noqa: B036 - whatever happens, the child must not return
        try:
            log.exception("worker %d crashed", plan.context.index)
        except BaseException:  # noqa: B036
            pass
    finally:
        for handler in logging.getLogger().handlers:
            try:
                handler.flush()
            except Exception:  # noqa: BLE001 - exiting anyway
                pass
        os._exit(code)


def _reset(plan, master_signals):
    signal.set_wakeup_fd(-1)
    for signum in master_signals:
        signal.signal(signum, signal.SIG_DFL)
    for fd in plan.close_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    served = {id(sock) for sock in plan.listeners.values()}
    for sock in plan.close_sockets:
        if id(sock) not in served:
            sock.close()
    os.environ.pop(NOTIFY_ENV, None)
    shared.install(plan.context)


class WorkerDaemon(Daemon):
    """The Daemon of one worker: the master's listeners, no pidfile, no reload."""

    tick_interval = PUBLISH_INTERVAL
    listening_level = logging.DEBUG
    stopped_message = "worker stopped"

    def __init__(self, plan):
        mine = [service for service in plan.config.services if service.name in plan.listeners]
        super().__init__(replace(plan.config, services=tuple(mine)), plan.overrides, plan.echo)
        self.plan = plan
        self.context = plan.context
        self.pidfile = None
        self.registry.peers = StatusPeers(plan, self.registry)
        self.watched = [plan.lifeline_fd]
        self._final = None

    def handled_signals(self):
        """The signals a worker acts on (SIGINT and SIGHUP go to the master)."""
        return [signal.SIGTERM, signal.SIGQUIT, signal.SIGUSR1]

    def run_worker(self):
        """Start, serve until told to stop, stop; return the exit code."""
        for signum in (signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        context = self.context
        context.arena.set_worker(context.slot, os.getpid(), context.generation, context.index,
                                 time.time(), shared.STARTING)
        return self._run(restore_signals=False)

    def _start_all(self):
        try:
            self.start()
        except ConfigError as exc:
            self._report("failed", exc)
            return EXIT_CONFIG
        except (OSError, RuntimeError) as exc:
            self._report("failed", exc)
            return EXIT_FAILURE
        self.context.arena.set_state(self.context.slot, shared.READY)
        self.publish()
        self._report("ready")
        return EXIT_OK

    def _report(self, kind, detail=""):
        line = ("%s %d %s" % (kind, os.getpid(), detail)).replace("\n", "; ")
        data = line.encode("utf-8", "replace")[:_REPORT_MAX] + b"\n"
        try:
            os.write(self.plan.report_fd, data)
        except OSError as exc:
            log.debug("cannot report to the master: %s", exc)

    def _bind(self, server):
        server.adopt(self.plan.listeners[server.name])
        server.server_activate()

    def _drop_privileges(self):
        """The master switched user before it forked."""

    def tick(self, readable):
        """Publish the status snapshot; stop when the master is gone."""
        if self.plan.lifeline_fd in readable and not _read_or_eof(self.plan.lifeline_fd):
            self.watched = []
            self._begin_stop("the master exited")
        self.publish()

    def handle_quit(self):
        """Quick stop (the master's second SIGINT): abort every connection."""
        self._begin_stop("SIGQUIT")
        self.abort_connections()

    def stop(self):
        if self._final is None:  # the first stop: later calls find the registry empty
            self._final = self.registry.servers()
            self.context.arena.set_state(self.context.slot, shared.STOPPING)
            self._stop_accepting_first(self._final)
        super().stop()
        self.publish()  # the final counters, kept by the master once we exit

    def _stop_accepting_first(self, servers):
        """Stop accepting on the pooled services, then serve on for STOP_GRACE seconds.

        The master keeps the listeners open for the next worker, so a connection
        this worker would have accepted now waits for another; one it accepted a
        moment ago gets its first request served (a rolled worker refuses and
        resets nothing) before the graceful stop closes what is idle.
        """
        pooled = [server for server in servers if getattr(server, "pool", None) is not None]
        for server in pooled:
            server.stop_accepting(self.config["shutdown_timeout"])
        if pooled:
            time.sleep(min(STOP_GRACE, self.config["shutdown_timeout"]))

    def publish(self):
        """Publish this worker's status document to its slot (a failure is logged);
        once stopping, of the servers it had."""
        servers = self.registry.servers() if self._final is None else self._final
        document = status.collect(servers, self.registry.started)
        data = json.dumps(document, separators=(",", ":")).encode("utf-8")
        try:
            self.context.arena.publish(self.context.slot, data)
        except ValueError as exc:
            log.warning("status snapshot not published: %s", exc)


def _read_or_eof(fd):
    try:
        return os.read(fd, 64)
    except BlockingIOError:
        return b"?"


class StatusPeers:
    """The status of every worker, for the status service of this one (the
    registry's ``peers``): this worker's live figures, the others' last snapshots
    (at most PUBLISH_INTERVAL seconds old), and what workers that exited counted."""

    def __init__(self, plan, registry):
        self._plan = plan
        self._registry = registry
        self._order = [service.name for service in plan.config.services]

    def aggregate(self, own):
        """The daemon's status document, with ``own`` (this worker's) among the workers."""
        arena, context = self._plan.context.arena, self._plan.context
        table, snapshots = arena.view()
        workers = []
        for slot, (pid, generation, index, started, state) in sorted(table.items()):
            document = own if slot == context.slot else _loads(snapshots.get(slot))
            info = {"pid": pid, "index": index, "generation": generation,
                    "state": shared.STATE_NAMES.get(state, "?"), "started": started}
            workers.append((info, document))
        retired = (_loads(snapshots.get(arena.slots)) or {}).get("retired", {})
        return status.aggregate(workers, retired, self._plan.master_pid,
                                self._plan.master_started, self._plan.processes, self._order)


def _loads(data):
    if not data:
        return None
    try:
        return json.loads(bytes(data).decode("utf-8"))
    except ValueError:
        return None


def connections_by_slot(arena):
    """``{slot: open connections}`` from the workers' last snapshots (for the master)."""
    found = {}
    for slot, data in arena.snapshots().items():
        document = _loads(data) if slot < arena.slots else None
        if document is not None:
            found[slot] = sum(entry.get("connections") or 0
                              for entry in document.get("services", ()))
    return found


__all__ = ["Plan", "run_child", "WorkerDaemon", "StatusPeers", "connections_by_slot",
           "PUBLISH_INTERVAL"]
