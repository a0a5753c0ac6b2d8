"""Old module names, kept for one release: each is the same module object as its new name.

msgsrv 0.2 moved its flat modules into packages (docs/DESIGN.rst, "Layout").
:data:`MOVED` is the one table of old -> new names.  :func:`install` puts a
finder on ``sys.meta_path`` that answers an old name with the module already
imported under the new one (``msgsrv.pool.Connection is
msgsrv.net.pool.Connection``) and warns once per name with a
DeprecationWarning.  ``python -m OLD`` runs the new module too.
"""

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings

MOVED = {
    "msgsrv.access": "msgsrv.net.access",
    "msgsrv.auth": "msgsrv.wire.auth",
    "msgsrv.chatproto": "msgsrv.services.chat.protocol",
    "msgsrv.chatroom": "msgsrv.services.chat.state",
    "msgsrv.client.chat": "msgsrv.services.chat.client",
    "msgsrv.client.cli_chat": "msgsrv.cli.chat",
    "msgsrv.client.cli_command": "msgsrv.cli.run",
    "msgsrv.client.cli_echo": "msgsrv.cli.echo",
    "msgsrv.client.cli_files": "msgsrv.cli.files",
    "msgsrv.client.cli_keygen": "msgsrv.cli.keygen",
    "msgsrv.client.cli_status": "msgsrv.cli.status",
    "msgsrv.client.command": "msgsrv.services.command.client",
    "msgsrv.client.echo": "msgsrv.services.echo.client",
    "msgsrv.client.files": "msgsrv.services.files.client",
    "msgsrv.client.options": "msgsrv.cli.options",
    "msgsrv.client.progress": "msgsrv.cli.progress",
    "msgsrv.client.status": "msgsrv.services.status.client",
    "msgsrv.client.terminal": "msgsrv.cli.terminal",
    "msgsrv.commands": "msgsrv.services.command.allowlist",
    "msgsrv.config": "msgsrv.ops.config",
    "msgsrv.ctl": "msgsrv.cli.msgsrvctl",
    "msgsrv.daemon": "msgsrv.ops.daemon",
    "msgsrv.datagram": "msgsrv.net.datagram",
    "msgsrv.errors": "msgsrv.wire.errors",
    "msgsrv.fileproto": "msgsrv.services.files.protocol",
    "msgsrv.fileroot": "msgsrv.services.files.state",
    "msgsrv.handlers": "msgsrv.services",
    "msgsrv.handlers.authed": "msgsrv.net.authenticated",
    "msgsrv.handlers.base": "msgsrv.net.handler",
    "msgsrv.handlers.chat": "msgsrv.services.chat.handler",
    "msgsrv.handlers.command": "msgsrv.services.command.handler",
    "msgsrv.handlers.echo": "msgsrv.services.echo.handler",
    "msgsrv.handlers.files": "msgsrv.services.files.handler",
    "msgsrv.handlers.status": "msgsrv.services.status.handler",
    "msgsrv.manpages": "msgsrv.cli.manpages",
    "msgsrv.notify": "msgsrv.ops.notify",
    "msgsrv.peer": "msgsrv.net.peer",
    "msgsrv.pidfile": "msgsrv.ops.pidfile",
    "msgsrv.pool": "msgsrv.net.pool",
    "msgsrv.preflight": "msgsrv.ops.preflight",
    "msgsrv.privileges": "msgsrv.ops.privileges",
    "msgsrv.protocol": "msgsrv.wire.frames",
    "msgsrv.registry": "msgsrv.ops.running",
    "msgsrv.runner": "msgsrv.services.command.process",
    "msgsrv.sandbox": "msgsrv.services.files.sandbox",
    "msgsrv.server": "msgsrv.net.server",
    "msgsrv.service": "msgsrv.net.service",
    "msgsrv.settings": "msgsrv.ops.settings",
    "msgsrv.settings_doc": "msgsrv.ops.settings_doc",
    "msgsrv.status": "msgsrv.services.status.report",
    "msgsrv.stream": "msgsrv.wire.frame_stream",
    "msgsrv.tls": "msgsrv.net.tls",
    "msgsrv.transfer": "msgsrv.services.files.transfer",
    "msgsrv.transfer_limits": "msgsrv.net.transfer_limits",
    "msgsrv.transport": "msgsrv.net.transport",
}


class _Alias(importlib.abc.Loader):
    """Loads an old name as the module of its new name."""

    def __init__(self, new):
        self.new = new

    def create_module(self, spec):
        module = importlib.import_module(self.new)
        self._spec = module.__spec__
        return module

    def exec_module(self, module):
        # Already executed under its new name; the import system has just set
        # __spec__ to the old name's: give the module its own back.
        module.__spec__ = self._spec

    def get_code(self, fullname):
        """Code that runs the new module as ``__main__``, for ``python -m OLD`` (runpy asks)."""
        source = "import runpy\nrunpy.run_module(%r, run_name='__main__', alter_sys=True)\n"
        return compile(source % self.new, "<%s, moved to %s>" % (fullname, self.new), "exec")


class MovedFinder(importlib.abc.MetaPathFinder):
    """Finds the old names of :data:`MOVED`; every other name is left to the next finder."""

    def find_spec(self, fullname, path=None, target=None):
        new = MOVED.get(fullname)
        if new is None:
            return None
        warnings.warn("%s has moved to %s; the old name goes away in the next release"
                      % (fullname, new), DeprecationWarning, stacklevel=2)
        is_package = new == "msgsrv.services"
        spec = importlib.machinery.ModuleSpec(fullname, _Alias(new), is_package=is_package)
        if is_package:
            spec.submodule_search_locations = []
        return spec


def install():
    """Put the finder first on ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, MovedFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedFinder())
