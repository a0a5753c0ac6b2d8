"""The daemon's command line: ``msgsrv [--config FILE] [--check]`` (or ``python -m msgsrv``)."""

import argparse
import sys

from msgsrv import __version__
from msgsrv.cli.manpages import Manual, epilog
from msgsrv.ops import config as config_module, preflight
from msgsrv.ops.pidfile import running_pid
from msgsrv.ops.settings import LOG_LEVELS
from msgsrv.wire.errors import ConfigError

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2  # as msgsrv.ops.daemon's (imported only to run)
EXIT_NOT_RUNNING = 3  # LSB "program is not running"

EXIT_STATUS = (
    ("0", "Stopped cleanly after SIGTERM or SIGINT; --check passed; --pid found the daemon."),
    ("1", "Start-up failed: a listener cannot be opened (the message names the service and "
          "address), the pidfile is held by a running daemon, the log file cannot be opened, "
          "or the user cannot be switched."),
    ("2", "Invalid configuration or command line: every problem --check finds is printed, "
          "one line each, on standard error; nothing was started."),
    ("3", "--pid: no daemon holds the pidfile."),
    ("130", "Interrupted (Ctrl-C) before the daemon was up."),
)


def build_parser():
    """The argparse parser for the daemon command line."""
    parser = argparse.ArgumentParser(
        prog="msgsrv", description="Run the msgsrv services named in an INI file.",
        epilog=epilog(EXIT_STATUS), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", metavar="FILE",
                        help="configuration file (default: $%s, else the first of %s that "
                             "exists; the one used is named on standard error)"
                             % (config_module.CONFIG_ENV, ", ".join(config_module.DEFAULT_PATHS)))
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", action="store_true",
                        help="run every check a start runs (settings, handler plugins, keys "
                             "files and their modes, file roots, command programs and who they "
                             "run as, TLS files, user and group, pidfile and log directories), "
                             "as the user running it, without creating anything; say what a "
                             "start would create, print the effective configuration, exit")
    action.add_argument("--print-setting", metavar="NAME", action="append",
                        help="print the effective value of a [msgsrv] setting (repeat for "
                             "several, one per line), exit")
    action.add_argument("--pid", action="store_true",
                        help="print the pid of the daemon holding the configured pidfile; "
                             "exit 3 if none is running")
    parser.add_argument("--log-file", metavar="FILE|-",
                        help="log to FILE instead of the configured log_file; '-' logs to "
                             "standard error only (when standard error is a terminal, the "
                             "log goes there as well as to a log file)")
    parser.add_argument("--log-level", choices=LOG_LEVELS,
                        help="least severe level logged, instead of the configured log_level")
    parser.add_argument("--version", action="version", version="msgsrv " + __version__)
    return parser


def main(argv=None):
    """Run the daemon command line; return the exit code."""
    args = build_parser().parse_args(argv)
    overrides = _overrides(args)
    try:
        path = _config_path(args.config)
        # The helpers read only [msgsrv], so msgsrvctl can still find (and
        # reload or stop) a daemon whose services section was broken by an edit.
        helper = args.print_setting is not None or args.pid
        config = config_module.with_options(
            config_module.load_global(path) if helper else config_module.load(path), overrides)
        if args.print_setting is not None:
            return _print_settings(config, args.print_setting)
        if args.pid:
            return _print_pid(config)
        notes = preflight.check(config)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print("msgsrv: %s" % line, file=sys.stderr)
        return EXIT_CONFIG
    if args.check:
        return _report_check(config, notes)
    return _run(config, overrides)


def _overrides(args):
    overrides = {}
    if args.log_file is not None:
        overrides["log_file"] = "" if args.log_file == "-" else args.log_file
    if args.log_level is not None:
        overrides["log_level"] = args.log_level
    return overrides


def _config_path(given):
    if given is not None:
        return given
    path, why = config_module.find()
    print("msgsrv: using configuration %s (%s)" % (path, why), file=sys.stderr)
    return path


def _report_check(config, notes):
    for service in config.disabled:
        print("msgsrv: warning: %s" % service.message, file=sys.stderr)
    for note in notes:
        print("msgsrv: note: %s" % note, file=sys.stderr)
    count = len(config.services)
    disabled = ", %d disabled" % len(config.disabled) if config.disabled else ""
    print("msgsrv: %s: every start-up check passed (%d service%s%s)"
          % (config.path, count, "" if count == 1 else "s", disabled), file=sys.stderr)
    sys.stdout.write(config_module.format_effective(config))
    return EXIT_OK


def _run(config, overrides):
    from msgsrv.ops.daemon import Daemon, configure_logging
    echo = bool(config["log_file"]) and _is_terminal(sys.stderr)
    try:
        configure_logging(config.options, echo)
    except OSError as exc:
        print("msgsrv: %s: [msgsrv] log_file %s: cannot open (%s)"
              % (config.path, config["log_file"], exc.strerror or exc), file=sys.stderr)
        return EXIT_FAILURE
    if config["processes"] > 1:
        from msgsrv.ops.supervisor import Supervisor
        return Supervisor(config, overrides, echo).run(restore_signals=False)
    return Daemon(config, overrides, echo).run(restore_signals=False)


def _is_terminal(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


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


def exit_with(run):
    """Exit with the status ``run()`` returns; 130 on Ctrl-C, without a traceback."""
    try:
        sys.exit(run())
    except KeyboardInterrupt:
        sys.exit(130)


def console_main():
    """Entry point of the ``msgsrv`` console script."""
    exit_with(main)


MANUAL = Manual(
    name="msgsrv", section=8, summary="multi-service network daemon", parser=build_parser,
    description=(
        "msgsrv runs the services named by the [service:NAME] sections of an INI file (echo "
        "over TCP and UDP, chat, remote commands, file transfer, status, and handler "
        "plugins), in the foreground, until SIGTERM or SIGINT. It logs one line per listener "
        "once every listener is bound, then 'ready'.",
        "Without --config it uses $MSGSRV_CONFIG when set, else the first of "
        "/etc/msgsrv/server.ini and conf/server.ini (relative to the working directory) that "
        "exists, and names the file it chose on standard error. Relative paths in the file "
        "(pidfile, log_file, keys files, file roots) are relative to the working directory.",
        "Logs go to log_file, or to standard error when it is empty; when standard error is a "
        "terminal they go there as well. A fatal start-up error is always printed on "
        "standard error. --check runs the same checks as a start and creates nothing: it "
        "says what a start would create (a keys file with a fresh key, a file root, missing "
        "directories). msgsrvctl(8) runs the daemon in the background.",
        "With processes = N above 1 the daemon is a master that binds every listener, "
        "switches user and forks N worker processes serving them; the master supervises "
        "(a worker that dies is logged and replaced), and every signal below goes to it "
        "(the pid in the pidfile): SIGHUP then checks the file once and replaces the "
        "workers, the new ones started before the old ones stop, so no connection is "
        "refused.",
    ),
    exit_status=EXIT_STATUS,
    signals=(
        ("SIGTERM", "Graceful stop: listeners close, a request in progress gets "
                    "shutdown_timeout seconds to finish and send its reply, the rest are "
                    "aborted; the pidfile is removed; exit 0."),
        ("SIGINT", "The same; a second SIGINT aborts every open connection at once."),
        ("SIGHUP", "Reload the configuration file: logged as 'reload: accepted (...)', or "
                   "'reload: refused: REASON' with the old configuration kept."),
        ("SIGUSR1", "Reopen the log file (after logrotate moved it)."),
    ),
    files=(
        ("/etc/msgsrv/server.ini", "The configuration used when neither --config nor "
                                   "$MSGSRV_CONFIG is given (if it exists)."),
        ("conf/server.ini", "The configuration used otherwise, relative to the working "
                            "directory (the shipped example in the source tree)."),
        ("pidfile", "Written atomically and locked while the daemon runs; its lock, not "
                    "the number in it, says whether a daemon runs. Beside it, NAME.listeners "
                    "lists the bound listeners and, with processes above 1, NAME.workers "
                    "the worker processes."),
    ),
    environment=(
        ("MSGSRV_CONFIG", "The configuration file when --config is not given."),
        ("NOTIFY_SOCKET", "Set by systemd (Type=notify): READY=1 is sent once every listener "
                          "is bound, RELOADING=1 and STOPPING=1 around a reload and a stop."),
    ),
    see_also=("msgsrvctl(8)", "msgsrv-client(1)", "systemd.service(5)"),
)


if __name__ == "__main__":
    console_main()
