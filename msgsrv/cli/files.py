"""``python -m msgsrv.client put|get|ls|rm|mkdir HOST:PORT ...``: the file service from a shell.

Transfers draw a progress bar on standard error when it is a terminal and
print nothing otherwise; a failure prints one line and exits non-zero.
Transfers are resumable unless ``--no-resume``: an interrupted one keeps
what was moved (the server keeps an upload's part, ``get`` keeps
``.NAME.msgsrv-part``), the same command continues it and says how many
bytes it kept.
"""

import argparse
import contextlib
import os
import posixpath
import sys
import time

from msgsrv.client.base import parse_address
from msgsrv.client.base import printable
from msgsrv.services.files.client import FileClient, part_path, upload_id_for
from msgsrv.wire.errors import ConnectionFailed, RequestTimeout
from .fanout import TIMEOUT_HELP, FleetOutput, add_fleet_options, fleet_from_args, no_target
from .options import add_connection_options, check_key, client_options
from .progress import ProgressBar, format_bytes

_KIND_MARKS = {"file": "-", "dir": "d", "link": "l"}


def _address(text):
    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser(subparsers, name, help_text):
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    if name == "put":  # put --hosts leaves it out: parsed when known to be one
        parser.add_argument("address", nargs="?",
                            help="HOST:PORT of the file service (left out with --hosts)")
    else:
        parser.add_argument("address", type=_address, help="HOST:PORT of the file service")
    return parser


def register(subparsers):
    """Add the ``put``, ``get``, ``ls``, ``rm`` and ``mkdir`` subcommands."""
    put = _parser(subparsers, "put", "upload a file to a file service (with --hosts: to many, "
                                     "each copy verified by SHA-256)")
    put.add_argument("local", help="local file to upload")
    put.add_argument("remote", nargs="?", help="remote path (default: the local file's name)")
    put.add_argument("-f", "--overwrite", action="store_true", help="replace an existing file")
    put.set_defaults(func=run_put)
    get = _parser(subparsers, "get", "download a file from a file service")
    get.add_argument("remote", help="remote path")
    get.add_argument("local", nargs="?",
                     help="local path (default: the remote file's name; - for standard output)")
    get.add_argument("-f", "--overwrite", action="store_true",
                     help="replace an existing local file")
    get.set_defaults(func=run_get)
    for parser in (put, get):
        resume = parser.add_mutually_exclusive_group()
        resume.add_argument("--resume", action="store_true",
                            help="expect to continue an interrupted transfer (the default): "
                                 "say so if nothing of it was kept")
        resume.add_argument("--no-resume", action="store_true",
                            help="start from byte 0, and keep nothing if interrupted")
        parser.add_argument("-q", "--quiet", action="store_true",
                            help="no progress bar and no notes about resuming")
    ls = _parser(subparsers, "ls", "list a directory of a file service")
    ls.add_argument("path", nargs="?", default="", help="remote directory (default: the root)")
    ls.set_defaults(func=run_ls)
    rm = _parser(subparsers, "rm", "delete files (or empty directories) on a file service")
    rm.add_argument("paths", nargs="+", metavar="path")
    rm.set_defaults(func=run_rm)
    mkdir = _parser(subparsers, "mkdir", "create a directory on a file service")
    mkdir.add_argument("path", help="remote directory")
    mkdir.add_argument("-p", "--parents", action="store_true", help="create missing parents")
    mkdir.set_defaults(func=run_mkdir)
    add_connection_options(put, auth=True, timeout_help=TIMEOUT_HELP)
    add_fleet_options(put)
    for parser in (get, ls, rm, mkdir):
        add_connection_options(parser, auth=True)


def _connect(args):
    host, port = args.address
    client = FileClient(host, port, **client_options(args))
    check_key(client, "%s:%d" % (host, port))
    return client


def note(text):
    """Print one ``msgsrv.client:`` line on standard error."""
    print("msgsrv.client: %s" % text, file=sys.stderr)


class _Terminal:
    """What a user sees of one transfer: the progress bar, notes on resuming, and on
    an interruption what was kept and how to continue."""

    def __init__(self, args, label, upload, kept_in=None):
        self.args, self.label, self.upload, self.kept_in = args, label, upload, kept_in
        self.bar = ProgressBar(sys.stderr, label, enabled=False if args.quiet else None)
        self.progress = self.bar  # the transfer's progress callback

    def resumed(self, kept, discarded):
        """The transfer's ``on_resume`` callback."""
        what = "upload" if self.upload else "download"
        if discarded:
            self._say("the part of %s kept from an interrupted download (%s) is of another "
                      "version of it: downloading from byte 0" % (self.label, _amount(discarded)))
        elif kept:
            where = "the server kept" if self.upload else "kept in %s:" % self.kept_in
            self._say("resuming the %s of %s: %s %s" % (what, self.label, where, _amount(kept)))
        elif self.args.resume:
            self._say("nothing to resume for %s: %s from byte 0"
                      % (self.label, "sending" if self.upload else "downloading"))

    @contextlib.contextmanager
    def running(self):
        """Finish the bar; if the transfer breaks off, tell what was kept."""
        try:
            yield
        except (KeyboardInterrupt, ConnectionFailed, RequestTimeout):
            self.bar.finish()
            if not self.args.no_resume and (self.upload or self.kept_in):
                self._say(self._kept_note())
            raise
        self.bar.finish()

    def _kept_note(self):
        if self.upload:
            return ("interrupted: the server keeps what it received of %s: run the same command "
                    "again to resume" % self.label)
        try:
            kept = os.path.getsize(self.kept_in)
        except OSError:
            kept = 0
        if not kept:
            return "interrupted: nothing of %s was kept" % self.label
        return ("interrupted: %s kept in %s: run the same command again to resume"
                % (format_bytes(kept), self.kept_in))

    def _say(self, text):
        if not self.args.quiet:
            note(text)


def _amount(count):
    return "%s (%d bytes)" % (format_bytes(count), count) if count >= 1024 else "%d bytes" % count


def run_put(args):
    """Upload ``args.local``; exit status 0 once the server has stored and verified it."""
    if args.hosts is not None:
        return put_on_hosts(args)
    if args.address is None:
        return no_target()
    try:
        args.address = parse_address(args.address)
    except ValueError as exc:
        note(str(exc))
        return 2
    remote = args.remote or posixpath.basename(args.local.rstrip("/"))
    upload_id = None if args.no_resume else upload_id_for(args.local)
    shown = _Terminal(args, remote, upload=True)
    with _connect(args) as client, shown.running():
        client.put(args.local, remote, overwrite=args.overwrite, upload_id=upload_id,
                   progress=shown.progress, on_resume=shown.resumed)
    return 0


def put_on_hosts(args):
    """``put --hosts``: the file to every host; 0 only if each stored the same SHA-256."""
    if args.address is not None:  # with --hosts the first word is the local file
        if args.remote is not None:
            note("with --hosts, give LOCAL [REMOTE] and no HOST:PORT")
            return 2
        args.local, args.remote = args.address, args.local
    remote = args.remote or posixpath.basename(args.local.rstrip("/"))
    shown = FleetOutput(args.gather)
    results = fleet_from_args(args).put(args.local, remote, overwrite=args.overwrite,
                                        resume=not args.no_resume)
    shown.show(results)
    return shown.summary(results)


def run_get(args):
    """Download ``args.remote``; the local file appears only once verified."""
    local = args.local or posixpath.basename(args.remote.rstrip("/"))
    if local in ("", ".", ".."):
        note("cannot name a local file after %r; give LOCAL" % args.remote)
        return 2
    if local == "-":
        shown = _Terminal(args, args.remote, upload=False)
        with _connect(args) as client, shown.running():
            client.get(args.remote, sys.stdout.buffer, progress=shown.progress)
            sys.stdout.buffer.flush()
        return 0
    if not args.overwrite and os.path.lexists(local):
        note("%s exists (use -f to overwrite it)" % local)
        return 1
    shown = _Terminal(args, args.remote, upload=False, kept_in=part_path(local, True))
    with _connect(args) as client, shown.running():
        client.get(args.remote, local, resume=not args.no_resume, progress=shown.progress,
                   overwrite=args.overwrite, on_resume=shown.resumed)
    return 0


def run_ls(args):
    """Print one line per entry: kind, size, modification time (UTC), name."""
    with _connect(args) as client:
        entries = client.list(args.path)
    for entry in entries:
        stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime(entry.mtime))
        suffix = "/" if entry.kind == "dir" else ""
        print("%s %12d %s %s%s" % (_KIND_MARKS.get(entry.kind, "?"), entry.size, stamp,
                                   printable(entry.name), suffix))
    return 0


def run_rm(args):
    """Delete each path in turn; stop at the first failure."""
    with _connect(args) as client:
        for path in args.paths:
            client.delete(path)
    return 0


def run_mkdir(args):
    """Create one remote directory."""
    with _connect(args) as client:
        client.mkdir(args.path, parents=args.parents)
    return 0
