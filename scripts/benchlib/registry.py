"""The experiment registry: name -> Experiment, in the order they run for "all".

To add an experiment, write a module in ``benchlib/experiments/`` with a
function decorated by ``@experiment("name", "one-line summary")`` that takes a
RunContext and returns a list of report.Table, then import the module in
``benchlib/experiments/__init__.py``.
"""

import collections

Experiment = collections.namedtuple("Experiment", "name summary run")
Experiment.__doc__ = """A registered experiment: its name, a one-line summary, run(ctx) -> [Table]."""

EXPERIMENTS = collections.OrderedDict()


def experiment(name, summary):
    """Register the decorated function as experiment ``name``; raises ValueError on a duplicate."""
    def register(run):
        if name in EXPERIMENTS:
            raise ValueError("experiment %r is registered twice" % name)
        EXPERIMENTS[name] = Experiment(name, summary, run)
        return run
    return register
