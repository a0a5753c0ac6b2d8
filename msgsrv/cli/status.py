"""``python -m msgsrv.client status HOST:PORT``: the daemon's services and counters."""

import json
import sys

from msgsrv.client.base import parse_address
from msgsrv.services.status.client import StatusClient
from msgsrv.services.status.report import format_table
from .fanout import TIMEOUT_HELP, FleetOutput, add_fleet_options, fleet_from_args, no_target
from .options import add_connection_options, tls_options, wait_timeout


def register(subparsers):
    """Add the ``status`` subcommand."""
    parser = subparsers.add_parser("status", help="show the counters of a msgsrv daemon (with "
                                                  "--hosts: of many, each line prefixed HOST:)")
    parser.add_argument("address", nargs="?",
                        help="HOST:PORT of its status service (left out with --hosts)")
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_const", const="json", dest="format",
                       help="print the JSON document")
    shown.add_argument("--prometheus", action="store_const", const="prometheus", dest="format",
                       help="print Prometheus text format")
    add_connection_options(parser, timeout_help=TIMEOUT_HELP)
    add_fleet_options(parser)
    parser.set_defaults(func=run, format="table")


def run(args):
    """Print the status as a table (or JSON / Prometheus text)."""
    if args.hosts is not None:
        return status_of_hosts(args)
    if args.address is None:
        return no_target()
    host, port = parse_address(args.address)
    with StatusClient(host, port, timeout=wait_timeout(args), hello_timeout=args.hello_timeout,
                      **tls_options(args)) as client:
        if args.format == "prometheus":
            sys.stdout.write(client.metrics())
            return 0
        document = client.status()
    if args.format == "json":
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        sys.stdout.write(format_table(document))
    return 0


def status_of_hosts(args):
    """``status --hosts``: every daemon's table, lines prefixed ``HOST:`` (or gathered);
    with --json one document mapping each host that answered to its status."""
    if args.address is not None:
        print("msgsrv.client: with --hosts, leave out HOST:PORT", file=sys.stderr)
        return 2
    if args.format == "prometheus":
        print("msgsrv.client: --prometheus is for one host (scrape each daemon)", file=sys.stderr)
        return 2
    shown = FleetOutput(args.gather)
    results = fleet_from_args(args, auth=False).status()
    if args.format == "json":
        answered = {r.host: r.value for r in results if r.ok}
        sys.stdout.write(json.dumps(answered, indent=2) + "\n")
    else:
        shown.show([r._replace(output=tuple(format_table(r.value).splitlines())) if r.ok else r
                    for r in results])
    return shown.summary(results)
