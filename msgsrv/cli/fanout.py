"""The command line's side of :mod:`msgsrv.client.fleet`: ``--hosts`` and its options,
pdsh-style prefixed lines or ``clush -b``-style gathered output, and the summary.

Without ``-b`` every line is shown as ``HOST: line`` as soon as it is
complete (a command's stderr on standard error); with ``-b`` identical
outputs are shown once under the hosts that produced them.  The summary
(one line per host that failed, then the tally) goes to standard error.
"""

import argparse
import collections
import sys
import threading

from msgsrv.client.base import DEFAULT_TIMEOUT as ONE_HOST_TIMEOUT
from msgsrv.client.fleet import (DEFAULT_CONNECT_TIMEOUT, DEFAULT_FANOUT, DEFAULT_TIMEOUT, Fleet,
                                 hosts_from_spec)
from .options import tls_options

RULE = "-" * 15
HOSTS_HELP = ("run on many daemons at once: a hosts file (one HOST:PORT [KEY] per line, "
              "# comments, IPv6 as [ADDR]:PORT) or a comma-separated list of HOST:PORT; "
              "HOST:PORT is then left out")
TIMEOUT_HELP = ("seconds to wait for the server (default: %s); with --hosts: the most one "
                "host may take, from connecting to its last output (default: %g)"
                % (ONE_HOST_TIMEOUT, DEFAULT_TIMEOUT))


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError("must be a whole number of at least 1 (got %r)" % text)
    return value


def add_fleet_options(parser):
    """Add --hosts, --fanout, --connect-timeout and -b to a subcommand."""
    parser.add_argument("--hosts", metavar="FILE|HOST:PORT,...", help=HOSTS_HELP)
    parser.add_argument("--fanout", type=_positive, default=DEFAULT_FANOUT, metavar="K",
                        help="with --hosts: at most K hosts at a time (default: %(default)s)")
    parser.add_argument("--connect-timeout", type=float, default=DEFAULT_CONNECT_TIMEOUT,
                        metavar="S", help="with --hosts: seconds each host has to accept, greet "
                                          "and authenticate (default: %(default)s)")
    parser.add_argument("-b", "--gather", action="store_true",
                        help="with --hosts: show identical outputs once, under the list of "
                             "hosts that produced them (clush -b)")


def no_target():
    """Say that neither HOST:PORT nor --hosts was given; return the usage exit status."""
    _say("give HOST:PORT or --hosts")
    return 2


def fleet_from_args(args, auth=True):
    """The Fleet the parsed options describe (ConfigError for a bad hosts list)."""
    credentials = {"key_name": args.key, "keys_file": args.keys_file} if auth else {}
    return Fleet(hosts_from_spec(args.hosts), fanout=args.fanout,
                 connect_timeout=args.connect_timeout,
                 timeout=DEFAULT_TIMEOUT if args.timeout is None else args.timeout,
                 hello_timeout=args.hello_timeout, **credentials, **tls_options(args))


class FleetOutput:
    """Shows the lines of many hosts (thread-safe) and ends with the summary."""

    def __init__(self, gather, out=None, err=None):
        self.gather = gather
        self.out = sys.stdout if out is None else out
        self.err = sys.stderr if err is None else err
        self._lock = threading.Lock()

    def on_line(self, host, stream, text):
        """A line as it arrives (a Fleet ``on_line`` callback); stdout waits with -b."""
        if stream == "stderr":
            self._write(self.err, ["%s: %s" % (host, text)])
        elif not self.gather:
            self._write(self.out, ["%s: %s" % (host, text)])

    def show(self, results, streamed=False):
        """Show each result's output lines (those not already streamed), or gather them."""
        if self.gather:
            self._write(self.out, gathered(results))
        elif not streamed:
            self._write(self.out, ["%s: %s" % (r.host, line) for r in results for line in r.output])

    def summary(self, results):
        """One stderr line per host that failed or has a note, then the tally; the exit
        status: 0 only if every host succeeded."""
        lines = ["%s: %s" % (r.host, _outcome(r)) for r in results if not r.ok or r.message]
        lines.append("%d host%s: %s" % (len(results), "" if len(results) == 1 else "s",
                                       tally(results)))
        self._write(self.err, ["msgsrv.client: " + line for line in lines])
        return 0 if all(r.ok for r in results) else 1

    def _write(self, stream, lines):
        if lines:
            with self._lock:
                stream.write("".join(line + "\n" for line in lines))
                stream.flush()


def gathered(results):
    """``clush -b``: each distinct non-empty output once, under the hosts that gave it."""
    groups = collections.OrderedDict()
    for result in results:
        if result.output:
            groups.setdefault(result.output, []).append(result.host)
    lines = []
    for output, hosts in groups.items():
        lines += [RULE, "%s (%d)" % (",".join(hosts), len(hosts)), RULE] + list(output)
    return lines


def _outcome(result):
    if result.error is not None:
        return "%s: %s" % (result.error, result.message)
    if not result.ok:
        return "exit %s%s" % (result.exit_code, "; " + result.message if result.message else "")
    return result.message


def tally(results):
    """``3 ok, 1 exit 2, 1 unreachable``: how many hosts ended each way."""
    counts = collections.Counter(
        "ok" if r.ok else (r.error if r.error is not None else "exit %s" % r.exit_code)
        for r in results)
    order = sorted(counts, key=lambda kind: (kind != "ok", kind))
    return ", ".join("%d %s" % (counts[kind], kind) for kind in order)


def _say(text):
    print("msgsrv.client: %s" % text, file=sys.stderr)
