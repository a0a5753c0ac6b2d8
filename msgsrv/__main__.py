"""The daemon's command line: ``python -m msgsrv --config FILE [--check]``."""

import argparse
import sys

from . import __version__, config as config_module
from .errors import ConfigError
from .pidfile import running_pid
from .settings import GLOBAL_SETTINGS

DEFAULT_CONFIG = "conf/server.ini"
EXIT_OK, EXIT_CONFIG = 0, 2  # as msgsrv.daemon's (imported only to run: helpers start fast)
EXIT_NOT_RUNNING = 3  # LSB "program is not running"


def build_parser():
    """The argparse parser for the daemon command line."""
    parser = argparse.ArgumentParser(
        prog="msgsrv", description="Run the msgsrv services named in an INI file.")
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                        help="configuration file (default: %(default)s)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", action="store_true",
                        help="validate the file (and what depends on the user running it, such "
                             "as the command service's root rule), print the effective "
                             "configuration, exit")
    action.add_argument("--print-setting", metavar="NAME", action="append",
                        help="print the effective value of a [msgsrv] setting (repeat for "
                             "several, one per line), exit")
    action.add_argument("--pid", action="store_true",
                        help="print the pid of the daemon holding the configured pidfile; "
                             "exit 3 if none is running")
    parser.add_argument("--version", action="version", version="msgsrv " + __version__)
    return parser


def main(argv=None):
    """Run the daemon command line; return the exit code."""
    args = build_parser().parse_args(argv)
    try:
        # The helpers read only [msgsrv], so msgsrvctl can still find (and
        # reload or stop) a daemon whose services section was broken by an edit.
        config = (_global_config(args.config) if args.print_setting is not None or args.pid
                  else config_module.load(args.config))
        if args.print_setting is not None:
            return _print_settings(config, args.print_setting)
        if args.check:
            config_module.check_runtime(config)
    except ConfigError as exc:
        print("msgsrv: %s" % exc, file=sys.stderr)
        return EXIT_CONFIG
    if args.check:
        sys.stdout.write(config_module.format_effective(config))
        return EXIT_OK
    if args.pid:
        return _print_pid(config)
    from .daemon import Daemon, configure_logging
    configure_logging(config.options)
    return Daemon(config).run(restore_signals=False)


def _global_config(path):
    """A Config with the validated [msgsrv] options of ``path`` and no services."""
    parser = config_module.read(path)
    section = config_module.GLOBAL_SECTION
    raw = dict(parser.items(section)) if parser.has_section(section) else {}
    names = {setting.name for setting in GLOBAL_SETTINGS}
    options = config_module.parse_section("%s: [%s]" % (path, section), GLOBAL_SETTINGS,
                                          {k: v for k, v in raw.items() if k in names})
    return config_module.Config(path, options, ())


def _print_settings(config, names):
    unknown = [name for name in names if name not in config.options]
    if unknown:
        raise ConfigError("no [msgsrv] setting %r (known: %s)"
                          % (unknown[0], ", ".join(sorted(config.options))))
    effective = dict(line.split(" = ", 1)
                     for line in config_module.format_effective(config).splitlines()[1:] if line)
    for name in names:
        print(effective[name])
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
