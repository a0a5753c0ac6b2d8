"""``pip install .`` into a fresh venv: the three commands, their --help, the manual pages.

Offline and quick: the venv sees this interpreter's pip and setuptools
(``--system-site-packages``) and the install neither resolves dependencies
nor builds in isolation.  Skipped, saying why, where no such venv can be made.
"""

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(180)

COMMANDS = ("msgsrv", "msgsrvctl", "msgsrv-client")
SOURCES = ("setup.py", "setup.cfg", "MANIFEST.in", "README.rst", "msgsrv", "man")


def _run(argv, **kwargs):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MSGSRV_CONFIG")}
    return subprocess.run([str(arg) for arg in argv], capture_output=True, text=True,
                          timeout=120, env=env, **kwargs)


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A venv with this tree installed (not editable), from a copy of its sources."""
    base = tmp_path_factory.mktemp("packaging")
    made = _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                 base / "venv"])
    if made.returncode:
        pytest.skip("python -m venv failed here: %s" % made.stderr.strip()[-200:])
    python = base / "venv" / "bin" / "python"
    probe = _run([python, "-c", "import setuptools, pip, wheel"])
    if probe.returncode:
        pytest.skip("%s lacks pip, setuptools or wheel for an offline install (%s): install "
                    "the test extras, pip install -e '.[test]'"
                    % (sys.executable, probe.stderr.strip().splitlines()[-1]))
    source = base / "src"  # a copy: building writes build/ and *.egg-info beside the sources
    source.mkdir()
    for name in SOURCES:
        if os.path.isdir(os.path.join(ROOT, name)):
            shutil.copytree(os.path.join(ROOT, name), source / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(os.path.join(ROOT, name), source / name)
    installed = _run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                      "--no-index", source])
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return base / "venv"


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_is_installed_with_its_help(venv, command, tmp_path):
    result = _run([venv / "bin" / command, "--help"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: %s " % command)
    assert "\nexit status:\n  0  " in result.stdout


def test_installed_commands_run_from_the_installed_package(venv, tmp_path):
    where = _run([venv / "bin" / "python", "-c", "import msgsrv; print(msgsrv.__file__)"],
                 cwd=tmp_path)
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr
    config = tmp_path / "server.ini"
    config.write_text("[msgsrv]\npidfile = %s\n[service:echo]\nhandler = echo\n"
                      % (tmp_path / "msgsrv.pid"))
    assert _run([venv / "bin" / "msgsrv", "-c", config, "--check"], cwd=tmp_path).returncode == 0
    status = _run([venv / "bin" / "msgsrvctl", "status", "-c", config], cwd=tmp_path)
    assert (status.returncode, status.stdout) == (3, "msgsrv is not running\n")
    module = _run([venv / "bin" / "python", "-m", "msgsrv.client", "--help"], cwd=tmp_path)
    assert module.returncode == 0 and "usage: msgsrv-client" in module.stdout


def test_manual_pages_are_installed(venv):
    for section, page in ((8, "msgsrv.8"), (8, "msgsrvctl.8"), (1, "msgsrv-client.1")):
        installed = venv / "share" / "man" / ("man%d" % section) / page
        with open(os.path.join(ROOT, "man", page), encoding="utf-8") as stream:
            assert installed.read_text() == stream.read(), page


def test_the_web_console_files_are_installed(venv, tmp_path):
    from msgsrv.services.web import assets
    shipped = sorted(assets.load())
    listed = _run([venv / "bin" / "python", "-c", "from msgsrv.services.web import assets; "
                   "print(' '.join(sorted(assets.load())))"], cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == shipped and "dashboard.js" in shipped
