"""The client command line: ``python -m msgsrv.client COMMAND ...``.

Each ``msgsrv/client/cli_*.py`` module adds its subcommands through
``register(subparsers)``; a subcommand's function takes the parsed arguments
and returns the exit status.  Failures print one line, never a traceback.
"""

import argparse
import importlib
import pkgutil
import sys

from ..errors import ConfigError, MsgsrvError
from . import __path__ as _package_path


def build_parser():
    """The argparse parser with every discovered subcommand."""
    parser = argparse.ArgumentParser(prog="python -m msgsrv.client",
                                     description="Talk to msgsrv services.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for info in sorted(pkgutil.iter_modules(_package_path), key=lambda i: i.name):
        if info.name.startswith("cli_"):
            importlib.import_module("%s.%s" % (__package__, info.name)).register(subparsers)
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


if __name__ == "__main__":
    sys.exit(main())
