"""`parallel-engine doctor` on the local backend: the engine, IMAGE and the COMMAND's script, each
✗ with its fix, exit 0 only when all pass."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT, cli


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "code", tmp_path / "code")
    return tmp_path


def rows(stdout: str) -> dict[str, str]:
    """Each check's line, by check name."""
    return {name: line for line in stdout.splitlines() for name in ("Docker engine", "IMAGE", "COMMAND")
            if line[:1] in "✓✗" and line[2:].startswith(name + " ")}


def test_processes_from_the_project_folder_pass_and_exit_0(project: Path) -> None:
    done = cli("doctor", "--set", "RUNTIME=process", cwd=project)
    assert done.returncode == 0, done.stdout + done.stderr
    assert set(rows(done.stdout)) == {"Docker engine", "IMAGE", "COMMAND"}
    assert "✗" not in done.stdout


def test_a_missing_command_script_fails_with_where_to_run_from(tmp_path: Path) -> None:
    done = cli("doctor", "--set", "RUNTIME=process", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "✗" in rows(done.stdout)["COMMAND"]
    assert "no such file" in done.stdout and "run from the folder" in done.stdout


@pytest.mark.parametrize("program", ["no-such-program-pe", "/nonexistent/prog", "./here/prog"])
def test_a_command_whose_program_does_not_exist_fails_doctor_and_the_dry_run(project: Path, program: str) -> None:
    # Every task would fail alike ("cannot start"): say so before, naming COMMAND.
    for command in (["doctor"], ["run", "code/params.csv", "--dry-run"]):
        done = cli(*command, "--set", "RUNTIME=process", "--set", f"COMMAND={program} x", cwd=project)
        assert done.returncode == 2, done.stdout + done.stderr
        said = done.stdout + done.stderr
        assert f"COMMAND (--set COMMAND: {program} x) runs {program}, which" in said and "Traceback" not in said
    assert sorted(p.name for p in project.iterdir()) == ["code"]


def test_no_docker_engine_fails_when_runtime_is_docker(project: Path) -> None:
    done = cli("doctor", "--set", "RUNTIME=docker", "--set", "IMAGE=x:1", cwd=project,
               env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "✗" in rows(done.stdout)["Docker engine"] and "ensure-docker.sh" in done.stdout
    assert "not checked: no Docker engine to ask" in done.stdout


@pytest.mark.docker
def test_an_image_not_built_fails_with_build_when_runtime_is_docker(project: Path, docker_engine: Any) -> None:
    done = cli("doctor", "--set", "IMAGE=parallel-engine-never-built:1", "--set", "RUNTIME=docker", cwd=project, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "✓" in rows(done.stdout)["Docker engine"] and "✗" in rows(done.stdout)["IMAGE"]
    assert "fix: run `parallel-engine build`" in done.stdout


@pytest.mark.docker
def test_an_image_not_built_with_runtime_auto_passes_as_processes_and_checks_the_script(tmp_path: Path, docker_engine: Any) -> None:
    done = cli("doctor", "--set", "IMAGE=parallel-engine-never-built:1", cwd=tmp_path, timeout=120)
    assert "is not built yet: tasks run as processes" in rows(done.stdout)["IMAGE"]
    assert "✗" in rows(done.stdout)["COMMAND"] and done.returncode == 2  # processes need code/main.py here


@pytest.mark.docker
def test_a_present_image_passes(project: Path, base_image: str) -> None:
    done = cli("doctor", "--set", f"IMAGE={base_image}", cwd=project, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{base_image} is present: tasks run in containers" in done.stdout


@pytest.mark.parametrize(("host", "plain"), [
    ("127.0.0.1:5000", True), ("127.5.0.1", True), ("localhost:5000", True), ("[::1]:5000", True),
    ("europe-west1-docker.pkg.dev", False), ("10.0.0.1:5000", False), ("registry.example:443", False),
])  # fmt: skip
def test_doctor_asks_a_registry_over_plain_http_only_where_docker_would(host: str, plain: bool) -> None:
    from parallel_engine.backends.gce.preflight import _plain_http_registry

    assert _plain_http_registry(host) is plain
