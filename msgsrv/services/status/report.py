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
"""

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
    return "\n".join(lines) + "\n"


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
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["msgsrv %s, pid %s, up %s" % (status["version"], status["pid"],
                                          format_duration(status["uptime"]))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
              for row in rows]
    return "\n".join(lines + notes) + "\n"
