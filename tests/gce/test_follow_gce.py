"""Following a gce run from another process: `logs --follow` shows a running attempt's output as
its VM's worker uploads it, and `wait` follows the run to its end, both against the emulated cloud."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from parallel_engine.api import open_store
from parallel_engine.emulator import Emulator
from parallel_engine.follow import tail_log
from tests.emulator.emulator_helpers import wait_for
from tests.gce.gce_helpers import BackgroundRun, config_for, settings
from tests.helpers import ROOT, cli_env

pytestmark = [pytest.mark.emulator, pytest.mark.docker]

SLOW = "import time; print('started', flush=True); time.sleep(4); print('released', flush=True)"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "code", tmp_path / "code")
    return tmp_path


def test_logs_follow_shows_a_vm_attempts_output_while_it_runs_and_wait_exits_as_the_run_did(
    cloud: Emulator, example_image: str, workdir: Path
) -> None:
    (workdir / "follow-me.yaml").write_text(yaml.safe_dump({"tasks": [{"id": "slow", "command": ["python", "-c", SLOW]}]}))
    (workdir / ".config.yaml").write_text(yaml.safe_dump(settings(cloud, example_image)))
    config = config_for(cloud, example_image)
    store = open_store(config)
    chunks: list[tuple[bytes, bool]] = []  # what was written, and whether the attempt had ended then
    with BackgroundRun(workdir / "follow-me.yaml", config, timeout=180) as started:
        run_id = wait_for(lambda: (store.run_ids() or [None])[0], timeout=60, what="the run")
        wait_for(lambda: ("slow", 1) in store.claimed(run_id), timeout=120, what="a VM to claim the attempt")
        waiting = subprocess.Popen([sys.executable, "-m", "parallel_engine", "wait", run_id], cwd=workdir,
                                   env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def write(data: bytes) -> None:
            chunks.append((data, store.read_status(run_id, "slow", 1) is not None))

        attempt = tail_log(store, run_id, "slow", None, "stdout", write, poll_s=0.2)
        run, error = started.outcome()
        out, err = waiting.communicate(timeout=120)
    assert error is None and run.status().counts == {"succeeded": 1} and attempt == 1
    assert b"".join(data for data, _ in chunks) == b"started\nreleased\n"
    assert chunks[0] == (b"started\n", False)  # shown while the attempt still ran on its VM
    assert waiting.returncode == 0 and f"run {run_id}: 1 succeeded" in out, out + err
    (row,) = run.results().to_dict(orient="records")  # the results table of a run in a bucket
    assert row["state"] == "succeeded" and row["worker"].startswith("pe-") and row["attempts"] == 1
    prefix = config.bucket_prefix.strip("/")
    assert row["outputs"] == f"gs://{cloud.bucket}/{prefix}/runs/{run_id}/tasks/slow/1/outputs"
