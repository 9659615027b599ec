"""A task the kernel would refuse to start (E2BIG) is refused before the run, with its file:line;
one just inside the limits runs, byte-exact."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from parallel_engine.api import check_can_start
from parallel_engine.errors import TaskSourceError
from parallel_engine.exec_limits import (
    CONTAINER_RESERVE,
    KERNEL_RESERVE,
    MAX_ARG_STRLEN,
    check_tasks_can_start,
    total_limit,
)
from parallel_engine.model import Task, TaskList
from parallel_engine.store import local_store
from parallel_engine.tasks import load_tasks
from tests.helpers import cli, read_json, run_id_of, write_probe

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MAX_ARG_STRLEN is Linux's")


def refused_run(tmp_path: Path, source: str) -> str:
    """`run SOURCE` with a real COMMAND: exit 2, one error line and a hint, nothing written."""
    done = cli("run", source, "--command", f"{sys.executable} probe.py", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / ".parallel-engine" / "runs").exists()  # refused before the run
    (error,) = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert "hint: pass a big value in a file" in done.stderr or "hint: pass big values in files" in done.stderr
    return error


@linux_only
def test_a_one_megabyte_cell_is_refused_as_too_long_an_argument_not_as_a_quoting_error(tmp_path: Path) -> None:
    write_probe(tmp_path)
    (tmp_path / "params.csv").write_text("x\nsmall\n" + "y" * 1_000_000 + "\n")
    error = refused_run(tmp_path, "params.csv")
    assert error.startswith("error: params.csv:3: task 2: argument 1 ('--x=yyy")
    assert "is 1,000,004 bytes" in error and f"under {MAX_ARG_STRLEN:,} bytes each (MAX_ARG_STRLEN)" in error


def test_arguments_that_fit_one_by_one_but_not_together_are_refused_with_the_limit(tmp_path: Path) -> None:
    write_probe(tmp_path)
    columns = [f"c{i}" for i in range(70)]  # 70 x 100 kB: over any ARG_MAX Linux allows (6 MiB at most)
    (tmp_path / "wide.csv").write_text(",".join(columns) + "\n" + ",".join(["z" * 100_000] * 70) + "\n")
    error = refused_run(tmp_path, "wide.csv")
    assert error.startswith("error: wide.csv:2: task 1: its command line and environment take 7,0")
    assert f"at most {total_limit() - KERNEL_RESERVE:,} (ARG_MAX" in error


@linux_only
def test_an_argument_of_the_longest_length_linux_takes_runs_and_arrives_byte_exact(tmp_path: Path) -> None:
    write_probe(tmp_path)
    value = "é" * ((MAX_ARG_STRLEN - 1 - len("--x=")) // 2) + "v"  # 131,071 bytes with --x=, then the NUL
    assert len(f"--x={value}".encode()) == MAX_ARG_STRLEN - 1
    (tmp_path / "params.csv").write_text(f"x\n{value}\n", encoding="utf-8")
    done = cli("run", "params.csv", "--command", f"{sys.executable} probe.py", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    attempt = tmp_path / ".parallel-engine" / "runs" / run_id_of(done) / "tasks" / "1" / "1"
    seen = read_json(attempt / "outputs" / "argv.json")
    assert seen["argv"] == [f"--x={value}"]


@linux_only
def test_a_yaml_command_word_too_long_is_refused_at_the_task_line(tmp_path: Path) -> None:
    (tmp_path / "tasks.yaml").write_text("tasks:\n  - {id: a, command: [echo, ok]}\n"
                                         f"  - id: b\n    command: [echo, {'w' * MAX_ARG_STRLEN}]\n")
    with pytest.raises(TaskSourceError, match=r"tasks.yaml:3: task b: argument 2 \('www"):
        check_can_start(load_tasks(tmp_path / "tasks.yaml"), local_store(tmp_path), "r", "process", ["prog"])


def test_the_environment_a_task_gets_counts_towards_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "params.csv").write_text("x\n1\n")
    tasks = load_tasks(tmp_path / "params.csv")
    store = local_store(tmp_path)
    check_can_start(tasks, store, "r", "process", ["prog"])  # fits with this environment
    # over the limit by itself, whatever else the environment holds (`env -i` leaves almost nothing)
    monkeypatch.setenv("PE_TEST_BIG", "e" * (total_limit() - KERNEL_RESERVE))
    with pytest.raises(TaskSourceError, match=r"params.csv:2: task 1: its command line and environment take"):
        check_can_start(tasks, store, "r", "process", ["prog"])
    check_can_start(tasks, store, "r", "docker", [])  # a container does not get this environment


def test_a_container_applies_the_per_argument_limit_and_keeps_room_for_the_image(tmp_path: Path) -> None:
    (tmp_path / "params.csv").write_text("x\n" + "y" * MAX_ARG_STRLEN + "\n")
    with pytest.raises(TaskSourceError, match="MAX_ARG_STRLEN"):
        check_can_start(load_tasks(tmp_path / "params.csv"), local_store(tmp_path), "r", "docker", [])
    # argv costing the limit less half the reserve (each string: its bytes, a NUL, a pointer)
    room = total_limit() - KERNEL_RESERVE - CONTAINER_RESERVE // 2
    words = ["a" * 100_000] * ((room - 9) // 100_009)
    words.append("b" * (room - 100_009 * len(words) - 9))
    tasks = TaskList("t.csv", (Task("t", tuple(words), source="t.csv:2"),))
    check_tasks_can_start(tasks, [], {})  # fits on this machine
    with pytest.raises(TaskSourceError, match=r"t.csv:2: task t: .* less what the kernel and the image keep"):
        check_tasks_can_start(tasks, [], {}, reserve=CONTAINER_RESERVE)
