"""The memory worker processes share (msgsrv.ops.shared) and the limits kept in it.

Two SharedStores of different slots stand for two worker processes: each
limit must mean the same across them as in one process, and what a worker
held must be given back when its slot is freed (the master, when it died).
"""

import configparser
import contextlib

import pytest
from hypothesis import given, settings, strategies as st

from msgsrv.net.access import PenaltyRules, RateLimiter, SharedPenaltyBox
from msgsrv.net.transfer_limits import TransferGate
from msgsrv.ops import config as config_module, shared
from msgsrv.ops.settings import Rate
from msgsrv.ops.supervisor import assigned, backoff, one_process_services
from msgsrv.services.command.handler import RunSlots
from msgsrv.services.status import report
from msgsrv.wire.errors import ServiceBusy, TableFull


@pytest.fixture
def arena():
    made = shared.Arena(slots=4, addresses=1024)
    yield made
    made.close()


def workers(arena, namespace, count=2):
    """``count`` stores of one namespace, as ``count`` worker processes see it."""
    return [shared.SharedStore(arena, slot, namespace) for slot in range(count)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 300)), max_size=400))
def test_a_table_agrees_with_a_dict(operations):
    arena = shared.Arena(slots=1, addresses=1024)
    try:
        table, model = arena.records, {}
        for insert, key in operations:
            if insert:
                model[key] = model.get(key, 0) + 1
                table.set(7, key, (model[key], 0, 0, 0))
            elif key in model:
                del model[key]
                table.delete(7, key)
            assert len(table) == len(model)
        for key in range(1, 301):
            found = table.get(7, key)
            assert (found[0] if found else None) == model.get(key)
        assert sorted(entry[1] for entry in table.all()) == sorted(model)
    finally:
        arena.close()


def test_a_full_table_refuses_a_new_entry_but_not_a_known_one(arena):
    table = arena.totals
    for key in range(1, 1025):
        table.add(3, key, 1, 0)
    with pytest.raises(TableFull, match="shared_addresses"):
        table.add(3, 5000, 1, 1)
    table.add(3, 1, 1, 1)
    assert table.get(3, 1) == (2, 1, 1, 0, 0)
    table.add(3, 2, -1, 0)  # a count at 0 keeps its entry until room is needed
    table.add(3, 5000, 1, 1)
    assert table.get(3, 2) is None and table.get(3, 5000) == (1, 0, 1, 0, 0)


def test_totals_add_up_and_a_freed_slot_gives_back_what_it_held(arena):
    first, second = workers(arena, "connections:echo")
    with first.locked():
        first.add(("ip", "10.0.0.1"), 2)
        second.add(("ip", "10.0.0.1"), 3)
        second.add(("all",), 3)
    assert first.total(("ip", "10.0.0.1")) == 5
    arena.free(1)  # the second worker died
    assert first.total(("ip", "10.0.0.1")) == 2 and first.total(("all",)) == 0


def test_namespaces_do_not_mix(arena):
    echo, files = shared.SharedStore(arena, 0, "a"), shared.SharedStore(arena, 0, "b")
    echo.add(("all",), 1)
    echo.put(("ip", "x"), (1.0, 2.0))
    assert files.total(("all",)) == 0 and files.get(("ip", "x")) is None
    assert echo.get(("ip", "x")) == (1.0, 2.0, 0.0, 0.0)


def test_a_stripe_lock_is_reentrant_within_a_thread(arena):
    store = shared.SharedStore(arena, 0, "x", group="svc")
    with store.locked(), shared.SharedStore(arena, 0, "y", group="svc").locked():
        store.add(("all",), 1)
    assert store.total(("all",)) == 1


def test_run_slots_are_one_limit_for_every_worker(arena):
    first, second = (RunSlots(3, store) for store in workers(arena, "runs:cmd"))
    assert first.acquire() and second.acquire() and second.acquire()
    assert not first.acquire() and not second.acquire()
    assert first.running == 3
    arena.free(1)  # a worker running two commands was killed
    assert first.acquire() and first.acquire() and not second.acquire()


def test_transfer_slots_budget_and_per_address_limit_span_the_workers(arena):
    first, second = (TransferGate(4, 2, 1000, store) for store in workers(arena, "t:files"))
    first.acquire("10.0.0.1", 600)
    second.acquire("10.0.0.1", 100)
    with pytest.raises(ServiceBusy, match="max_transfers_per_ip"):
        second.acquire("10.0.0.1")
    with pytest.raises(ServiceBusy, match="transfer_buffer_budget"):
        second.acquire("10.0.0.2", 400)
    assert (first.active, first.reserved) == (2, 700)
    second.release("10.0.0.1", 100)
    assert (first.active, first.reserved) == (1, 600)


def test_rate_limit_counts_connections_to_any_worker(arena):
    now = [100.0]
    first, second = (RateLimiter(Rate(3, 10.0), penalty=5.0, clock=lambda: now[0], store=store)
                     for store in workers(arena, "rate:echo"))
    assert first.check("10.0.0.9") is None and second.check("10.0.0.9") is None
    assert first.check("10.0.0.9") is None
    assert second.check("10.0.0.9") == (5.0, True)
    assert first.check("10.0.0.9") == (5.0, False)
    now[0] += 16.0
    assert second.check("10.0.0.9") is None


def test_auth_penalties_count_failures_on_any_worker(arena):
    now = [50.0]
    rules = PenaltyRules(failures=3, window=10, time=5, max_time=60)
    first, second = (SharedPenaltyBox(store, clock=lambda: now[0])
                     for store in workers(arena, "penalties:cmd"))
    assert first.failed("203.0.113.7", rules) is None
    assert second.failed("203.0.113.7", rules) is None
    assert first.failed("203.0.113.7", rules) == ("203.0.113.7", 5)
    assert second.check("203.0.113.7", rules) == 5
    now[0] += 5.5
    assert second.check("203.0.113.7", rules) is None


def test_a_full_shared_penalty_table_keeps_counting_known_sources(tmp_path):
    arena = shared.Arena(slots=1, addresses=1024)
    try:
        rules = PenaltyRules(failures=2, window=10, time=5, max_time=60)
        box = SharedPenaltyBox(shared.SharedStore(arena, 0, "p"), clock=lambda: 1.0)
        box.failed("10.9.9.9", rules)
        for n in range(1100):  # fresh failures: nothing can be pruned
            box.failed("10.1.%d.%d" % (n // 256, n % 256), rules)
        assert box.failed("10.9.9.9", rules) == ("10.9.9.9", 5)
    finally:
        arena.close()


def test_store_falls_back_to_the_process_without_a_context():
    assert shared.current() is None
    assert isinstance(shared.store("connections:echo"), shared.LocalStore)


def test_worker_snapshots_and_the_table_of_workers(arena):
    arena.set_worker(2, 4242, 3, 1, 1000.0, shared.READY)
    arena.publish(2, b'{"services": []}')
    assert arena.workers() == {2: (4242, 3, 1, 1000.0, shared.READY)}
    assert arena.snapshots() == {2: b'{"services": []}'}
    with pytest.raises(ValueError):
        arena.publish(0, b"x" * (shared.SNAPSHOT_SIZE + 1))
    arena.free(2)
    assert arena.workers() == {} and arena.snapshots() == {}


def _entry(name, total, connections=1, **refused):
    return {"name": name, "handler": "echo", "transport": "tcp", "address": "127.0.0.1:1",
            "tls": False, "proxy_protocol": "off", "uptime": 3.0, "connections": connections, "connections_total": total,
            "bytes_in": total, "bytes_out": total, "errors": 0,
            "refused": dict(dict.fromkeys(report.REFUSAL_REASONS, 0), **refused),
            "counters": {"requests": total}}


def test_the_status_of_several_workers_sums_them_and_keeps_the_exited():
    retired = {}
    report.add_totals(retired, [_entry("echo", 7, busy=1)])
    workers_ = [({"pid": 11, "index": 0, "generation": 2, "state": "ready", "started": 90.0},
                 {"services": [_entry("echo", 2), _entry("chat", 1)]}),
                ({"pid": 12, "index": 1, "generation": 2, "state": "ready", "started": 95.0},
                 {"services": [_entry("echo", 3, connections=2, busy=4)]}),
                ({"pid": 13, "index": 1, "generation": 3, "state": "starting", "started": 99.0},
                 None)]
    document = report.aggregate(workers_, retired, pid=10, started=80.0, processes=2,
                                order=["chat", "echo"], now=100.0)
    assert [s["name"] for s in document["services"]] == ["chat", "echo"]
    echo = document["services"][1]
    assert (echo["connections"], echo["connections_total"], echo["bytes_in"]) == (3, 12, 12)
    assert echo["refused"]["busy"] == 5 and echo["counters"] == {"requests": 12}
    assert (echo["tls"], echo["proxy_protocol"]) == (False, "off")  # as each worker says
    assert [(w["pid"], w["uptime"], w["connections"]) for w in document["workers"]] == [
        (11, 10.0, 2), (12, 5.0, 2), (13, 1.0, 0)]
    metrics = report.to_prometheus(document)
    assert 'msgsrv_connections_total{service="echo"} 12' in metrics
    assert 'msgsrv_worker_connections{worker="12",service="echo"} 2' in metrics
    assert 'msgsrv_worker_info{worker="13",index="1",generation="3",state="starting"} 1' in metrics
    table = report.format_table(document)
    assert "WORKER  PID  GEN  STATE     UP   OPEN  TOTAL" in table
    assert "1       13   3    starting  1s   0     0" in table


def test_backoff_grows_for_a_worker_that_keeps_dying_at_once():
    assert [backoff(n) for n in range(1, 5)] == [0.0, 0.5, 1.0, 2.0]
    assert backoff(30) == 30.0


def test_entries_hash_apart_for_every_process_key():
    with contextlib.closing(shared.Arena(slots=1, addresses=1024)) as one, \
            contextlib.closing(shared.Arena(slots=1, addresses=1024)) as other:
        assert one.hash("ip\x1f10.0.0.1") != other.hash("ip\x1f10.0.0.1")  # keyed per daemon


def _config(chat_options=""):
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string("[service:echo]\nhandler = echo\n[service:chat]\nhandler = chat\n%s\n"
                       "[service:friend]\nhandler = tests.plugins:ChatFriend\nchat = chat\n"
                       % chat_options)
    return config_module.from_parser(parser, "<test>")


def test_memory_chat_and_the_services_naming_it_run_in_worker_0_only():
    config = _config()
    assert one_process_services(config) == {"chat", "friend"}
    assert [s.name for s in assigned(config, 0)] == ["echo", "chat", "friend"]
    assert [s.name for s in assigned(config, 1)] == ["echo"]


def test_chat_on_redis_runs_in_every_worker():
    config = _config("backend = redis://127.0.0.1:6379/0")
    assert one_process_services(config) == set()
    assert [s.name for s in assigned(config, 1)] == ["echo", "chat", "friend"]
