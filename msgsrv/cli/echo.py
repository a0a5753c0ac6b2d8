"""``python -m msgsrv.client echo HOST:PORT TEXT...``: one echo round trip."""

import sys

from msgsrv.client.base import parse_address
from msgsrv.services.echo.client import EchoClient
from .options import add_connection_options, tls_options


def register(subparsers):
    """Add the ``echo`` subcommand."""
    parser = subparsers.add_parser("echo", help="send text to an echo service, print the reply")
    parser.add_argument("address", help="HOST:PORT")
    parser.add_argument("text", nargs="+")
    parser.add_argument("--udp", action="store_true", help="use UDP instead of TCP")
    add_connection_options(parser, hello=False)
    parser.set_defaults(func=run)


def run(args):
    """Echo the joined text once; print what came back."""
    host, port = parse_address(args.address)
    transport = "udp" if args.udp else "tcp"
    tls = tls_options(args) if transport == "tcp" else {}
    with EchoClient(host, port, transport=transport, timeout=args.timeout, **tls) as client:
        reply = client.echo(" ".join(args.text).encode("utf-8"))
    sys.stdout.write(reply.decode("utf-8", "replace") + "\n")
    return 0
