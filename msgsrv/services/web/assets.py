"""The console's page files, shipped in the package and loaded once per service.

Each file gets its content type and a strong ETag (a hash of its bytes).
Pages refer to the other files as ``{{asset:NAME}}``, replaced at load by a
versioned URL (``/static/NAME?v=HASH``): such a URL never changes meaning,
so it is cached for a year, while the pages themselves are revalidated
(``no-cache`` and the ETag) and so pick up a new version at once.
"""

import hashlib
import os
import re
from dataclasses import dataclass

DIRECTORY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
    ".ico": "image/x-icon", ".txt": "text/plain; charset=utf-8",
}
#: Cache-Control of a versioned URL, and of everything else.
LONG_CACHE, REVALIDATE = "public, max-age=31536000, immutable", "no-cache"
_REFERENCE = re.compile(rb"\{\{asset:([A-Za-z0-9_.-]+)\}\}")
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class Asset:
    """One file: its bytes, content type and ETag; ``version`` is in its URL."""

    name: str
    body: bytes
    content_type: str

    @property
    def version(self):
        """A short hash of the bytes."""
        return hashlib.sha256(self.body).hexdigest()[:16]

    @property
    def etag(self):
        """The strong entity tag, quoted."""
        return '"%s"' % self.version

    @property
    def url(self):
        """The versioned URL of the file."""
        return "/static/%s?v=%s" % (self.name, self.version)

    def cache_control(self, version=None):
        """How long a client may keep it, when asked for with ``?v=version``."""
        return LONG_CACHE if version == self.version else REVALIDATE

    def matches(self, if_none_match):
        """True when an If-None-Match header value names this version (answer 304)."""
        tags = {tag.strip() for tag in if_none_match.split(",")}
        return self.etag in tags or "W/" + self.etag in tags or "*" in tags


def load(directory=DIRECTORY):
    """``{name: Asset}`` for the files of ``directory``; pages get their references
    resolved.  Raises ValueError for a file of unknown type or a reference to a
    missing file (a packaging bug, found at start)."""
    raw = {}
    for name in sorted(os.listdir(directory)):
        if not _NAME.fullmatch(name) or not os.path.isfile(os.path.join(directory, name)):
            continue
        kind = CONTENT_TYPES.get(os.path.splitext(name)[1])
        if kind is None:
            raise ValueError("%s: no content type for %s" % (directory, name))
        with open(os.path.join(directory, name), "rb") as stream:
            raw[name] = Asset(name, stream.read(), kind)
    return {name: _resolved(asset, raw) for name, asset in raw.items()}


def _resolved(asset, assets):
    def url(match):
        target = assets.get(match.group(1).decode("ascii"))
        if target is None:
            raise ValueError("%s refers to a missing file %s" % (asset.name, match.group(1)))
        return target.url.encode("ascii")
    return Asset(asset.name, _REFERENCE.sub(url, asset.body), asset.content_type)
