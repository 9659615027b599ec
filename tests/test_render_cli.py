"""`parallel-engine render` prints exactly what the gce backend gives its VMs."""

from __future__ import annotations

import json
from pathlib import Path

from parallel_engine.config import load_config
from parallel_engine.gce_run import script_for
from tests.helpers import cli

GCE = ["--set", "BACKEND=gce", "--set", "PROJECT_ID=proj", "--set", "ZONE=europe-west1-b",
       "--set", "BUCKET=my-bucket", "--set", "IMAGE=europe-west1-docker.pkg.dev/proj/repo/app:1"]


def config() -> object:
    flags = {"BACKEND": "gce", "PROJECT_ID": "proj", "ZONE": "europe-west1-b", "BUCKET": "my-bucket",
             "IMAGE": "europe-west1-docker.pkg.dev/proj/repo/app:1"}
    return load_config(None, flags=flags, environ={})


def test_worker_script_is_the_backends_own_rendering(tmp_path: Path) -> None:
    done = cli("render", "--worker", "--run-id", "run-1", *GCE, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == script_for(config(), "run-1", "europe-west1-docker.pkg.dev/proj/repo/app:1")(None) + "\n"


def test_task_script_renders_that_task_in(tmp_path: Path) -> None:
    (tmp_path / "params.csv").write_text("task_id,x\nalpha,1\n")
    done = cli("render", "params.csv", "--task", "alpha", "--run-id", "run-1", *GCE, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == script_for(config(), "run-1", "europe-west1-docker.pkg.dev/proj/repo/app:1")((("alpha", 1),)) + "\n"


def test_vm_request_carries_script_labels_and_the_delete_net(tmp_path: Path) -> None:
    done = cli("render", "--vm-request", "--run-id", "run-1", *GCE, "--set", "SPOT=true", cwd=tmp_path)
    body = json.loads(done.stdout)
    props = body["instanceProperties"]
    assert body["namePattern"].endswith("-###")
    assert props["labels"] == {"parallel-engine-run": "run-1", "parallel-engine-worker": "reuse"}
    assert props["scheduling"]["instanceTerminationAction"] == "DELETE"
    assert props["scheduling"]["provisioningModel"] == "SPOT" and props["scheduling"]["automaticRestart"] is False
    (item,) = props["metadata"]["items"]
    assert item["key"] == "startup-script" and item["value"].startswith("#!")


def test_unknown_task_and_local_backend_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "params.csv").write_text("x\n1\n")
    done = cli("render", "params.csv", "--task", "nope", *GCE, cwd=tmp_path)
    assert done.returncode == 2 and "has no task 'nope'" in done.stderr
    local = cli("render", cwd=tmp_path)
    assert local.returncode == 2 and "BACKEND is local" in local.stderr and "Traceback" not in local.stderr
