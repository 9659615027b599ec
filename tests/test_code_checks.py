"""Static checks CI runs over the code: names that are undefined or imported and unused (ruff's
pyflakes rules) are bugs a merge or a move leaves behind, found here before a user hits them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT


def _ruff() -> str:
    found = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(found).exists():
        pytest.fail("ruff is missing: it comes with the test extra (pip install -e '.[test]')")
    return found


def test_no_undefined_or_unused_names_in_the_package_tests_and_benchmarks() -> None:
    done = subprocess.run(
        [_ruff(), "check", "--no-cache", "--isolated", "--select", "F", "--output-format", "concise",
         "parallel_engine", "tests", "bench"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
