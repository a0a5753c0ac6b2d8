"""Documentation that must not drift: settings tables, example config, CI command, plugin example."""

import os
import re
import sys
import textwrap

import pytest

from msgsrv.ops import config, settings_doc
from msgsrv.cli import manpages
from msgsrv.wire.frames import CODES
from tests.conftest import ROOT, connect, service_config

pytestmark = pytest.mark.timeout(30)


def read(name):
    with open("%s/%s" % (ROOT, name), encoding="utf-8") as stream:
        return stream.read()


def test_settings_tables_are_generated_from_declarations():
    documents = settings_doc.documents(ROOT)
    assert {os.path.basename(path) for path in documents} >= {
        "CONFIGURATION.rst", "CHAT.rst", "COMMANDS.rst", "FILES.rst", "OPERATING.rst"}
    for path in documents:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
        assert settings_doc.update(text) == text, (
            "%s settings tables are stale: run python -m msgsrv.ops.settings_doc" % path)


def test_every_settings_group_has_a_block_in_the_docs():
    text = "".join(read(os.path.relpath(path, ROOT)) for path in settings_doc.documents(ROOT))
    for group, declared in settings_doc.groups().items():
        if declared:
            assert ".. BEGIN settings:%s\n" % group in text, group


def test_settings_doc_without_arguments_rewrites_every_document(monkeypatch):
    written = []
    monkeypatch.setattr(settings_doc, "documents", lambda root=None: written.append(root) or [])
    assert settings_doc.main([]) == 0
    assert written == [None]


def test_readme_is_the_front_door():
    readme = read("README.rst")
    assert len(readme.splitlines()) < 300
    assert "    python -m msgsrv --config conf/server.ini\n" in readme
    for target in re.findall(r"<(docs/[A-Z]+\.rst)>`_", readme):
        assert os.path.exists(os.path.join(ROOT, target)), target


def test_example_config_shows_every_key_with_its_declared_default():
    text = read("conf/server.ini")
    commented = dict(re.findall(r"^#\s*([a-z_.]+) =[ ]?(.*)$", text, re.M))
    assigned = set(re.findall(r"^([a-z_.]+) =", text, re.M))
    for group, declared in settings_doc.groups().items():
        for setting in declared:
            if setting.is_family:
                assert any(k.startswith(setting.prefix) for k in commented.keys() | assigned), \
                    setting.name
                continue
            assert setting.name in commented or setting.name in assigned, (group, setting.name)
            if setting.name in commented:
                assert commented[setting.name].strip() == (setting.default or ""), setting.name
    config.load("%s/conf/server.ini" % ROOT)


def test_ci_runs_exactly_the_readme_test_command():
    readme = read("README.rst")
    command = re.search(r"^    (python scripts/test-all.*)$", readme, re.M).group(1)
    assert command in read(".ci/run").splitlines()


def test_manual_pages_are_generated_from_the_parsers():
    for manual in manpages.manuals():
        assert read("man/" + manual.filename) == manpages.render(manual), (
            "man/%s is stale: run python -m msgsrv.cli.manpages man/" % manual.filename)


def test_plugin_example_runs(tmp_path, monkeypatch, start_service):
    block = re.search(r"A complete example.*?::\n\n(.*?)(?:\n\S|$)", read("docs/PLUGINS.rst"),
                      re.S).group(1)
    (tmp_path / "upper.py").write_text(textwrap.dedent(block))
    monkeypatch.syspath_prepend(str(tmp_path))
    server = start_service("upper:UpperHandler")
    with connect(server) as sock:
        sock.sendall(b"hello\nwor")
        sock.sendall(b"ld\n")
        got = b""
        while got.count(b"\n") < 2:
            got += sock.recv(100)
    assert got == b"HELLO\nWORLD\n"
    assert service_config("upper:UpperHandler", case="lower")["case"] == "lower"
    sys.modules.pop("upper", None)


def test_protocol_doc_lists_every_frame_error_code():
    protocol = read("docs/PROTOCOL.rst")
    for code in CODES:
        assert "``%s``" % code in protocol, code


def test_manpages_command_writes_then_checks(tmp_path, capsys):
    assert manpages.main([str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "msgsrv-client.1", "msgsrv.8", "msgsrvctl.8"]
    assert manpages.main(["--check", str(tmp_path)]) == 0
    (tmp_path / "msgsrv.8").write_text("old\n")
    assert manpages.main(["--check", str(tmp_path)]) == 1
    assert "msgsrv.8 is out of date: run python -m msgsrv.cli.manpages" in capsys.readouterr().err
    assert (tmp_path / "msgsrv.8").read_text() == "old\n"


def test_msgsrvctl_exit_status_table_matches_the_command():
    from msgsrv.cli import msgsrvctl as ctl
    readme = read("docs/OPERATING.rst")
    table = readme[readme.index("Its exit status is that of an LSB init script:"):]
    table = table[:table.index("``--help`` prints the usage")]
    rows = {int(line.split()[0]) for line in table.splitlines() if re.match(r"\d\s", line)}
    assert rows == set(range(8))
    assert {int(code) for code, _ in ctl.EXIT_STATUS} == rows
