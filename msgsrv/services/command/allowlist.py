"""Allow-listed commands, sans-IO: config text in, a validated argv out.

A command service declares each command as an argv template
(``command.df = df -h``, ``command.echo = echo {words*}``).  The template is
split into words the way a POSIX shell splits them, but nothing is ever run
by a shell: each word becomes exactly one argv element.  ``{NAME}`` inside a
word is replaced by one client argument, ``{NAME*}`` (a word of its own) by
zero or more, each its own argv element.  Every client argument must match
its pattern in full (``pattern.CMD`` or ``pattern.CMD.NAME``, default
:data:`DEFAULT_PATTERN`).

:class:`CommandTable` holds the commands of one service and turns a ``run``
request header into a :class:`Plan` or raises ProtocolError with the wire
code (``bad-request``, ``unknown-command``, ``denied``, ``bad-args``,
``too-large``).  The only I/O here is resolving program paths at start-up
(and per request under ``allow_any``).
"""

import os
import re
import shlex
import shutil
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, FrozenSet, Mapping, Optional, Tuple

from msgsrv.ops.settings import Setting, boolean, integer, seconds, size, text, word_list
from msgsrv.wire.errors import ConfigError, ProtocolError
from msgsrv.wire.frames import shown

COMMAND_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")
ARG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Pattern of a placeholder nobody configured: a plain word that cannot be an option.
DEFAULT_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}"
MAX_ARGS = 64            # client arguments per request
MAX_ARG_LENGTH = 4096    # characters per client argument
ANY = "*"                # the command name of allow_any runs, in replies and logs

_PIECE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")

#: wire code -> meaning, for every refusal :meth:`CommandTable.plan` raises.
CODES = {
    "bad-request": "the request is not a valid run or list request",
    "unknown-command": "no command of that name is configured",
    "denied": "the authenticated key may not run that command",
    "bad-args": "wrong number of arguments, or one breaks its pattern",
    "too-large": "the request body (standard input) exceeds max_stdin",
}


# --- values parsed from the config -------------------------------------------

@dataclass(frozen=True)
class Placeholder:
    """``{name}`` (one argument) or ``{name*}`` (``repeat``: zero or more)."""

    name: str
    repeat: bool = False

    def __str__(self):
        return "{%s%s}" % (self.name, "*" if self.repeat else "")


@dataclass(frozen=True)
class Template:
    """A parsed ``command.NAME`` value: words, each a tuple of str and Placeholder pieces."""

    text: str
    words: Tuple[Tuple[Any, ...], ...]

    def __str__(self):
        return self.text

    @property
    def program(self):
        """The first word, as written (an absolute path or a bare name)."""
        return self.words[0][0]

    @property
    def placeholders(self):
        """The placeholders in order of first appearance, each once."""
        seen = {}
        for word in self.words:
            for piece in word:
                if isinstance(piece, Placeholder):
                    seen.setdefault(piece.name, piece)
        return tuple(seen.values())

    def expand(self, program, values):
        """The argv: ``program`` first, then each word with ``values`` substituted."""
        argv = [program]
        for word in self.words[1:]:
            if len(word) == 1 and isinstance(word[0], Placeholder) and word[0].repeat:
                argv.extend(values[word[0].name])
            else:
                argv.append("".join(values[p.name] if isinstance(p, Placeholder) else p
                                    for p in word))
        return argv


class Pattern(str):
    """A ``pattern.*`` value: the regular expression text, with ``.regex`` compiled."""

    regex = None


class LimitOverrides(dict):
    """A ``limits.NAME`` value: {limit: parsed value}; prints as it is written."""

    def __str__(self):
        return " ".join("%s=%s" % (k, shlex.quote(_format_number(v)))
                        for k, v in sorted(self.items()))


def parse_template(value):
    """Parser for ``command.NAME``: a Template, or ValueError naming the broken rule."""
    try:
        words = shlex.split(value)
    except ValueError as exc:
        raise ValueError("must be a program and its arguments in shell-style quoting (%s)"
                         % exc) from None
    if not words:
        raise ValueError("must name a program")
    template = Template(value.strip(), tuple(_parse_word(word) for word in words))
    _check_template(template)
    return template


def _parse_word(word):
    pieces, literal, pos = [], "", 0
    for match in _PIECE.finditer(word):
        literal += word[pos:match.start()]
        pos = match.end()
        if match.group(0) in ("{{", "}}"):
            literal += match.group(0)[0]
        elif match.group(1) is None:
            raise ValueError("has a lone %r; write {{ or }} for a literal brace" % match.group(0))
        else:
            pieces += [literal] if literal else []
            pieces.append(_placeholder(match.group(1)))
            literal = ""
    literal += word[pos:]
    return tuple(pieces + [literal] if literal or not pieces else pieces)


def _placeholder(inner):
    repeat = inner.endswith("*")
    name = inner[:-1] if repeat else inner
    if not ARG_NAME.fullmatch(name):
        raise ValueError("placeholder {%s} must be {NAME} or {NAME*} with NAME matching %s"
                         % (inner, ARG_NAME.pattern))
    return Placeholder(name, repeat)


def _check_template(template):
    first = template.words[0]
    if len(first) != 1 or not isinstance(first[0], str):
        raise ValueError("the program (first word) cannot contain a placeholder")
    if "/" in template.program and not template.program.startswith("/"):
        raise ValueError("the program must be an absolute path or a bare name looked up in path")
    pieces = [(piece, len(word)) for word in template.words for piece in word
              if isinstance(piece, Placeholder)]
    repeats = [piece for piece, _ in pieces if piece.repeat]
    if any(piece.repeat and length != 1 for piece, length in pieces):
        raise ValueError("a {NAME*} placeholder must be a word of its own")
    singles = {piece.name for piece, _ in pieces if not piece.repeat}
    if len(repeats) > 1 or singles.intersection(p.name for p in repeats):
        raise ValueError("a {NAME*} placeholder may appear only once")


def parse_pattern(value):
    """Parser for ``pattern.*``: a regular expression matched against whole arguments."""
    value = value.strip()
    try:
        compiled = re.compile(value)
    except re.error as exc:
        raise ValueError("must be a regular expression (%s)" % exc) from None
    pattern = Pattern(value)
    pattern.regex = compiled
    return pattern


def parse_directory(value):
    """Parser for a working directory: an absolute path (its existence is checked at start-up)."""
    value = value.strip()
    if not os.path.isabs(value):
        raise ValueError("must be an absolute path")
    return value


LIMIT_PARSERS = {
    "timeout": seconds(0.1, 86400),
    "kill_grace": seconds(0, 60),
    "max_output": size(0, 1 << 30),
    "max_stdin": size(0, 1 << 30),
    "workdir": parse_directory,
}


def parse_limits(value):
    """Parser for ``limits.NAME``: ``LIMIT=VALUE`` words (shell-style quoting).

    LIMIT is a key of LIMIT_PARSERS; ValueError names the broken rule.
    """
    overrides = LimitOverrides()
    try:
        items = shlex.split(value)
    except ValueError as exc:
        raise ValueError("must be LIMIT=VALUE words (%s)" % exc) from None
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or key not in LIMIT_PARSERS:
            raise ValueError("must be LIMIT=VALUE words with LIMIT one of %s (got %r)"
                             % (", ".join(sorted(LIMIT_PARSERS)), item))
        try:
            overrides[key] = LIMIT_PARSERS[key](raw)
        except ValueError as exc:
            raise ValueError("%s %s" % (key, exc)) from None
    return overrides


def _format_number(value):
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


SETTINGS = (
    Setting("command.*", parse_template, None,
            "command.NAME = PROGRAM ARGS...: an allowed command. Words are split like a "
            "shell splits them but no shell ever runs; {ARG} takes one client argument, "
            "{ARG*} (a word of its own) zero or more."),
    Setting("describe.*", text, None, "describe.NAME = TEXT: shown by the list request."),
    Setting("pattern.*", parse_pattern, None,
            "pattern.NAME (every argument of NAME) or pattern.NAME.ARG (one placeholder): a "
            "regular expression each client argument must match in full; default "
            + DEFAULT_PATTERN + "."),
    Setting("keys.*", word_list, None,
            "keys.NAME = KEY, KEY...: only these keys may run NAME (default: every key; "
            "empty: nobody)."),
    Setting("limits.*", parse_limits, None,
            "limits.NAME = timeout=30 max_output=64K workdir=/srv: per-command values of "
            "timeout, kill_grace, max_output, max_stdin and workdir."),
    Setting("timeout", LIMIT_PARSERS["timeout"], "10",
            "Seconds a command may run; then its whole process group is killed."),
    Setting("kill_grace", LIMIT_PARSERS["kill_grace"], "1",
            "Seconds between SIGTERM and SIGKILL when a process group is killed."),
    Setting("max_output", LIMIT_PARSERS["max_output"], "1M",
            "Bytes of stdout, and of stderr, sent per run; the rest is read and discarded."),
    Setting("max_stdin", LIMIT_PARSERS["max_stdin"], "0",
            "Bytes of request body fed to the command's stdin (at most max_body); 0: stdin "
            "is /dev/null and a body is refused."),
    Setting("max_concurrent", integer(1, 1000), "4",
            "Commands running at once in this service (all worker processes together); "
            "more are refused with busy."),
    Setting("workdir", parse_directory, "/", "Working directory of commands (absolute)."),
    Setting("path", text, "/usr/local/bin:/usr/bin:/bin",
            "PATH given to commands, also used to find bare program names at start-up."),
    Setting("lang", text, "C.UTF-8", "LANG given to commands."),
    Setting("passenv", word_list, "",
            "Names of daemon environment variables passed on to commands (default: none)."),
    Setting("env.*", text, None, "env.NAME = VALUE: a variable set for every command."),
    Setting("allow_any", boolean, "no",
            "DANGEROUS: yes lets a client run any program with any arguments (no shell, "
            "still authenticated, still limited)."),
    Setting("allow_any_keys", word_list, "",
            "With allow_any: keys allowed to run any program (empty: every key)."),
    Setting("user", text, "",
            "User (name or uid) commands run as when the daemon runs as root; a daemon "
            "that is not root runs them as itself. Empty: the daemon's user, which must "
            "not be root unless run_as_root = yes."),
    Setting("group", text, "",
            "Group commands run as when the daemon runs as root (empty: the user's "
            "primary group); supplementary groups are the user's own."),
    Setting("run_as_root", boolean, "no",
            "DANGEROUS: yes lets commands run as root (a root daemon with no user here "
            "or in [msgsrv]); otherwise such a service refuses to start."),
)


# --- the table ---------------------------------------------------------------

@dataclass(frozen=True)
class Limits:
    """How one run is bounded: seconds, SIGTERM-to-SIGKILL grace, bytes of output per
    stream, bytes of stdin, and the working directory."""

    timeout: float
    kill_grace: float
    max_output: int
    max_stdin: int
    workdir: str


@dataclass(frozen=True)
class Plan:
    """A run request that passed every check: the argv to execute and its limits."""

    name: str
    argv: Tuple[str, ...]
    limits: Limits


@dataclass(frozen=True)
class Command:
    """One configured command, its program resolved to an absolute path."""

    name: str
    template: Template
    program: str
    patterns: Mapping[str, Pattern]
    keys: Optional[FrozenSet[str]]
    description: str
    limits: Limits

    def allows(self, identity):
        """True if the key ``identity`` may run this command."""
        return self.keys is None or identity in self.keys

    @property
    def usage(self):
        """``NAME ARG [ARGS...]`` built from the placeholders."""
        return " ".join([self.name] + [
            "[%s...]" % p.name.upper() if p.repeat else p.name.upper()
            for p in self.template.placeholders])

    def describe(self):
        """The entry of the list reply."""
        return {"name": self.name, "description": self.description, "usage": self.usage,
                "args": [{"name": p.name, "pattern": str(self.patterns[p.name]),
                          "repeat": p.repeat} for p in self.template.placeholders]}

    def argv(self, args):
        """The argv for client ``args``; ProtocolError ``bad-args`` if they do not fit."""
        values = self._assign(args)
        for position, (name, value) in enumerate(_flatten(values), 1):
            if not self.patterns[name].regex.fullmatch(value):
                raise ProtocolError("bad-args", "argument %d (%s) of %s must match %s"
                                    % (position, name.upper(), self.name, self.patterns[name]))
        return tuple(self.template.expand(self.program, values))

    def _assign(self, args):
        places = self.template.placeholders
        fixed = sum(1 for p in places if not p.repeat)
        repeat = len(places) > fixed
        if len(args) < fixed or (not repeat and len(args) != fixed):
            raise ProtocolError("bad-args", "%s takes %s%d argument%s (usage: %s), got %d" % (
                self.name, "at least " if repeat else "", fixed, "" if fixed == 1 else "s",
                self.usage, len(args)))
        rest, values = iter(args), {}
        for place in places:
            count = len(args) - fixed if place.repeat else 1
            taken = [next(rest) for _ in range(count)]
            values[place.name] = taken if place.repeat else taken[0]
        return values


def _flatten(values):
    for name, value in values.items():
        for each in (value if isinstance(value, list) else [value]):
            yield name, each


class CommandTable:
    """The commands one service may run, and the checks every run request passes."""

    def __init__(self, commands, *, limits, path, environment, allow_any=False, any_keys=()):
        self.commands = MappingProxyType(dict(commands))
        self.limits = limits
        self.path = path
        self.environment = MappingProxyType(dict(environment))
        self.allow_any = allow_any
        self.any_keys = frozenset(any_keys)

    @classmethod
    def from_options(cls, options, where="", environ=None):
        """Build the table from validated service options.

        Resolves each program in ``path`` and checks the working directories.
        Raises ConfigError naming ``where`` and the key for a missing or
        non-executable program, a missing directory, a family key naming no
        command or placeholder, or a bad environment variable name.
        """
        _check_references(options, where)
        limits = Limits(options["timeout"], options["kill_grace"], options["max_output"],
                        options["max_stdin"], options["workdir"])
        _check_directory(where, "workdir", limits.workdir)
        commands = {name: _build_command(options, where, name, limits)
                    for name in options["command"]}
        return cls(commands, limits=limits, path=options["path"],
                   environment=build_environment(options, where, environ),
                   allow_any=options["allow_any"], any_keys=options["allow_any_keys"])

    def visible(self, identity):
        """The list reply body: the commands ``identity`` may run, sorted by name."""
        return {"commands": [self.commands[name].describe() for name in sorted(self.commands)
                             if self.commands[name].allows(identity)],
                "allow_any": self.allow_any and self._any_allowed(identity)}

    def plan(self, header, identity, stdin_size=0):
        """Check a run request header; return a Plan or raise ProtocolError (see CODES)."""
        if header.get("argv") is not None:  # null means absent, as for every optional field
            return self._plan_any(header["argv"], identity, stdin_size)
        name = header.get("command")
        if not isinstance(name, str):
            raise ProtocolError("bad-request", "a run request needs a string 'command' "
                                               "(or 'argv' where allow_any is on)")
        command = self.commands.get(name)
        if command is None:
            raise ProtocolError("unknown-command", "no command named %s" % brief(name))
        if not command.allows(identity):
            raise ProtocolError("denied", "key %s may not run %s" % (identity, name))
        args = header.get("args")
        argv = command.argv(check_args([] if args is None else args))
        _check_stdin(stdin_size, command.limits)
        return Plan(name, argv, command.limits)

    def _any_allowed(self, identity):
        return not self.any_keys or identity in self.any_keys

    def _plan_any(self, argv, identity, stdin_size):
        if not self.allow_any:
            raise ProtocolError("denied", "this service runs only configured commands "
                                          "(allow_any = no)")
        if not self._any_allowed(identity):
            raise ProtocolError("denied", "key %s may not run arbitrary programs" % identity)
        argv = check_args(argv)
        if not argv:
            raise ProtocolError("bad-args", "argv must name a program")
        try:
            program = resolve_program(argv[0], self.path)
        except ValueError as exc:
            raise ProtocolError("unknown-command", "%s %s" % (brief(argv[0]), exc)) from None
        _check_stdin(stdin_size, self.limits)
        return Plan(ANY, (program,) + tuple(argv[1:]), self.limits)


def check_args(args):
    """Return ``args`` as a list if it is a list of at most MAX_ARGS plain strings.

    Raises ProtocolError ``bad-args`` otherwise (too many, too long, not a
    string, or holding a NUL character, which no argv element can carry).
    """
    if not isinstance(args, list) or len(args) > MAX_ARGS:
        raise ProtocolError("bad-args", "args must be a list of at most %d strings" % MAX_ARGS)
    for position, arg in enumerate(args, 1):
        if not isinstance(arg, str) or len(arg) > MAX_ARG_LENGTH or "\0" in arg:
            raise ProtocolError("bad-args", "argument %d must be a string of at most %d "
                                            "characters without NUL" % (position, MAX_ARG_LENGTH))
    return list(args)


def _check_stdin(stdin_size, limits):
    if stdin_size > limits.max_stdin:
        raise ProtocolError("too-large", "standard input of %d bytes exceeds max_stdin=%d"
                            % (stdin_size, limits.max_stdin))


def brief(value, limit=64):
    """``value`` as messages and logs show it (see :func:`msgsrv.wire.frames.shown`)."""
    return shown(value, limit)


def resolve_program(program, path):
    """The absolute path of an executable: ``program`` itself if absolute, else found in ``path``.

    Raises ValueError saying what is wrong (relative path, not found, not executable).
    """
    if not program.startswith("/"):
        if "/" in program:
            raise ValueError("must be an absolute path or a bare name")
        found = shutil.which(program, path=path)
        if found is None:
            raise ValueError("not found in path %s" % path)
        program = found
    if not os.path.isfile(program) or not os.access(program, os.X_OK):
        raise ValueError("is not an executable file")
    return os.path.abspath(program)


def build_environment(options, where="", environ=None):
    """The whole environment of a command: PATH, LANG, passenv, then env.* (which wins).

    Raises ConfigError for a variable name that is not ``[A-Za-z_][A-Za-z0-9_]*``.
    """
    environ = os.environ if environ is None else environ
    result = {"PATH": options["path"], "LANG": options["lang"]}
    for name in options["passenv"]:
        _check_env_name(where, "passenv", name)
        if name in environ:
            result[name] = environ[name]
    for name, value in options["env"].items():
        _check_env_name(where, "env." + name, name)
        result[name] = value
    return result


def _check_env_name(where, key, name):
    if not ENV_NAME.fullmatch(name):
        raise ConfigError("%s %s: %r is not a valid environment variable name (%s)"
                          % (where, key, name, ENV_NAME.pattern))


def _check_references(options, where):
    names = options["command"]
    for name in names:
        if not COMMAND_NAME.fullmatch(name):
            raise ConfigError("%s command.%s: command name must match %s"
                              % (where, name, COMMAND_NAME.pattern))
    for family in ("describe", "keys", "limits"):
        for name in options[family]:
            if name not in names:
                raise ConfigError("%s %s.%s: there is no command.%s" % (where, family, name, name))
    for key in options["pattern"]:
        name, _, arg = key.partition(".")
        if name not in names:
            raise ConfigError("%s pattern.%s: there is no command.%s" % (where, key, name))
        if arg and arg not in {p.name for p in names[name].placeholders}:
            raise ConfigError("%s pattern.%s: command.%s has no placeholder {%s}"
                              % (where, key, name, arg))


def _build_command(options, where, name, limits):
    template = options["command"][name]
    try:
        program = resolve_program(template.program, options["path"])
    except ValueError as exc:
        raise ConfigError("%s command.%s: program %r %s" % (where, name, template.program, exc)) \
            from None
    limits = replace(limits, **options["limits"].get(name, {}))
    if limits.workdir != options["workdir"]:
        _check_directory(where, "limits.%s workdir" % name, limits.workdir)
    return Command(name, template, program, _patterns(options, name, template),
                   _keys(options, name), options["describe"].get(name, ""), limits)


def _keys(options, name):
    keys = options["keys"].get(name)
    return None if keys is None else frozenset(keys)


def _patterns(options, name, template):
    common = options["pattern"].get(name) or parse_pattern(DEFAULT_PATTERN)
    return MappingProxyType({p.name: options["pattern"].get("%s.%s" % (name, p.name), common)
                             for p in template.placeholders})


def _check_directory(where, key, directory):
    if not os.path.isdir(directory):
        raise ConfigError("%s %s: %r is not an existing directory" % (where, key, directory))
