"""Fixtures of the hostile suite: a daemon subprocess started from the service table."""

import pytest

from tests.hostile.targets import start_daemon


@pytest.fixture
def hostile_daemon(daemon_factory, tmp_path):
    """Factory: hostile_daemon(services, global_options=None, overrides=None) -> HostileDaemon."""
    count = [0]

    def start(services, global_options=None, overrides=None):
        count[0] += 1
        where = tmp_path / ("daemon%d" % count[0])
        where.mkdir()
        return start_daemon(daemon_factory, where, services, global_options, overrides)

    return start
