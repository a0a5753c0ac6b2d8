"""``python -m msgsrv.client run HOST:PORT NAME [ARGS...]`` and ``commands HOST:PORT``.

``run`` copies the remote stdout and stderr to the local ones as they
stream, then exits with the remote exit code (124 if the command timed out,
128+N if a signal N killed it).  Options go before ``HOST:PORT``: everything
after NAME is passed to the command, even words starting with ``-``.  With
``--hosts`` it runs on many daemons at once (:mod:`msgsrv.cli.fanout`) and
exits 0 only if the command succeeded on every one.
"""

import argparse
import sys

from msgsrv.client.base import parse_address
from msgsrv.services.command.client import CommandClient
from msgsrv.wire.errors import ProtocolError
from msgsrv.wire.frames import DEFAULT_MAX_BODY
from .fanout import TIMEOUT_HELP, FleetOutput, add_fleet_options, fleet_from_args, no_target
from .options import add_connection_options, client_options, missing_key


def register(subparsers):
    """Add the ``run`` and ``commands`` subcommands."""
    run = subparsers.add_parser("run", help="run a command on a command service, streaming "
                                            "its output; exit with its exit code (with "
                                            "--hosts: on many, each line prefixed HOST:)")
    run.add_argument("address", nargs="?", help="HOST:PORT (left out with --hosts)")
    run.add_argument("name", help="command name (with --any: the program)")
    run.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the command")
    run.add_argument("--stdin", action="store_true",
                     help="send local standard input to the command (the service must allow it)")
    run.add_argument("--any", action="store_true",
                     help="NAME is any program (only on services with allow_any = yes)")
    add_connection_options(run, auth=True, timeout_help=TIMEOUT_HELP)
    add_fleet_options(run)
    run.set_defaults(func=run_command)
    listing = subparsers.add_parser("commands", help="list the commands your key may run")
    listing.add_argument("address", help="HOST:PORT")
    add_connection_options(listing, auth=True)
    listing.set_defaults(func=list_commands)


def _client(args):
    host, port = parse_address(args.address)
    options = client_options(args)
    if options["key_name"] is None:
        raise missing_key("%s:%d" % (host, port))
    return CommandClient(host, port, **options)


def run_command(args):
    """Stream one remote run to the local stdout/stderr; return its status."""
    if args.hosts is not None:
        return run_on_hosts(args)
    if args.address is None:
        return no_target()
    stdin = _read_stdin() if args.stdin else b""
    outputs = {"stdout": sys.stdout.buffer, "stderr": sys.stderr.buffer}
    with _client(args) as client:
        items = (client.run_argv_stream([args.name] + args.args, stdin) if args.any
                 else client.run_stream(args.name, *args.args, stdin=stdin))
        for kind, data in items:  # the last item is always ("exit", Result)
            if kind != "exit":
                outputs[kind].write(data)
                outputs[kind].flush()
    return _report(data)


def run_on_hosts(args):
    """``run --hosts``: the command on every host; 0 only if it exited 0 on each."""
    if args.address is not None:  # with --hosts the first word is the command's name
        args.address, args.name, args.args = None, args.address, [args.name] + args.args
    stdin = _read_stdin() if args.stdin else b""
    fleet = fleet_from_args(args)
    shown = FleetOutput(args.gather)
    if args.any:
        results = fleet.run_argv([args.name] + args.args, stdin, on_line=shown.on_line)
    else:
        results = fleet.run(args.name, *args.args, stdin=stdin, on_line=shown.on_line)
    shown.show(results, streamed=True)
    return shown.summary(results)


def _read_stdin():
    data = sys.stdin.buffer.read(DEFAULT_MAX_BODY + 1)
    if len(data) > DEFAULT_MAX_BODY:
        raise ProtocolError("too-large", "standard input is over %d bytes" % DEFAULT_MAX_BODY)
    return data


def _report(result):
    sys.stdout.flush()
    notes = ["timed out (killed by %s)" % result.signal] if result.timed_out else (
        ["killed by %s" % result.signal] if result.signal else [])
    notes += ["%s truncated by the server" % name for name in result.truncated]
    for note in notes:
        print("msgsrv.client: remote command %s" % note, file=sys.stderr)
    return result.status


def list_commands(args):
    """Print each command the key may run: usage, then its description."""
    with _client(args) as client:
        entries = client.list()
    width = max([len(entry["usage"]) for entry in entries] + [0])
    for entry in entries:
        print(("%-*s  %s" % (width, entry["usage"], entry["description"])).rstrip())
    return 0
