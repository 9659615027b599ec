"""notebooks/runner.ipynb stays runnable: its code cells run in order against a copy of the repo's example."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.helpers import ROOT


def test_runner_notebook_runs_the_example_and_collects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(ROOT / "code", tmp_path / "code")
    monkeypatch.setenv("PE_ROOT", str(tmp_path))
    for key in [k for k in os.environ if k.startswith("PARALLEL_ENGINE_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    notebook = json.loads((ROOT / "notebooks" / "runner.ipynb").read_text())
    namespace: dict[str, object] = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for cell in notebook["cells"]:
            if cell["cell_type"] == "code":
                exec(compile("".join(cell["source"]), "runner.ipynb", "exec"), namespace)  # noqa: S102
    results = (tmp_path / "results" / "results.csv").read_text().splitlines()
    assert len(results) == 13 and results[0].startswith("dataset,project,var,task_id,state")
    assert "mean of means" in printed.getvalue()
