"""docs/DESIGN.rst's layout tree names every module of msgsrv/, and only modules that exist."""

import os

from tests.conftest import ROOT


def tree_paths():
    """The file paths the tree in docs/DESIGN.rst ("Layout") lists under msgsrv/."""
    with open(os.path.join(ROOT, "docs", "DESIGN.rst"), encoding="utf-8") as stream:
        lines = stream.read().split("\n")
    start = lines.index("    msgsrv/")
    paths, stack = set(), []
    for line in lines[start + 1:]:
        if not line.startswith("      ") or not line.strip():
            break
        depth = (len(line) - len(line.lstrip()) - 6) // 2
        token = line.split()[0]
        stack[depth:] = []
        if token.endswith("/"):
            stack.append(token)
        elif token.endswith(".py"):
            paths.add("".join(stack) + token)
    return paths


def test_the_design_tree_lists_every_module():
    modules = set()
    for directory, _, files in os.walk(os.path.join(ROOT, "msgsrv")):
        for name in files:
            relative = os.path.relpath(os.path.join(directory, name), os.path.join(ROOT, "msgsrv"))
            if name.endswith(".py") and (name != "__init__.py" or relative == "__init__.py"):
                modules.add(relative)
    assert tree_paths() == modules
