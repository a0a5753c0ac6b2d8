"""Service status as data: collected from running servers, rendered as JSON,
Prometheus text exposition format or a table for people.  No sockets here.

The JSON document (docs/PROTOCOL.rst, "Status service")::

    {"version": "0.1.0", "pid": 1234, "started": 1700000000.0, "uptime": 12.5,
     "services": [{"name": "echo", "handler": "echo", "transport": "tcp",
                   "address": "127.0.0.1:9000", "tls": false, "proxy_protocol": "off",
                   "uptime": 12.5,
                   "connections": 1, "connections_total": 5,
                   "refused": {"busy": 0, "access": 0, "rate": 0, "auth_penalty": 0,
                               "tls": 0},
                   "bytes_in": 10, "bytes_out": 10, "errors": 0, "counters": {}}]}

A daemon with ``processes`` above 1 adds ``"processes": N`` and a
``"workers"`` list (each worker's pid, index, generation, state, started,
uptime, open connections and its own ``"services"`` entries); its
``"services"`` are the sums over the workers (see :func:`aggregate`).
"""

import collections
import json
import os
import time

from msgsrv import __version__
from msgsrv.net.peer import format_peer

#: Refusal reasons always reported (others appear when counted).
REFUSAL_REASONS = ("busy", "access", "rate", "auth_penalty", "tls")
#: ... and those of a service reading PROXY headers (``proxy_protocol`` on).
PROXY_REFUSAL_REASONS = ("proxy_untrusted", "proxy_missing", "proxy_malformed",
                         "proxy_timeout")
_STANDARD = ("connections_total", "bytes_in", "bytes_out", "errors")
FORMATS = ("json", "prometheus")




def document_for(server):
    """The status document of the daemon ``server`` runs in: this process's figures,
    gathered with the other workers' when the daemon has several (the registry's
    ``peers``)."""
    document = collect(*servers_of(server))
    peers = getattr(getattr(server, "registry", None), "peers", None)
    return document if peers is None else peers.aggregate(document)


def servers_of(server):
    """``(servers, started)``: every service the daemon runs, or just ``server``
    when it runs without a daemon (tests, embedding)."""
    registry = getattr(server, "registry", None)
    if registry is None:
        return [server], server.started
    return registry.servers(), registry.started


def service_status(server, now):
    """One service's entry of the status document."""
    counters = server.counters.snapshot()
    proxy = server.config["proxy_protocol"]
    refused = dict.fromkeys(REFUSAL_REASONS + (PROXY_REFUSAL_REASONS if proxy != "off" else ()),
                            0)
    extra = {}
    for name, value in sorted(counters.items()):
        if name.startswith("refused_"):
            refused[name[len("refused_"):]] = value
        elif name not in _STANDARD:
            extra[name] = value
    entry = {"name": server.name, "handler": server.config["handler"],
             "transport": server.config.transport,
             "address": format_peer(server.server_address),
             "tls": getattr(server, "tls", None) is not None, "proxy_protocol": proxy,
             "uptime": round(now - server.started, 3),
             "connections": getattr(server, "connection_count", None)}
    entry.update((name, counters.get(name, 0)) for name in _STANDARD)
    entry.update(refused=refused, counters=extra)
    return entry


def collect(servers, started, now=None):
    """The status document for ``servers`` of a daemon started at ``started`` (epoch)."""
    now = time.time() if now is None else now
    return {"version": __version__, "pid": os.getpid(), "started": started,
            "uptime": round(now - started, 3),
            "services": [service_status(server, now) for server in servers]}


def _empty_totals():
    return dict(dict.fromkeys(_STANDARD, 0), refused={}, counters={})


def add_totals(totals, entries):
    """Add the counters of service ``entries`` into ``totals`` (service name -> the
    counters: connections_total, bytes_in, bytes_out, errors, refused, counters)."""
    for entry in entries:
        kept = totals.setdefault(entry["name"], _empty_totals())
        for name in _STANDARD:
            kept[name] += entry.get(name) or 0
        for group in ("refused", "counters"):
            for name, value in (entry.get(group) or {}).items():
                kept[group][name] = kept[group].get(name, 0) + value


def _merge(entries, retired):
    """One service's entry, summed over the workers' ``entries`` plus what workers that
    exited counted (``retired``, or None)."""
    merged = {key: entries[0][key]
              for key in ("name", "handler", "transport", "address", "tls", "proxy_protocol")}
    merged["uptime"] = max(entry["uptime"] for entry in entries)
    open_counts = [entry["connections"] for entry in entries if entry["connections"] is not None]
    merged["connections"] = sum(open_counts) if open_counts else None
    totals = {}
    add_totals(totals, entries + ([dict(retired, name=merged["name"])] if retired else []))
    summed = totals[merged["name"]]
    merged.update((name, summed[name]) for name in _STANDARD)
    refused = dict.fromkeys(REFUSAL_REASONS, 0)
    refused.update(summed["refused"])
    merged.update(refused=refused, counters=summed["counters"])
    return merged


def aggregate(workers, retired, pid, started, processes, order=(), now=None):
    """The status document of a daemon of several worker processes.

    ``workers`` lists ``(info, document)``: ``info`` has the worker's pid,
    index, generation, state and started (epoch), ``document`` is its own
    status document (None before its first).  ``retired`` holds the totals of
    workers that exited (see :func:`add_totals`): counters keep counting
    across a replaced worker or a reload.  ``pid`` and ``started`` are the
    master's; services come in ``order`` (the configuration's), then any other.
    """
    now = time.time() if now is None else now
    by_name, listed = collections.OrderedDict(), []
    for info, document in workers:
        services = document["services"] if document else []
        for entry in services:
            by_name.setdefault(entry["name"], []).append(entry)
        listed.append(dict(info, uptime=round(now - info["started"], 3) if info["started"] else 0,
                           connections=sum(entry["connections"] or 0 for entry in services),
                           services=services))
    names = [name for name in order if name in by_name]
    names += [name for name in by_name if name not in names]
    return {"version": __version__, "pid": pid, "started": started,
            "uptime": round(now - started, 3), "processes": processes,
            "services": [_merge(by_name[name], retired.get(name)) for name in names],
            "workers": listed}


def to_json(status):
    """The document as UTF-8 JSON bytes."""
    return json.dumps(status, sort_keys=False, separators=(",", ":")).encode("utf-8")


_METRICS = (
    # name, type, help, value of a service entry (or None)
    ("msgsrv_connections", "gauge", "Open connections.", lambda s: s["connections"]),
    ("msgsrv_connections_total", "counter", "Connections accepted.",
     lambda s: s["connections_total"]),
    ("msgsrv_received_bytes_total", "counter", "Bytes received from clients.",
     lambda s: s["bytes_in"]),
    ("msgsrv_sent_bytes_total", "counter", "Bytes sent to clients.", lambda s: s["bytes_out"]),
    ("msgsrv_errors_total", "counter", "Handler errors.", lambda s: s["errors"]),
)


def _label(value):
    return str(value).replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def _family(lines, name, kind, text):
    lines += ["# HELP %s %s" % (name, text), "# TYPE %s %s" % (name, kind)]


def to_prometheus(status):
    """The document in the Prometheus text exposition format (version 0.0.4)."""
    lines = []
    _family(lines, "msgsrv_info", "gauge", "Version of the running daemon.")
    lines.append('msgsrv_info{version="%s"} 1' % _label(status["version"]))
    _family(lines, "msgsrv_uptime_seconds", "gauge", "Seconds since the daemon started.")
    lines.append("msgsrv_uptime_seconds %s" % status["uptime"])
    services = status["services"]
    for name, kind, text, value in _METRICS:
        _family(lines, name, kind, text)
        lines += ['%s{service="%s"} %s' % (name, _label(s["name"]), value(s))
                  for s in services if value(s) is not None]
    _family(lines, "msgsrv_refused_total", "counter", "Connections refused, by reason.")
    lines += ['msgsrv_refused_total{service="%s",reason="%s"} %d'
              % (_label(s["name"]), _label(reason), count)
              for s in services for reason, count in s["refused"].items()]
    _family(lines, "msgsrv_handler_total", "counter", "Handler-specific counters.")
    lines += ['msgsrv_handler_total{service="%s",name="%s"} %s'
              % (_label(s["name"]), _label(name), count)
              for s in services for name, count in s["counters"].items()]
    if "workers" in status:
        _worker_metrics(lines, status["workers"])
    return "\n".join(lines) + "\n"


def _worker_metrics(lines, workers):
    """Per-worker families (``worker`` label: the pid), beside the summed ones."""
    _family(lines, "msgsrv_worker_info", "gauge", "Worker processes: index, generation, state.")
    lines += ['msgsrv_worker_info{worker="%d",index="%d",generation="%d",state="%s"} 1'
              % (w["pid"], w["index"], w["generation"], _label(w["state"])) for w in workers]
    _family(lines, "msgsrv_worker_uptime_seconds", "gauge", "Seconds since the worker started.")
    lines += ['msgsrv_worker_uptime_seconds{worker="%d"} %s' % (w["pid"], w["uptime"])
              for w in workers]
    for name, kind, text, value in _METRICS:
        family = name.replace("msgsrv_", "msgsrv_worker_", 1)
        _family(lines, family, kind, text[:-1] + ", per worker.")
        lines += ['%s{worker="%d",service="%s"} %s' % (family, w["pid"], _label(s["name"]),
                                                       value(s))
                  for w in workers for s in w["services"] if value(s) is not None]


_COLUMNS = (("SERVICE", "name"), ("PROTO", "transport"), ("ADDRESS", "address"),
            ("OPEN", "connections"), ("TOTAL", "connections_total"), ("IN", "bytes_in"),
            ("OUT", "bytes_out"), ("ERRORS", "errors"))


def format_duration(seconds):
    """``3d04h``, ``2h05m``, ``4m07s`` or ``12s``."""
    seconds = int(seconds)
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60),
                                      ("m", 60, "s", 1)):
        if seconds >= size:
            return "%d%s%02d%s" % (seconds // size, unit, seconds % size // sub_size, sub)
    return "%ds" % seconds


def format_table(status):
    """The document as a table for people (``msgsrvctl status``)."""
    rows = [[title for title, _ in _COLUMNS] + ["REFUSED"]]
    notes = []
    for service in status["services"]:
        refused = {k: v for k, v in service["refused"].items() if v}
        rows.append(["-" if service[key] is None else str(service[key]) for _, key in _COLUMNS]
                    + [str(sum(refused.values()))])
        details = ["%s=%s" % item for item in sorted(refused.items())]
        details += ["%s=%s" % item for item in sorted(service["counters"].items())]
        if details:
            notes.append("  %s: %s" % (service["name"], " ".join(details)))
    lines = ["msgsrv %s, pid %s, up %s" % (status["version"], status["pid"],
                                          format_duration(status["uptime"]))]
    lines += _aligned(rows) + notes
    if "workers" in status:
        lines += [""] + _aligned(_worker_rows(status["workers"]))
    return "\n".join(lines) + "\n"


def _worker_rows(workers):
    rows = [["WORKER", "PID", "GEN", "STATE", "UP", "OPEN", "TOTAL"]]
    for worker in workers:
        total = sum(s["connections_total"] for s in worker["services"])
        rows.append([str(worker["index"]), str(worker["pid"]), str(worker["generation"]),
                     worker["state"], format_duration(worker["uptime"]),
                     str(worker["connections"]), str(total)])
    return rows


def _aligned(rows):
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
            for row in rows]
