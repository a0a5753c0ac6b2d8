"""The client library imports nothing server-side (pool, servers, daemon, sandbox, handlers)."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT
CLIENT_MODULES = ["msgsrv.client", "msgsrv.client.base", "msgsrv.client.framed",
                  "msgsrv.client.fleet", "msgsrv.services.chat.client", "msgsrv.services.command.client",
                  "msgsrv.services.echo.client", "msgsrv.services.files.client",
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
module = importlib.import_module(sys.argv[1])
for name in getattr(module, "__all__", ()):
    getattr(module, name)  # the client package re-exports lazily: load every export
print(json.dumps(sorted(m for m in sys.modules if m == "msgsrv" or m.startswith("msgsrv."))))
"""


@pytest.mark.parametrize("name", CLIENT_MODULES)
def test_a_client_module_loads_no_server_module(name):
    done = subprocess.run([sys.executable, "-c", _PROBE, name], capture_output=True, text=True,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), timeout=30)
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout))
    assert name in loaded
    assert not loaded & set(SERVER_SIDE)
    assert sorted(m for m in loaded if m not in ALLOWED and not m.startswith(ALLOWED_PREFIXES)) == []
