"""The daemon's command line: ``python -m msgsrv --config FILE [--check]``."""

import argparse
import sys

from . import __version__, config as config_module
from .daemon import EXIT_CONFIG, EXIT_OK, Daemon, configure_logging
from .errors import ConfigError
from .pidfile import running_pid

DEFAULT_CONFIG = "conf/server.ini"
EXIT_NOT_RUNNING = 3  # LSB "program is not running"


def build_parser():
    """The argparse parser for the daemon command line."""
    parser = argparse.ArgumentParser(
        prog="msgsrv", description="Run the msgsrv services named in an INI file.")
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                        help="configuration file (default: %(default)s)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", action="store_true",
                        help="validate the file, print the effective configuration, exit")
    action.add_argument("--print-setting", metavar="NAME",
                        help="print the effective value of one [msgsrv] setting, exit")
    action.add_argument("--pid", action="store_true",
                        help="print the pid of the daemon holding the configured pidfile; "
                             "exit 3 if none is running")
    parser.add_argument("--version", action="version", version="msgsrv " + __version__)
    return parser


def main(argv=None):
    """Run the daemon command line; return the exit code."""
    args = build_parser().parse_args(argv)
    try:
        config = config_module.load(args.config)
        if args.print_setting is not None:
            return _print_setting(config, args.print_setting)
    except ConfigError as exc:
        print("msgsrv: %s" % exc, file=sys.stderr)
        return EXIT_CONFIG
    if args.check:
        sys.stdout.write(config_module.format_effective(config))
        return EXIT_OK
    if args.pid:
        return _print_pid(config)
    configure_logging(config.options)
    return Daemon(config).run()


def _print_setting(config, name):
    if name not in config.options:
        raise ConfigError("no [msgsrv] setting %r (known: %s)"
                          % (name, ", ".join(sorted(config.options))))
    prefix = name + " = "  # the [msgsrv] section comes first in the effective config
    line = next(line for line in config_module.format_effective(config).splitlines()
                if line.startswith(prefix))
    print(line[len(prefix):])
    return EXIT_OK


def _print_pid(config):
    if not config["pidfile"]:
        print("msgsrv: %s: no pidfile is configured" % config.path, file=sys.stderr)
        return EXIT_CONFIG
    pid = running_pid(config["pidfile"])
    if pid is None:
        return EXIT_NOT_RUNNING
    print(pid)
    return EXIT_OK


def console_main():
    """Entry point of the ``msgsrv`` console script."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    console_main()
