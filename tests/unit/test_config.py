"""Config validation: every rule, and the messages that name file, section, key and value."""

import socketserver
import sys

import pytest

from msgsrv.ops import config, settings
from msgsrv.__main__ import main
from msgsrv.wire.errors import ConfigError
from msgsrv.services.echo.handler import EchoDatagramHandler, EchoHandler

pytestmark = pytest.mark.timeout(30)

VALID = """
[msgsrv]
log_level = debug
idle_timeout = 60

[service:echo]
handler = echo
port = 9000

[service:echo-udp]
handler = echo
transport = udp
port = 9000
"""


class PlainHandler(socketserver.BaseRequestHandler):
    """A user's socketserver handler (tests import it by module:Class)."""

    def handle(self):
        self.request.sendall(b"plain\n")


class NotAHandler:
    """Something that is not a handler."""


def write(tmp_path, text, name="server.ini"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def load_text(tmp_path, text):
    return config.load(write(tmp_path, text))


def error_of(tmp_path, text):
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    return str(info.value)


def test_valid_config_fills_defaults_and_inherits(tmp_path):
    cfg = load_text(tmp_path, VALID)
    assert cfg["log_level"] == "debug"
    tcp, udp = cfg.services
    assert tcp.handler_class is EchoHandler and udp.handler_class is EchoDatagramHandler
    assert tcp.address == ("127.0.0.1", 9000) and udp.transport == "udp"
    assert tcp["idle_timeout"] == 60.0  # inherited from [msgsrv]
    assert tcp["max_connections"] == 1000 and tcp["backlog"] == 1024


def test_port_out_of_range_message_names_everything(tmp_path):
    message = error_of(tmp_path, "[service:echo]\nhandler = echo\nport = 70000\n")
    assert message.endswith("[service:echo] port must be 0..65535 (got '70000')")
    assert message.startswith(str(tmp_path))


@pytest.mark.parametrize("section, problem, expected", [
    ("handler = echo\nport = abc", "", "port must be a whole number (got 'abc')"),
    ("handler = echo\nport = -1", "", "port must be 0..65535 (got '-1')"),
    ("handler = echo\ncolour = red", "", "unknown key 'colour'"),
    ("handler = nosuch", "", "handler must be one of"),
    ("handler = chat\ntransport = udp", "", "does not support transport udp"),
    ("handler = echo\ntransport = sctp", "", "transport must be one of tcp, udp (got 'sctp')"),
    ("handler = echo\nidle_timeout = soon", "", "idle_timeout must be a number of seconds"),
    ("handler = echo\nmax_connections = 0", "", "max_connections must be 1..1000000"),
    ("handler = echo\nmax_pending_output = lots", "", "max_pending_output must be a byte count"),
    ("handler = echo\nhost = not a host!", "", "host must be an IP address or host name"),
    ("port = 1", "", "handler is required"),
    ("handler = no_such_module_xyz:Thing", "", "cannot import 'no_such_module_xyz'"),
    ("handler = tests.unit.test_config:Missing", "", "has no class 'Missing'"),
    ("handler = tests.unit.test_config:NotAHandler", "", "is not a msgsrv Handler"),
    ("handler = msgsrv.services.echo.handler:EchoHandler\ntransport = udp", "",
     "does not support transport udp"),
    ("handler = Bad Name", "", "handler must be a built-in handler name or package.module:Class"),
])
def test_service_rules(tmp_path, section, problem, expected):
    message = error_of(tmp_path, "[service:s1]\n" + section + "\n")
    assert "[service:s1]" in message and expected in message


@pytest.mark.parametrize("text, expected", [
    ("[msgsrv]\nlog_level = loud\n", "[msgsrv] log_level must be one of"),
    ("[msgsrv]\nshutdown_timeout = -1\n", "[msgsrv] shutdown_timeout must be a number"),
    ("[msgsrv]\nwhatever = 1\n", "[msgsrv] unknown key 'whatever'"),
    ("[msgsrv]\nport = 99999\n", "[msgsrv] port must be 0..65535"),
    ("[other]\nx = 1\n", "[other] unknown section"),
    ("[service:bad name]\nhandler = echo\n", "service name must be"),
    ("no section header\n", "not a valid INI file"),
    ("[service:a]\nhandler = echo\n[service:a]\nhandler = echo\n", "not a valid INI file"),
])
def test_global_and_file_rules(tmp_path, text, expected):
    assert expected in error_of(tmp_path, text)


def test_duplicate_host_port_refused_but_tcp_and_udp_may_share(tmp_path):
    message = error_of(tmp_path, "[service:a]\nhandler = echo\nport = 9000\n"
                                 "[service:b]\nhandler = echo\nport = 9000\n")
    assert "[service:b] tcp 127.0.0.1:9000 is already used by [service:a]" in message
    load_text(tmp_path, VALID)  # tcp and udp on 9000 is fine
    load_text(tmp_path, "[service:a]\nhandler = echo\n[service:b]\nhandler = echo\n")  # port 0


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(str(tmp_path / "absent.ini"))


def test_plain_socketserver_handler_plugs_in_on_both_transports(tmp_path):
    for transport in ("tcp", "udp"):
        cfg = load_text(tmp_path, "[service:p]\nhandler = tests.unit.test_config:PlainHandler\n"
                                  "transport = %s\n" % transport)
        assert cfg.services[0].handler_class is PlainHandler


def test_family_settings_gather_into_a_dict():
    family = settings.Setting("command.*", settings.text, None, "commands")
    values = config.parse_section("[x]", (family,), {"command.df": " df -h ", "command.up": "up"})
    assert values == {"command": {"df": "df -h", "up": "up"}}
    assert config.parse_section("[x]", (family,), {}) == {"command": {}}
    with pytest.raises(ConfigError, match="unknown key 'command.'"):
        config.parse_section("[x]", (family,), {"command.": "x"})


@pytest.mark.parametrize("parser, text, value", [
    (settings.size(), "64K", 65536), (settings.size(), "1M", 1 << 20), (settings.size(), "7", 7),
    (settings.size(), "2GiB", 2 << 30), (settings.boolean, "Yes", True),
    (settings.boolean, "off", False), (settings.seconds(), "0.5", 0.5),
    (settings.word_list, "a, b c", ("a", "b", "c")), (settings.host, "::1", "::1"),
    (settings.host, "localhost", "localhost"),
])
def test_parsers_accept(parser, text, value):
    assert parser(text) == value


@pytest.mark.parametrize("parser, text", [
    (settings.size(), "1X"), (settings.size(high=10), "11"), (settings.boolean, "maybe"),
    (settings.seconds(), "nan"), (settings.seconds(high=5), "6"), (settings.integer(1), "0"),
    (settings.host, ""),
])
def test_parsers_refuse(parser, text):
    with pytest.raises(ValueError):
        parser(text)


def test_check_prints_effective_config(tmp_path, capsys):
    assert main(["--config", write(tmp_path, VALID), "--check"]) == 0
    out = capsys.readouterr().out
    assert "[service:echo]\nhandler = echo\ntransport = tcp\nhost = 127.0.0.1\nport = 9000\n" in out
    assert "idle_timeout = 60\n" in out and "log_level = debug\n" in out
    reparsed = load_text(tmp_path, out)  # the output is itself a valid config
    assert [s.options for s in reparsed.services] == [s.options for s in load_text(tmp_path, VALID).services]


def test_check_bad_file_exit_2_with_one_message(tmp_path, capsys):
    path = write(tmp_path, "[service:echo]\nhandler = echo\nport = 70000\n")
    assert main(["--config", path, "--check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["msgsrv: %s: [service:echo] port must be 0..65535 (got '70000')" % path]


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and "msgsrv" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--check" in capsys.readouterr().out


def test_shipped_config_is_valid():
    cfg = config.load("conf/server.ini")
    assert all(s["host"] == "127.0.0.1" for s in cfg.services)
    ports = {(s.name, s.transport, s["port"]) for s in cfg.services}
    assert ("echo", "tcp", 9000) in ports and ("echo-udp", "udp", 9000) in ports


def test_handler_settings_may_not_shadow_service_settings(tmp_path):
    message = error_of(tmp_path, "[service:s]\nhandler = tests.plugins:ShadowingHandler\n")
    assert "declares settings that every service already has: port" in message


def test_plugin_path_goes_first_on_the_import_path_and_plugins_import_from_it(tmp_path,
                                                                              monkeypatch):
    monkeypatch.setattr("sys.path", list(sys.path))
    first, second = tmp_path / "first", tmp_path / "second"
    for directory, answer in ((first, "first"), (second, "second")):
        directory.mkdir()
        (directory / "pathplugin.py").write_text(
            "from msgsrv.plugin import Handler\n\n\nclass Answer(Handler):\n"
            "    answer = %r\n" % answer)
    monkeypatch.chdir(tmp_path)
    cfg = load_text(tmp_path, "[msgsrv]\nplugin_path = first,\n  %s\n"
                              "[service:p]\nhandler = pathplugin:Answer\n" % second)
    assert cfg.options["plugin_path"] == (str(first), str(second))
    assert sys.path[:2] == [str(first), str(second)]
    assert cfg.services[0].handler_class.answer == "first"
    load_text(tmp_path, "[msgsrv]\nplugin_path = %s, %s\n" % (second, first))
    assert sys.path.count(str(first)) == 1  # each directory is added once
    del sys.modules["pathplugin"]


@pytest.mark.parametrize("make, expected", [
    (lambda d: None, "plugin_path: cannot use %s (No such file or directory)"),
    (lambda d: d.write_text(""), "plugin_path: %s is not a directory"),
    (lambda d: (d.mkdir(), d.chmod(0o777)), "plugin_path: %s is writable by every user"),
])
def test_plugin_path_refuses_what_cannot_hold_plugins(tmp_path, monkeypatch, make, expected):
    monkeypatch.setattr("sys.path", list(sys.path))
    where = tmp_path / "plugins"
    make(where)
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, "[msgsrv]\nplugin_path = %s\n" % where)
    assert str(caught.value).endswith("[msgsrv] " + expected % where)
    assert str(where) not in sys.path
