"""benchlib: the pieces behind ``scripts/bench.py``.

Servers under test run in their own processes (``targets``), load runs in
other processes (``workers`` driving the socket loops in ``clients``), and each
experiment in ``experiments/`` registers itself by name (``registry``) and
returns tables (``report``). Nothing here is imported by the msgsrv package.
"""
