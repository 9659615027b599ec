"""Small programs and files the end-to-end tests run through parallel-engine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

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
    from parallel_engine.runtimes.docker import LABEL_RUN

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


def chromium_paths() -> tuple[str, str] | None:
    """Headless Chromium and its driver (Debian's chromium and chromium-driver; PE_CHROMIUM and
    PE_CHROMEDRIVER name others), or None when either is missing."""
    browser = shutil.which(os.environ.get("PE_CHROMIUM", "chromium"))
    driver = shutil.which(os.environ.get("PE_CHROMEDRIVER", "chromedriver"))
    return (browser, driver) if browser and driver else None
