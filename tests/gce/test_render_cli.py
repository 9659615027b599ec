"""`parallel-engine render` prints exactly what the gce backend gives its VMs (the image pinned to
the digest `build` recorded, read from the bucket as `run` reads it: so an emulated bucket here)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from parallel_engine.backends.gce.backend import script_for
from parallel_engine.backends.gce.settings import GceSettings
from parallel_engine.config import Config, load_config
from parallel_engine.emulator import Emulator
from tests.helpers import cli

pytestmark = pytest.mark.emulator

IMAGE = "europe-west1-docker.pkg.dev/proj/repo/app:1"


@pytest.fixture(scope="module")
def cloud() -> Iterator[Emulator]:
    with Emulator(time_scale=0.01) as emulator:
        yield emulator


def flags(cloud: Emulator) -> dict[str, Any]:
    return {"BACKEND": "gce", "PROJECT_ID": cloud.project, "ZONE": "europe-west1-b", "BUCKET": cloud.bucket,
            "STORAGE_ENDPOINT": cloud.storage_endpoint, "COMPUTE_ENDPOINT": cloud.compute_endpoint, "IMAGE": IMAGE,
            "CREDENTIALS_FILE": str(cloud.credentials_file), "TOKEN_URI": cloud.token_uri}


def sets(cloud: Emulator) -> list[str]:
    return [item for key, value in flags(cloud).items() for item in ("--set", f"{key}={value}")]


def config(cloud: Emulator) -> Config:
    return load_config(None, flags=flags(cloud), environ={})


def test_worker_script_is_the_backends_own_rendering(cloud: Emulator, tmp_path: Path) -> None:
    done = cli("render", "--worker", "--run-id", "run-1", *sets(cloud), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == script_for(GceSettings.of(config(cloud)), "run-1", IMAGE)(None) + "\n"


def test_task_script_renders_that_task_in(cloud: Emulator, tmp_path: Path) -> None:
    (tmp_path / "params.csv").write_text("task_id,x\nalpha,1\n")
    done = cli("render", "params.csv", "--task", "alpha", "--run-id", "run-1", *sets(cloud), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == script_for(GceSettings.of(config(cloud)), "run-1", IMAGE)((("alpha", 1),)) + "\n"


def render_with_build_record(cloud: Emulator, tmp_path: Path, record: dict[str, str]) -> str:
    """`render --worker` while the bucket holds `record` as the last build; its output."""
    from parallel_engine.api import open_store

    store = open_store(config(cloud))
    store.blobs.write("builds/latest.json", json.dumps(record).encode())
    try:
        done = cli("render", "--worker", "--run-id", "run-1", *sets(cloud), cwd=tmp_path)
    finally:
        store.blobs.delete("builds/latest.json")
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_render_pins_the_image_to_the_digest_build_recorded(cloud: Emulator, tmp_path: Path) -> None:
    digest = "sha256:" + "c" * 64
    shown = render_with_build_record(cloud, tmp_path, {"image": IMAGE, "digest": digest})
    assert f"PE_IMAGE=europe-west1-docker.pkg.dev/proj/repo/app@{digest}\n" in shown
    assert shown == script_for(GceSettings.of(config(cloud)), "run-1", f"europe-west1-docker.pkg.dev/proj/repo/app@{digest}")(None) + "\n"


def test_render_shows_both_images_pinned_when_build_recorded_a_worker_image(cloud: Emulator, tmp_path: Path) -> None:
    from parallel_engine.worker.image import tag

    digest, worker_digest = "sha256:" + "c" * 64, "sha256:" + "d" * 64
    worker = f"europe-west1-docker.pkg.dev/proj/repo/parallel-engine-worker:{tag()}"
    shown = render_with_build_record(
        cloud, tmp_path, {"image": IMAGE, "digest": digest, "worker_image": worker, "worker_digest": worker_digest})
    assert f"PE_IMAGE=europe-west1-docker.pkg.dev/proj/repo/app@{digest}\n" in shown
    assert f"PE_WORKER_IMAGE=europe-west1-docker.pkg.dev/proj/repo/parallel-engine-worker@{worker_digest}\n" in shown


def test_vm_request_carries_script_labels_and_the_delete_net(cloud: Emulator, tmp_path: Path) -> None:
    done = cli("render", "--vm-request", "--run-id", "run-1", *sets(cloud), "--set", "SPOT=true", cwd=tmp_path)
    body = json.loads(done.stdout)
    props = body["instanceProperties"]
    assert body["namePattern"].endswith("-###")
    assert props["labels"] == {"parallel-engine-run": "run-1", "parallel-engine-worker": "reuse"}
    assert props["scheduling"]["instanceTerminationAction"] == "DELETE"
    assert props["scheduling"]["provisioningModel"] == "SPOT" and props["scheduling"]["automaticRestart"] is False
    (item,) = props["metadata"]["items"]
    assert item["key"] == "startup-script" and item["value"].startswith("#!")


def test_unknown_task_and_local_backend_are_clear_errors(cloud: Emulator, tmp_path: Path) -> None:
    (tmp_path / "params.csv").write_text("x\n1\n")
    done = cli("render", "params.csv", "--task", "nope", *sets(cloud), cwd=tmp_path)
    assert done.returncode == 2 and "has no task 'nope'" in done.stderr
    local = cli("render", cwd=tmp_path)
    assert local.returncode == 2 and "BACKEND is local" in local.stderr and "Traceback" not in local.stderr


def test_a_storage_refusal_is_one_clear_error_not_a_traceback(cloud: Emulator, tmp_path: Path) -> None:
    cloud.control.fail_next(1, 403, method="GET", path=r"builds%2Flatest\.json", service="storage", caller="orchestrator")
    done = cli("render", "--worker", "--run-id", "run-1", *sets(cloud), cwd=tmp_path)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "error: Cloud Storage (gs://" in done.stderr and "403" in done.stderr
    assert "Traceback" not in done.stderr
