"""A smoke run of scripts/bench_chat.py: tiny cells, both servers, with and without a stalled reader."""

import importlib.util
import os

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(120)


def load_bench():
    spec = importlib.util.spec_from_file_location(
        "bench_chat", os.path.join(ROOT, "scripts", "bench_chat.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_chat_smoke(capsys):
    bench = load_bench()
    # 1000 messages of ~140 bytes overflow what the kernel holds for the stalled reader.
    args = bench.parse_args(["--subscribers", "3", "--deliveries", "3000", "--cap", "2",
                             "--duration", "0.3", "--rate", "50", "--no-pin"])
    rows = bench.run(args)
    out = capsys.readouterr().out
    cells = {(r["server"], r["stalled_subscriber"]): r for r in rows}
    assert set(cells) == {("msgsrv", False), ("msgsrv", True), ("naive", False), ("naive", True)}
    for stalled in (False, True):
        row = cells["msgsrv", stalled]
        assert not row["stalled"] and row["delivered"] == 1.0
        assert row["latency_delivered"] == 1.0 and row["p99_ms"] < 1000
    assert not cells["naive", False]["stalled"]
    assert cells["naive", True]["stalled"] and cells["naive", True]["p99_ms"] is None
    assert "x naive" in out and "stalled" in out


def test_median_row_and_latency_rate():
    bench = load_bench()
    reps = [{"server": "msgsrv", "subscribers": 5, "stalled_subscriber": False, "stalled": s,
             "deliveries_per_s": d, "p50_ms": p, "p99_ms": p, "delivered": 1.0,
             "latency_delivered": 1.0} for d, p, s in ((3.0, 1.0, False), (1.0, None, True),
                                                       (2.0, 3.0, False))]
    row = bench.median_row(reps)
    assert row["deliveries_per_s"] == 2.0 and row["p50_ms"] is None and not row["stalled"]
    args = bench.parse_args([])
    assert bench.latency_rate(args, 10) == 100 and bench.latency_rate(args, 500) == 40
    assert "stalled" in bench.format_table([dict(reps[1], p50_ms=None, p99_ms=None)])


def test_redis_mode_defaults_and_table():
    bench = load_bench()
    args = bench.parse_args(["--redis"])
    assert args.subscribers == "300" and bench.latency_rate(args, 300) == 100
    row = {"subscribers": 300, "stalled": False, "p50_ms": 1.0, "stalled_subscriber": False}
    rows = [dict(row, server="memory", daemons=1, deliveries_per_s=1000.0, p99_ms=5.0),
            dict(row, server="redis", daemons=3, deliveries_per_s=400.0, p99_ms=25.0)]
    table = bench.format_redis_table(rows, args)
    assert "0.40" in table
    assert "target >= 0.5: MISSED" in table and "target <= 20: MISSED" in table
    rows[1].update(deliveries_per_s=600.0, p99_ms=12.0)
    assert "target >= 0.5: met" in bench.format_redis_table(rows, args)
