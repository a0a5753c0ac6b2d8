"""``python -m msgsrv.client status HOST:PORT``: the daemon's services and counters."""

import json
import sys

from msgsrv.client.base import parse_address
from msgsrv.services.status.client import StatusClient
from msgsrv.services.status.report import format_table
from .options import add_connection_options, tls_options


def register(subparsers):
    """Add the ``status`` subcommand."""
    parser = subparsers.add_parser("status", help="show the counters of a msgsrv daemon")
    parser.add_argument("address", help="HOST:PORT of its status service")
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_const", const="json", dest="format",
                       help="print the JSON document")
    shown.add_argument("--prometheus", action="store_const", const="prometheus", dest="format",
                       help="print Prometheus text format")
    add_connection_options(parser)
    parser.set_defaults(func=run, format="table")


def run(args):
    """Print the status as a table (or JSON / Prometheus text)."""
    host, port = parse_address(args.address)
    with StatusClient(host, port, timeout=args.timeout, hello_timeout=args.hello_timeout,
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
