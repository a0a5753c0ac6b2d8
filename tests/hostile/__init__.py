"""The hostile-input and fault suite (issue 8): attacks and faults against the real daemon.

Short mode runs in CI with every ``python -m pytest``; the long campaigns run
with ``MSGSRV_CAMPAIGN=long python -m pytest tests/hostile`` (see
docs/ROBUSTNESS.rst).  Modules:

* :mod:`.campaign`  -- short/long mode: example counts, budgets, timeouts, figures.
* :mod:`.procwatch` -- thread, fd and RSS snapshots of a process; leak checks.
* :mod:`.attackers` -- RST closes, the slowloris driver, the fresh-client latency probe,
  spoofed UDP datagrams.
* :mod:`.targets`   -- the service table and a daemon started from it.
* :mod:`.wirefuzz`  -- the wire-level mutation fuzzer.
* :mod:`.plugins`   -- handlers that crash in each callback, for containment tests.

To cover a new service, add a :class:`.targets.ServiceSpec` to
:data:`.targets.SERVICES` (and a seed row to :data:`.wirefuzz.SEEDS`, a
decoder row to ``test_decoders.DECODERS``); the parametrized tests pick it up.
"""
