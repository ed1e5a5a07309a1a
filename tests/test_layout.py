"""The package's layout: data flows one way, so a lower module never imports a higher one.

A subpackage (a folder with `__init__.py`, such as `store`) is one layer, named by its
folder: its modules may import one another, and together they obey the order."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "archiver"

# Lowest first. A module may import only modules listed before it (the emulator is a
# separate component that only `demo` uses, and it may use only `kinds`).
ORDER = [
    "kinds", "errors", "log", "windows", "config", "options", "metrics", "graph",
    "schema", "store", "manifest", "spool", "sinks", "reconcile",
    "archive", "pipeline", "ops",
    "cli", "__main__",
]  # fmt: skip


def imported(path: Path) -> set[str]:
    """The archiver modules a source file imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("archiver"):
            parts = node.module.split(".")
            found.update(parts[1:2] or [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("archiver."))
    return found - {"__version__"}


def layers() -> dict[str, list[Path]]:
    """Each layer's source files: a module by its stem, a subpackage by its folder's name
    (the emulator, a component of its own, is left out)."""
    found = {p.stem: [p] for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    for init in PACKAGE.glob("*/__init__.py"):
        if init.parent.name != "emulator":
            found[init.parent.name] = sorted(init.parent.glob("*.py"))
    return found


def test_every_module_imports_only_modules_below_it() -> None:
    """No module imports one above it in ORDER, and ORDER names every module and subpackage."""
    found = layers()
    assert sorted(found) == sorted(ORDER)
    upward = [
        (name, dep)
        for name in ORDER
        for dep in sorted(set().union(*(imported(p) for p in found[name])) - {name})
        if dep != "emulator" and ORDER.index(dep) > ORDER.index(name)
    ]
    assert [] == upward


def test_the_emulator_depends_on_nothing_but_kinds() -> None:
    """The Graph emulator stands apart from the archiver it serves."""
    used = set().union(*(imported(p) for p in (PACKAGE / "emulator").glob("*.py")))
    assert set() == used - {"kinds", "emulator"}


def test_no_test_module_imports_another() -> None:
    """Test modules share code through conftest.py and helpers.py, never by importing
    one another."""
    tests = Path(__file__).resolve().parent
    modules = {p.stem for p in tests.glob("test_*.py")}
    imports = []
    for path in sorted(tests.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imports += [(path.name, node.module)]
            elif isinstance(node, ast.Import):
                imports += [(path.name, a.name) for a in node.names]
    assert [] == [(name, module) for name, module in imports if module.split(".")[0] in modules]
