"""Ctrl-C or SIGTERM at a random moment of a real `parallel-engine run` on the emulated cloud.

Seeded: a failure names its seed, and `PE_FAULT_SEED=<seed>` replays it; `PE_FAULT_TRIES=N` runs
N seeds (CI: 2). From before the first VM is inserted, through boots, claims and attempts, to the
run's end, once or twice (the second while the run stops), the command must end right: exit 0 (it had finished) or 130, no traceback, no VM of
the run left in any zone, no container of the run left, and every claimed attempt recorded as
what really happened (never `running`), with its event.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from parallel_engine.api import open_store
from parallel_engine.backends.gce.compute import Compute
from parallel_engine.emulator import Emulator
from parallel_engine.model import AttemptState
from tests.emulator.emulator_helpers import wait_for
from tests.gce.gce_helpers import TASK, TASK_IDS, config_for, settings
from tests.helpers import cli, cli_env, containers_of

pytestmark = [pytest.mark.emulator, pytest.mark.docker]
TRIES = int(os.environ.get("PE_FAULT_TRIES", "2"))
SEEDS = [int(os.environ["PE_FAULT_SEED"])] if "PE_FAULT_SEED" in os.environ else \
    [random.SystemRandom().randrange(2**32) for _ in range(TRIES)]
RUN_S = 6.0  # a little longer than the whole run takes here (4 short tasks on 2 VMs, boots included: ~5 s)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_signal_at_a_random_moment_of_a_gce_run_leaves_no_vm_and_true_records(
        cloud: Emulator, example_image: str, tmp_path: Path, seed: int, docker_engine: Any) -> None:
    rng = random.Random(seed)
    where = f"(replay: PE_FAULT_SEED={seed})"
    sig = rng.choice((signal.SIGINT, signal.SIGTERM))
    moment = rng.uniform(0.0, RUN_S)
    (tmp_path / ".config.yaml").write_text(yaml.safe_dump(settings(cloud, example_image, VM_QUOTAS=2)))
    (tmp_path / "tasks.yaml").write_text(yaml.safe_dump({"tasks": [
        {"id": f"t{i}", "command": ["python", "-c", "import time; time.sleep(1)"]} for i in range(4)]}))
    proc = subprocess.Popen([sys.executable, "-m", "parallel_engine", "run", "tasks.yaml"], cwd=tmp_path,
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    again = rng.uniform(0.0, 1.0) if rng.random() < 0.4 else None  # an impatient second one, as the run stops
    try:
        proc.wait(timeout=moment)
    except subprocess.TimeoutExpired:
        proc.send_signal(sig)
        if again is not None:
            try:
                proc.wait(timeout=again)
            except subprocess.TimeoutExpired:
                proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    twice = f" and {again:.2f} s later" if again is not None else ""
    said = f"{where} {sig.name} at {moment:.2f} s{twice}: exit {proc.returncode}\n{stdout[-1500:]}{stderr[-1500:]}"
    assert proc.returncode in (0, 130), said
    assert "Traceback" not in stderr, said

    config = config_for(cloud, example_image)
    store = open_store(config)
    run_ids = store.run_ids()
    assert len(run_ids) <= 1, said
    assert not run_ids or proc.returncode == 130 or store.read_end(run_ids[0]) == "finished", said
    for run_id in run_ids:
        assert Compute(config).list_run_everywhere(run_id) == [], f"VMs left {said}"
        wait_for(lambda: not containers_of(docker_engine, run_id), timeout=60, what=f"no container left {said}")
        attempts = [a for tried in store.attempts(run_id).values() for a in tried]
        assert all(a.state is not AttemptState.RUNNING for a in attempts), f"{attempts} {said}"
        assert len(store.events_after(run_id)) == len(attempts), f"an attempt without its event {said}"
        assert store.read_end(run_id) in ("finished", "cancelled"), said
    assert [vm for vm in cloud.control.vms() if vm.get("status") != "TERMINATED"] == [], f"VMs left {said}"


@pytest.mark.parametrize("seed", SEEDS)
def test_a_gce_run_killed_at_a_random_moment_is_finished_by_resume(
        cloud: Emulator, example_image: str, tmp_path: Path, seed: int) -> None:
    """SIGKILL (no handler runs: VMs, claims and attempts are left as they were), then `resume`:
    every task succeeded once (t2's first attempt fails on purpose), outputs whole, no VM left."""
    rng = random.Random(seed)
    moment = rng.uniform(0.0, RUN_S)
    said = f"(replay: PE_FAULT_SEED={seed}) SIGKILL at {moment:.2f} s"
    (tmp_path / ".config.yaml").write_text(yaml.safe_dump(settings(cloud, example_image, VM_QUOTAS=2, RETRIES=1)))
    (tmp_path / "tasks.yaml").write_text(yaml.safe_dump({"tasks": [
        {"id": task_id, "command": ["python", "-c", TASK, task_id, "fail" if task_id == "t2" else "ok"]}
        for task_id in TASK_IDS]}))
    proc = subprocess.Popen([sys.executable, "-m", "parallel_engine", "run", "tasks.yaml", "-q"], cwd=tmp_path,
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        proc.wait(timeout=moment)
    except subprocess.TimeoutExpired:
        proc.kill()
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode in (0, -signal.SIGKILL), f"{said}: exit {proc.returncode}\n{stdout}{stderr}"
    config = config_for(cloud, example_image)
    store = open_store(config)
    run_ids = store.run_ids()
    if not run_ids:  # killed before run.json: nothing may have been created
        assert cloud.control.vms() == [], said
        return
    (run_id,) = run_ids
    if proc.returncode == -signal.SIGKILL and store.read_end(run_id) is None:
        done = cli("resume", run_id, cwd=tmp_path, timeout=300)
        print(f"{said}: resumed")  # what a loop of tries covered (pytest -s)
        assert done.returncode == 0, f"{said}: resume exit {done.returncode}\n{done.stdout}{done.stderr}"
    assert store.read_end(run_id) == "finished", said
    histories = {task: [str(a.state) for a in attempts] for task, attempts in store.attempts(run_id).items()}
    assert sorted(histories) == list(TASK_IDS), f"{said}: {histories}"
    for states in histories.values():
        assert states.count(str(AttemptState.SUCCEEDED)) == 1 and "running" not in states, f"{said}: {histories}"
    collected = cli("collect", run_id, "--dest", "results", cwd=tmp_path)
    assert collected.returncode == 0, f"{said}: {collected.stderr}"
    for task_id in TASK_IDS:
        assert (tmp_path / "results" / task_id / "out.txt").read_bytes() == f"task {task_id}\n".encode() * 3, said
    assert Compute(config).list_run_everywhere(run_id) == [], f"VMs left {said}"
