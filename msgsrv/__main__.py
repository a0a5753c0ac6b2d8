"""The daemon's command line: ``python -m msgsrv --config FILE [--check]``."""

import argparse
import sys

from . import __version__, config as config_module
from .daemon import EXIT_CONFIG, EXIT_OK, Daemon, configure_logging
from .errors import ConfigError

DEFAULT_CONFIG = "conf/server.ini"


def build_parser():
    """The argparse parser for the daemon command line."""
    parser = argparse.ArgumentParser(
        prog="msgsrv", description="Run the msgsrv services named in an INI file.")
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                        help="configuration file (default: %(default)s)")
    parser.add_argument("--check", action="store_true",
                        help="validate the file, print the effective configuration, exit")
    parser.add_argument("--version", action="version", version="msgsrv " + __version__)
    return parser


def main(argv=None):
    """Run the daemon command line; return the exit code."""
    args = build_parser().parse_args(argv)
    try:
        config = config_module.load(args.config)
    except ConfigError as exc:
        print("msgsrv: %s" % exc, file=sys.stderr)
        return EXIT_CONFIG
    if args.check:
        sys.stdout.write(config_module.format_effective(config))
        return EXIT_OK
    configure_logging(config.options)
    return Daemon(config).run(restore_signals=False)


def console_main():
    """Entry point of the ``msgsrv`` console script."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    console_main()
