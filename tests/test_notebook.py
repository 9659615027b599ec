"""notebooks/runner.ipynb is executed by a real Jupyter kernel (the project's own, installed by
scripts/ensure-kernel.sh) against a copy of the repo's example, and is kept without outputs."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from tests.helpers import ROOT

NOTEBOOK = ROOT / "notebooks" / "runner.ipynb"


@pytest.fixture(scope="module")
def kernel() -> str:
    done = subprocess.run(["bash", str(ROOT / "scripts" / "ensure-kernel.sh")], env={**os.environ, "PYTHON": sys.executable},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return "parallel-engine"


def test_the_notebook_is_kept_without_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)


def texts(cell: Any, kind: str) -> str:
    """Everything a cell showed of one MIME type (or its printed text, for "stream")."""
    found = []
    for output in cell.outputs:
        if kind == "stream" and output.output_type == "stream":
            found.append(output.text)
        elif kind in output.get("data", {}):
            found.append(output.data[kind])
    return "\n".join(found)


def test_the_runner_notebook_executes_in_a_kernel_from_config_to_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kernel: str
) -> None:
    shutil.copytree(ROOT / "code", tmp_path / "code")
    monkeypatch.setenv("PE_ROOT", str(tmp_path))  # the kernel inherits this environment
    for key in [k for k in os.environ if k.startswith("PARALLEL_ENGINE_")]:
        monkeypatch.delenv(key)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name=kernel, resources={"metadata": {"path": str(tmp_path)}}).execute()
    cells = {cell.id: cell for cell in notebook.cells}
    assert not [cell.id for cell in notebook.cells if any(o.output_type == "error" for o in cell.get("outputs", []))]
    assert "'backend': 'local'" in texts(cells["c3"], "text/plain")
    assert "tasks 13/13" in texts(cells["c9"], "text/plain")  # the live bar, updated in place to its end
    assert "<progress" in texts(cells["c9"], "text/html")
    assert "failed" in texts(cells["c11"], "text/html") and "succeeded" in texts(cells["c11"], "text/html")
    assert "argument --var: invalid int value: 'many'" in texts(cells["c13"], "stream")
    assert "mean_of_means" in texts(cells["c15"], "text/html")
    assert texts(cells["c17"], "image/png")  # the plot
    rows = list(csv.DictReader(open(tmp_path / "results" / "results.csv", newline="")))
    assert len(rows) == 13 and sum(row["state"] == "failed" for row in rows) == 1
    assert (tmp_path / "results" / "13").is_dir()  # the failed task's folder (include_failed)
    assert '<iframe srcdoc="' in texts(cells["c21"], "text/html") and (tmp_path / "report.html").is_file()
    assert "tasks 13/13" in texts(cells["c23"], "text/plain") and "'succeeded': 12" in texts(cells["c23"], "text/plain")
