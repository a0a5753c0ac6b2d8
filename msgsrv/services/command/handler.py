"""The command service: authenticated, allow-listed commands, output streamed as it comes.

Requests (docs/PROTOCOL.rst, "Command service"): ``list`` answers with the
commands the key may run; ``run`` checks the request against the
:class:`~msgsrv.services.command.allowlist.CommandTable` (sans-IO), takes one of
``max_concurrent`` slots and a slot of the service's TransferGate, then blocks
the connection while
:class:`~msgsrv.services.command.process.ProcessRun` streams the child's output as frames.
Every run is audited in one log line on ``msgsrv.command``; every refusal
in one warning line.
"""

import json
import logging

from msgsrv.ops import privileges, shared
from msgsrv.plugin import (REPLY_LIMITS, AuthedService, AuthenticatedHandler, ConfigError,
                           ProtocolError, ServiceBusy, encode, format_peer)
from . import allowlist, process

log = logging.getLogger("msgsrv.command")


#: wire code -> meaning, for every error frame this service sends besides the frame codes.
CODES = dict(allowlist.CODES, **{
    "busy": "max_concurrent commands are running already, or a transfer limit is reached "
            "(max_transfers, max_transfers_per_ip, transfer_buffer_budget)",
    "exec-failed": "the program could not be started",
})


def output_frame(stream, data):
    """The frame carrying one chunk of a command's ``stream`` output."""
    return encode({"type": "output", "stream": stream}, data, **REPLY_LIMITS)


def exit_header(outcome):
    """The final frame of a run (docs/PROTOCOL.rst)."""
    return {"type": "exit", "exit_code": outcome.exit_code, "signal": outcome.signal,
            "duration": round(outcome.duration, 6), "timed_out": outcome.timed_out,
            "truncated": outcome.truncated, "bytes": outcome.produced}


def _json_seconds(value):
    """Seconds as the protocol sends them: an integer when whole (10), else a fraction."""
    return int(value) if float(value).is_integer() else value


class RunSlots:
    """At most ``limit`` runs at once; the limit may change while runs hold slots
    (a run gives back the slot it took, whatever the limit is by then).  The
    count lives in ``store`` (this process's by default; the worker processes'
    together when given their shared store)."""

    def __init__(self, limit, store=None):
        self.limit = limit
        self._store = store if store is not None else shared.LocalStore()

    @property
    def running(self):
        """Runs holding a slot now."""
        with self._store.locked():
            return self._store.total(_RUNS)

    def acquire(self):
        """Take a slot; False when ``limit`` runs hold one already."""
        with self._store.locked():
            if self._store.total(_RUNS) >= self.limit:
                return False
            self._store.add(_RUNS, 1)
            return True

    def release(self):
        """Give back a slot taken by :meth:`acquire`."""
        with self._store.locked():
            self._store.add(_RUNS, -1)


_RUNS = ("runs",)


class CommandService(AuthedService):
    """The command service's state: who runs, the command table (swapped on reload)
    and the run slots (kept: a reload lets running commands finish)."""

    def __init__(self, config, global_options):
        super().__init__(config, global_options)
        self.run_as, self.commands = self._load(config, global_options, self.keys)
        self.run_slots = RunSlots(config["max_concurrent"],
                                  shared.store("runs:" + self.name, group=self.name))

    def _load(self, config, global_options, keys):
        run_as = _run_as(config, global_options)
        table = allowlist.CommandTable.from_options(config.options, "[service:%s]" % config.name)
        _log_setup(config, run_as, table, keys)
        return run_as, table

    def prepare_keyed(self, config, global_options, keys):
        loaded = self._load(config, global_options, keys)

        def apply():
            self.run_as, self.commands = loaded
            self.run_slots.limit = config["max_concurrent"]  # for new runs
        return apply


class CommandHandler(AuthenticatedHandler):
    """Runs the commands the config allows, for the keys it allows, within its limits."""

    body_types = ("run",)  # a run's body is the command's stdin

    settings = AuthenticatedHandler.settings + allowlist.SETTINGS
    service_class = CommandService

    @classmethod
    def check_service(cls, service, global_options):
        """Who commands will run as (returns a :class:`~msgsrv.ops.privileges.RunAs`), the
        keys file (see AuthenticatedHandler), then the command table: programs found
        and executable, directories present.

        Raises ConfigError naming the service and the keys to fix: also when
        commands would run as root and ``run_as_root`` is not yes, or when
        ``user`` / ``group`` cannot be applied (see
        :func:`msgsrv.ops.privileges.children_identity`).
        """
        run_as = _run_as(service, global_options)
        super().check_service(service, global_options)
        allowlist.CommandTable.from_options(service.options, "[service:%s]" % service.name)
        return run_as

    def request_received(self, message):
        if message.type == "list":
            self.reply(dict(self.service.commands.visible(self.identity), type="commands"))
        elif message.type == "run":
            self._run(message)
        else:
            raise ProtocolError("bad-request", "unknown request type %s (expected run or list)"
                                % allowlist.brief(message.type))

    def _run(self, message):
        plan = self._admit(message)
        try:
            run, outcome = self._execute(plan, message.body)
        finally:
            # Given back before the exit frame goes out: a client that runs
            # again as soon as it sees exit must not find its own slot taken.
            self.service.transfers.release(self.conn.address[0], process.OUTPUT_BUFFERS)
            self.service.run_slots.release()
        self._finish(plan, run, outcome)

    def _admit(self, message):
        """The checked Plan, with a run slot and a transfer slot taken; ProtocolError
        (logged) otherwise."""
        try:
            plan = self.service.commands.plan(message.header, self.identity, len(message.body))
            if not self.service.run_slots.acquire():
                raise ProtocolError("busy", "%d commands are running already (max_concurrent)"
                                    % self.options["max_concurrent"])
            try:
                self.service.transfers.acquire(self.conn.address[0], process.OUTPUT_BUFFERS)
            except ServiceBusy:
                self.service.run_slots.release()
                raise
        except ProtocolError as exc:
            self._refused(message.header.get("command", allowlist.ANY), exc)
            raise
        return plan

    def _execute(self, plan, stdin):
        self._input_error = None
        greeting = encode({"type": "started", "command": plan.name, "argv": list(plan.argv),
                           "timeout": _json_seconds(plan.limits.timeout)}, **REPLY_LIMITS)
        with self.conn.blocking(self.options["io_timeout"]) as sock:
            proc = self._spawn(plan, stdin)
            run = process.ProcessRun(proc, sock, plan.limits, io_timeout=self.options["io_timeout"],
                                     encode=output_frame, on_input=self._input_during_run,
                                     greeting=greeting, stdin=stdin,
                                     cancelled=lambda: self.conn.aborted,
                                     min_rate=self.options["min_transfer_rate"],
                                     rate_window=self.options["transfer_rate_window"])
            return run, run.pump()

    def _spawn(self, plan, stdin):
        try:
            return process.spawn(plan.argv, workdir=plan.limits.workdir,
                                 env=self.service.commands.environment, stdin=bool(stdin),
                                 **self.service.run_as.spawn_options())
        except OSError as exc:
            log.error("%s: cannot start %s %s: %s", self.server.name, plan.name,
                      _json(plan.argv), exc)
            raise ProtocolError("exec-failed", "cannot start %s: %s"
                                % (plan.name, exc.strerror or exc)) from None

    def _input_during_run(self, data):
        """Pipelined requests wait in the decoder, up to one full frame's worth."""
        try:
            self.decoder.feed(data)
        except ProtocolError as exc:
            self._input_error = exc
            return False
        return self.decoder.buffered < self.options["max_header"] + self.options["max_body"]

    def _finish(self, plan, run, outcome):
        self._count(outcome)
        self._audit(plan, outcome)
        if outcome.ended_by:
            self.conn.abort("client %s during a run" % outcome.ended_by)
            return
        self.conn.send(bytes(run.pending))
        self.reply(exit_header(outcome))
        if self._input_error is not None:
            self.fail(self._input_error.code, self._input_error.message)

    def _count(self, outcome):
        counters = self.server.counters
        counters.incr("runs")
        if outcome.timed_out:
            counters.incr("timeouts")
        if any(outcome.truncated.values()):
            counters.incr("truncations")

    def _audit(self, plan, outcome):
        log.info("run service=%s key=%s peer=%s command=%s argv=%s exit=%s signal=%s "
                 "duration=%.3f stdout=%d stderr=%d truncated=%s timed_out=%s end=%s",
                 self.server.name, self.identity, format_peer(self.conn.address), plan.name,
                 _json(plan.argv), _dash(outcome.exit_code), _dash(outcome.signal),
                 outcome.duration, outcome.produced["stdout"], outcome.produced["stderr"],
                 ",".join(k for k, v in outcome.truncated.items() if v) or "-",
                 "yes" if outcome.timed_out else "no", outcome.ended_by or "exited")

    def _refused(self, name, exc):
        self.server.counters.incr("runs_refused")
        log.warning("refused service=%s key=%s peer=%s command=%s code=%s",
                    self.server.name, self.identity, format_peer(self.conn.address),
                    _json(name[:64] if isinstance(name, str) else allowlist.brief(name)),
                    exc.code)


def _json(value):
    """One log token: JSON escapes every control character, so a line stays one line."""
    return json.dumps(list(value) if isinstance(value, tuple) else value, separators=(",", ":"))


def _dash(value):
    return "-" if value is None else value


def _run_as(service, global_options):
    where = "[service:%s]" % service.name
    try:
        run_as = privileges.children_identity(
            service["user"], service["group"], global_options.get("user", ""),
            global_options.get("group", ""))
    except ConfigError as exc:
        raise ConfigError("%s %s" % (where, exc)) from None
    if run_as.uid == 0 and not service["run_as_root"]:
        raise ConfigError(
            "%s commands would run as root (uid 0): set user = NAME in %s (an "
            "unprivileged account such as nobody), or user in [msgsrv] to run the "
            "whole daemon as that user, or run_as_root = yes in %s to allow root"
            % (where, where, where))
    return run_as


def _log_setup(config, run_as, table, keys):
    """Who commands run as, which commands, and the likely mistakes (logged at each load)."""
    if run_as.uid == 0:
        log.warning("%s: run_as_root = yes: commands run as root", config.name)
    else:
        log.info("%s: commands run as uid=%d (%s)%s", config.name, run_as.uid, run_as.name,
                 "; " + run_as.note if run_as.note else "")
    log.info("%s: commands %s", config.name, ", ".join(sorted(table.commands)) or "(none)")
    if config["allow_any"]:
        log.warning("%s: allow_any = yes: %s may run ANY program with any arguments",
                    config.name, ", ".join(config["allow_any_keys"]) or "every key")
    # A keys.NAME entry naming no key in the keys file is most likely a typo.
    for name, allowed in sorted(config["keys"].items()):
        unknown = sorted(set(allowed) - set(keys))
        if unknown:
            log.warning("%s: keys.%s names %s, not in %s", config.name, name,
                        ", ".join(unknown), config["keys_file"])
