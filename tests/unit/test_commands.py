"""The command table, sans-IO: templates, patterns, limits, run-request checks."""

import os
import re
import shutil

import pytest
from hypothesis import given, strategies as st

from msgsrv.services.command import allowlist as commands
from msgsrv.services.command.allowlist import CommandTable, Placeholder, parse_limits, parse_pattern, parse_template
from msgsrv.wire.errors import ConfigError, ProtocolError
from tests.conftest import service_config

pytestmark = pytest.mark.timeout(30)

ECHO = shutil.which("echo")
PRINTF = shutil.which("printf")


def options(**extra):
    """Validated options of a command service (keys_file is not read here)."""
    return service_config("command", keys_file="/nonexistent", **extra).options


def table(**extra):
    return CommandTable.from_options(options(**extra), "[service:svc]", environ={})


def refusal(code, table_, header, identity="alice", stdin=0):
    with pytest.raises(ProtocolError) as info:
        table_.plan(header, identity, stdin)
    assert info.value.code == code, info.value.message
    return info.value.message


# --- templates ---------------------------------------------------------------

@pytest.mark.parametrize("text, words", [
    ("df -h", (("df",), ("-h",))),
    ("echo {text}", (("echo",), (Placeholder("text"),))),
    ("tail -n{lines} -- {file}", (("tail",), ("-n", Placeholder("lines")), ("--",),
                                  (Placeholder("file"),))),
    ("echo {words*}", (("echo",), (Placeholder("words", True),))),
    ("sh -c 'echo a; echo b'", (("sh",), ("-c",), ("echo a; echo b",))),
    ("find . -exec ls {{}} ;", (("find",), (".",), ("-exec",), ("ls",), ("{}",), (";",))),
    ("echo '' x", (("echo",), ("",), ("x",))),
    ("echo {a}{b}", (("echo",), (Placeholder("a"), Placeholder("b")))),
    ("/bin/echo {x} again {x}", (("/bin/echo",), (Placeholder("x"),), ("again",),
                                 (Placeholder("x"),))),
])
def test_templates_parse_into_words_of_pieces(text, words):
    template = parse_template(text)
    assert template.words == words
    assert str(template) == text


@pytest.mark.parametrize("text, rule", [
    ("", "must name a program"),
    ("echo 'unclosed", "shell-style quoting"),
    ("{prog} -h", "program .* cannot contain a placeholder"),
    ("bin/df -h", "absolute path or a bare name"),
    ("echo {}", "must be {NAME} or {NAME\\*}"),
    ("echo {1x}", "must be {NAME}"),
    ("echo {a b}", "lone '{'"),
    ("echo '{a b}'", "must be {NAME}"),
    ("echo x{words*}", "word of its own"),
    ("echo {a*} {b*}", "only once"),
    ("echo {a*} {a*}", "only once"),
    ("echo {a} {a*}", "only once"),
    ("echo }", "lone '}'"),
    ("echo {", "lone '{'"),
])
def test_bad_templates_name_the_rule(text, rule):
    with pytest.raises(ValueError, match=rule):
        parse_template(text)


def test_expand_substitutes_whole_arguments_only():
    template = parse_template("prog --name={n} {rest*} end")
    argv = template.expand("/bin/prog", {"n": "a b;c", "rest": ["x y", "$(z)"]})
    assert argv == ["/bin/prog", "--name=a b;c", "x y", "$(z)", "end"]


def test_placeholders_in_order_of_first_appearance():
    template = parse_template("p {b} {a} {b} {rest*}")
    assert [p.name for p in template.placeholders] == ["b", "a", "rest"]


# --- other parsers -----------------------------------------------------------

def test_pattern_keeps_its_text_and_compiles():
    pattern = parse_pattern(" [a-z]+ ")
    assert pattern == "[a-z]+" and pattern.regex.fullmatch("abc")
    with pytest.raises(ValueError, match="regular expression"):
        parse_pattern("[a-")


def test_limits_parse_each_known_limit():
    limits = parse_limits("timeout=30 max_output=64K kill_grace=0.5 max_stdin=1K "
                          "workdir='/srv/my dir'")
    assert limits == {"timeout": 30.0, "max_output": 65536, "kill_grace": 0.5,
                      "max_stdin": 1024, "workdir": "/srv/my dir"}
    assert str(limits) == ("kill_grace=0.5 max_output=65536 max_stdin=1024 timeout=30 "
                           "workdir='/srv/my dir'")


@pytest.mark.parametrize("text, rule", [
    ("timeout", "LIMIT=VALUE"),
    ("speed=3", "LIMIT=VALUE .*one of kill_grace, max_output"),
    ("timeout=0", "timeout must be a number of seconds"),
    ("max_output=lots", "max_output must be a byte count"),
    ("workdir=relative", "workdir must be an absolute path"),
    ("timeout='3", "LIMIT=VALUE words"),
])
def test_bad_limits_name_the_rule(text, rule):
    with pytest.raises(ValueError, match=rule):
        parse_limits(text)


def test_config_errors_name_section_and_key():
    with pytest.raises(ConfigError, match=r"\[service:svc\] command.x .*lone"):
        options(**{"command.x": "echo {"})
    with pytest.raises(ConfigError, match=r"\[service:svc\] pattern.x .*regular expression"):
        options(**{"command.x": "echo", "pattern.x": "("})
    with pytest.raises(ConfigError, match=r"workdir must be an absolute path"):
        options(workdir="here")


def test_effective_config_shows_values_as_written():
    from msgsrv.ops.config import format_effective
    from msgsrv.ops.config import Config
    service = service_config("command", keys_file="k", **{
        "command.t": "tail -n {n} /var/log/syslog", "pattern.t": "[0-9]{1,4}",
        "limits.t": "timeout=5"})
    text = format_effective(Config("<t>", {}, (service,)))
    assert "command.t = tail -n {n} /var/log/syslog" in text
    assert "pattern.t = [0-9]{1,4}" in text and "limits.t = timeout=5" in text


# --- building the table ------------------------------------------------------

def test_programs_resolve_to_absolute_paths():
    commands_ = table(**{"command.e": "echo hi", "command.a": ECHO}).commands
    assert commands_["e"].program == ECHO and commands_["a"].program == ECHO


@pytest.mark.parametrize("extra, message", [
    ({"command.x": "no-such-program-xyz"}, r"command.x: program 'no-such-program-xyz' not found"),
    ({"command.x": "/nonexistent/prog"}, r"command.x: program '/nonexistent/prog' is not an exec"),
    ({"command.x": "/dev/null"}, r"command.x: .* is not an executable file"),
    ({"command.x": "echo", "path": "/nonexistent"}, r"not found in path /nonexistent"),
    ({"command.x-y.z": "echo"}, r"command.x-y.z: command name must match"),
    ({"describe.x": "hello"}, r"describe.x: there is no command.x"),
    ({"keys.x": "alice"}, r"keys.x: there is no command.x"),
    ({"limits.x": "timeout=1"}, r"limits.x: there is no command.x"),
    ({"pattern.x": "a"}, r"pattern.x: there is no command.x"),
    ({"command.x": "echo {a}", "pattern.x.b": "a"}, r"pattern.x.b: command.x has no placeholder"),
    ({"workdir": "/nonexistent"}, r"workdir: '/nonexistent' is not an existing"),
    ({"command.x": "echo", "limits.x": "workdir=/nonexistent"}, r"limits.x workdir: "),
    ({"passenv": "OK, BAD-NAME"}, r"passenv: 'BAD-NAME' is not a valid environment variable"),
    ({"env.1X": "v"}, r"env.1X: '1X' is not a valid environment variable"),
])
def test_start_up_errors_name_the_key(extra, message):
    with pytest.raises(ConfigError, match=r"\[service:svc\] .*" + message):
        table(**extra)


def test_environment_is_path_lang_passenv_then_env():
    opts = options(passenv="KEEP MISSING", path="/bin", lang="C", **{"env.TZ": "UTC",
                                                                       "env.KEEP": "over"})
    environ = {"KEEP": "kept", "SECRET": "no", "HOME": "/root"}
    assert commands.build_environment(opts, environ=environ) == {
        "PATH": "/bin", "LANG": "C", "KEEP": "over", "TZ": "UTC"}
    opts = options(passenv="KEEP")
    assert commands.build_environment(opts, environ=environ)["KEEP"] == "kept"


# --- run requests ------------------------------------------------------------

@pytest.fixture
def sample():
    return table(**{
        "command.df": "df -h",
        "command.say": "echo {words*}",
        "command.tail": "tail -n {lines} {file}", "pattern.tail.lines": "[0-9]{1,4}",
        "pattern.tail": "/var/log/[a-z]+",
        "command.greet": "echo hello {name}", "keys.greet": "alice, bob",
        "describe.greet": "Say hello.", "command.off": "echo", "keys.off": "",
        "command.slow": "sleep 1", "limits.slow": "timeout=60 max_stdin=10 workdir=/tmp"})


def test_plan_builds_the_argv_and_limits(sample):
    plan = sample.plan({"type": "run", "command": "tail", "args": ["20", "/var/log/syslog"]},
                       "carol")
    assert plan.name == "tail"
    assert plan.argv == (shutil.which("tail"), "-n", "20", "/var/log/syslog")
    assert plan.limits == commands.Limits(10.0, 1.0, 1 << 20, 0, "/")
    assert sample.plan({"command": "df"}, "x").argv == (shutil.which("df"), "-h")
    assert sample.plan({"command": "say", "args": []}, "x").argv == (ECHO,)
    slow = sample.plan({"command": "slow"}, "x", 10)
    assert slow.limits == commands.Limits(60.0, 1.0, 1 << 20, 10, "/tmp")


def test_unknown_and_malformed_requests(sample):
    assert "no command named 'rm'" in refusal("unknown-command", sample, {"command": "rm"})
    refusal("bad-request", sample, {"type": "run"})
    refusal("bad-request", sample, {"command": ["df"]})
    long_name = refusal("unknown-command", sample, {"command": "x" * 1000})
    assert len(long_name) < 100


def test_keys_restrict_who_may_run(sample):
    assert sample.plan({"command": "greet", "args": ["you"]}, "bob").argv[-1] == "you"
    assert "key carol may not run greet" in refusal(
        "denied", sample, {"command": "greet", "args": ["you"]}, identity="carol")
    refusal("denied", sample, {"command": "off"}, identity="alice")


def test_list_shows_only_what_the_key_may_run(sample):
    visible = sample.visible("carol")
    names = [entry["name"] for entry in visible["commands"]]
    assert names == ["df", "say", "slow", "tail"] and visible["allow_any"] is False
    greet = [e for e in sample.visible("alice")["commands"] if e["name"] == "greet"][0]
    assert greet == {"name": "greet", "description": "Say hello.", "usage": "greet NAME",
                     "args": [{"name": "name", "pattern": commands.DEFAULT_PATTERN,
                               "repeat": False}]}
    tail = [e for e in visible["commands"] if e["name"] == "tail"][0]
    assert tail["usage"] == "tail LINES FILE"
    assert [a["pattern"] for a in tail["args"]] == ["[0-9]{1,4}", "/var/log/[a-z]+"]
    say = [e for e in visible["commands"] if e["name"] == "say"][0]
    assert say["usage"] == "say [WORDS...]"


@pytest.mark.parametrize("args, rule", [
    (["20"], r"tail takes 2 arguments \(usage: tail LINES FILE\), got 1"),
    (["20", "/var/log/syslog", "x"], "got 3"),
    (["-20", "/var/log/syslog"], r"argument 1 \(LINES\) of tail must match \[0-9\]\{1,4\}"),
    (["20", "/var/log/../../etc/shadow"], r"argument 2 \(FILE\)"),
    (["20", "/var/log/syslog\n"], r"argument 2 \(FILE\)"),
    ("20 /var/log/syslog", "args must be a list"),
    ([20, "/var/log/syslog"], "argument 1 must be a string"),
    (["2\x000", "/var/log/syslog"], "without NUL"),
    (["x" * 5000, "/var/log/syslog"], "at most 4096"),
    (["1"] * 65, "at most 64"),
])
def test_arguments_are_counted_and_matched_in_full(sample, args, rule):
    assert re.search(rule, refusal("bad-args", sample, {"command": "tail", "args": args}))


def test_default_pattern_refuses_options_and_shell_syntax(sample):
    for bad in ["-n", "--help", "a b", "$(id)", "a;b", "*", "", ".hidden", "x" * 65]:
        refusal("bad-args", sample, {"command": "say", "args": ["ok", bad]})
    for good in ["ok", "file.txt", "a-b_c", "2024"]:
        assert sample.plan({"command": "say", "args": [good]}, "x").argv[-1] == good


def test_variadic_needs_at_least_the_fixed_arguments():
    t = table(**{"command.cp": "cp {files*} {dest}"})
    assert t.plan({"command": "cp", "args": ["a", "b", "c"]}, "x").argv[1:] == ("a", "b", "c")
    assert "at least 1 argument " in refusal("bad-args", t, {"command": "cp", "args": []})


def test_stdin_is_bounded(sample):
    assert "exceeds max_stdin=0" in refusal("too-large", sample, {"command": "df"}, stdin=1)
    refusal("too-large", sample, {"command": "slow"}, stdin=11)


@given(st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0\n"),
                        max_size=40), max_size=10))
def test_any_argument_list_becomes_exactly_those_argv_elements(args):
    t = CommandTable({"say": _say_command()}, limits=commands.Limits(1, 1, 1, 0, "/"),
                     path="/bin", environment={})
    assert t.plan({"command": "say", "args": args}, "x").argv == (ECHO, "--") + tuple(args)


def _say_command():
    template = parse_template("echo -- {words*}")
    return commands.Command("say", template, ECHO, {"words": parse_pattern(".*")}, None, "",
                            commands.Limits(1, 1, 1, 0, "/"))


# --- allow_any ---------------------------------------------------------------

def test_argv_requests_need_allow_any(sample):
    assert "allow_any = no" in refusal("denied", sample, {"argv": ["echo", "hi"]})


def test_allow_any_runs_any_program_for_allowed_keys():
    t = table(allow_any="yes", allow_any_keys="root-ops")
    plan = t.plan({"argv": ["echo", "a;b", "$(x)"]}, "root-ops")
    assert plan.name == commands.ANY and plan.argv == (ECHO, "a;b", "$(x)")
    assert t.visible("root-ops")["allow_any"] is True and t.visible("bob")["allow_any"] is False
    refusal("denied", t, {"argv": ["echo"]}, identity="bob")
    refusal("bad-args", t, {"argv": []}, identity="root-ops")
    refusal("bad-args", t, {"argv": "echo hi"}, identity="root-ops")
    refusal("unknown-command", t, {"argv": ["no-such-program-xyz"]}, identity="root-ops")
    refusal("unknown-command", t, {"argv": ["./echo"]}, identity="root-ops")
    assert table(allow_any="yes").plan({"argv": [PRINTF]}, "anyone").argv == (PRINTF,)


def test_resolve_program_rules(tmp_path):
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(ValueError, match="not an executable"):
        commands.resolve_program(str(script), "/bin")
    os.chmod(script, 0o755)
    assert commands.resolve_program("script", str(tmp_path)) == str(script)
    with pytest.raises(ValueError, match="not an executable"):
        commands.resolve_program(str(tmp_path), "/bin")
