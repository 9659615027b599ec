"""`resume RUN` and `cancel RUN` on the local backend. resume is proven by killing the real orchestrator (SIGKILL) at each
point that exists locally — after run.json, mid-run with attempts running, with a retry due,
during teardown — then resuming: every task succeeded, exactly one succeeded attempt per task in
the store, collect byte-exact, no process of the run left, the run recorded finished."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from parallel_engine.runtimes.process import kill_run_processes, run_processes
from tests.helpers import cli, cli_env, wait_for

# Writes "task <n>" to out.txt; with --hold=1 it sleeps for good on attempt 1 (so a kill finds it
# running, and the retry is quick); with --fail=1 it fails attempt 1.
TASK = r'''
import os, sys, time
args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
first = os.environ["PE_ATTEMPT"] == "1"
if first and args.get("fail") == "1":
    sys.exit(3)
if first and args.get("hold") == "1":
    time.sleep(600)
with open(os.path.join(os.environ["PE_OUTPUT_DIR"], "out.txt"), "w") as f:
    f.write(f"task {args['n']}\n" * 3)
'''
TASKS = ("n,hold,fail", "1,0,0", "2,{hold},{fail}", "3,{hold},0", "4,0,0")
STORE = ".parallel-engine"


def start(folder: Path, crash_at: str = "", hold: int = 0, fail: int = 0) -> subprocess.Popen[str]:
    (folder / "task.py").write_text(TASK)
    (folder / "params.csv").write_text("\n".join(TASKS).format(hold=hold, fail=fail) + "\n")
    env = {**cli_env(), **({"PE_CRASH_AT": crash_at} if crash_at else {})}
    return subprocess.Popen(
        [sys.executable, "-m", "parallel_engine", "run", "params.csv", "-j", "4", "--retries", "1", "-q",
         "--runtime", "process", "--command", f"{sys.executable} {folder / 'task.py'}"],
        cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def the_run(folder: Path) -> Path:
    (run,) = (folder / STORE / "runs").iterdir()
    return run


@pytest.fixture()
def leftovers() -> Iterator[list[str]]:
    """Run ids whose processes are killed after the test whatever happened (never left running),
    and "pid:N" for a background orchestrator this test started."""
    ids: list[str] = []
    yield ids
    for item in ids:
        if item.startswith("pid:"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(item[4:]), signal.SIGKILL)
        else:
            kill_run_processes(item)


def holding_run(folder: Path, leftovers: list[str]) -> tuple[subprocess.Popen[str], str]:
    """A run whose tasks 2 and 3 hold (run for good), once both run."""
    proc = start(folder, hold=1)

    def holding() -> bool:
        made = list((folder / STORE / "runs").glob("*/run.json"))
        return bool(made) and len(run_processes(made[0].parent.name)) >= 2

    try:
        wait_for(holding, 60, "the two holding tasks to run")
    except AssertionError:
        proc.kill()
        raise
    leftovers.append(the_run(folder).name)
    return proc, the_run(folder).name


def killed_at(folder: Path, proc: subprocess.Popen[str]) -> str:
    """The orchestrator died by SIGKILL; the run is interrupted and `status` says how to go on."""
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, stderr
    run_id = the_run(folder).name
    status = cli("status", run_id, cwd=folder)
    assert "interrupted (its orchestrator was last seen 20" in status.stdout, status.stdout + status.stderr
    assert f"): nobody orchestrates run {run_id} any more; continue it with " \
           f"`parallel-engine resume {run_id}`" in status.stdout, status.stdout + status.stderr
    assert "interrupted" in cli("runs", cwd=folder).stdout
    return run_id


def resumed_to_the_end(folder: Path, run_id: str) -> dict[str, list[dict[str, object]]]:
    """`resume` finishes the run: every task succeeded once, collect byte-exact, nothing left."""
    done = cli("resume", run_id, "-q", cwd=folder)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"run {run_id}: 4 succeeded" in done.stdout
    run = the_run(folder)
    assert json.loads((run / "end.json").read_text())["state"] == "finished"
    records: dict[str, list[dict[str, object]]] = {}
    for record in sorted(run.glob("tasks/*/*/status.json")):
        data = json.loads(record.read_text())
        records.setdefault(str(data["task_id"]), []).append(data)
    claims = sorted(p.name for p in (run / "claims").iterdir())
    assert claims == sorted(f"{t}.{r['attempt']}" for t, rs in records.items() for r in rs), "a claim without a record"
    for task in ("1", "2", "3", "4"):
        assert [r["state"] for r in records[task]].count("succeeded") == 1, records[task]
    collected = cli("collect", run_id, "--dest", "results", cwd=folder)
    assert collected.returncode == 0, collected.stderr
    for task in ("1", "2", "3", "4"):
        assert (folder / "results" / task / "out.txt").read_bytes() == f"task {task}\n".encode() * 3
    assert run_processes(run_id) == []
    assert "running" not in cli("status", run_id, "--json", cwd=folder).stdout.split('"tasks"')[0]
    return records


def test_killed_after_run_json_resume_runs_every_task(tmp_path: Path, leftovers: list[str]) -> None:
    run_id = killed_at(tmp_path, start(tmp_path, crash_at="run-json"))
    leftovers.append(run_id)
    assert not list((tmp_path / STORE / "runs" / run_id / "claims").iterdir())  # nothing had started
    records = resumed_to_the_end(tmp_path, run_id)
    assert all(len(rs) == 1 for rs in records.values())


def test_killed_mid_run_resume_stops_the_left_processes_and_retries_their_attempts_as_lost(
    tmp_path: Path, leftovers: list[str]
) -> None:
    proc, run_id = holding_run(tmp_path, leftovers)
    proc.kill()  # no handler runs: the holding tasks are orphaned, still running
    assert killed_at(tmp_path, proc) == run_id
    assert len(run_processes(run_id)) >= 2
    records = resumed_to_the_end(tmp_path, run_id)
    for task in ("2", "3"):
        assert [r["state"] for r in records[task]] == ["lost", "succeeded"], records[task]


def test_killed_with_a_retry_due_resume_submits_the_retry(tmp_path: Path, leftovers: list[str]) -> None:
    run_id = killed_at(tmp_path, start(tmp_path, crash_at="retry-due", fail=1))
    leftovers.append(run_id)
    failed = json.loads((tmp_path / STORE / "runs" / run_id / "tasks" / "2" / "1" / "status.json").read_text())
    assert failed["state"] == "failed"
    records = resumed_to_the_end(tmp_path, run_id)
    assert [r["state"] for r in records["2"]] == ["failed", "succeeded"]


def test_killed_during_teardown_resume_only_records_the_end(tmp_path: Path, leftovers: list[str]) -> None:
    run_id = killed_at(tmp_path, start(tmp_path, crash_at="teardown"))
    leftovers.append(run_id)
    records = resumed_to_the_end(tmp_path, run_id)
    assert all(len(rs) == 1 for rs in records.values())  # nothing ran twice


def test_resume_of_a_run_whose_orchestrator_lives_is_refused_with_where_it_runs(
    tmp_path: Path, leftovers: list[str]
) -> None:
    proc, run_id = holding_run(tmp_path, leftovers)
    try:
        done = cli("resume", run_id, cwd=tmp_path)
        assert done.returncode == 2, done.stdout + done.stderr
        assert f"error: run {run_id} is orchestrated by pid {proc.pid} on " in done.stderr
        assert "--force" in done.stderr
        assert len(run_processes(run_id)) >= 2  # nothing was touched
    finally:
        proc.kill()
        proc.communicate(timeout=60)


def test_resume_of_a_finished_run_is_refused(tmp_path: Path) -> None:
    proc = start(tmp_path)
    proc.communicate(timeout=120)
    assert proc.returncode == 0
    run_id = the_run(tmp_path).name
    done = cli("resume", run_id, cwd=tmp_path)
    assert done.returncode == 2
    assert f"error: run {run_id} is over (finished): there is nothing to resume" in done.stderr


# -- cancel RUN ---------------------------------------------------------------------------------
def cancelled_everywhere(folder: Path, run_id: str) -> None:
    run = the_run(folder)
    assert json.loads((run / "end.json").read_text())["state"] == "cancelled"
    for task in ("2", "3"):
        assert json.loads((run / "tasks" / task / "1" / "status.json").read_text())["state"] == "cancelled"
    assert run_processes(run_id) == []
    status = cli("status", run_id, cwd=folder)
    assert f"run {run_id} (cancelled)" in status.stdout and "resume" not in status.stdout


def test_cancel_of_a_live_run_here_stops_it_through_its_orchestrator(tmp_path: Path, leftovers: list[str]) -> None:
    proc, run_id = holding_run(tmp_path, leftovers)
    try:
        done = cli("cancel", run_id, cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"run {run_id}: cancelled by its orchestrator (pid {proc.pid})" in done.stdout
        proc.communicate(timeout=60)
        assert proc.returncode == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=60)
    cancelled_everywhere(tmp_path, run_id)


def test_cancel_of_a_killed_run_stops_its_processes_and_records_the_attempts_cancelled(
    tmp_path: Path, leftovers: list[str]
) -> None:
    proc, run_id = holding_run(tmp_path, leftovers)
    proc.kill()
    proc.communicate(timeout=60)
    done = cli("cancel", run_id, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"run {run_id}: cancelled by `cancel`: removed 0 container(s) and " in done.stdout
    cancelled_everywhere(tmp_path, run_id)
    again = cli("cancel", run_id, cwd=tmp_path)
    assert again.returncode == 2 and f"run {run_id} is over (cancelled): there is nothing to cancel" in again.stderr


# -- run --detach -------------------------------------------------------------------------------
def detached(folder: Path, hold: int, leftovers: list[str]) -> tuple[str, int]:
    """`run --detach`: returns at once with the run id and the background orchestrator's pid."""
    (folder / "task.py").write_text(TASK)
    (folder / "params.csv").write_text("\n".join(TASKS).format(hold=hold, fail=0) + "\n")
    done = cli("run", "params.csv", "-j", "4", "--runtime", "process", "--detach",
               "--command", f"{sys.executable} {folder / 'task.py'}", cwd=folder)
    assert done.returncode == 0, done.stdout + done.stderr
    run_id = the_run(folder).name
    leftovers.append(run_id)
    pid = int(done.stdout.split("orchestrator pid ")[1].split(",")[0])
    leftovers.insert(0, f"pid:{pid}")  # first: the orchestrator goes before its run's processes
    assert f"run {run_id}: started in the background (orchestrator pid {pid}, log " in done.stdout
    return run_id, pid


def test_run_detach_returns_and_its_background_orchestrator_finishes_the_run(
    tmp_path: Path, leftovers: list[str]
) -> None:
    run_id, _ = detached(tmp_path, 0, leftovers)
    wait_for(lambda: (the_run(tmp_path) / "end.json").exists(), 60, "the detached run to end")
    status = json.loads(cli("status", run_id, "--json", cwd=tmp_path).stdout)
    assert (status["state"], status["counts"]) == ("finished", {"succeeded": 4})
    log = (tmp_path / STORE / "orchestrators" / f"{run_id}.log").read_text()
    assert f"run {run_id}: 4 succeeded" in log


def test_a_detached_run_is_found_by_resume_and_cancel_through_its_lease(tmp_path: Path, leftovers: list[str]) -> None:
    run_id, pid = detached(tmp_path, 1, leftovers)
    wait_for(lambda: len(run_processes(run_id)) >= 2, 60, "the two holding tasks to run")
    refused = cli("resume", run_id, cwd=tmp_path)
    assert refused.returncode == 2 and f"run {run_id} is orchestrated by pid {pid} on " in refused.stderr
    done = cli("cancel", run_id, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"run {run_id}: cancelled by its orchestrator (pid {pid})" in done.stdout
    cancelled_everywhere(tmp_path, run_id)
