"""Integration tests drive real programs: redis-server, haproxy, chromium/chromedriver.

``scripts/test-all`` installs the Debian packages when they are missing (as root).
A test that needs a missing program skips with the reason, except under CI
(``CI`` set), where a missing program fails the test: CI must run them all.
"""

import os
import shutil

import pytest

from tests.integration.redis_server import RedisServer


def require_program(name):
    """The path of program ``name``; skip (or fail under CI) when it is not installed."""
    path = shutil.which(name) or next(
        (os.path.join(d, name) for d in ("/usr/sbin", "/usr/bin", "/usr/lib/chromium")
         if os.access(os.path.join(d, name), os.X_OK)), None)
    if path is None:
        message = "%s is not installed (scripts/test-all installs it as root)" % name
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def require_module(name):
    """Import and return module ``name``; skip (or fail under CI) when it is missing."""
    try:
        return __import__(name)
    except ImportError:
        message = "Python module %s is not installed (pip install -e .[test])" % name
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def redis_server(tmp_path):
    """A RedisServer with its directory in ``tmp_path``, not started yet; stopped at teardown."""
    require_module("redis")
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(require_program("redis-server"), directory)
    yield server
    server.stop()
