"""Mutated bytes against the running daemon: it never dies, never leaks a traceback, stays small."""

import os

import pytest

from msgsrv.services.command import process as runner
from msgsrv.services.files import transfer
from tests.hostile import campaign
from tests.hostile.procwatch import PeakRSS, settle
from tests.hostile.wirefuzz import fuzz, targets_for

pytestmark = pytest.mark.timeout(campaign.timeout(90))

#: The daemons fuzzed, one per test: the transports and the handshake; the built-in services.
GROUPS = {"core": ["echo", "echo-udp", "authed", "echo-proxy"],
          "services": ["file", "command", "status", "chat", "web"]}
OVERRIDES = {"echo-udp": {"max_datagram": "2048"},
             "authed": {"max_header": "4K", "max_body": "64K"},
             "file": {"max_header": "4K", "max_file_size": "1M"},
             "command": {"max_header": "4K", "max_body": "64K"},
             "chat": {"max_line": "1024"},
             "web": {"chat": "chat", "max_message": "4K"}}
# Each service admits max_transfers_per_ip (4) transfers from the fuzzer's one address, each
# holding its transfer buffers (an upload: 1.25 MiB; a command run: 384 KiB); the rest is noise.
TRANSFERS_PER_IP = 4
RSS_BOUND_KIB = {
    "core": 8 * 1024,
    "services": 8 * 1024 + TRANSFERS_PER_IP * ((transfer.DEPTH + 1) * transfer.SERVER_CHUNK
                                               + runner.OUTPUT_BUFFERS) // 1024,
}


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_mutated_inputs_never_kill_the_daemon_or_reach_the_wire_as_tracebacks(hostile_daemon,
                                                                              group):
    daemon = hostile_daemon(GROUPS[group], overrides=OVERRIDES)
    daemon.ping_all()
    baseline = daemon.probe.snapshot()

    def health():
        daemon.assert_alive()
        daemon.ping_all()

    seed = os.environ.get("MSGSRV_FUZZ_SEED")
    with PeakRSS(daemon.probe) as peak:
        report = fuzz(targets_for(daemon, OVERRIDES), count=campaign.pick(600, 100_000),
                      budget=campaign.pick(15, 4 * 3600), health=health,
                      health_every=campaign.pick(50, 500), seed=int(seed) if seed else None)
    assert not report.findings, "seed %d:\n%s" % (report.seed, "\n".join(map(str, report.findings)))
    assert report.sent >= campaign.pick(100, 10_000), "the fuzzer ran too few inputs"
    daemon.assert_alive()
    daemon.assert_clean_log()
    growth = peak.peak_kib - baseline.rss_kib
    assert growth < RSS_BOUND_KIB[group], "RSS peaked %d KiB above the baseline" % growth
    after = settle(daemon.probe, baseline, timeout=15)
    campaign.record("wire-fuzz-" + group, inputs=report.sent, per_target=dict(report.per_target),
                    codes=dict(report.codes), health_checks=report.health_checks,
                    seconds=round(report.seconds, 1), seed=report.seed,
                    rss_peak_growth_kib=growth, before=str(baseline), after=str(after))
