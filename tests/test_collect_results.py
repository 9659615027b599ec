"""collect's additions: failed tasks' outputs with --include-failed, results.csv's worker, times and
reason, and the results as Parquet (--format parquet, the `parquet` extra)."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from parallel_engine.collect import collect
from parallel_engine.errors import ConfigError, MissingExtraError
from parallel_engine.store import local_store
from tests.helpers import FAILED, SUCCEEDED, cli, record_run

RUN = "20260101-120000-abcde"


def failed_run(tmp_path: Path) -> Path:
    """good succeeds; bad fails twice, each attempt writing its own out.txt (and its last a link)."""
    store = local_store(tmp_path / "store")
    record_run(store, RUN, {"good": [SUCCEEDED], "bad": [FAILED, FAILED]}, retries=1)
    store.blobs.write(f"runs/{RUN}/tasks/good/1/outputs/out.txt", b"good\n")
    for attempt in (1, 2):
        store.blobs.write(f"runs/{RUN}/tasks/bad/{attempt}/outputs/out.txt", f"bad, attempt {attempt}\n".encode())
    os.symlink("/etc/passwd", tmp_path / "store" / "runs" / RUN / "tasks" / "bad" / "2" / "outputs" / "link")
    return tmp_path / "store"


def rows_of(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_failed_tasks_outputs_are_left_out_unless_include_failed(tmp_path: Path) -> None:
    failed_run(tmp_path)
    done = cli("collect", RUN, "--store", "store", "--dest", "plain", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(tmp_path / "plain")) == [".parallel-engine-collected", "good", "results.csv"]


def test_include_failed_collects_the_last_attempts_outputs_under_the_same_rules(tmp_path: Path) -> None:
    failed_run(tmp_path)
    done = cli("collect", RUN, "--store", "store", "--dest", "out", "--include-failed", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "collected 1 task outputs (and 1 failed tasks') into out/" in done.stdout
    assert (tmp_path / "out" / "bad" / "out.txt").read_text() == "bad, attempt 2\n"
    assert not (tmp_path / "out" / "bad" / "link").exists()  # a link is never followed nor copied
    assert rows_of(tmp_path / "out" / "skipped.csv") == [
        {"task_id": "bad", "path": "link", "kind": "link", "detail": "/etc/passwd"}]
    assert {row["task_id"]: row["state"] for row in rows_of(tmp_path / "out" / "results.csv")} == {
        "good": "succeeded", "bad": "failed"}


def test_results_csv_has_the_worker_times_and_reason_of_the_winning_or_last_attempt(tmp_path: Path) -> None:
    failed_run(tmp_path)
    cli("collect", RUN, "--store", "store", "--dest", "out", cwd=tmp_path)
    rows = {row["task_id"]: row for row in rows_of(tmp_path / "out" / "results.csv")}
    assert list(rows["good"]) == ["x", "task_id", "state", "exit_code", "attempts", "duration_s", "worker",
                                  "started_at", "finished_at", "reason"]
    assert (rows["good"]["worker"], rows["good"]["started_at"], rows["good"]["finished_at"], rows["good"]["reason"]) == (
        "worker-good", "1970-01-01T00:00:10.000Z", "1970-01-01T00:00:12.500Z", "")
    assert (rows["bad"]["attempts"], rows["bad"]["exit_code"], rows["bad"]["reason"]) == ("2", "3", "exit code 3")


def test_format_parquet_writes_the_same_table_typed_and_replaces_the_csv_of_the_same_run(tmp_path: Path) -> None:
    failed_run(tmp_path)
    assert cli("collect", RUN, "--store", "store", "--dest", "out", cwd=tmp_path).returncode == 0
    done = cli("collect", RUN, "--store", "store", "--dest", "out", "--format", "parquet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "out" / "results.csv").exists()
    table = pq.read_table(tmp_path / "out" / "results.parquet")
    assert table.column_names == ["x", "task_id", "state", "exit_code", "attempts", "duration_s", "worker",
                                  "started_at", "finished_at", "reason"]
    assert str(table.schema.field("exit_code").type) == "int64"
    assert str(table.schema.field("started_at").type) == "timestamp[us, tz=UTC]"
    rows = {row["task_id"]: row for row in table.to_pylist()}
    assert rows["good"]["duration_s"] == 2.5 and rows["bad"]["exit_code"] == 3 and rows["bad"]["attempts"] == 2
    assert rows["good"]["started_at"].timestamp() == 10.0 and rows["good"]["worker"] == "worker-good"


def test_format_parquet_without_pyarrow_names_the_extra_and_writes_nothing(tmp_path: Path) -> None:
    failed_run(tmp_path)
    shim = tmp_path / "shim" / "pyarrow"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('no pyarrow here')\n")
    done = cli("collect", RUN, "--store", "store", "--dest", "out", "--format", "parquet", cwd=tmp_path,
               env={"PYTHONPATH": str(tmp_path / "shim")})
    assert done.returncode == 2
    assert "collect --format parquet needs the Python package 'pyarrow'" in done.stderr
    assert "pip install 'parallel-engine[parquet]'" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_parquet_refuses_excel_safe_and_an_unknown_format_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = local_store(failed_run(tmp_path))
    with pytest.raises(ConfigError, match="--excel-safe is for results.csv"):
        collect(store, RUN, tmp_path / "out", fmt="parquet", excel_safe=True)
    with pytest.raises(ConfigError, match="unknown results format 'xlsx'"):
        collect(store, RUN, tmp_path / "out", fmt="xlsx")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(MissingExtraError):
        collect(store, RUN, tmp_path / "out", fmt="parquet")
    assert not (tmp_path / "out").exists()
