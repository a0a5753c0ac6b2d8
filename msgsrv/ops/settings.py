"""Settings declared once, as data: name, parser, default, help.

Each parser turns the INI text into a value or raises ``ValueError`` whose
text is the rule that was broken (``must be 0..65535``); the config loader
adds the file, section, key and offending value around it.
"""

import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional

_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


@dataclass(frozen=True)
class Setting:
    """One configuration key: its parser, default (as INI text) and help.

    A name ending in ``.*`` declares a family of keys (``command.df``,
    ``command.uptime``); their values are gathered into a dict keyed by the
    part after the dot.
    """

    name: str
    parse: Callable[[str], Any]
    default: Optional[str]
    help: str

    @property
    def is_family(self):
        """True when this setting names a ``prefix.*`` family of keys."""
        return self.name.endswith(".*")

    @property
    def prefix(self):
        """The family prefix including the dot (``command.``)."""
        return self.name[:-1]


class SecretError(ValueError):
    """A parse error about a value holding a secret: ``shown`` replaces the value in messages."""

    def __init__(self, rule, shown):
        super().__init__(rule)
        self.shown = shown


def integer(low, high=None):
    """Parser for a whole number in ``low..high`` (``high`` None: no upper bound)."""
    rule = "must be %d..%d" % (low, high) if high is not None else "must be >= %d" % low

    def parse(text):
        try:
            value = int(text.strip(), 10)
        except ValueError:
            raise ValueError("must be a whole number") from None
        if value < low or (high is not None and value > high):
            raise ValueError(rule)
        return value
    parse.rule = rule
    return parse


def seconds(low=0.0, high=None):
    """Parser for a duration in seconds (a decimal number) in ``low..high``."""
    def parse(text):
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError("must be a number of seconds") from None
        if value != value or value < low or (high is not None and value > high):
            raise ValueError("must be a number of seconds in %g..%s"
                             % (low, "inf" if high is None else "%g" % high))
        return value
    return parse


def size(low=0, high=None):
    """Parser for a byte count with an optional K/M/G/T suffix (powers of 1024)."""
    def parse(text):
        match = re.fullmatch(r"\s*(\d+)\s*([kmgtKMGT]?)i?[bB]?\s*", text)
        if not match:
            raise ValueError("must be a byte count such as 4096, 64K or 1M")
        value = int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
        if value < low or (high is not None and value > high):
            raise ValueError("must be %d..%s bytes" % (low, "" if high is None else high))
        return value
    return parse


def octal_mode(text):
    """Parser for permission bits in octal (``0640``, ``750``): 000..777, no set-id or sticky."""
    value = text.strip()
    if not re.fullmatch(r"0?[0-7]{3}", value):
        raise ValueError("must be an octal mode 000..777 such as 0640")
    return int(value, 8)


def boolean(text):
    """Parser for yes/no, true/false, on/off, 1/0."""
    lowered = text.strip().lower()
    if lowered in ("yes", "true", "on", "1"):
        return True
    if lowered in ("no", "false", "off", "0"):
        return False
    raise ValueError("must be yes or no")


def choice(*values):
    """Parser accepting exactly one of ``values`` (case-insensitive)."""
    def parse(text):
        lowered = text.strip().lower()
        if lowered not in values:
            raise ValueError("must be one of %s" % ", ".join(values))
        return lowered
    return parse


def text(value):
    """Parser for free text (surrounding white space removed)."""
    return value.strip()


def host(value):
    """Parser for a listen address: an IPv4/IPv6 literal or a host name."""
    value = value.strip()
    if not value:
        raise ValueError("must be an IP address or host name")
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})", value):
        raise ValueError("must be an IP address or host name")
    return value


def word_list(value):
    """Parser for a comma- or space-separated list of words."""
    return tuple(word for word in re.split(r"[\s,]+", value.strip()) if word)


def directories(value):
    """Parser for directories separated by commas or new lines, made absolute
    (relative ones are relative to the working directory)."""
    found = []
    for item in re.split(r"[,\n]", value):
        path = os.path.abspath(item.strip()) if item.strip() else None
        if path is not None and path not in found:
            found.append(path)
    return tuple(found)


def networks(value):
    """Parser for a list of IPv4/IPv6 addresses and CIDR networks (``all``: every address).

    Returns a tuple of ``ipaddress`` networks; host bits are allowed
    (``10.1.2.3/8`` means ``10.0.0.0/8``).
    """
    result = []
    for word in word_list(value):
        if word.lower() == "all":
            result += [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
            continue
        try:
            result.append(ipaddress.ip_network(word, strict=False))
        except ValueError:
            raise ValueError("must be IP addresses or CIDR networks such as 10.0.0.0/8 "
                             "(bad entry %r)" % word) from None
    return tuple(result)


@dataclass(frozen=True)
class Rate:
    """``count`` events per ``per`` seconds."""

    count: int
    per: float

    def __str__(self):
        return "%d/%gs" % (self.count, self.per)


_RATE = re.compile(r"(\d+)\s*(?:(?:/|per)\s*(\d+(?:\.\d+)?)?\s*([a-z]*))?")
_RATE_UNITS = {"": 1, "s": 1, "sec": 1, "second": 1, "seconds": 1,
               "m": 60, "min": 60, "minute": 60, "minutes": 60}


def rate(value):
    """Parser for a rate: ``20`` or ``20/s`` (per second), ``100/10s``, ``50 per minute``.

    ``0`` or empty means no limit (None).
    """
    match = _RATE.fullmatch(value.strip().lower())
    unit = match and match.group(3) or ""
    window = float(match.group(2) or 1) if match else 0
    if not match or unit not in _RATE_UNITS or not window:
        if value.strip() in ("", "0"):
            return None
        raise ValueError("must be a rate such as 20/s, 100/10s or 50 per minute (0: no limit)")
    count = int(match.group(1))
    return Rate(count, window * _RATE_UNITS[unit]) if count else None


def handler_spec(value):
    """Parser for a handler name (``echo``) or ``package.module:Class``."""
    value = value.strip()
    if re.fullmatch(r"[a-z][a-z0-9_]*", value):
        return value
    if re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", value):
        return value
    raise ValueError("must be a built-in handler name or package.module:Class")


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
MAX_PROCESSES = 64


def usable_cpus():
    """How many CPUs this process may run on (its affinity mask; at least 1)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def processes(value):
    """Parser for ``processes``: a whole number 1..MAX_PROCESSES, or ``auto`` (the
    CPUs this process may use, at most MAX_PROCESSES)."""
    if value.strip().lower() == "auto":
        return min(MAX_PROCESSES, usable_cpus())
    try:
        count = int(value.strip(), 10)
    except ValueError:
        raise ValueError("must be auto or a whole number 1..%d" % MAX_PROCESSES) from None
    if not 1 <= count <= MAX_PROCESSES:
        raise ValueError("must be auto or a whole number 1..%d" % MAX_PROCESSES)
    return count

# Declared once for [msgsrv] and every service: a client must pass both lists
# (msgsrv.net.access.AccessRules), so a service's own list never replaces the global one.
ALLOW = Setting("allow", networks, "",
                "Client addresses or CIDR networks accepted (empty: all; all: every "
                "address). In [msgsrv] it applies to every service on top of the "
                "service's own list: a client must match both.")
DENY = Setting("deny", networks, "",
               "Client addresses or CIDR networks refused; deny wins over allow. In "
               "[msgsrv] it applies to every service on top of the service's own list.")

GLOBAL_SETTINGS = (
    Setting("log_level", choice(*LOG_LEVELS), "info", "Least severe level that is logged."),
    Setting("log_file", text, "", "Log file path; empty logs to standard error."),
    Setting("shutdown_timeout", seconds(0, 3600), "10",
            "Seconds running handlers get to finish after SIGTERM/SIGINT."),
    Setting("pidfile", text, "", "Pid file path (locked while the daemon runs); empty for none."),
    Setting("thread_stack_size", size(0, 1 << 30), "0",
            "Stack size of threads the daemon starts (0: the platform default; "
            "at least 32K otherwise)."),
    Setting("user", text, "",
            "When started as root: switch to this user once every listener is bound; "
            "empty: keep the current user."),
    Setting("group", text, "",
            "When started as root: switch to this group (empty: the user's primary group)."),
    Setting("processes", processes, "1",
            "Worker processes serving every listener (auto: one per usable CPU, at most "
            "64); 1 serves in the daemon's own process. Takes effect at a start."),
    Setting("reuse_port", boolean, "yes",
            "processes > 1: yes: one listening socket per worker and service (SO_REUSEPORT: "
            "the kernel spreads connections evenly over them); no: every worker accepts "
            "from one socket per service (a worker that is down or stuck leaves the "
            "connections to the others, but the spread can be very uneven). Takes effect "
            "at a start."),
    Setting("shared_addresses", integer(1024, 1 << 22), "16384",
            "processes > 1: entries of each table the workers share (client addresses "
            "holding connections in one worker; rate-limit and penalty records of all); "
            "a connection that does not fit is refused with busy. Takes effect at a start."),
    ALLOW,
    DENY,
    Setting("plugin_path", directories, "",
            "Directories searched first for handler plugins (package.module:Class), at "
            "start and at every reload, separated by commas; none may be writable by "
            "every user."),
)

SERVICE_SETTINGS = (
    Setting("handler", handler_spec, None,
            "Built-in handler name (echo, chat, command, file, status, web) or "
            "package.module:Class."),
    Setting("transport", choice("tcp", "udp"), "tcp", "tcp or udp."),
    Setting("host", host, "127.0.0.1", "Address to listen on."),
    Setting("port", integer(0, 65535), "0", "Port to listen on; 0 picks a free port (logged)."),
    Setting("optional", boolean, "no",
            "yes: when the handler needs an extra that is not installed (pip install "
            "msgsrv[EXTRA]), the daemon starts without this service and says so once; "
            "no: that is a configuration error."),
    Setting("max_connections", integer(1, 1000000), "1000",
            "TCP: most connections served at once (by all worker processes together); more "
            "are refused with a reason."),
    Setting("max_connections_per_ip", integer(1, 1000000), "100",
            "TCP: most connections at once from one client address (all worker processes "
            "together)."),
    Setting("idle_timeout", seconds(0, 86400 * 7), "300",
            "TCP: a client silent (and not reading) this long is disconnected; 0 disables."),
    Setting("backlog", integer(1, 65535), "1024", "TCP: listen backlog (pending accepts)."),
    Setting("workers", integer(1, 256), "4",
            "TCP: threads that serve ready connections, in each worker process (more are "
            "started while handlers block, up to max_threads)."),
    Setting("max_threads", integer(1, 10000), "64",
            "TCP: most threads one service uses in each worker process, including blocked "
            "handlers. A plain "
            "socketserver handler has one thread per connection: connections over "
            "max_threads are refused (refused_busy)."),
    Setting("max_pending_output", size(1024, 1 << 30), "1M",
            "TCP: bytes queued for a slow reader before reading from it pauses."),
    Setting("max_transfers", integer(1, 100000), "32",
            "TCP: blocking transfers (file get, put and stat with sha256, command runs) "
            "at once (all worker processes together); more are refused with busy. At most "
            "max_threads - workers block "
            "whatever this says, so workers threads always serve everyone else."),
    Setting("max_transfers_per_ip", integer(1, 100000), "4",
            "TCP: blocking transfers at once from one client address (all worker processes "
            "together); more are refused with busy."),
    Setting("transfer_buffer_budget", size(1 << 20, 1 << 40), "32M",
            "TCP: most bytes of transfer buffers all transfers of the service hold "
            "together, in every worker process (a file upload takes 1.25M, a download or "
            "hash 256K, a command run 384K); a transfer that does not fit is refused with "
            "busy."),
    Setting("max_datagram", integer(1, 65507), "65507",
            "UDP: largest datagram accepted; larger ones are logged and dropped."),
    ALLOW,
    DENY,
    Setting("rate_limit", rate, "0",
            "TCP: new connections one client address may open (to any worker process), "
            "e.g. 20/s, 100/10s, 50 per minute; 0: no limit."),
    Setting("rate_penalty", seconds(0, 86400), "10",
            "TCP: seconds an address over rate_limit is refused."),
    Setting("tls_cert", text, "",
            "TCP: PEM certificate chain; setting it turns TLS (1.2 or later) on."),
    Setting("tls_key", text, "", "TCP: PEM private key of tls_cert (empty: in tls_cert)."),
    Setting("tls_client_ca", text, "",
            "TCP: PEM CA certificates; when set, clients must present a certificate "
            "signed by one of them (mutual TLS)."),
    Setting("tls_handshake_timeout", seconds(0.1, 600), "10",
            "TCP: seconds a client has to complete the TLS handshake."),
    Setting("proxy_protocol", choice("off", "v1", "v2", "any"), "off",
            "TCP: every connection starts with a PROXY protocol header from a load "
            "balancer (HAProxy send-proxy: v1, send-proxy-v2: v2; any: either), read "
            "before anything else, TLS included; the client it names replaces the peer "
            "address everywhere (access rules, limits, logs). Needs proxy_trusted."),
    Setting("proxy_trusted", networks, "",
            "TCP: addresses or CIDR networks of the load balancers allowed to send a PROXY "
            "header (empty: none); with proxy_protocol on, connections from anywhere else "
            "are refused (refused_proxy_untrusted)."),
    Setting("proxy_timeout", seconds(0.1, 600), "3",
            "TCP: seconds a load balancer has to send the whole PROXY header; later, the "
            "connection is closed (refused_proxy_timeout)."),
    Setting("proxy_max_header", size(52, 65551), "1K",
            "TCP: largest PROXY v2 header accepted, TLVs included (v1 lines are at most "
            "107 bytes); a larger one is refused (refused_proxy_malformed)."),
    Setting("udp_min_source_port", integer(0, 65535), "1024",
            "UDP: datagrams from a lower source port are not answered (system services "
            "such as echo 7 and chargen 19 would answer back: an endless loop); "
            "0: any port but 0."),
    Setting("reply_rate", rate, "100/s",
            "UDP: replies one client address gets from each worker process, e.g. 100/s, "
            "once reply_burst is used up; more are dropped, so a loop between two servers "
            "dies out; 0: no limit."),
    Setting("reply_burst", integer(1, 1000000), "200",
            "UDP: replies one client address may get at once (from each worker process) "
            "before reply_rate applies."),
    Setting("reply_sources_max", integer(1, 10000000), "10000",
            "UDP: client addresses whose reply_rate is tracked (by each worker process); "
            "beyond it the least "
            "recently answered is forgotten (bounded memory under spoofed sources)."),
    Setting("auth_penalty_failures", integer(0, 10000), "10",
            "TCP, services that authenticate: failed authentications from one address "
            "(IPv6: one /64; on any worker process) within auth_penalty_window after which "
            "it is refused for auth_penalty_time; 0: off."),
    Setting("auth_penalty_window", seconds(0.1, 86400), "60",
            "Seconds, from an address's first counted failure, within which "
            "auth_penalty_failures must happen."),
    Setting("auth_penalty_time", seconds(0.1, 86400), "60",
            "Seconds a penalised address is refused; doubled for each repeat that follows "
            "within auth_penalty_max of the previous penalty's end."),
    Setting("auth_penalty_max", seconds(0.1, 86400 * 7), "600",
            "Longest penalty in seconds (at least auth_penalty_time)."),
    Setting("auth_penalty_exempt", networks, "127.0.0.0/8, ::1",
            "Addresses or CIDR networks never penalised (empty: none): by default "
            "loopback, where tunnels and local proxies put every client."),
    Setting("auth_penalty_sources", integer(1, 10000000), "65536",
            "Most addresses whose failures are remembered; beyond, the one that failed "
            "least recently is forgotten. With processes > 1 the shared table "
            "(shared_addresses) holds them instead: when full, a new address is not counted."),
)
