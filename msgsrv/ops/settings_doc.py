"""Render the declared settings as documentation, so docs cannot drift.

``python -m msgsrv.ops.settings_doc [FILE...]`` rewrites every block between
``.. BEGIN settings:GROUP`` and ``.. END settings:GROUP`` with the table for
that group, in the files named or, with none, in README.rst and every
docs/*.rst of the source tree that has such blocks; a test fails when a file
is out of date.  Groups: ``global``,
``service``, ``framed`` and one per built-in handler name (``echo``, ...).
"""

import glob
import os
import re
import sys

from msgsrv import services
from msgsrv.net.handler import FramedHandler
from .settings import GLOBAL_SETTINGS, SERVICE_SETTINGS

_BLOCK = re.compile(r"(\.\. BEGIN settings:(\S+)\n)(.*?)(\.\. END settings:\2\n)", re.S)


def groups():
    """Map group name -> tuple of Settings (built-in handlers whose modules import)."""
    result = {"global": GLOBAL_SETTINGS, "service": SERVICE_SETTINGS, "framed": ()}
    for name, by_transport in services.BUILTIN.items():
        own = []
        for transport in by_transport:
            try:
                cls = services.resolve(name, transport)
            except (ImportError, ValueError):
                continue
            inherited = ()
            if issubclass(cls, FramedHandler):
                result["framed"] = inherited = FramedHandler.settings
            own += [s for s in services.declared_settings(cls)
                    if s not in inherited and s not in own]
        result[name] = tuple(own)
    return result


def render_table(settings):
    """An RST list-table of ``settings``: key, default, meaning."""
    lines = [".. list-table::", "   :header-rows: 1", "   :widths: 20 15 65", "",
             "   * - key", "     - default", "     - meaning"]
    for setting in settings:
        default = "(none)" if setting.default is None else (
            "``%s``" % setting.default if setting.default != "" else "(empty)")
        lines += ["   * - ``%s``" % setting.name, "     - %s" % default,
                  "     - %s" % _escape(setting.help)]
    return "\n".join(lines) + "\n"


def _escape(text):
    """Backslash-escape what RST would read as markup in plain help text."""
    text = text.replace("\\", "\\\\").replace("*", "\\*").replace("`", "\\`")
    return re.sub(r"(?<=\w)_(?=\W|$)", r"\\_", text)


def update(text):
    """Return ``text`` with every settings block regenerated."""
    tables = groups()

    def replace(match):
        group = match.group(2)
        body = render_table(tables[group]) if tables.get(group) else "(no settings)\n"
        return match.group(1) + "\n" + body + "\n" + match.group(4)
    return _BLOCK.sub(replace, text)


def documents(root=None):
    """The source tree's README.rst and docs/*.rst files that hold settings blocks."""
    root = root or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    paths = [os.path.join(root, "README.rst")] + sorted(glob.glob(os.path.join(root, "docs", "*.rst")))
    found = []
    for path in paths:
        if os.path.exists(path):
            with open(path, encoding="utf-8") as stream:
                if _BLOCK.search(stream.read()):
                    found.append(path)
    return found


def main(argv=None):
    """Rewrite the settings blocks of each named file (default: documents()) in place."""
    for path in (argv if argv is not None else sys.argv[1:]) or documents():
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
        with open(path, "w", encoding="utf-8") as stream:
            stream.write(update(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
