"""scripts/test-all's own parts: what runs where, the install check, parts run at once."""

import importlib.machinery
import importlib.util
import os
import re
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(60)


def load_test_all():
    loader = importlib.machinery.SourceFileLoader("test_all",
                                                  os.path.join(ROOT, "scripts", "test-all"))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("test_all", loader))
    loader.exec_module(module)
    return module


def test_this_python_covers_the_whole_suite_and_the_others_all_but_the_heavy_part():
    test_all = load_test_all()
    parts = test_all.plan([("3.11", sys.executable), ("3.9.18", "/opt/py39/bin/python")])
    assert [(python, covered) for _, python, _, covered in parts] == [
        (sys.executable, True), (sys.executable, True), ("/opt/py39/bin/python", False)]
    covered = [argv for _, _, argv, is_covered in parts if is_covered]
    heavy = [arg for arg in covered[1] if arg.startswith("tests/")]
    assert heavy == list(test_all.HEAVY) and all(os.path.isdir(os.path.join(ROOT, path))
                                                 for path in heavy)
    for argv in (covered[0], parts[2][2]):
        assert sorted(arg for arg in argv if arg.startswith(("--ignore", "tests/"))) == sorted(
            "--ignore=" + path for path in heavy)
    assert covered[0][:4] == ["-m", "coverage", "run", "-m"] == covered[1][:4]


@pytest.mark.parametrize("requirement, lacking", [
    ("pytest>=1", False), ("pytest", False), ("pytest>=999.1", True),
    ("no-such-package-msgsrv>=1", True), ("pytest<999", True)])
def test_the_install_is_skipped_only_when_every_requirement_is_met(tmp_path, requirement,
                                                                    lacking):
    setup_cfg = tmp_path / "setup.cfg"
    setup_cfg.write_text("[options.extras_require]\ntest =\n    hypothesis>=6\n    %s\n"
                         % requirement)
    found = load_test_all().lacking_test_tools(sys.executable, str(setup_cfg))
    assert found == ([requirement] if lacking else [])


def test_parts_run_at_once_and_each_prints_its_output_whole(tmp_path, capfd):
    test_all = load_test_all()
    flag = str(tmp_path / "fast-ran")
    # The first part ends only once the second has run: it fails unless both run at once.
    slow = ["-c", "import os, time; print('slow 1', flush=True); deadline = time.time() + 30\n"
                  "while not os.path.exists(%r) and time.time() < deadline: time.sleep(0.01)\n"
                  "print('slow 2'); raise SystemExit(not os.path.exists(%r))" % (flag, flag)]
    fast = ["-c", "open(%r, 'w').close(); print('fast'); raise SystemExit(3)" % flag]
    parts = [("slow part", sys.executable, slow, False), ("fast part", sys.executable, fast, False)]
    results = test_all.run_parts(parts, 2, dict(os.environ))
    assert [(label, ok) for label, ok, _ in results] == [("slow part", True), ("fast part", False)]
    out = capfd.readouterr().out
    assert re.search(r"slow part: exit 0 after \d+s; its output:\nslow 1\nslow 2\n", out), out
    assert re.search(r"fast part: exit 3 after \d+s; its output:\nfast\n", out), out
