"""`parallel-engine down RUN` on the local backend, process runtime: what a killed orchestrator
left running is found (by PE_RUN_ID) and killed; a run still in progress is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.helpers import cli, wait_for, write_probe


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def down_removes_the_runs_processes(tmp_path: Path, run_id: str, pids: list[int], *args: str) -> None:
    """`down RUN ARGS` succeeds and kills the 4 processes of the `running` fixture's run."""
    done = cli("down", run_id, *args, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"run {run_id}: removed 0 container(s) and 4 process(es)" in done.stdout
    assert not any(alive(pid) for pid in pids)


@pytest.fixture()
def running(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, list[int]]]:
    """A run of two sleeping tasks (each with a child), once both run; killed whatever happens.
    Parametrized indirectly with a store folder name, the run goes there (`--store`)."""
    store: str | None = getattr(request, "param", None)
    write_probe(tmp_path)
    (tmp_path / "params.csv").write_text("sleep\n300\n300\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARALLEL_ENGINE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "parallel_engine", "run", "params.csv", "-j", "2", "--runtime", "process",
         "--command", f"{sys.executable} {tmp_path / 'probe.py'}", *(["--store", store] if store else [])],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    runs = tmp_path / (store or ".parallel-engine") / "runs"
    pid_files = lambda: list(runs.glob("*/tasks/*/*/outputs/pids")) if runs.exists() else []  # noqa: E731
    pids: list[int] = []
    try:
        wait_for(lambda: len(pid_files()) == 2 and all(p.read_text().strip() for p in pid_files()), 60, "two running tasks")
        pids = [int(pid) for path in pid_files() for pid in path.read_text().split()]
        (run_dir,) = runs.iterdir()
        yield proc, run_dir.name, pids
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=60)
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_after_sigkill_of_the_orchestrator_down_kills_the_task_processes_it_left(
    running: tuple[subprocess.Popen[str], str, list[int]], tmp_path: Path
) -> None:
    proc, run_id, pids = running
    proc.kill()  # no handler runs: the tasks and their children are orphaned, still running
    proc.communicate(timeout=60)
    assert len(pids) == 4 and all(alive(pid) for pid in pids)
    down_removes_the_runs_processes(tmp_path, run_id, pids)


@pytest.mark.parametrize("running", ["elsewhere"], indirect=True)
def test_down_with_store_finds_a_killed_run_kept_in_another_store(
    running: tuple[subprocess.Popen[str], str, list[int]], tmp_path: Path
) -> None:
    proc, run_id, pids = running
    proc.kill()
    proc.communicate(timeout=60)
    assert "no run" in cli("down", run_id, cwd=tmp_path).stderr  # not in the default store
    down_removes_the_runs_processes(tmp_path, run_id, pids, "--store", "elsewhere")


def test_down_refuses_a_run_whose_orchestrator_still_runs_here(
    running: tuple[subprocess.Popen[str], str, list[int]], tmp_path: Path
) -> None:
    proc, run_id, pids = running
    done = cli("down", run_id, cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"error: run {run_id} is still running here (orchestrator pid {proc.pid})" in done.stderr
    assert f"kill -TERM {proc.pid}" in done.stderr
    assert all(alive(pid) for pid in pids)  # nothing was touched


def test_down_of_an_unknown_run_says_so(tmp_path: Path) -> None:
    (tmp_path / ".parallel-engine" / "runs").mkdir(parents=True)  # a store, without that run
    done = cli("down", "no-such-run", cwd=tmp_path)
    assert done.returncode == 2
    assert "no-such-run" in done.stderr and "Traceback" not in done.stderr


def test_down_and_status_take_a_killed_orchestrator_left_unreaped_as_dead(
    running: tuple[subprocess.Popen[str], str, list[int]], tmp_path: Path
) -> None:
    proc, run_id, pids = running
    proc.kill()  # and not reaped: its parent (this test) leaves it a zombie, its pid still taken
    wait_for(lambda: psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE, 30, "the orchestrator to be a zombie")
    status = cli("status", run_id, "--json", cwd=tmp_path)
    assert json.loads(status.stdout)["state"] == "interrupted", status.stdout + status.stderr
    down_removes_the_runs_processes(tmp_path, run_id, pids)


def test_a_killed_orchestrators_pid_taken_by_another_process_is_not_mistaken_for_it(
    running: tuple[subprocess.Popen[str], str, list[int]], tmp_path: Path
) -> None:
    proc, run_id, pids = running
    proc.kill()
    proc.communicate(timeout=60)
    run_json = tmp_path / ".parallel-engine" / "runs" / run_id / "run.json"
    record = json.loads(run_json.read_text())
    with subprocess.Popen(["sleep", "300"]) as newcomer:  # as if the kernel gave it the dead pid
        try:
            record["spec"]["orchestrator"]["pid"] = newcomer.pid
            run_json.write_text(json.dumps(record))
            status = cli("status", run_id, "--json", cwd=tmp_path)
            assert json.loads(status.stdout)["state"] == "interrupted", status.stdout + status.stderr
            down_removes_the_runs_processes(tmp_path, run_id, pids)
            assert newcomer.poll() is None  # only the run's own
        finally:
            newcomer.kill()
