"""The chat backend at ``--check`` and at import time, as subprocesses."""

import os
import subprocess
import sys

from tests.conftest import ROOT, run_msgsrv


def _config(tmp_path, **options):
    path = tmp_path / "server.ini"
    lines = ["[service:chat]", "handler = chat", "port = 0"]
    lines += ["%s = %s" % item for item in options.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_check_refuses_a_password_in_the_url(tmp_path):
    path = _config(tmp_path, backend="redis://:hunter2@127.0.0.1:6379/0")
    done = run_msgsrv("--config", str(path), "--check")
    assert done.returncode == 2
    assert "must not hold a password" in done.stderr and "hunter2" not in done.stderr + done.stdout


def test_the_memory_backend_imports_no_redis():
    code = ("import sys; from msgsrv.services.chat.handler import ChatService; "
            "from tests.conftest import service_config; "
            "ChatService(service_config('chat'), {}); print('redis' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.stdout.strip() == "False", done.stderr
