"""Smoke test of the benchmark harness: ``bench.py echo --quick --no-msgsrv`` runs and reports.

The cells are cut to 0.25 s and two anchors so the whole run stays near 10 s
(the C load generator and C anchor have their own smoke test,
tests/daemon/test_bench_loadgen.py).

Benchmarks are not tests; this only proves the harness starts the anchors,
drives load through them, prints one complete table and stops everything.
"""

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(150)

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                     "scripts", "bench.py")
ANCHORS = ("stdlib-threading", "asyncio-streams")


def _table_rows(output):
    """Return the body rows of the first RST table in the output, split into cells."""
    lines = output.splitlines()
    rules = [i for i, line in enumerate(lines) if re.match(r"^=+( +=+)*$", line)]
    assert len(rules) >= 3, output
    return [re.split(r" {2,}", line.strip()) for line in lines[rules[1] + 1:rules[2]]]


def test_quick_echo_against_the_anchors_reports_every_cell():
    done = subprocess.run([sys.executable, BENCH, "echo", "--quick", "--no-msgsrv",
                           "--duration", "0.25", "--warmup", "0.05",
                           "--servers", ",".join(ANCHORS)],
                          capture_output=True, text=True, timeout=140)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "os.cpu_count()" in done.stdout and "python:" in done.stdout
    rows = _table_rows(done.stdout)
    assert sorted(row[2] for row in rows) == sorted(ANCHORS * 9)
    for row in rows:
        payload, conns, server, rt_s, p50, p99, top, us_rt, srv, load, err = row[:11]
        assert int(rt_s) > 0 and 0 < float(p50) <= float(p99) <= float(top), row
        assert float(us_rt) > 0 and err == "0" and row[11:] == ["n/a"] * 3, row
    assert "echo: targets" in done.stdout
