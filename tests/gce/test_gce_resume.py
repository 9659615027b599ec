"""`resume RUN` on gce, against the emulator: the real orchestrator SIGKILLed (PE_CRASH_AT) after
run.json, mid VM creation, between a VM's creation and noting it, mid poll, with a retry due and
during teardown; then `resume` from another process → every task succeeded, exactly one
succeeded attempt per task in the bucket, collect byte-exact, no VM of the run left."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from parallel_engine.api import open_store
from parallel_engine.backends.gce.compute import Compute
from parallel_engine.emulator import Emulator
from parallel_engine.model import AttemptState
from parallel_engine.store import RunStore
from tests.gce.gce_helpers import GO, PINNED, TASK, TASK_IDS, config_for, settings
from tests.emulator.emulator_helpers import wait_for
from tests.helpers import cli, cli_env

pytestmark = [pytest.mark.emulator, pytest.mark.docker]

ADOPTED_ONE = "running 1 of its attempts"  # what `resume` says of the held attempt it adopted


def resume_releasing_the_hold(cloud: Emulator, folder: Path, run_id: str) -> subprocess.CompletedProcess[str]:
    """`resume RUN` as `cli` runs it; once it says it adopted the held attempt (t3.1, still running
    on its VM), GO is created in that attempt's output folder on its VM so it ends."""
    proc = subprocess.Popen([sys.executable, "-m", "parallel_engine", "resume", run_id], cwd=folder, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    said: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # ends when resume does: never past its own end
            said.append(line)
            if ADOPTED_ONE in line:
                (outputs,) = wait_for(lambda: list(cloud.workdir.glob("vms/*/tmp/**/attempts/t3.1/outputs")), 60,
                                      "the held attempt's output folder on its VM")
                (outputs / GO).touch()
                break
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "".join(said) + err)


def killed_then_resumed(cloud: Emulator, image: str, folder: Path, crash_at: str, hold: bool,
                        before_resume: Callable[[RunStore, str], None] | None = None,
                        **extra: Any) -> dict[str, list[str]]:
    (folder / ".config.yaml").write_text(yaml.safe_dump(settings(cloud, image, VM_QUOTAS=2, RETRIES=1, **extra)))
    (folder / "tasks.yaml").write_text(yaml.safe_dump({"tasks": [
        {"id": task_id, "command": ["python", "-c", TASK, task_id, {"t2": "fail", "t3": "hold" if hold else "ok"}.get(task_id, "ok")]}
        for task_id in TASK_IDS]}))
    proc = subprocess.run([sys.executable, "-m", "parallel_engine", "run", "tasks.yaml", "-q"], cwd=folder,
                          env={**cli_env(), "PE_CRASH_AT": crash_at}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    store = open_store(config_for(cloud, image))
    (run_id,) = store.run_ids()
    status = cli("status", run_id, "--json", cwd=folder)
    assert json.loads(status.stdout)["state"] == "interrupted", status.stdout + status.stderr
    if before_resume is not None:
        before_resume(store, run_id)
    done = resume_releasing_the_hold(cloud, folder, run_id) if hold else cli("resume", run_id, cwd=folder, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    if hold:  # t3's first attempt was still running on its VM: watched, not redone
        assert ADOPTED_ONE in done.stderr, done.stderr
    assert f"run {run_id}: 4 succeeded" in done.stdout
    assert store.read_end(run_id) == "finished"
    histories = {task: [str(a.state) for a in attempts] for task, attempts in store.attempts(run_id).items()}
    assert sorted(histories) == list(TASK_IDS)
    for task_id, states in histories.items():
        assert states.count(str(AttemptState.SUCCEEDED)) == 1 and "running" not in states, histories
    collected = cli("collect", run_id, "--dest", "results", cwd=folder)
    assert collected.returncode == 0, collected.stderr
    for task_id in TASK_IDS:
        assert (folder / "results" / task_id / "out.txt").read_bytes() == f"task {task_id}\n".encode() * 3
    assert Compute(config_for(cloud, image)).list_run_everywhere(run_id) == []
    return histories


@pytest.mark.parametrize("crash_at, hold, extra", [
    ("run-json", False, {}),
    ("vm-create", False, {"TASKS_PER_VM": 1}),
    ("vm-created", False, {"TASKS_PER_VM": 1}),
    ("poll", True, {}),
    ("retry-due", False, {}),
    ("teardown", False, {}),
], ids=["after-run-json", "mid-vm-creation", "between-create-and-record", "mid-poll", "retry-due", "teardown"])
def test_a_gce_run_killed_at_each_point_is_finished_by_resume(
    cloud: Emulator, example_image: str, tmp_path: Path, crash_at: str, hold: bool, extra: dict[str, Any]
) -> None:
    histories = killed_then_resumed(cloud, example_image, tmp_path, crash_at, hold, **extra)
    assert histories["t2"][0] == "failed"  # its first attempt failed on purpose, and was retried
    if hold:
        assert histories["t3"] == ["succeeded"]


def test_a_run_that_pinned_no_worker_image_is_resumed_with_the_recorded_one(
    cloud: Emulator, example_image: str, tmp_path: Path
) -> None:
    def as_before_the_worker_image(store: RunStore, run_id: str) -> None:
        key = f"runs/{run_id}/run.json"
        record = json.loads(store.blobs.read(key) or b"{}")
        record["spec"].pop("worker_image")  # a run.json written before `build` made a worker image
        store.blobs.write(key, json.dumps(record).encode())

    killed_then_resumed(cloud, example_image, tmp_path, "run-json", False, before_resume=as_before_the_worker_image)
    consoles = "".join(p.read_text(errors="replace") for p in cloud.workdir.glob("vms/*/console.log"))
    assert f"starting the worker ({PINNED.registry}/parallel-engine-worker@{PINNED.digest})" in consoles


def test_cancel_of_a_killed_gce_run_deletes_its_vms_and_records_the_running_attempts_cancelled(
    cloud: Emulator, example_image: str, tmp_path: Path
) -> None:
    (tmp_path / ".config.yaml").write_text(yaml.safe_dump(settings(cloud, example_image, VM_QUOTAS=2)))
    (tmp_path / "long.yaml").write_text(yaml.safe_dump({"tasks": [
        {"id": f"t{i}", "command": ["python", "-c", "import time; time.sleep(120)"]} for i in range(3)]}))
    proc = subprocess.Popen([sys.executable, "-m", "parallel_engine", "run", "long.yaml", "-q"], cwd=tmp_path,
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    store = open_store(config_for(cloud, example_image))
    try:
        wait_for(lambda: store.run_ids() and len(store.claimed(store.run_ids()[0])) == 2, 90, "two claimed attempts")
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    (run_id,) = store.run_ids()
    done = cli("cancel", run_id, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"run {run_id}: cancelled by `cancel`: deleted 2 VM(s); none left" in done.stdout
    assert Compute(config_for(cloud, example_image)).list_run_everywhere(run_id) == []
    assert store.read_end(run_id) == "cancelled"
    states = sorted(str(a.state) for attempts in store.attempts(run_id).values() for a in attempts)
    assert states == ["cancelled", "cancelled"]
    shown = json.loads(cli("status", run_id, "--json", cwd=tmp_path).stdout)
    assert (shown["state"], shown["counts"]) == ("cancelled", {"cancelled": 3})
