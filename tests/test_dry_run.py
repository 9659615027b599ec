"""`run --dry-run` on the local backend: the plan printed, the estimate from past runs of the same
source (or TASK_TIMEOUT), exit 0, and nothing written: not even the store's folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from parallel_engine.prices import PRICES_DATE, vm_hour_price
from tests.helpers import ROOT, cli


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "code", tmp_path / "code")
    return tmp_path


def test_dry_run_prints_the_plan_and_creates_nothing(project: Path) -> None:
    done = cli("run", "code/params.csv", "--dry-run", "--runtime", "process", "--jobs", "5", cwd=project)
    assert done.returncode == 0, done.stderr
    assert "tasks: 12 from code/params.csv" in done.stdout
    assert "backend: local, 5 worker(s) at once" in done.stdout
    assert "runtime: process" in done.stdout and "code/main.py" in done.stdout
    assert "estimate: none (no past run of code/params.csv is in the store, and no TASK_TIMEOUT is set)" in done.stdout
    assert sorted(p.name for p in project.iterdir()) == ["code"]  # no .parallel-engine, no run


def test_dry_run_estimates_from_past_runs_of_the_same_source(project: Path) -> None:
    ran = cli("run", "code/params.csv", "-q", "--runtime", "process", cwd=project)
    assert ran.returncode == 0, ran.stderr
    runs = sorted((project / ".parallel-engine" / "runs").iterdir())
    done = cli("run", "code/params.csv", "--dry-run", "--runtime", "process", cwd=project)
    assert done.returncode == 0, done.stderr
    assert "(the mean of 12 succeeded task(s) in the last 1 run(s) of code/params.csv)" in done.stdout
    assert sorted((project / ".parallel-engine" / "runs").iterdir()) == runs  # no run added


def test_dry_run_without_history_takes_task_timeout_as_the_upper_bound(project: Path) -> None:
    done = cli("run", "code/params.csv", "--dry-run", "--runtime", "process", "--jobs", "4", "--timeout", "10m",
               cwd=project)
    assert done.returncode == 0, done.stderr
    assert "a task takes ~10 min (at most: TASK_TIMEOUT" in done.stdout
    assert "all 12 take ~30 min with 4 at once" in done.stdout


def test_dry_run_refuses_bad_input_as_run_does(project: Path) -> None:
    done = cli("run", "code/missing.csv", "--dry-run", cwd=project)
    assert done.returncode == 2
    assert "missing.csv" in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in project.iterdir()) == ["code"]


@pytest.mark.parametrize("kind", ["folder", "dangling symlink"])
@pytest.mark.parametrize("command", [["run", "code/params.csv", "--dry-run"], ["doctor"]])
def test_a_config_yaml_that_is_not_a_readable_file_is_an_error_not_defaults(
        project: Path, kind: str, command: list[str]) -> None:
    # Ignoring it would run (or check) with every default: BACKEND local, not the gce the user wrote.
    config = project / ".config.yaml"
    if kind == "folder":
        config.mkdir()
    else:
        config.symlink_to(project / "gone.yaml")
    done = cli(*command, cwd=project)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"config file {config} is not a file" in done.stderr and "Traceback" not in done.stderr
    assert not done.stdout.strip() and sorted(p.name for p in project.iterdir()) == [".config.yaml", "code"]


def test_price_comes_from_price_per_vm_hour_else_the_dated_table() -> None:
    assert vm_hour_price("n1-standard-1", False, 0.5).per_hour == 0.5
    listed = vm_hour_price("n1-standard-4", False, None)
    assert listed.per_hour == 0.19 and PRICES_DATE in listed.basis and "cloud.google.com" in listed.basis
    spot = vm_hour_price("n1-standard-4", True, None)  # Spot VMs are priced as Spot, not as on demand
    assert spot.per_hour == 0.06701 and "Spot price, approximate" in spot.basis and PRICES_DATE in spot.basis
    unknown = vm_hour_price("x9-huge-1", False, None)
    assert unknown.per_hour is None and "PRICE_PER_VM_HOUR" in unknown.basis
