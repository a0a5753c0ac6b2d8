"""Load an INI file, validate it against the declared settings, freeze it.

The result is a :class:`Config` holding the global settings and one
:class:`ServiceConfig` per ``[service:NAME]`` section, every default filled
in.  Every problem raises :class:`~msgsrv.wire.errors.ConfigError` with a message
naming the file, the section, the key, the rule and the value.
"""

import configparser
import importlib
import os
import re
import stat
import sys
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Mapping, Tuple

from msgsrv import services
from msgsrv.net.peer import format_peer
from msgsrv.wire.errors import ConfigError
from .settings import GLOBAL_SETTINGS, SERVICE_SETTINGS, Setting

#: Where the commands look for the configuration when no --config is given:
#: ``$MSGSRV_CONFIG`` if set, else the first of these files that exists.
CONFIG_ENV = "MSGSRV_CONFIG"
DEFAULT_PATHS = ("/etc/msgsrv/server.ini", "conf/server.ini")
GLOBAL_SECTION = "msgsrv"
SERVICE_PREFIX = "service:"
_SERVICE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_GLOBAL_NAMES = {s.name for s in GLOBAL_SETTINGS}


@dataclass(frozen=True)
class ServiceConfig:
    """One validated service: its name, handler class and every option."""

    name: str
    handler_class: type
    options: Mapping[str, Any]

    def __getitem__(self, key):
        return self.options[key]

    @property
    def transport(self):
        """``tcp`` or ``udp``."""
        return self.options["transport"]

    @property
    def address(self):
        """The ``(host, port)`` pair to bind."""
        return (self.options["host"], self.options["port"])


@dataclass(frozen=True)
class DisabledService:
    """An ``optional = yes`` service whose handler cannot run here: ``reason`` says
    what it needs (``needs pip install msgsrv[web]``); ``options`` as parsed."""

    name: str
    handler: str
    reason: str
    options: Mapping[str, Any]

    @property
    def message(self):
        """``[service:NAME] disabled: REASON``, what the daemon and --check say."""
        return "[%s%s] disabled: %s" % (SERVICE_PREFIX, self.name, self.reason)


@dataclass(frozen=True)
class Config:
    """A validated configuration: global options and the services, in file order.

    ``disabled`` lists the optional services left out (their handler's extra is
    not installed); they are not in ``services``.
    """

    path: str
    options: Mapping[str, Any]
    services: Tuple[ServiceConfig, ...]
    disabled: Tuple[DisabledService, ...] = ()

    def __getitem__(self, key):
        return self.options[key]


def find(environ=None):
    """The configuration file to use when none is given, and why: ``(path, reason)``.

    ``$MSGSRV_CONFIG`` when set (even if that file is missing: reading it then
    says so), else the first of :data:`DEFAULT_PATHS` that exists.  Raises
    ConfigError saying where it looked when there is none.
    """
    environ = os.environ if environ is None else environ
    if environ.get(CONFIG_ENV):
        return environ[CONFIG_ENV], "from $%s" % CONFIG_ENV
    for path in DEFAULT_PATHS:
        if os.path.isfile(path):
            return path, "the first found of %s" % ", ".join(DEFAULT_PATHS)
    raise ConfigError("no configuration file: give --config FILE or set $%s (looked for %s; "
                      "relative to the working directory %s)"
                      % (CONFIG_ENV, ", ".join(DEFAULT_PATHS), os.getcwd()))


def load(path):
    """Read and validate the INI file at ``path``; raise ConfigError if invalid."""
    return from_parser(read(path), path)


def load_global(path):
    """A Config with only the validated ``[msgsrv]`` options of ``path`` and no services
    (a broken service section does not keep the control commands from a daemon)."""
    parser = read(path)
    raw = dict(parser.items(GLOBAL_SECTION)) if parser.has_section(GLOBAL_SECTION) else {}
    options = parse_section("%s: [%s]" % (path, GLOBAL_SECTION), GLOBAL_SETTINGS,
                            {k: v for k, v in raw.items() if k in _GLOBAL_NAMES})
    return Config(path, MappingProxyType(options), ())


def with_options(config, overrides):
    """``config`` with some ``[msgsrv]`` options replaced (command-line overrides,
    already validated)."""
    if not overrides:
        return config
    return replace(config, options=MappingProxyType(dict(config.options, **overrides)))


def read(path):
    """Read the INI file at ``path`` into a ConfigParser, unvalidated; raise ConfigError
    if it cannot be read or is not INI."""
    parser = configparser.ConfigParser(interpolation=None, default_section="\0none")
    parser.optionxform = str  # keys are case-sensitive, like the declarations
    try:
        with open(path, encoding="utf-8") as stream:
            parser.read_file(stream)
    except OSError as exc:
        where = "" if os.path.isabs(path) else "; relative to the working directory %s" % (
            os.getcwd())
        raise ConfigError("%s: cannot read (%s%s)" % (path, exc.strerror or exc, where)) from None
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise ConfigError("%s: not a valid INI file (%s)"
                          % (path, str(exc).splitlines()[0])) from None
    return parser


def from_parser(parser, path="<config>"):
    """Validate an already-read ConfigParser; see :func:`load`."""
    _check_sections(parser, path)
    raw_global = dict(parser.items(GLOBAL_SECTION)) if parser.has_section(GLOBAL_SECTION) else {}
    where = "%s: [%s]" % (path, GLOBAL_SECTION)
    global_raw = {k: v for k, v in raw_global.items() if k in _GLOBAL_NAMES}
    inherited = {k: v for k, v in raw_global.items() if k not in _GLOBAL_NAMES}
    options = parse_section(where, GLOBAL_SETTINGS, global_raw)
    extend_import_path(where, options["plugin_path"])
    parse_section(where, SERVICE_SETTINGS, inherited, partial=True)
    parsed = [_service(path, section[len(SERVICE_PREFIX):], inherited, dict(parser.items(section)))
              for section in parser.sections() if section.startswith(SERVICE_PREFIX)]
    services = tuple(s for s in parsed if isinstance(s, ServiceConfig))
    disabled = tuple(s for s in parsed if isinstance(s, DisabledService))
    _check_duplicates(path, services)
    _check_siblings(path, services, disabled)
    return Config(path, MappingProxyType(options), services, disabled)


def extend_import_path(where, directories):
    """Put the ``plugin_path`` directories first on ``sys.path`` (each once), so the
    handlers named next can be imported from them.

    Raises ConfigError naming the key when one is not a directory or is writable
    by every user (any local user could then run code in the daemon).  A
    directory dropped from the setting stays on the path: modules imported from
    it stay imported anyway.
    """
    for path in directories:
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            raise ConfigError("%s plugin_path: cannot use %s (%s)"
                              % (where, path, exc.strerror or exc)) from None
        if not stat.S_ISDIR(mode):
            raise ConfigError("%s plugin_path: %s is not a directory" % (where, path))
        if mode & stat.S_IWOTH:
            raise ConfigError("%s plugin_path: %s is writable by every user" % (where, path))
    new = [path for path in directories if path not in sys.path]
    if new:
        sys.path[:0] = new
        importlib.invalidate_caches()


def _check_sections(parser, path):
    for section in parser.sections():
        if section == GLOBAL_SECTION:
            continue
        if not section.startswith(SERVICE_PREFIX):
            raise ConfigError("%s: [%s] unknown section (expected [%s] or [%sNAME])"
                              % (path, section, GLOBAL_SECTION, SERVICE_PREFIX))
        name = section[len(SERVICE_PREFIX):]
        if not _SERVICE_NAME.fullmatch(name):
            raise ConfigError("%s: [%s] service name must be 1-64 of A-Z a-z 0-9 _ . - (got %r)"
                              % (path, section, name))


def _service(path, name, inherited, raw):
    where = "%s: [%s%s]" % (path, SERVICE_PREFIX, name)
    merged = dict(inherited)
    merged.update(raw)
    if "handler" not in merged:
        raise ConfigError("%s handler is required (a built-in name or package.module:Class)"
                          % where)
    common = {k: v for k, v in merged.items() if k in _COMMON_NAMES}
    options = parse_section(where, SERVICE_SETTINGS, common)
    try:
        handler_class = services.resolve(options["handler"], options["transport"])
    except ImportError as exc:
        if options["optional"]:
            return DisabledService(name, options["handler"], str(exc), MappingProxyType(options))
        raise ConfigError("%s handler %s" % (where, exc)) from None
    except ValueError as exc:
        raise ConfigError("%s handler %s" % (where, exc)) from None
    declared = services.declared_settings(handler_class)
    shadowing = sorted(s.name for s in declared if s.name in _COMMON_NAMES)
    if shadowing:
        raise ConfigError("%s handler %s declares settings that every service already has: %s"
                          % (where, options["handler"], ", ".join(shadowing)))
    extra = {k: v for k, v in raw.items() if k not in _COMMON_NAMES}
    options.update(parse_section(where, declared, extra))
    missing = services.missing_requirement(handler_class)
    if missing is None:
        return ServiceConfig(name, handler_class, MappingProxyType(options))
    if options["optional"]:
        return DisabledService(name, options["handler"], missing, MappingProxyType(options))
    raise ConfigError("%s handler %s %s (or set optional = yes to start without this service)"
                      % (where, options["handler"], missing))


_COMMON_NAMES = {s.name for s in SERVICE_SETTINGS}


def parse_section(where, settings, raw, partial=False):
    """Parse ``raw`` (key -> INI text) against ``settings``; defaults fill the gaps.

    Unknown keys are errors.  With ``partial`` only the given keys are parsed
    (used to validate inherited defaults early).
    """
    by_name = {s.name: s for s in settings if not s.is_family}
    families = [s for s in settings if s.is_family]
    values = {}
    for key, text in raw.items():
        setting = by_name.get(key) or _family_of(families, key)
        if setting is None:
            raise ConfigError("%s unknown key %r" % (where, key))
        value = _parse_one(where, key, setting, text)
        if setting.is_family:
            values.setdefault(_key_of(setting), {})[key[len(setting.prefix):]] = value
        else:
            values[key] = value
    if partial:
        return values
    _fill_defaults(where, settings, values)
    return {_key_of(s): values[_key_of(s)] for s in settings}


def _key_of(setting):
    return setting.prefix[:-1] if setting.is_family else setting.name


def _family_of(families, key):
    for setting in families:
        if key.startswith(setting.prefix) and len(key) > len(setting.prefix):
            return setting
    return None


def _fill_defaults(where, settings, values):
    for setting in settings:
        if setting.is_family:
            values.setdefault(_key_of(setting), {})
        elif setting.name not in values:
            if setting.default is None:
                values[setting.name] = None
            else:
                values[setting.name] = _parse_one(where, setting.name, setting, setting.default)


def _parse_one(where, key, setting: Setting, text):
    try:
        return setting.parse(text)
    except ValueError as exc:
        shown = getattr(exc, "shown", text)  # a SecretError hides what it refused
        raise ConfigError("%s %s %s (got %r)" % (where, key, exc, shown)) from None


def _check_duplicates(path, services):
    seen = {}
    for service in services:
        if service["port"] == 0:
            continue
        key = (service.transport, service["host"], service["port"])
        if key in seen:
            raise ConfigError("%s: [%s%s] %s %s is already used by [%s%s]"
                              % (path, SERVICE_PREFIX, service.name, key[0],
                                 format_peer(key[1], key[2]), SERVICE_PREFIX, seen[key]))
        seen[key] = service.name


def _check_siblings(path, services, disabled):
    """Each setting a handler declares in ``siblings`` names a service of this file with
    the right kind of service object (empty: none)."""
    by_name = {service.name: service for service in services}
    left_out = {service.name for service in disabled}
    for service in services:
        for key, required in getattr(service.handler_class, "siblings", ()):
            name = service[key]
            if not name or name in left_out:
                continue
            where = "%s: [%s%s] %s" % (path, SERVICE_PREFIX, service.name, key)
            other = by_name.get(name)
            if other is None:
                raise ConfigError("%s names no service of this file (got %r; services: %s)"
                                  % (where, name, ", ".join(sorted(by_name))))
            kind = getattr(other.handler_class, "service_class", None)
            if not (isinstance(kind, type) and issubclass(kind, required)):
                raise ConfigError("%s must name a service whose handler has a %s (got %r, "
                                  "handler %s)" % (where, required.__name__, name,
                                                   other["handler"]))


def format_effective(config):
    """Render the effective configuration (defaults filled in) as INI text."""
    lines = ["[%s]" % GLOBAL_SECTION]
    lines += ["%s = %s" % (k, _show(v)) for k, v in config.options.items()]
    for service in config.services:
        lines += ["", "[%s%s]" % (SERVICE_PREFIX, service.name)]
        for key, value in service.options.items():
            if isinstance(value, dict):
                lines += ["%s.%s = %s" % (key, sub, _show(v)) for sub, v in value.items()]
            else:
                lines.append("%s = %s" % (key, _show(value)))
    for service in config.disabled:
        lines += ["", "[%s%s]" % (SERVICE_PREFIX, service.name), "# " + service.message]
        lines += ["%s = %s" % (key, _show(value)) for key, value in service.options.items()
                  if not isinstance(value, dict)]
    return "\n".join(lines) + "\n"


def _show(value):
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (tuple, list)):
        return ", ".join(str(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
