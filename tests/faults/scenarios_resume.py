"""`kill -9` of a local run's orchestrator at a random moment, then `resume`: the run must end
with every task succeeded exactly once, its output whole, no process of the run left and nothing
half-written — wherever the kill landed (before the run existed, mid-claim, mid-record, while
attempts ran, after the last one, after end.json)."""

from __future__ import annotations

import json
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.faults.harness import scenario
from tests.faults.runs import STORE, attempts, check_leftovers, check_whole, end_state, run_folder, start_run
from tests.helpers import cli_env

BOUND_S = 60.0


def task(seconds: float, number: int) -> str:
    """Works `seconds`, then writes its number to `out` (what collect must find, byte-exact)."""
    return shlex.join(["sh", "-c", f'sleep {seconds:.3f}; echo {number} > "$PE_OUTPUT_DIR/out"'])


@scenario("kill -9 at random, then resume", ci_tries=3)
def kill_then_resume(rng: random.Random, tmp: Path) -> None:
    count = rng.randint(6, 12)
    lines = [task(rng.uniform(0.0, 0.5), number) for number in range(count)]
    proc = start_run(tmp, lines, "-j", str(rng.randint(1, 4)), "--runtime", "process")
    time.sleep(rng.uniform(0.2, 2.5))  # the random moment of the kill (the fault), not a wait for a condition
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=BOUND_S)
    run = run_folder(tmp)
    if run is None or not (run / "run.json").exists():
        return  # killed before the run existed: nothing to resume, nothing may run
    if end_state(run) is None:
        resumed = subprocess.run([sys.executable, "-m", "parallel_engine", "resume", run.name, "--store", STORE, "-q"],
                                 cwd=tmp, env=cli_env(), capture_output=True, text=True, timeout=BOUND_S)
        assert resumed.returncode == 0, f"resume: exit {resumed.returncode}: {resumed.stderr[-1500:]}"
    assert end_state(run) == "finished", f"the run ended {end_state(run)}"
    found = attempts(run)
    for number in range(count):
        task_id = str(number + 1)
        mine = {n: r for (t, n), r in found.items() if t == task_id}
        assert all(r is not None for r in mine.values()), f"task {task_id}: an attempt without a record: {mine}"
        won = [n for n, r in mine.items() if r is not None and r["state"] == "succeeded"]
        assert len(won) == 1, f"task {task_id}: {len(won)} succeeded attempts: {mine}"
        out = run / "tasks" / task_id / str(won[0]) / "outputs" / "out"
        assert out.read_text() == f"{number}\n", f"task {task_id}: its output is {out.read_text()!r}"
    check_leftovers(run.name)
    check_whole(tmp / STORE)
    lease = sorted((run / "leases").iterdir())[-1]
    assert json.loads(lease.read_text()).get("released") is True, "the lease was not released"
