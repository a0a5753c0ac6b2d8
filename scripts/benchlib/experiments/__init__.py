"""The experiments; importing this package registers them in benchlib.registry.

The import order is the order of ``bench.py all``. Add new experiment modules
(chat, files, ...) to the import line below.
"""

from benchlib.experiments import echo, udp, conns, idle, external, workers  # noqa: F401  (registers them)
