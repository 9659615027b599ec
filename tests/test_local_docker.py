"""End to end on the docker runtime: `parallel-engine build`, then `run` in containers, through the CLI."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import (
    ROOT,
    cli,
    cli_env,
    containers_of,
    read_json,
    run_id_of,
    wait_for,
)
from tests.hostile import VALUES

pytestmark = pytest.mark.docker

IMAGE = "parallel-engine-e2e:test"


@pytest.fixture(scope="module")
def built(base_image: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working folder with code/ built into IMAGE by the real `parallel-engine build`
    (code/Dockerfile starts FROM the base image: without it, these tests skip loudly)."""
    folder = tmp_path_factory.mktemp("docker-e2e")
    shutil.copytree(ROOT / "code", folder / "code")
    (folder / ".config.yaml").write_text(f"IMAGE: {IMAGE}\n")
    done = cli("build", cwd=folder, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"built {IMAGE}" in done.stdout
    return folder


def test_build_then_run_example_params_in_containers_and_collect(built: Path, docker_engine: Any) -> None:
    done = cli("run", "code/params.csv", "-j", "2", cwd=built, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"runtime: docker: engine answers and image {IMAGE} exists" in done.stderr
    run_id = run_id_of(done)
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
    run_id = run_id_of(done)
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
    run_id = run_id_of(done)
    status = read_json(built / ".parallel-engine" / "runs" / run_id / "tasks" / "slow" / "1" / "status.json")
    assert status["state"] == "timeout"
    assert containers_of(docker_engine, run_id) == []


def test_hostile_argv_arrives_byte_exact_inside_the_container(built: Path, docker_engine: Any) -> None:
    dump = "import json,os,sys; json.dump(sys.argv[1:], open(os.environ['PE_OUTPUT_DIR']+'/argv.json','w'))"
    (built / "hostile.yaml").write_text(yaml.safe_dump(
        {"tasks": [{"id": "h", "command": ["python", "-c", dump, *VALUES, ""]}]}, allow_unicode=True,
    ), encoding="utf-8")
    done = cli("run", "hostile.yaml", cwd=built, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    run_id = run_id_of(done)
    seen = read_json(built / ".parallel-engine" / "runs" / run_id / "tasks" / "h" / "1" / "outputs" / "argv.json")
    assert seen == [*VALUES, ""]
    assert containers_of(docker_engine, run_id) == []


Background = list[tuple[subprocess.Popen[str], Path, set[str]]]


@pytest.fixture()
def background() -> Iterator[Background]:
    """Orchestrators a test started; whatever the test's outcome, none (nor its containers) outlives it."""
    from parallel_engine.protocol import LABEL_RUN
    from parallel_engine.runtimes.docker import remove_containers

    started: Background = []
    yield started
    for proc, runs, before in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=60)
        for run in {p.name for p in runs.iterdir()} - before if runs.exists() else ():
            remove_containers({LABEL_RUN: run})


def start_run(background: Background, built: Path, docker_engine: Any, source: str, *args: str,
              running: int) -> tuple[subprocess.Popen[str], str]:
    """`parallel-engine run SOURCE` in the background, once `running` of its containers run."""
    env = cli_env()
    runs = built / ".parallel-engine" / "runs"
    before = {p.name for p in runs.iterdir()} if runs.exists() else set()
    proc = subprocess.Popen([sys.executable, "-m", "parallel_engine", "run", source, *args],
                            cwd=built, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    background.append((proc, runs, before))
    wait_for(lambda: runs.exists() and len({p.name for p in runs.iterdir()} - before) == 1, 60, "the run to start")
    (run_id,) = {p.name for p in runs.iterdir()} - before
    wait_for(lambda: len([c for c in containers_of(docker_engine, run_id) if c.status == "running"]) == running,
             120, f"{running} running container(s)")
    return proc, run_id


def write_long_tasks(built: Path, count: int) -> str:
    (built / "long.yaml").write_text(yaml.safe_dump({"tasks": [
        {"id": f"long{i}", "command": ["python", "-c", "import time; time.sleep(300)"]} for i in range(count)
    ]}))
    return "long.yaml"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_orchestrator_removes_every_container(
    background: Background, built: Path, docker_engine: Any, sig: signal.Signals
) -> None:
    proc, run_id = start_run(background, built, docker_engine, write_long_tasks(built, 3), "-j", "2", running=2)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout + stderr
    assert containers_of(docker_engine, run_id) == []
    runs = built / ".parallel-engine" / "runs"
    states = sorted(read_json(p)["state"] for p in (runs / run_id).glob("tasks/*/*/status.json"))
    assert states == ["cancelled", "cancelled"]


def test_after_sigkill_of_the_orchestrator_down_removes_the_containers_it_left(
    background: Background, built: Path, docker_engine: Any
) -> None:
    proc, run_id = start_run(background, built, docker_engine, write_long_tasks(built, 3), "-j", "2", running=2)
    proc.kill()  # SIGKILL (or the OOM killer): no handler runs, nothing is cleaned up
    proc.communicate(timeout=60)
    assert len(containers_of(docker_engine, run_id)) == 2  # dockerd keeps them running
    done = cli("down", run_id, cwd=built, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"run {run_id}: removed 2 container(s)" in done.stdout
    assert containers_of(docker_engine, run_id) == []
    again = cli("down", run_id, cwd=built, timeout=120)
    assert again.returncode == 0 and f"run {run_id}: removed 0 container(s) and 0 process(es)" in again.stdout


def test_the_users_labels_reach_every_container(background: Background, built: Path, docker_engine: Any) -> None:
    wait_for_go = "import os, time\nwhile not os.path.exists('/pe/output/go'): time.sleep(0.05)\n"
    (built / "labelled.yaml").write_text(yaml.safe_dump({"tasks": [{"id": "w", "command": ["python", "-c", wait_for_go]}]}))
    proc, run_id = start_run(background, built, docker_engine, "labelled.yaml", "--set", "LABELS=team=data,cost-centre=42", running=1)
    try:
        (container,) = containers_of(docker_engine, run_id)
        assert container.labels == {
            "team": "data", "cost-centre": "42",
            "parallel-engine-run": run_id, "parallel-engine-task": "w", "parallel-engine-attempt": "1",
        }
    finally:
        (built / ".parallel-engine" / "runs" / run_id / "tasks" / "w" / "1" / "outputs" / "go").write_text("")
        stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stdout + stderr
    assert containers_of(docker_engine, run_id) == []


def test_an_out_of_memory_kill_is_named_in_the_attempt_record(built: Path, docker_engine: Any) -> None:
    hog = "x = bytearray(256 * 1024 * 1024); x[::4096] = b'1' * len(x[::4096])"
    (built / "hog.yaml").write_text(yaml.safe_dump({"tasks": [{"id": "hog", "command": ["python", "-c", hog]}]}))
    done = cli("run", "hog.yaml", "--set", "MEMORY=32m", cwd=built, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "killed: out of memory (MEMORY=32m)" in done.stdout  # the failed-tasks table
    run_id = run_id_of(done)
    status = read_json(built / ".parallel-engine" / "runs" / run_id / "tasks" / "hog" / "1" / "status.json")
    assert (status["state"], status["exit_code"], status["reason"]) == ("failed", 137, "killed: out of memory (MEMORY=32m)")
    assert containers_of(docker_engine, run_id) == []


DUMP_ARGV = (
    "import json, os, sys\n"
    "with open(os.path.join(os.environ['PE_OUTPUT_DIR'], 'argv.json'), 'w', encoding='utf-8') as f:\n"
    "    json.dump(sys.argv[1:], f)\n"
)


def test_hostile_params_csv_values_reach_the_image_entrypoint_byte_exact(
    built: Path, docker_engine: Any, base_image: str, tmp_path: Path
) -> None:
    context = tmp_path / "argv-image"
    context.mkdir()
    (context / "dump.py").write_text(DUMP_ARGV)
    (context / "Dockerfile").write_text(f'FROM {base_image}\nCOPY dump.py /dump.py\nENTRYPOINT ["python", "/dump.py"]\n')
    image = "parallel-engine-argv:test"
    assert cli("build", str(context), "--image", image, cwd=built, timeout=300).returncode == 0
    try:
        cells = [*VALUES, ""]  # an empty cell omits its argument
        rows = [(cells[i:i + 6] + [""] * 6)[:6] for i in range(0, len(cells), 6)]
        columns = [f"c{i}" for i in range(6)]
        with open(built / "hostile.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            writer.writerows(rows)
        done = cli("run", "hostile.csv", "--image", image, cwd=built, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"runtime: docker: engine answers and image {image} exists" in done.stderr
        run_id = run_id_of(done)
        for task, row in enumerate(rows, start=1):
            seen = json.loads((built / ".parallel-engine" / "runs" / run_id / "tasks" / str(task) / "1" / "outputs"
                               / "argv.json").read_text(encoding="utf-8"))
            assert seen == [f"--{column}={value}" for column, value in zip(columns, row) if value != ""]
        assert containers_of(docker_engine, run_id) == []
    finally:
        docker_engine.images.remove(image, force=True)


def test_cli_build_of_a_broken_dockerfile_exits_3_naming_the_step_with_the_log_tail(
    docker_engine: Any, base_image: str, tmp_path: Path
) -> None:
    context = tmp_path / "broken"
    context.mkdir()
    (context / "Dockerfile").write_text(
        f"FROM {base_image}\nRUN echo preparing-things\n"
        "RUN echo '[notice] [/] [bold]bracketed' && exit 3\nRUN echo never\n"
    )
    done = cli("build", str(context), "--image", "parallel-engine-test-broken:cli", cwd=tmp_path, timeout=300)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "failed at Step 3/4 : RUN echo '[notice] [/] [bold]bracketed' && exit 3" in done.stderr
    assert "returned a non-zero code: 3" in done.stderr
    tail = done.stderr.split("--- last")[1]
    assert "[notice] [/] [bold]bracketed" in tail and "preparing-things" in tail
    assert "hint: fix the failing step in the Dockerfile" in done.stderr


def test_cli_build_of_a_missing_folder_hints_the_build_argument(tmp_path: Path) -> None:
    done = cli("build", "no-such-dir", "--image", "x:y", cwd=tmp_path)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "build context no-such-dir is not a directory" in done.stderr
    assert "hint: pass the folder holding your Dockerfile: `parallel-engine build DIR` (default: code)" in done.stderr
