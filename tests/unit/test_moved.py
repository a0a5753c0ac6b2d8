"""Old module names (msgsrv/_moved.py) still import, as the very same modules, with a warning."""

import json
import os
import subprocess
import sys
import warnings

import pytest

from msgsrv import _moved
from msgsrv.ops import config as config_module
from tests.conftest import ROOT

# setup.cfg turns these warnings into errors for the rest of the suite.
pytestmark = pytest.mark.filterwarnings("default::DeprecationWarning")

_IMPORT_ALL = """
import importlib, json, sys, warnings
from msgsrv import _moved
report = {}
for old, new in sorted(_moved.MOVED.items()):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    report[old] = [module is sys.modules[new], module.__name__, module.__spec__.name,
                   [str(w.message) for w in caught if w.category is DeprecationWarning]]
import msgsrv.pool, msgsrv.net.pool
report["same class"] = msgsrv.pool.Connection is msgsrv.net.pool.Connection
print(json.dumps(report))
"""


def _python(*args):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable] + list(args), capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=30)


def test_every_old_name_is_the_new_module_and_warns_once():
    done = _python("-c", _IMPORT_ALL)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report.pop("same class") is True
    assert set(report) == set(_moved.MOVED)
    for old, (same, name, spec_name, messages) in report.items():
        new = _moved.MOVED[old]
        assert (same, name, spec_name) == (True, new, new), old
        # A parent package imported through its own old name warns for itself, not here.
        mine = [m for m in messages if m.startswith(old + " ")]
        assert mine == ["%s has moved to %s; the old name goes away in the next release"
                        % (old, new)], old


def test_old_names_are_no_longer_files_and_new_names_are():
    for old, new in _moved.MOVED.items():
        assert not os.path.exists(os.path.join(ROOT, *old.split(".")) + ".py"), old
        parts = new.split(".")
        assert (os.path.exists(os.path.join(ROOT, *parts) + ".py")
                or os.path.exists(os.path.join(ROOT, *parts, "__init__.py"))), new


def test_python_dash_m_runs_the_moved_module():
    done = _python("-m", "msgsrv.ctl", "--help")
    assert done.returncode == 0 and done.stdout.startswith("usage: msgsrvctl"), done.stderr


def test_a_config_naming_an_old_handler_path_still_loads(tmp_path):
    path = tmp_path / "server.ini"
    path.write_text("[service:echo]\nhandler = msgsrv.handlers.echo:EchoHandler\nport = 0\n")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        config = config_module.load(str(path))
    from msgsrv.services.echo.handler import EchoHandler
    assert config.services[0].handler_class is EchoHandler
