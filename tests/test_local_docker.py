"""End to end on the docker runtime: `parallel-engine build`, then `run` in containers, through the CLI."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import ROOT, cli, read_json
from tests.test_local_run import HOSTILE
from tests.test_signals import wait_for

pytestmark = pytest.mark.docker

IMAGE = "parallel-engine-e2e:test"


@pytest.fixture(scope="module")
def built(docker_engine: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working folder with code/ built into IMAGE by the real `parallel-engine build`."""
    folder = tmp_path_factory.mktemp("docker-e2e")
    shutil.copytree(ROOT / "code", folder / "code")
    (folder / ".config.yaml").write_text(f"IMAGE: {IMAGE}\n")
    done = cli("build", cwd=folder, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"built {IMAGE}" in done.stdout
    return folder


def containers_of(docker_engine: Any, run_id: str) -> list[Any]:
    return docker_engine.containers.list(all=True, filters={"label": f"parallel-engine-run={run_id}"})


def latest_run(folder: Path) -> str:
    return sorted((folder / ".parallel-engine" / "runs").iterdir())[-1].name


def test_build_then_run_example_params_in_containers_and_collect(built: Path, docker_engine: Any) -> None:
    done = cli("run", "code/params.csv", "-j", "2", cwd=built, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"runtime: docker: engine answers and image {IMAGE} exists" in done.stderr
    run_id = latest_run(built)
    assert json.loads((built / ".parallel-engine" / "runs" / run_id / "run.json").read_text())["spec"]["runtime"] == "docker"
    assert cli("collect", run_id, "--dest", "out", cwd=built).returncode == 0
    rows = list(csv.DictReader(open(built / "out" / "results.csv", newline="")))
    assert len(rows) == 12 and {r["state"] for r in rows} == {"succeeded"}
    for row in rows:
        summary = read_json(built / "out" / row["task_id"] / "summary.json")
        assert summary["dataset"] == row["dataset"]
    assert "mean of means" in cli("logs", run_id, "1", cwd=built).stdout
    assert containers_of(docker_engine, run_id) == []


def test_failing_container_fails_its_task_with_exit_code(built: Path, docker_engine: Any) -> None:
    (built / "fail.csv").write_text("dataset\nbroken\n")
    done = cli("run", "fail.csv", "--args-template", "--dataset {dataset} --fail", cwd=built, timeout=300)
    assert done.returncode == 1
    assert "failing on purpose for dataset broken" in done.stdout  # last stderr lines in the summary
    run_id = latest_run(built)
    status = read_json(built / ".parallel-engine" / "runs" / run_id / "tasks" / "1" / "1" / "status.json")
    assert status["state"] == "failed" and status["exit_code"] == 1
    assert containers_of(docker_engine, run_id) == []


def test_timeout_kills_the_container(built: Path, docker_engine: Any) -> None:
    (built / "slow.yaml").write_text(yaml.safe_dump({"tasks": [
        {"id": "slow", "command": ["python", "-c", "import time; time.sleep(120)"]},
    ]}))
    started = time.monotonic()
    done = cli("run", "slow.yaml", "--timeout", "2s", cwd=built, timeout=300)
    assert done.returncode == 1
    assert time.monotonic() - started < 60
    run_id = latest_run(built)
    status = read_json(built / ".parallel-engine" / "runs" / run_id / "tasks" / "slow" / "1" / "status.json")
    assert status["state"] == "timeout"
    assert containers_of(docker_engine, run_id) == []


def test_hostile_argv_arrives_byte_exact_inside_the_container(built: Path, docker_engine: Any) -> None:
    dump = "import json,os,sys; json.dump(sys.argv[1:], open(os.environ['PE_OUTPUT_DIR']+'/argv.json','w'))"
    (built / "hostile.yaml").write_text(yaml.safe_dump(
        {"tasks": [{"id": "h", "command": ["python", "-c", dump, *HOSTILE, ""]}]}, allow_unicode=True,
    ), encoding="utf-8")
    done = cli("run", "hostile.yaml", cwd=built, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    run_id = latest_run(built)
    seen = read_json(built / ".parallel-engine" / "runs" / run_id / "tasks" / "h" / "1" / "outputs" / "argv.json")
    assert seen == [*HOSTILE, ""]
    assert containers_of(docker_engine, run_id) == []


def test_sigterm_to_the_orchestrator_removes_every_container(built: Path, docker_engine: Any) -> None:
    (built / "long.yaml").write_text(yaml.safe_dump({"tasks": [
        {"id": f"long{i}", "command": ["python", "-c", "import time; time.sleep(300)"]} for i in range(3)
    ]}))
    proc = subprocess.Popen([sys.executable, "-m", "parallel_engine", "run", "long.yaml", "-j", "2"],
                            cwd=built, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = built / ".parallel-engine" / "runs"
    before = {p.name for p in runs.iterdir()} if runs.exists() else set()
    wait_for(lambda: runs.exists() and len({p.name for p in runs.iterdir()} - before) == 1, 60, "the run to start")
    (run_id,) = {p.name for p in runs.iterdir()} - before
    wait_for(lambda: len([c for c in containers_of(docker_engine, run_id) if c.status == "running"]) == 2,
             120, "two running containers")
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout + stderr
    assert containers_of(docker_engine, run_id) == []
    states = sorted(read_json(p)["state"] for p in (runs / run_id).glob("tasks/*/*/status.json"))
    assert states == ["cancelled", "cancelled"]
