"""``python -m msgsrv.client put|get|ls|rm|mkdir HOST:PORT ...``: the file service from a shell.

Transfers draw a progress bar on standard error when it is a terminal and
print nothing otherwise; a failure prints one line and exits non-zero.
"""

import argparse
import posixpath
import sys
import time

from .base import parse_address
from .files import FileClient
from .options import add_connection_options
from .progress import ProgressBar

_KIND_MARKS = {"file": "-", "dir": "d", "link": "l"}


def _address(text):
    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser(subparsers, name, help_text):
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    parser.add_argument("address", type=_address, help="HOST:PORT of the file service")
    return parser


def register(subparsers):
    """Add the ``put``, ``get``, ``ls``, ``rm`` and ``mkdir`` subcommands."""
    put = _parser(subparsers, "put", "upload a file to a file service")
    put.add_argument("local", help="local file to upload")
    put.add_argument("remote", nargs="?", help="remote path (default: the local file's name)")
    put.add_argument("-f", "--overwrite", action="store_true", help="replace an existing file")
    put.set_defaults(func=run_put)
    get = _parser(subparsers, "get", "download a file from a file service")
    get.add_argument("remote", help="remote path")
    get.add_argument("local", nargs="?",
                     help="local path (default: the remote file's name; - for standard output)")
    get.set_defaults(func=run_get)
    for parser in (put, get):
        parser.add_argument("--resume", action="store_true",
                            help="continue an interrupted transfer")
        parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
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
    for parser in (put, get, ls, rm, mkdir):
        add_connection_options(parser, auth=True)


def _connect(args):
    host, port = args.address
    return FileClient(host, port, args.key, keys_file=args.keys_file, timeout=args.timeout)


def _bar(args, label):
    return ProgressBar(sys.stderr, label, enabled=False if args.quiet else None)


def run_put(args):
    """Upload ``args.local``; exit status 0 once the server has stored and verified it."""
    remote = args.remote or posixpath.basename(args.local.rstrip("/"))
    bar = _bar(args, remote)
    with _connect(args) as client:
        client.put(args.local, remote, overwrite=args.overwrite, resume=args.resume, progress=bar)
    bar.finish()
    return 0


def run_get(args):
    """Download ``args.remote``; the local file appears only once verified."""
    local = args.local or posixpath.basename(args.remote.rstrip("/"))
    if local in ("", ".", ".."):
        print("msgsrv.client: cannot name a local file after %r; give LOCAL" % args.remote,
              file=sys.stderr)
        return 2
    bar = _bar(args, args.remote)
    with _connect(args) as client:
        if local == "-":
            client.get(args.remote, sys.stdout.buffer, progress=bar)
            sys.stdout.buffer.flush()
        else:
            client.get(args.remote, local, resume=args.resume, progress=bar)
    bar.finish()
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


def printable(name):
    """``name`` with control characters escaped, so a server cannot drive the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)
