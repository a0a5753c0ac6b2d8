"""The client library imports nothing server-side (pool, servers, daemon, sandbox, handlers)."""

import json
import os
import subprocess
import sys

from tests.conftest import ROOT

# msgsrv.client first: it must stay light on its own.
CLIENT_MODULES = ["msgsrv.client", "msgsrv.client.base", "msgsrv.client.framed",
                  "msgsrv.client.fleet", "msgsrv.services.chat.client",
                  "msgsrv.services.command.client", "msgsrv.services.echo.client", "msgsrv.services.files.client",
                  "msgsrv.services.status.client"]
# What a client may load: the wire format, its own modules and what they share with servers.
ALLOWED_PREFIXES = ("msgsrv.wire.", "msgsrv.client.")
ALLOWED = {"msgsrv", "msgsrv._moved", "msgsrv.wire", "msgsrv.client", "msgsrv.services",
           "msgsrv.services.chat", "msgsrv.services.command", "msgsrv.services.echo",
           "msgsrv.services.files", "msgsrv.services.status", "msgsrv.services.chat.protocol",
           "msgsrv.services.files.transfer"} | set(CLIENT_MODULES)
SERVER_SIDE = ("msgsrv.net.pool", "msgsrv.net.server", "msgsrv.net.tls", "msgsrv.ops.daemon",
               "msgsrv.services.files.sandbox", "msgsrv.services.files.handler", "msgsrv.plugin")

_PROBE = """
import importlib, json, sys
loaded = {}
for name in sys.argv[1:]:  # one after the other: what each adds is charged to it
    module = importlib.import_module(name)
    for export in getattr(module, "__all__", ()):
        getattr(module, export)  # the client package re-exports lazily: load every export
    loaded[name] = sorted(m for m in sys.modules if m == "msgsrv" or m.startswith("msgsrv."))
print(json.dumps(loaded))
"""


def test_the_client_library_loads_no_server_module():
    done = subprocess.run([sys.executable, "-c", _PROBE] + CLIENT_MODULES, capture_output=True,
                          text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), timeout=30)
    assert done.returncode == 0, done.stderr
    for name, loaded in json.loads(done.stdout).items():
        assert name in loaded
        assert not set(loaded) & set(SERVER_SIDE), name
        others = [m for m in loaded if m not in ALLOWED and not m.startswith(ALLOWED_PREFIXES)]
        assert others == [], name
