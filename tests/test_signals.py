"""SIGINT/SIGTERM to a real `parallel-engine run`: every task's process tree dies, the store stays consistent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import write_probe


def wait_for(condition, timeout: float, what: str) -> None:
    """Poll a condition with a deadline: waiting for an event, not sleeping for luck."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_cancels_running_tasks_kills_their_trees_and_exits_130(tmp_path: Path, sig: signal.Signals) -> None:
    write_probe(tmp_path)
    # 4 tasks, 2 at a time: two run (each with a child), two are still queued when the signal lands.
    (tmp_path / "params.csv").write_text("sleep\n300\n300\n300\n300\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARALLEL_ENGINE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "parallel_engine", "run", "params.csv", "-j", "2",
         "--command", f"{sys.executable} {tmp_path / 'probe.py'}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    runs = tmp_path / ".parallel-engine" / "runs"
    pid_files = lambda: list(runs.glob("*/tasks/*/*/outputs/pids")) if runs.exists() else []  # noqa: E731
    wait_for(lambda: len(pid_files()) == 2 and all(p.read_text().strip() for p in pid_files()), 30, "two running tasks")
    task_pids = [int(pid) for path in pid_files() for pid in path.read_text().split()]
    assert len(task_pids) == 4 and all(psutil.pid_exists(pid) for pid in task_pids)

    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=30)

    assert proc.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr
    for pid in task_pids:
        alive = psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        assert not alive, f"task process {pid} survived the {sig.name}"
    (run_dir,) = runs.iterdir()
    assert json.loads((run_dir / "end.json").read_text())["state"] == "cancelled"
    states = sorted(json.loads(p.read_text())["state"] for p in run_dir.glob("tasks/*/*/status.json"))
    assert states == ["cancelled", "cancelled"]  # the queued two never started
    for path in run_dir.rglob("*.json"):
        json.loads(path.read_text())  # nothing half-written
    status = subprocess.run(
        [sys.executable, "-m", "parallel_engine", "status", run_dir.name, "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )
    assert json.loads(status.stdout)["counts"] == {"cancelled": 4}
