"""Small programs and files the end-to-end tests run through parallel-engine."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from parallel_engine.model import AttemptState, AttemptStatus, Task
from parallel_engine.store import RunRecord, RunStore

ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE = "python:3.11-slim"  # what code/Dockerfile's FROM names; ensure-docker.sh makes it

# Writes its argv (as JSON) and pid into $PE_OUTPUT_DIR, then behaves as its arguments say.
PROBE = r'''
import json, os, sys, time, subprocess
out = os.environ["PE_OUTPUT_DIR"]
args = sys.argv[1:]
with open(os.path.join(out, "argv.json"), "w", encoding="utf-8") as f:
    json.dump({"argv": args, "env": {k: v for k, v in os.environ.items() if k.startswith("PE_")}}, f)
print("probe ran", os.environ["PE_TASK_ID"], "attempt", os.environ["PE_ATTEMPT"])
for a in args:
    if a.startswith("--exit="):
        print("exiting with", a[7:], file=sys.stderr)
        sys.exit(int(a[7:]))
    if a.startswith("--fail-until="):  # fail while attempt < N
        if int(os.environ["PE_ATTEMPT"]) < int(a[len("--fail-until="):]):
            print("flaky failure", file=sys.stderr)
            sys.exit(3)
    if a.startswith("--sleep="):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        with open(os.path.join(out, "pids"), "w") as f:
            f.write(f"{os.getpid()} {child.pid}\n")
        time.sleep(float(a[8:]))
'''


def write_probe(folder: Path) -> Path:
    path = folder / "probe.py"
    path.write_text(PROBE)
    return path


def cli_env() -> dict[str, str]:
    """This environment without PARALLEL_ENGINE_* settings: a test's command sees only its own."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PARALLEL_ENGINE_")}


def containers_of(client: Any, run_id: str) -> list[Any]:
    """Every container (running or not) labelled with `run_id`."""
    from parallel_engine.protocol import LABEL_RUN

    # ignore_removed: one removed between the list and its inspect is gone, not an error
    return client.containers.list(all=True, filters={"label": f"{LABEL_RUN}={run_id}"}, ignore_removed=True)


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real `parallel-engine` command line in a subprocess."""
    full_env = cli_env()
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "parallel_engine", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def run_id_of(done: subprocess.CompletedProcess[str]) -> str:
    """The run id `parallel-engine run` printed ("run <id>: ..."): never guess it from the store,
    where another run may have started in the same second."""
    match = re.search(r"^run (\S+):", done.stdout, re.MULTILINE)
    assert match, done.stdout + done.stderr
    return match.group(1)


#: An attempt as record_run writes it: its end state, exit code and reason.
Outcome = tuple[AttemptState, int | None, str]
SUCCEEDED: Outcome = (AttemptState.SUCCEEDED, 0, "")
FAILED: Outcome = (AttemptState.FAILED, 3, "exit code 3")


def record_run(store: RunStore, run_id: str, histories: Mapping[str, Sequence[Outcome | None]],
               retries: int = 0, ended: str | None = "finished") -> RunRecord:
    """A local run written straight through the store API, as its workers would have written it:
    per task, its attempts in order (None: claimed and still running, no record yet)."""
    record = RunRecord(
        run_id=run_id, created=time.time(), backend="local", source="params.csv", columns=("x",),
        tasks=tuple(Task(task_id, (f"--x={task_id}",), {"x": task_id}, source=f"params.csv:{line}")
                    for line, task_id in enumerate(histories, start=2)),
        spec={"runtime": "process", "retries": retries, "preemption_retries": 3,
              "orchestrator": {"host": "elsewhere", "pid": 1}},
    )
    store.save_run(record)
    for task_id, history in histories.items():
        for number, outcome in enumerate(history, start=1):
            store.claim(run_id, task_id, number, f"worker-{task_id}")
            store.add_attempt_folders(run_id, task_id, number)
            if outcome is not None:
                state, exit_code, reason = outcome
                status = AttemptStatus(task_id, number, state, exit_code, 10.0, 12.5, f"worker-{task_id}", reason)
                store.write_status(run_id, status)
                store.add_event(run_id, status)
    if ended:
        store.write_end(run_id, ended, 20.0)
    return record


def alias_bomb(depth: int, use: str) -> str:
    """A "billion laughs" YAML: anchors a0..a<depth>, each nine aliases of the one before (9**depth
    values from a few hundred bytes), on lines 1..depth+1; then `use`, which may alias *a<depth>."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, depth + 1)]
    return "\n".join([*lines, use]) + "\n"


def chromium_paths() -> tuple[str, str] | None:
    """Headless Chromium and its driver (Debian's chromium and chromium-driver; PE_CHROMIUM and
    PE_CHROMEDRIVER name others), or None when either is missing."""
    browser = shutil.which(os.environ.get("PE_CHROMIUM", "chromium"))
    driver = shutil.which(os.environ.get("PE_CHROMEDRIVER", "chromedriver"))
    return (browser, driver) if browser and driver else None
