"""Run a validated Config: logging, pidfile, signals, one listener per service.

Signal handlers only record the signal (and wake the main loop through
``signal.set_wakeup_fd``); the main thread does the work in small
``handle_<signal>`` methods.
"""

import collections
import logging
import os
import resource
import select
import signal
import sys
import threading

from .errors import ConfigError
from .server import make_server

log = logging.getLogger("msgsrv")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def configure_logging(options):
    """Send logs to ``log_file`` (or stderr) at ``log_level``; return the handler."""
    if options["log_file"]:
        handler = logging.FileHandler(options["log_file"], encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(options["log_level"].upper())
    return handler


def raise_open_files_limit():
    """Raise the soft RLIMIT_NOFILE to the hard limit; return (old, new)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft, soft
    return soft, max(soft, target)


class Daemon:
    """Owns the running services of one config and the main signal loop."""

    def __init__(self, config):
        self.config = config
        self.servers = {}
        self._signals = collections.deque()
        self._running = False

    def start(self):
        """Bind and start every service; raise OSError naming the one that failed."""
        if self.config["thread_stack_size"]:
            threading.stack_size(max(32768, self.config["thread_stack_size"]))
        old, new = raise_open_files_limit()
        if new > old:
            log.info("raised the open-files limit from %d to %d", old, new)
        for service in self.config.services:
            self.servers[service.name] = self._start_service(service)

    def _start_service(self, service):
        try:
            server = make_server(service)
        except ConfigError:
            self.stop()
            raise
        except OSError as exc:
            self.stop()
            raise OSError("[service:%s] cannot listen on %s:%d: %s"
                          % (service.name, service["host"], service["port"],
                             exc.strerror or exc)) from None
        server.serve_in_thread()
        log.info("listening service=%s handler=%s transport=%s address=%s:%d",
                 service.name, service["handler"], service.transport,
                 server.server_address[0], server.port)
        return server

    def stop(self):
        """Stop every service in parallel, each within ``shutdown_timeout``."""
        timeout = self.config["shutdown_timeout"]
        threads = [threading.Thread(target=server.stop, args=(timeout,), daemon=True)
                   for server in self.servers.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout + 5.0)
        self.servers.clear()

    # -- the main loop ------------------------------------------------------

    def run(self, restore_signals=True):
        """Serve until SIGTERM or SIGINT; return the exit code.  Main thread only.

        With ``restore_signals`` false (the caller is about to exit) the
        handled signals are ignored after the stop instead: a second SIGTERM
        arriving during the shutdown must not kill a process that stopped
        cleanly, and Python resets its own handlers while it finalizes.
        """
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        previous = self._install_signals(wake_w)
        try:
            self.start()
        except OSError as exc:
            log.error("%s", exc)
            return EXIT_FAILURE
        except ConfigError as exc:
            log.error("%s", exc)
            return EXIT_CONFIG
        self._running = True
        try:
            while self._running:
                select.select([wake_r], [], [], 1.0)
                _drain(wake_r)
                while self._signals:
                    self._dispatch(self._signals.popleft())
        finally:
            self.stop()
            if not restore_signals:
                previous.update(dict.fromkeys(self.handled_signals(), signal.SIG_IGN))
            self._restore_signals(previous)
            os.close(wake_r)
            os.close(wake_w)
        log.info("stopped")
        return EXIT_OK

    def _install_signals(self, wake_w):
        previous = {"wakeup": signal.set_wakeup_fd(wake_w)}
        for signum in self.handled_signals():
            previous[signum] = signal.signal(signum, self._record)
        return previous

    def _restore_signals(self, previous):
        signal.set_wakeup_fd(previous.pop("wakeup"))
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def handled_signals(self):
        """The signals this daemon acts on."""
        return [signal.SIGTERM, signal.SIGINT]

    def _record(self, signum, frame):
        self._signals.append(signum)

    def _dispatch(self, signum):
        name = signal.Signals(signum).name.lower()
        getattr(self, "handle_" + name[3:])()

    def handle_term(self):
        """Graceful stop."""
        log.info("SIGTERM received, stopping")
        self._running = False

    def handle_int(self):
        """Graceful stop, as for SIGTERM."""
        log.info("SIGINT received, stopping")
        self._running = False


def _drain(fd):
    try:
        os.read(fd, 4096)
    except (BlockingIOError, InterruptedError):
        pass
