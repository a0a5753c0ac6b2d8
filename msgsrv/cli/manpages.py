"""Manual pages of the commands, generated from their argparse definitions.

``python -m msgsrv.cli.manpages man/`` writes ``msgsrv.8``, ``msgsrvctl.8`` and
``msgsrv-client.1``; ``--check`` exits 1 if a committed page is out of date.
Each command module declares a :class:`Manual` (``MANUAL``): its parser
factory, and the sections argparse does not know (exit status, signals,
files, environment).  The same exit-status table ends its ``--help``
(:func:`epilog`), so the two cannot disagree.

The synopsis is built here from the parser's actions, not by argparse's
formatter, so a page is the same whatever the Python version or terminal.
"""

import argparse
import importlib
import os
import sys
import textwrap
from dataclasses import dataclass
from typing import Callable, Tuple

from msgsrv import __version__

#: The modules whose MANUAL is rendered, in page order.
COMMANDS = ("msgsrv.__main__", "msgsrv.cli.msgsrvctl", "msgsrv.cli.client")

Rows = Tuple[Tuple[str, str], ...]


@dataclass(frozen=True)
class Manual:
    """What a command's manual page says beyond its options."""

    name: str
    section: int
    summary: str
    parser: Callable[[], argparse.ArgumentParser]
    description: Tuple[str, ...] = ()
    commands: Rows = ()
    exit_status: Rows = ()
    signals: Rows = ()
    files: Rows = ()
    environment: Rows = ()
    see_also: Tuple[str, ...] = ()

    @property
    def filename(self):
        """The page's file name (``msgsrv.8``)."""
        return "%s.%d" % (self.name, self.section)


def table(title, rows, width=79):
    """A ``title:`` block of ``rows`` (key, text) for the end of a ``--help`` (use it with
    ``argparse.RawDescriptionHelpFormatter``)."""
    key_width = max(len(key) for key, _ in rows)
    indent = " " * (key_width + 4)
    lines = ["%s:" % title]
    for key, text in rows:
        lines += textwrap.wrap(text, width, initial_indent="  %-*s  " % (key_width, key),
                               subsequent_indent=indent)
    return "\n".join(lines)


def epilog(exit_status, width=79):
    """The ``exit status:`` block that ends a command's ``--help``."""
    return table("exit status", exit_status, width)


# -- roff ---------------------------------------------------------------------

def _escape(text):
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line[:1] in (".", "'") else line
                     for line in text.split("\n"))


def _bold(text):
    return "\\fB%s\\fR" % _escape(text)


def _italic(text):
    return "\\fI%s\\fR" % _escape(text)


def _metavar(action):
    if action.metavar is not None:
        return action.metavar if isinstance(action.metavar, str) else " ".join(action.metavar)
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        return "{%s}" % ",".join(str(choice) for choice in action.choices)
    return action.dest.upper() if action.option_strings else action.dest


def _takes_value(action):
    return action.nargs != 0


def _synopsis_item(action):
    if not action.option_strings:
        metavar = _italic(_metavar(action))
        if action.nargs in ("*", argparse.REMAINDER):
            return "[%s ...]" % metavar
        if action.nargs == "?":
            return "[%s]" % metavar
        if action.nargs == "+":
            return "%s [%s ...]" % (metavar, metavar)
        return metavar
    item = _bold(action.option_strings[0])
    if _takes_value(action):
        item += " " + _italic(_metavar(action))
    return item


def synopsis(parser, prog):
    """The SYNOPSIS line of ``parser``: options in brackets, mutually exclusive ones
    joined by ``|``, positionals last."""
    grouped = {}
    for group in parser._mutually_exclusive_groups:
        for action in group._group_actions:
            grouped[action] = group
    words, seen = [_bold(prog)], set()
    actions = [a for a in parser._actions if a.help is not argparse.SUPPRESS]
    for action in [a for a in actions if a.option_strings]:
        group = grouped.get(action)
        if group is None:
            words.append("[%s]" % _synopsis_item(action))
        elif group not in seen:
            seen.add(group)
            words.append("[%s]" % " | ".join(_synopsis_item(a) for a in group._group_actions
                                             if a.help is not argparse.SUPPRESS))
    words += [_synopsis_item(a) for a in actions if not a.option_strings]
    return " ".join(words)


def _help_text(action, prog):
    text = action.help or ""
    if "%" in text:
        params = dict(vars(action), prog=prog)
        if action.choices is not None:
            params["choices"] = ", ".join(str(choice) for choice in action.choices)
        text = text % params
    return text


def _options(parser, prog):
    lines = []
    for action in parser._actions:
        if action.help is argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        if action.option_strings:
            names = ", ".join(_bold(name) for name in action.option_strings)
            if _takes_value(action):
                names += " " + _italic(_metavar(action))
        else:
            names = _italic(_metavar(action))
        lines += [".TP", names, _escape(_help_text(action, prog))]
    return lines


def _subcommands(parser, prog):
    lines = []
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help for choice in action._choices_actions}
        for name, sub in action.choices.items():
            lines += [".SS %s" % _escape(name), _escape(helps.get(name) or ""), ".PP",
                      synopsis(sub, "%s %s" % (prog, name))]
            lines += _options(sub, "%s %s" % (prog, name))
    return lines


def _rows(rows, bold=False):
    lines = []
    for key, text in rows:
        lines += [".TP", _bold(key) if bold else _escape(key), _escape(text)]
    return lines


def _paragraphs(paragraphs):
    lines = []
    for paragraph in paragraphs:
        if lines:
            lines.append(".PP")
        lines.append(_escape(paragraph))
    return lines


def render(manual):
    """The roff text of ``manual``'s page."""
    parser = manual.parser()
    prog = manual.name
    kind = "System Manager's Manual" if manual.section == 8 else "User Commands"
    lines = ['.TH %s %d "" "msgsrv %s" "%s"' % (manual.name.upper().replace("-", "\\-"),
                                                 manual.section, __version__, kind),
             ".SH NAME", "%s \\- %s" % (_escape(manual.name), _escape(manual.summary)),
             ".SH SYNOPSIS", synopsis(parser, prog)]
    lines += [".SH DESCRIPTION"] + _paragraphs(manual.description or (parser.description,))
    lines += [".SH OPTIONS"] + _options(parser, prog)
    sections = (("COMMANDS", _rows(manual.commands, bold=True) + _subcommands(parser, prog)),
                ("EXIT STATUS", _rows(manual.exit_status)),
                ("SIGNALS", _rows(manual.signals, bold=True)),
                ("FILES", _rows(manual.files, bold=True)),
                ("ENVIRONMENT", _rows(manual.environment, bold=True)),
                ("SEE ALSO", [", ".join(_escape(page) for page in manual.see_also)]
                 if manual.see_also else []))
    for title, body in sections:
        if body:
            lines += [".SH %s" % title] + body
    return "\n".join(lines) + "\n"


def manuals():
    """Every command's Manual, in :data:`COMMANDS` order."""
    return [importlib.import_module(name).MANUAL for name in COMMANDS]


def main(argv=None):
    """Write (or with --check, compare) every page in the given directory."""
    parser = argparse.ArgumentParser(prog="python -m msgsrv.cli.manpages",
                                     description="Generate the commands' manual pages.")
    parser.add_argument("directory", help="where the pages go (man/ in the source tree)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a page is missing or out of date")
    args = parser.parse_args(argv)
    stale = []
    for manual in manuals():
        path = os.path.join(args.directory, manual.filename)
        text = render(manual)
        try:
            with open(path, encoding="utf-8") as stream:
                current = stream.read()
        except FileNotFoundError:
            current = None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            os.makedirs(args.directory, exist_ok=True)
            with open(path, "w", encoding="utf-8") as stream:
                stream.write(text)
    for path in stale:
        print(("%s is out of date: run python -m msgsrv.cli.manpages %s" % (path, args.directory))
              if args.check else "wrote %s" % path, file=sys.stderr)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
