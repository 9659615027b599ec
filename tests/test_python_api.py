"""The Python API as a notebook uses it: tasks as a list of dicts or a DataFrame (checked as
params.csv is, errors naming the row), and `Run.results()` as a table."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd
import pytest

import parallel_engine as pe
from parallel_engine.errors import TaskSourceError
from parallel_engine.tasks import load_source

# Writes its argv into $PE_OUTPUT_DIR/argv.txt; exits 3 for --n=2.
PROGRAM = """import os, sys
open(os.path.join(os.environ["PE_OUTPUT_DIR"], "argv.txt"), "w").write(" ".join(sys.argv[1:]))
sys.exit(3 if "--n=2" in sys.argv else 0)
"""


@pytest.fixture()
def program(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("PARALLEL_ENGINE_")]:
        monkeypatch.delenv(key)
    (tmp_path / "program.py").write_text(PROGRAM)
    return f"{sys.executable} {tmp_path / 'program.py'}"


def test_a_dataframe_runs_one_task_per_row_and_results_come_back_as_a_dataframe_joined_on_its_parameters(
    program: str
) -> None:
    frame = pd.DataFrame({"n": [1, 2, 3], "name": ["a", "b", None]})
    run = pe.run(frame, jobs=2, command=program, runtime="process")
    results = run.results()
    assert isinstance(results, pd.DataFrame)
    assert list(results.columns) == ["n", "name", "task_id", "state", "exit_code", "attempts", "duration_s",
                                     "worker", "started_at", "finished_at", "reason", "outputs"]
    assert results["n"].tolist() == ["1", "2", "3"] and results["name"].tolist() == ["a", "b", ""]
    assert results["state"].tolist() == ["succeeded", "failed", "succeeded"]
    assert str(results["exit_code"].dtype) == "Int64" and results["exit_code"].tolist() == [0, 3, 0] and results["reason"].tolist() == ["", "exit code 3", ""]
    assert all(results["worker"].str.startswith("local-")) and (results["duration_s"] > 0).all()
    assert str(results["started_at"].dtype).startswith("datetime64") and (results["finished_at"] >= results["started_at"]).all()
    argv = [(Path(folder) / "argv.txt").read_text() for folder in results["outputs"]]
    assert argv == ["--n=1 --name=a", "--n=2 --name=b", "--n=3"]  # None omits the argument, as an empty cell does
    joined = frame.astype({"n": str}).merge(results, on="n")
    assert joined["name_x"].tolist()[:2] == ["a", "b"] and len(joined) == 3
    assert pe.attach(run.run_id).results().equals(results)  # read back from the store


def test_without_pandas_a_list_of_dicts_runs_and_results_are_a_list_of_dicts(
    program: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)  # `import pandas` raises ImportError
    run = pe.run([{"task_id": "one", "n": 1}, {"task_id": "two", "n": 2}], command=program, runtime="process")
    results = run.results()
    assert [(row["task_id"], row["n"], row["state"], row["exit_code"]) for row in results] == [
        ("one", "1", "succeeded", 0), ("two", "2", "failed", 3)]
    assert results[0]["started_at"].endswith("Z") and results[0]["worker"]


@pytest.mark.parametrize(("rows", "message"), [
    ([], "list of dicts: no rows: no tasks"),
    ([{"n": 1}, {"m": 2}], "list of dicts, row 2: its columns differ from the first row's: missing n; extra m"),
    ([{"n": 1}, ["n", 2]], "list of dicts, row 2: a list, not a dict"),
    ([{"bad name": 1}], "list of dicts, its column names: column name 'bad name' cannot be an option name"),
    ([{"state": 1}], "list of dicts, its column names: column name 'state' is taken"),
    ([{"n": 1}, {"n": "a\0b"}], "list of dicts, row 2: column 'n' contains a NUL character"),
    ([{"n": 1}, {"n": [1, 2]}], "list of dicts, row 2: column 'n' holds a list, not text or a number"),
    ([{"task_id": "a"}, {"task_id": "A"}], "list of dicts, row 2: duplicate task id 'A', already used at row 1"),
    ([{"task_id": "no/slash"}], "list of dicts, row 1: invalid task id"),
    (42, "tasks of type int are not a task source"),
])
def test_rows_are_checked_as_params_csv_is_and_errors_name_the_row(rows: object, message: str) -> None:
    with pytest.raises(TaskSourceError) as refused:
        load_source(rows)
    assert str(refused.value).startswith(message), str(refused.value)
    assert refused.value.hint


def test_a_dataframe_with_missing_values_omits_those_arguments_and_names_its_rows() -> None:
    frame = pd.DataFrame({"x": [1.5, float("nan")], "k": pd.array([7, None], dtype="Int64")})
    assert [task.argv for task in load_source(frame).tasks] == [("--x=1.5", "--k=7"), ()]
    assert load_source(frame).tasks[1].source == "DataFrame row 2"
    with pytest.raises(TaskSourceError, match="DataFrame: every column name must be text"):
        load_source(pd.DataFrame({0: [1]}))
    with pytest.raises(TaskSourceError, match="DataFrame: column name 'x' appears twice"):
        load_source(pd.DataFrame([[1, 2]], columns=["x", "x"]))
