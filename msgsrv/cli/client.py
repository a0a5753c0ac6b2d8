"""The client command line: ``msgsrv-client COMMAND ...`` (or ``python -m msgsrv.client``).

Each module named in :data:`SUBCOMMANDS` (``msgsrv/cli/NAME.py``) adds its
subcommands through ``register(subparsers)``; a subcommand's function takes the parsed arguments
and returns the exit status.  Failures print one line, never a traceback.
"""

import argparse
import importlib
import sys

from msgsrv.wire.errors import ConfigError, MsgsrvError
from .manpages import Manual, epilog

# The modules of msgsrv.cli that add subcommands, in the order --help lists them.
SUBCOMMANDS = ("chat", "run", "echo", "files", "keygen", "status")

EXIT_STATUS = (
    ("0", "Success."),
    ("1", "Failure: the server could not be reached, refused the request or answered with "
          "an error (one line on standard error says why)."),
    ("2", "Invalid command line."),
    ("N", "run: the remote command's own status; 124 when it timed out, 128+S when a "
          "signal S killed it."),
    ("1 (--hosts)", "run, put or status on many hosts: at least one host failed (the summary "
                    "on standard error says which and how); 0 only if every host succeeded."),
    ("130", "Interrupted (Ctrl-C)."),
)


def build_parser():
    """The argparse parser with every subcommand of :data:`SUBCOMMANDS`."""
    parser = argparse.ArgumentParser(prog="msgsrv-client",
                                     description="Talk to msgsrv services.",
                                     epilog=epilog(EXIT_STATUS),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in SUBCOMMANDS:
        importlib.import_module("%s.%s" % (__package__, name)).register(subparsers)
    return parser


def main(argv=None):
    """Run one client command; return its exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (MsgsrvError, ConfigError, OSError) as exc:
        print("msgsrv.client: %s" % exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


MANUAL = Manual(
    name="msgsrv-client", section=1, summary="talk to msgsrv services", parser=build_parser,
    description=(
        "msgsrv-client (also python -m msgsrv.client) sends one request to a service of a "
        "msgsrv(8) daemon, named by HOST:PORT, and prints the answer: echo, chat in a "
        "terminal, remote commands, file transfer, status; keygen adds a key to a keys file. "
        "Failures print one line, never a traceback.",
        "run, put and status also work on many daemons at once (pdsh style): --hosts names "
        "a hosts file (one HOST:PORT [KEY] per line, # comments, IPv6 as [ADDR]:PORT) or a "
        "comma-separated list, and HOST:PORT is left out. At most --fanout hosts are served "
        "at a time; each line is shown as HOST: line, or with -b identical outputs are shown "
        "once under the hosts that produced them; a summary of the hosts that failed, and "
        "how, ends on standard error.",
    ),
    exit_status=EXIT_STATUS,
    environment=(
        ("MSGSRV_KEY", "The key name when --key is not given."),
        ("MSGSRV_KEYS_FILE", "The keys file holding the key's secret when --keys-file is not "
                             "given."),
        ("MSGSRV_SECRET", "The secret itself (instead of a keys file)."),
    ),
    see_also=("msgsrv(8)", "msgsrvctl(8)"),
)


if __name__ == "__main__":
    sys.exit(main())
