"""``python -m msgsrv.client keygen NAME [--keys-file FILE]``: make a new client key.

Prints the ``NAME SECRET`` line; with ``--keys-file`` also appends it to
that file (created mode 0600 if missing; an existing file must pass the same
checks as when the daemon loads it).  The daemon reads its keys file at
start-up: restart it to use a new key.
"""

import os
import sys

from msgsrv.wire import auth
from msgsrv.wire.errors import ConfigError


def register(subparsers):
    """Add the ``keygen`` subcommand."""
    parser = subparsers.add_parser("keygen", help="make a new key: print a NAME SECRET line, "
                                                  "optionally appending it to a keys file")
    parser.add_argument("name", help="key name (the identity in logs and permissions)")
    parser.add_argument("--keys-file", help="append the new key to this file")
    parser.set_defaults(func=keygen)


def keygen(args):
    """Print a new key line; append it to ``args.keys_file`` if given."""
    line = auth.format_key_line(args.name, auth.generate_secret())
    if args.keys_file:
        append_key(args.keys_file, args.name, line)
        print("msgsrv.client: added key %s to %s" % (args.name, args.keys_file), file=sys.stderr)
    print(line)
    return 0


def append_key(path, name, line):
    """Append ``line`` (the key ``name``) to the keys file at ``path``, creating it 0600.

    Raises ConfigError if the existing file is unsafe or malformed (see
    auth.load_keys) or already has a key called ``name``; OSError if it
    cannot be written.
    """
    if not os.path.exists(path):
        _create(path, line)
        return
    if name in auth.load_keys(path):
        raise ConfigError("keys file %r already has a key named %r" % (path, name))
    fd = os.open(path, os.O_RDWR | os.O_APPEND)
    try:
        size = os.fstat(fd).st_size
        newline = size and os.pread(fd, 1, size - 1) != b"\n"
        os.write(fd, ("\n" if newline else "").encode() + line.encode("utf-8") + b"\n")
    finally:
        os.close(fd)


def _create(path, line):
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, line.encode("utf-8") + b"\n")
    finally:
        os.close(fd)
