"""Churn: thousands of connect -> request -> close cycles leave the daemon where it started."""

import concurrent.futures

import pytest

from tests.hostile import campaign
from tests.hostile.procwatch import settle

pytestmark = pytest.mark.timeout(campaign.timeout(90))

CYCLES = campaign.pick(3000, 100_000)
WARM_UP = 300
RSS_TOLERANCE_KIB = 4 * 1024
CHURNED = ["echo", "echo-udp", "authed", "blocking"]


def churn(daemon, cycles, workers=4):
    """``cycles`` fresh-client requests spread over CHURNED, ``workers`` at a time."""
    def one(index):
        daemon.ping(CHURNED[index % len(CHURNED)])
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="churn") as pool:
        list(pool.map(one, range(cycles)))


def test_churn_leaves_threads_fds_and_rss_where_they_started(hostile_daemon):
    daemon = hostile_daemon(CHURNED)
    initial = daemon.probe.snapshot()
    churn(daemon, WARM_UP)  # allocator arenas and caches reach their working size first
    settle(daemon.probe, initial, timeout=10)
    before = daemon.probe.snapshot()
    churn(daemon, CYCLES)
    daemon.assert_alive()
    after = settle(daemon.probe, before, timeout=15, rss_slack_kib=RSS_TOLERANCE_KIB)
    daemon.assert_clean_log()
    campaign.record("churn", cycles=CYCLES, services=CHURNED, before=str(before), after=str(after))
