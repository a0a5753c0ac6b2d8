"""Every check the daemon makes before it starts, without its side effects.

``python -m msgsrv --check`` and the daemon's start run the same
:func:`check`: what the INI parse cannot see (the handlers' own
``check_service``: keys files and their modes, file roots, command programs
and directories...), TLS files, the user and group to switch to, and the
directories of the pidfile and the log file.  Handler plugins are imported
by the parse already.

It creates nothing.  What start-up would create (a keys file with a fresh
key, a file root, a missing directory) is returned as notes, after checking
that it could be created.
"""

import os

from msgsrv.net.server import check_transport_options
from msgsrv.wire.errors import CheckFailed, ConfigError
from . import privileges
from .pidfile import running_pid


def check(config):
    """Run every start-up check on ``config``; return the notes (what start-up would
    create, or skip), one line each.

    Raises CheckFailed listing every problem found, each prefixed with the file.
    """
    problems, notes = [], _Notes()
    for step, args in _steps(config):
        try:
            step(notes, *args)
        except ConfigError as exc:
            problems.append("%s: %s" % (config.path, exc))
    if problems:
        raise CheckFailed(problems)
    return notes.lines()


class _Notes:
    """Notes, each once, with every setting that led to it."""

    def __init__(self):
        self._labels = {}

    def add(self, text, label=None):
        labels = self._labels.setdefault(text, [])
        if label is not None and label not in labels:
            labels.append(label)

    def lines(self):
        return ["%s (%s)" % (text, ", ".join(labels)) if labels else text
                for text, labels in self._labels.items()]


def _steps(config):
    yield _check_identity, (config["user"], config["group"])
    yield _check_pidfile, (config["pidfile"],)
    yield _check_log_file, (config["log_file"],)
    for service in config.services:
        yield _check_service, (service, config.options)


def _check_identity(notes, user, group):
    if not (user or group):
        return
    try:
        privileges.lookup(user, group)
    except ConfigError as exc:
        raise ConfigError("[msgsrv] %s" % exc) from None
    if os.geteuid() != 0:
        notes.add("not started as root (uid %d): user and group would be ignored"
                  % os.geteuid(), "[msgsrv]")


def _check_pidfile(notes, path):
    if not path:
        return
    _note_directory(notes, "[msgsrv] pidfile", path)
    pid = running_pid(path)
    if pid is not None:
        notes.add("pidfile %s is held by a running daemon (pid %s): a start would exit 1; "
                  "SIGHUP (msgsrvctl reload) applies this file" % (path, pid or "?"))


def _check_log_file(notes, path):
    if not path:
        return
    if os.path.exists(path):
        if os.path.isdir(path) or not os.access(path, os.W_OK):
            raise ConfigError("[msgsrv] log_file %s: not a writable file" % path)
        return
    _note_directory(notes, "[msgsrv] log_file", path)


def _note_directory(notes, label, path):
    missing = missing_directory(label, path)
    if missing is not None:
        notes.add("would create directory %s" % missing, label)


def _check_service(notes, service, global_options):
    where = "[service:%s]" % service.name
    check_transport_options(service)
    handler = service.handler_class
    check_service = getattr(handler, "check_service", None)
    if check_service is not None:
        check_service(service, global_options)
    for text in getattr(handler, "start_notes", lambda service: ())(service):
        notes.add(text, where)
    creates = getattr(handler, "creates", None)
    for key, what in (creates(service) if creates is not None else ()):
        path = service[key]
        if not os.path.lexists(path):
            label = "%s %s" % (where, key)
            missing_directory(label, path)
            notes.add("would create %s %s" % (what, path), label)


def missing_directory(label, path):
    """Check that ``path`` could be created (with any missing parent), creating nothing.

    Returns the missing directory that would hold it (None if it exists); raises
    ConfigError naming ``label`` when that directory, or the nearest one that
    exists, is not a writable directory.
    """
    directory = os.path.dirname(path) or "."
    existing = directory
    while not os.path.lexists(existing):
        existing = os.path.dirname(os.path.abspath(existing))
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError("%s %s: %s is not a writable directory (uid %d)"
                          % (label, path, existing, os.geteuid()))
    return None if existing == directory else directory
