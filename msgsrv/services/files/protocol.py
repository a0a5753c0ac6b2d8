"""The file service's requests as data: operations, their arguments, their checks.

Sans-IO.  :data:`OPERATIONS` is the one table: each operation names the
access it needs (``read``, ``write`` or ``any``), its arguments with their
checks and defaults, and a line of help.  The handler checks a request
against it before running the operation (:func:`check_request`), and answers
the ``help`` request from it; docs/PROTOCOL.rst ("File service") describes
the same table.
"""

import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Tuple

from msgsrv.wire.errors import ProtocolError
from msgsrv.wire.frames import shown

#: code -> meaning, for every error the file service sends.
CODES = {
    "bad-request": "a request field is missing or malformed",
    "unknown-operation": "the request type names no operation",
    "bad-path": "the path is malformed, leads outside the root, meets a symlink, or names "
                "the wrong kind of file",
    "not-found": "nothing exists at the path (or its directory)",
    "exists": "the destination exists and overwriting was not asked for",
    "not-empty": "a directory to delete is not empty",
    "denied": "the operation is disabled, or this key may not use it",
    "too-large": "the file is larger than max_file_size",
    "quota": "the upload would take the root over its quota",
    "disk-full": "the server has no room for the file (disk full, or its file size limit)",
    "checksum-mismatch": "the received bytes do not have the announced SHA-256",
    "conflict": "the destination's SHA-256 is not the if_sha256 of a conditional put",
    "busy": "another connection is writing the same resumable upload, or a transfer limit "
            "is reached (max_transfers, max_transfers_per_ip, transfer_buffer_budget)",
    "too-slow": "the upload moved fewer than min_transfer_rate bytes per second (then closed)",
    "io-error": "the server's file system failed (details in its log)",
}

LIST_PAGE = 1000          # entries in one listing reply
MAX_SIZE = (1 << 63) - 1  # largest size or offset a request may carry

_SHA256 = re.compile(r"[0-9a-f]{64}")
_UPLOAD_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")
REQUIRED = object()


@dataclass(frozen=True)
class Arg:
    """One request field: its check (value -> value, ``ValueError(rule)``) and default."""

    name: str
    check: Callable[[Any], Any]
    default: Any = REQUIRED
    help: str = ""


@dataclass(frozen=True)
class Operation:
    """One request type: the access it needs, its arguments, a line of help."""

    name: str
    access: str
    args: Tuple[Arg, ...]
    help: str

    def describe(self):
        """This operation as a JSON-able dict (for the ``help`` reply)."""
        return {"name": self.name, "access": self.access, "help": self.help,
                "args": [{"name": a.name, "required": a.default is REQUIRED, "help": a.help}
                         for a in self.args]}


def _path(value):
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def _count(value):
    if type(value) is not int or not 0 <= value <= MAX_SIZE:
        raise ValueError("must be a whole number 0..%d" % MAX_SIZE)
    return value


def _flag(value):
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _matching(pattern, rule):
    """A check for an optional string that must match ``pattern`` (None passes)."""
    def check(value):
        if value is not None and not (isinstance(value, str) and pattern.fullmatch(value)):
            raise ValueError(rule)
        return value
    return check


_sha256 = _matching(_SHA256, "must be 64 lowercase hex digits")
_upload_id = _matching(_UPLOAD_ID, "must be 1-128 of A-Z a-z 0-9 _ . -")


def _name_or_none(value):
    if value is not None and not isinstance(value, str):
        raise ValueError("must be a string")
    return value


PATH = Arg("path", _path, help="path relative to the root, '/'-separated")

OPERATIONS: Dict[str, Operation] = {op.name: op for op in (
    Operation("get", "read", (
        PATH,
        Arg("offset", _count, 0, "first byte to send (to resume a download)"),
    ), "download a file: a data header, the raw bytes, then an end frame with the SHA-256"),
    Operation("put", "write", (
        PATH,
        Arg("size", _count, help="bytes the client will send"),
        Arg("overwrite", _flag, False, "replace an existing file"),
        Arg("upload_id", _upload_id, None, "names a resumable upload"),
        Arg("if_sha256", _sha256, None, "replace only a file with this SHA-256"),
    ), "upload a file: wait for ready, send the raw bytes, then an end frame with the SHA-256"),
    Operation("list", "read", (
        Arg("path", _path, "", "directory; empty for the root"),
        Arg("after", _name_or_none, None, "continue after this name (paging)"),
    ), "list a directory: name, kind, size, mtime of each entry, by name"),
    Operation("stat", "read", (
        Arg("path", _path, "", "file or directory; empty for the root"),
        Arg("sha256", _flag, False, "also return a file's SHA-256"),
    ), "describe one file or directory"),
    Operation("delete", "write", (PATH,), "remove a file, a symlink or an empty directory"),
    Operation("mkdir", "write", (
        PATH,
        Arg("parents", _flag, False, "also create missing parent directories"),
    ), "create a directory"),
    Operation("rename", "write", (
        PATH,
        Arg("to", _path, help="new path"),
        Arg("overwrite", _flag, False, "replace an existing destination"),
    ), "rename or move a file or directory within the root"),
    Operation("help", "any", (), "describe the operations this service offers you"),
)}

#: Operations a configuration can enable or disable (``help`` is always on).
CONFIGURABLE = tuple(name for name, op in OPERATIONS.items() if op.access != "any")


def check_request(header):
    """Return ``(operation, {arg: value})`` for a request header.

    Raises ``ProtocolError("unknown-operation")`` for an unknown type and
    ``ProtocolError("bad-request")`` naming the field and the rule it broke.
    Fields the operation does not declare are ignored.
    """
    operation = OPERATIONS.get(header.get("type"))
    if operation is None:
        raise ProtocolError("unknown-operation", "no operation %s (try help)"
                            % shown(header.get("type")))
    return operation, {arg.name: _checked(arg, header) for arg in operation.args}


def _checked(arg, header):
    if header.get(arg.name) is None:  # absent or null: the default
        if arg.default is REQUIRED:
            raise ProtocolError("bad-request", "'%s' is required" % arg.name)
        return arg.default
    try:
        return arg.check(header[arg.name])
    except ValueError as exc:
        raise ProtocolError("bad-request", "'%s' %s (got %s)"
                            % (arg.name, exc, shown(header[arg.name]))) from None


def parse_operations(text):
    """Settings parser: a comma/space separated list of configurable operation names."""
    names = tuple(word for word in re.split(r"[\s,]+", text.strip()) if word)
    unknown = [name for name in names if name not in CONFIGURABLE]
    if unknown:
        raise ValueError("must list operations among %s (unknown: %s)"
                         % (", ".join(CONFIGURABLE), ", ".join(unknown)))
    return tuple(name for name in CONFIGURABLE if name in names)


__all__ = ["CODES", "LIST_PAGE", "Arg", "Operation", "OPERATIONS", "CONFIGURABLE",
           "check_request", "parse_operations"]
