"""`run --dry-run` on gce, against the emulated cloud: the plan (image pinned to the recorded
digest, machine type, Spot, zones, VM request rendered), a cost estimate, and nothing created —
proved by the emulator's call counts (no write to Storage, no Compute mutation, no build)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from parallel_engine.emulator import Emulator
from parallel_engine.api import open_store
from tests.gce.gce_helpers import config_for, save_build, settings
from tests.helpers import ROOT, cli

#: Method names of calls that change something (Storage, Compute, Cloud Build).
MUTATING = re.compile(r"insert|delete|patch|update|create|rewrite|compose|copy|setMetadata|stop|start|reset",
                      re.IGNORECASE)
DIGEST = "sha256:" + "ab" * 32


def test_gce_dry_run_prints_the_plan_and_estimate_and_creates_nothing(cloud: Emulator, tmp_path: Path) -> None:
    shutil.copytree(ROOT / "code", tmp_path / "code")
    image = "europe-west1-docker.pkg.dev/p/repo/app:1"
    values = settings(cloud, image, MACHINE_TYPE="n1-standard-4", SPOT=True, VM_QUOTAS=4, TASK_TIMEOUT="10m",
                      PRICE_PER_VM_HOUR=0.5, FALLBACK_ZONES=["us-central1-b"])
    (tmp_path / ".config.yaml").write_text(yaml.safe_dump(values))
    store = open_store(config_for(cloud, image))
    save_build(cloud, {"image": image, "digest": DIGEST})  # what `build` records: `run` pins IMAGE to it
    cloud.control.reset_calls()
    done = cli("run", "code/params.csv", "--dry-run", cwd=tmp_path, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "backend: gce, 4 worker(s) at once" in out
    assert f"image: europe-west1-docker.pkg.dev/p/repo/app@{DIGEST}" in out
    assert "machine type: n1-standard-4" in out and "Spot VMs: yes" in out
    assert f"zones: {cloud.zone}, us-central1-b" in out
    assert "VM request: rendered and checked" in out
    # 12 tasks, 4 at once, 10 min each at most: 3 waves of 10 min; 4 VMs × (30 min + 1 min boot) = 2.07 VM-hours
    assert "all 12 take ~30 min with 4 at once" in out
    assert "~2.07 VM-hours (with ~60 s boot per VM), cost ~$1.03 at $0.5/VM-hour (PRICE_PER_VM_HOUR)" in out
    calls = cloud.control.calls()
    for service in ("storage", "compute", "cloudbuild"):
        methods = calls.get(service, {}).get("byMethod", {})
        assert not [m for m in methods if MUTATING.search(m.rsplit(".", 1)[-1])], (service, methods)
    assert calls.get("cloudbuild", {}).get("total", 0) == 0
    assert store.run_ids() == []


def test_gce_dry_run_plans_only_the_vms_the_quotas_leave_room_for(cloud: Emulator, tmp_path: Path) -> None:
    shutil.copytree(ROOT / "code", tmp_path / "code")
    cloud.control.set_quota("INSTANCES", 3)
    values = settings(cloud, "europe-west1-docker.pkg.dev/p/repo/app:1", VM_QUOTAS=6)
    (tmp_path / ".config.yaml").write_text(yaml.safe_dump(values))
    done = cli("run", "code/params.csv", "--dry-run", cwd=tmp_path, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"VM_QUOTAS 6, but the INSTANCES quota of {cloud.region} leaves room for 3 n1-standard-1: running 3 at once" \
        in done.stderr
    assert "backend: gce, 3 worker(s) at once" in done.stdout


def test_quotas_that_cannot_be_read_leave_vm_quotas_as_set_and_say_so(cloud: Emulator, tmp_path: Path) -> None:
    shutil.copytree(ROOT / "code", tmp_path / "code")
    cloud.control.deny("compute.regions.get")
    values = settings(cloud, "europe-west1-docker.pkg.dev/p/repo/app:1", VM_QUOTAS=6)
    (tmp_path / ".config.yaml").write_text(yaml.safe_dump(values))
    done = cli("run", "code/params.csv", "--dry-run", cwd=tmp_path, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"note: could not read the quotas of {cloud.region}" in done.stderr and "VM_QUOTAS 6 as set" in done.stderr
    assert "backend: gce, 6 worker(s) at once" in done.stdout


@pytest.mark.parametrize("key, value, error, hint", [
    ("MACHINE_TYPE", "zz-huge-7", "MACHINE_TYPE zz-huge-7 (file {config}) does not exist in {zone}",
     "gcloud compute machine-types list --zones {zone}"),
    ("ZONE", "us-central1-z", "ZONE us-central1-z (file {config}) is not a zone of Compute Engine",
     "gcloud compute zones list"),
])
def test_a_machine_type_or_zone_google_does_not_have_is_one_error_naming_the_key_and_nothing_is_written(
        cloud: Emulator, tmp_path: Path, key: str, value: str, error: str, hint: str) -> None:
    shutil.copytree(ROOT / "code", tmp_path / "code")
    image = "europe-west1-docker.pkg.dev/p/repo/app:1"
    (tmp_path / ".config.yaml").write_text(yaml.safe_dump(settings(cloud, image, **{key: value})))
    where = {"config": tmp_path / ".config.yaml", "zone": cloud.zone}
    for args in (["--dry-run"], []):  # `run` itself refuses it before it creates anything
        done = cli("run", "code/params.csv", *args, cwd=tmp_path, timeout=180)
        assert done.returncode == 2, done.stdout + done.stderr
        assert error.format(**where) in done.stderr and hint.format(**where) in done.stderr
        assert "Traceback" not in done.stderr and "dry run:" not in done.stdout
    assert open_store(config_for(cloud, image)).run_ids() == []
    assert sorted(path.name for path in tmp_path.iterdir()) == [".config.yaml", "code"]
