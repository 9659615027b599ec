"""`parallel-engine render` prints exactly what the gce backend gives its VMs (the image pinned to
the digests `build` recorded for it and for the worker image, read from the bucket as `run` reads
them: so an emulated bucket here)."""

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

REPOSITORY = "europe-west1-docker.pkg.dev/proj/repo"
IMAGE = f"{REPOSITORY}/app:1"
WORKER_DIGEST = "sha256:" + "d" * 64
PINNED_WORKER = f"{REPOSITORY}/parallel-engine-worker@{WORKER_DIGEST}"


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


def worker_record() -> dict[str, str]:
    """The worker's part of the build record `build` leaves for IMAGE's repository."""
    from parallel_engine.worker.image import tag

    return {"worker_image": f"{REPOSITORY}/parallel-engine-worker:{tag()}", "worker_digest": WORKER_DIGEST}


def render(cloud: Emulator, tmp_path: Path, *args: str, record: dict[str, str] | None = None) -> Any:
    """`parallel-engine render ARGS` while the bucket holds `record` (default: the worker's part
    only) as the last build; the finished process."""
    from parallel_engine.api import open_store

    store = open_store(config(cloud))
    store.blobs.write("builds/latest.json", json.dumps(worker_record() if record is None else record).encode())
    try:
        return cli("render", *args, *sets(cloud), cwd=tmp_path)
    finally:
        store.blobs.delete("builds/latest.json")


def test_worker_script_is_the_backends_own_rendering(cloud: Emulator, tmp_path: Path) -> None:
    done = render(cloud, tmp_path, "--worker", "--run-id", "run-1")
    assert done.returncode == 0, done.stderr
    assert done.stdout == script_for(GceSettings.of(config(cloud)), "run-1", IMAGE, PINNED_WORKER)(None) + "\n"


def test_task_script_renders_that_task_in(cloud: Emulator, tmp_path: Path) -> None:
    (tmp_path / "params.csv").write_text("task_id,x\nalpha,1\n")
    done = render(cloud, tmp_path, "params.csv", "--task", "alpha", "--run-id", "run-1")
    assert done.returncode == 0, done.stderr
    assert done.stdout == script_for(GceSettings.of(config(cloud)), "run-1", IMAGE, PINNED_WORKER)((("alpha", 1),)) + "\n"


def test_render_pins_both_images_to_the_digests_build_recorded(cloud: Emulator, tmp_path: Path) -> None:
    digest = "sha256:" + "c" * 64
    done = render(cloud, tmp_path, "--worker", "--run-id", "run-1", record={"image": IMAGE, "digest": digest, **worker_record()})
    assert done.returncode == 0, done.stderr
    assert f"PE_IMAGE={REPOSITORY}/app@{digest}\n" in done.stdout
    assert f"PE_WORKER_IMAGE={PINNED_WORKER}\n" in done.stdout
    assert done.stdout == script_for(GceSettings.of(config(cloud)), "run-1", f"{REPOSITORY}/app@{digest}", PINNED_WORKER)(None) + "\n"


def test_render_is_refused_when_build_recorded_no_worker_image(cloud: Emulator, tmp_path: Path) -> None:
    # A build record from before the Python worker: the image's digest, no worker image.
    done = render(cloud, tmp_path, "--worker", "--run-id", "run-1", record={"image": IMAGE, "digest": "sha256:" + "c" * 64})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "no worker image" in done.stderr and "run `parallel-engine build`" in done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr


def test_vm_request_carries_script_labels_and_the_delete_net(cloud: Emulator, tmp_path: Path) -> None:
    done = render(cloud, tmp_path, "--vm-request", "--run-id", "run-1", "--set", "SPOT=true")
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
