"""What the dashboard shows: the daemon's status document, extended, and its recent history.

:func:`document` is msgsrv.services.status.report's document (the one ``/status.json``
serves) plus what a page needs: each service's state and connection limit,
its bytes including those of open connections (the counters take a
connection's bytes when it closes), the services left out (optional, extra
missing), the threads, and the last reload's outcome.  :class:`History`
keeps per-service samples over a window for the charts.  No sockets here.
"""

import collections
import threading

from msgsrv.services.status import report as status

SAMPLE_FIELDS = ("time", "connections", "bytes_in", "bytes_out")


def document(directory, now=None):
    """The dashboard document of every service ``directory`` (a Registry or Solo) holds."""
    servers = directory.servers()
    doc = status.collect(servers, directory.started, now)
    for entry, server in zip(doc["services"], servers):
        _add_open_bytes(entry, server)
    peers = getattr(directory, "peers", None)
    if peers is not None:  # several worker processes: the whole daemon's figures
        doc = peers.aggregate(doc)
    configs = {server.name: server.config for server in servers}
    for entry in doc["services"]:
        config = configs.get(entry["name"])
        entry["state"] = "running"
        entry["max_connections"] = (config["max_connections"] if config is not None
                                    and config.transport == "tcp" else None)
    for name, disabled in sorted(directory.disabled.items()):
        doc["services"].append(_disabled_entry(name, disabled))
    doc["threads"] = threading.active_count()
    doc.setdefault("processes", 1)
    doc["reload"] = directory.last_reload
    return doc


def _add_open_bytes(entry, server):
    pool = getattr(server, "pool", None)
    if pool is None:
        return
    for conn in pool.connections():
        entry["bytes_in"] += conn.bytes_in
        entry["bytes_out"] += conn.bytes_out


def _disabled_entry(name, disabled):
    options = disabled.options
    return {"name": name, "handler": disabled.handler, "transport": options["transport"],
            "address": "%s:%s" % (options["host"], options["port"]), "tls": False,
            "state": "disabled: %s" % disabled.reason, "connections": None,
            "max_connections": None, "connections_total": 0, "bytes_in": 0, "bytes_out": 0,
            "errors": 0, "refused": {}, "counters": {}, "uptime": 0}


class History:
    """Samples ``(time, connections, bytes_in, bytes_out)`` of each service over the last
    ``window`` seconds, one every ``interval``; thread-safe.

    Byte totals never go down in a service's samples (a connection closing
    between two reads of the counters would otherwise show a dip).
    """

    def __init__(self, window, interval):
        self._lock = threading.Lock()
        self._series = {}
        self.tune(window, interval)

    def tune(self, window, interval):
        """Keep ``window`` seconds of samples taken every ``interval`` seconds."""
        with self._lock:
            self.window, self.interval = window, interval
            self._length = max(2, int(window / interval) + 1)
            self._series = {name: collections.deque(samples, maxlen=self._length)
                            for name, samples in self._series.items()}

    def add(self, doc):
        """Record one sample of every running service of a dashboard document."""
        now = round(doc["uptime"] + doc["started"], 3)
        with self._lock:
            seen = set()
            for entry in doc["services"]:
                if entry["state"] != "running":
                    continue
                name = entry["name"]
                seen.add(name)
                series = self._series.setdefault(name, collections.deque(maxlen=self._length))
                last = series[-1] if series else (0, 0, 0, 0)
                series.append((now, entry["connections"] or 0,
                               max(entry["bytes_in"], last[2]), max(entry["bytes_out"], last[3])))
            for gone in set(self._series) - seen:
                del self._series[gone]

    def snapshot(self):
        """``{service: [[time, connections, bytes_in, bytes_out], ...]}``, oldest first."""
        with self._lock:
            return {name: [list(sample) for sample in series]
                    for name, series in self._series.items()}
