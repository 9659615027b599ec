"""Static checks CI runs over the code: names that are undefined or imported and unused (ruff's
pyflakes rules) are bugs a merge or a move leaves behind, a type error is one mypy sees before a
user does, and the imports between the orchestrator, the emulated cloud and the tests keep the
shape docs/architecture.md draws."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

PACKAGE = ROOT / "parallel_engine"
EMULATOR = PACKAGE / "emulator"
#: The one orchestrator module that may import the emulated cloud: the `emulator` command.
EMULATOR_COMMAND = PACKAGE / "cli.py"


def _tool(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).with_name(name))
    if not Path(found).exists():
        pytest.fail(f"{name} is missing: it comes with the test extra (pip install -e '.[test]')")
    return found


def test_no_undefined_or_unused_names_in_the_package_tests_and_benchmarks() -> None:
    done = subprocess.run(
        [_tool("ruff"), "check", "--no-cache", "--isolated", "--select", "F", "--output-format", "concise",
         "parallel_engine", "tests", "bench"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_package_type_checks_under_mypy_strict() -> None:
    # The settings are pyproject.toml's [tool.mypy]; no cache, so a stale one cannot hide an error.
    done = subprocess.run(
        [_tool("mypy"), "--strict", "--no-incremental", "--cache-dir", "/dev/null", "parallel_engine"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _imports(path: Path) -> set[str]:
    """Every module `path` imports (absolute names; a relative import is resolved in its package)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}
    return found


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_emulator_imports_nothing_from_the_orchestrator() -> None:
    for path in EMULATOR.rglob("*.py"):
        outside = sorted(m for m in _imports(path) if _within(m, "parallel_engine") and not _within(m, "parallel_engine.emulator"))
        assert not outside, f"{path.relative_to(ROOT)} imports {outside}: the emulated cloud only sees HTTP"


def test_the_orchestrator_imports_the_emulator_only_for_the_emulator_command() -> None:
    for path in PACKAGE.rglob("*.py"):
        if EMULATOR in path.parents or path == EMULATOR_COMMAND:
            continue
        inside = sorted(m for m in _imports(path) if _within(m, "parallel_engine.emulator"))
        assert not inside, f"{path.relative_to(ROOT)} imports {inside}: only the `emulator` command may"
    # ...and the command itself only in its own function (a local run never imports the emulator).
    tree = ast.parse(EMULATOR_COMMAND.read_text(encoding="utf-8"))
    top = {m for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)
           for m in _imports_of(node)}
    assert not {m for m in top if _within(m, "parallel_engine.emulator")}, "cli.py imports the emulator at the top"


def _imports_of(node: ast.Import | ast.ImportFrom) -> set[str]:
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    return {node.module or ""}


def test_tests_import_helpers_never_other_test_modules() -> None:
    """Shared helpers live in tests/helpers.py (and the few helper modules beside it) or a
    conftest: a test module importing another runs that module's tests' setup and couples them."""
    for path in (ROOT / "tests").rglob("*.py"):
        test_modules = sorted(m for m in _imports(path) if m.split(".")[-1].startswith("test_"))
        assert not test_modules, f"{path.relative_to(ROOT)} imports test modules {test_modules}"


def test_every_type_ignore_in_the_package_says_why() -> None:
    """mypy checks that a `type: ignore` names its error code; the reason is for the reader."""
    bare = []
    for path in (ROOT / "parallel_engine").rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "type: ignore[" in line and not re.search(r"type: ignore\[[^\]]+\]\s*#\s*\S", line):
                bare.append(f"{path.relative_to(ROOT)}:{number}")
    assert not bare, f"a type: ignore without a reason after it: {bare}"
