"""The gce backend against a real Google Cloud project: opt-in, never needed by CI.

Skipped unless PE_GCP_PROJECT, PE_GCP_ZONE, PE_GCP_BUCKET and PE_GCP_REGISTRY are set (optional:
PE_GCP_SERVICE_ACCOUNT for the VMs, PE_GCP_CREDENTIALS_FILE instead of Application Default
Credentials, PE_GCP_MACHINE_TYPE, default e2-small). What it needs on Google Cloud and what it
costs: docs/testing-on-google-cloud.md.

As a user would, through the command line: `build` (Cloud Build pushes code/ to the registry),
two 3-task runs of code/params-like rows (one VM per task, then reuse workers), `collect` (each
output byte-exact against the same program run here), `down`; then no VM of either run is left,
and the bucket holds nothing new outside the test's own prefix (which is deleted at the end).
"""

from __future__ import annotations

import csv
import filecmp
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
NEEDED = ("PE_GCP_PROJECT", "PE_GCP_ZONE", "PE_GCP_BUCKET", "PE_GCP_REGISTRY")
ROWS = [("alpha", "sales", "1"), ("beta", "weather", "2"), ("gamma", "traffic", "3")]

pytestmark = pytest.mark.skipif(
    not all(os.environ.get(name) for name in NEEDED),
    reason=f"real Google Cloud test: set {', '.join(NEEDED)} (see docs/testing-on-google-cloud.md)",
)


def cli(folder: Path, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARALLEL_ENGINE_")}
    done = subprocess.run([sys.executable, "-m", "parallel_engine", *args], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)  # fmt: skip
    assert done.returncode == 0, f"parallel-engine {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def project() -> Iterator[dict[str, Any]]:
    """A working folder with code/, cloudbuild.yaml, params.csv and a config whose store lives
    under a prefix of its own; that prefix is deleted at the end."""
    from google.cloud import storage

    test_id = uuid.uuid4().hex[:10]
    folder = Path(os.environ.get("PE_GCP_WORKDIR") or "/tmp") / f"pe-real-gcp-{test_id}"
    shutil.copytree(ROOT / "code", folder / "code")
    shutil.copy(ROOT / "cloudbuild.yaml", folder / "cloudbuild.yaml")
    with open(folder / "params.csv", "w", newline="") as out:
        csv.writer(out).writerows([("task_id", "dataset", "var"), *ROWS])
    prefix = f"parallel-engine-test-{test_id}"
    config: dict[str, Any] = {
        "BACKEND": "gce", "PROJECT_ID": os.environ["PE_GCP_PROJECT"], "ZONE": os.environ["PE_GCP_ZONE"],
        "BUCKET": os.environ["PE_GCP_BUCKET"], "BUCKET_PREFIX": prefix,
        "REGISTRY": os.environ["PE_GCP_REGISTRY"], "IMAGE": f"{os.environ['PE_GCP_REGISTRY']}/parallel-engine-test:{test_id}",
        "MACHINE_TYPE": os.environ.get("PE_GCP_MACHINE_TYPE", "e2-small"), "VM_QUOTAS": 3,
        "MAX_RUN_DURATION": "30m", "LABELS": {"parallel-engine-test": test_id},
    }  # fmt: skip
    for key, variable in (("SERVICE_ACCOUNT", "PE_GCP_SERVICE_ACCOUNT"), ("CREDENTIALS_FILE", "PE_GCP_CREDENTIALS_FILE")):
        if os.environ.get(variable):
            config[key] = os.environ[variable]
    (folder / ".config.yaml").write_text(yaml.safe_dump(config))
    bucket = storage.Client(project=config["PROJECT_ID"], credentials=_credentials()).bucket(config["BUCKET"])
    before = {blob.name for blob in bucket.list_blobs()}
    state = {"folder": folder, "config": config, "prefix": prefix, "bucket": bucket, "before": before, "runs": []}
    try:
        yield state
    finally:
        for blob in bucket.list_blobs(prefix=prefix + "/"):
            blob.delete()
        shutil.rmtree(folder, ignore_errors=True)


def _credentials() -> Any:
    import google.auth
    from google.oauth2 import credentials as user
    from google.oauth2 import service_account

    scopes = ["https://www.googleapis.com/auth/cloud-platform"]
    path = os.environ.get("PE_GCP_CREDENTIALS_FILE")
    if not path:
        return google.auth.default(scopes=scopes)[0]
    info = yaml.safe_load(Path(path).read_text())  # JSON is YAML
    if info.get("type") == "service_account":
        return service_account.Credentials.from_service_account_info(info, scopes=scopes)
    return user.Credentials.from_authorized_user_info(info, scopes=scopes)


def expected_outputs(folder: Path, task_id: str, dataset: str, var: str) -> Path:
    """The same program run here: what the VM must have produced, byte for byte."""
    out = folder / "expected" / task_id
    out.mkdir(parents=True)
    subprocess.run([sys.executable, str(ROOT / "code" / "main.py"), f"--dataset={dataset}", f"--var={var}"],
                   env={**os.environ, "PE_OUTPUT_DIR": str(out)}, check=True, capture_output=True)  # fmt: skip
    return out


def run_and_collect(project: dict[str, Any], *flags: str) -> str:
    folder = project["folder"]
    done = cli(folder, "run", "params.csv", "-q", *flags)
    run_id = done.stdout.split()[1].rstrip(":")
    project["runs"].append(run_id)
    assert "3 succeeded" in done.stdout, done.stdout
    dest = folder / f"results-{run_id}"
    cli(folder, "collect", run_id, "--dest", str(dest))
    with open(dest / "results.csv", newline="") as results:
        rows = list(csv.DictReader(results))
    assert sorted((r["task_id"], r["state"]) for r in rows) == [(t, "succeeded") for t, _, _ in ROWS]
    for task_id, dataset, var in ROWS:
        expected = folder / "expected" / task_id
        if not expected.exists():
            expected_outputs(folder, task_id, dataset, var)
        comparison = filecmp.dircmp(expected, dest / task_id)
        assert comparison.left_list == comparison.right_list, (comparison.left_only, comparison.right_only)
        _, mismatch, errors = filecmp.cmpfiles(expected, dest / task_id, comparison.common_files, shallow=False)
        assert not mismatch and not errors, (task_id, mismatch, errors)
    return run_id


def vms_of(project: dict[str, Any], run_id: str) -> list[str]:
    from google.cloud import compute_v1

    request = compute_v1.AggregatedListInstancesRequest(
        project=project["config"]["PROJECT_ID"], filter=f'labels.parallel-engine-run = "{run_id}"'
    )
    listed = compute_v1.InstancesClient(credentials=_credentials()).aggregated_list(request=request)
    return [vm.name for _, scoped in listed for vm in scoped.instances]


def test_build_then_runs_on_real_vms_collect_byte_exact_and_leave_nothing_behind(project: dict[str, Any]) -> None:
    folder = project["folder"]
    built = cli(folder, "build", "-q")
    assert "built and pushed" in built.stdout and "@sha256:" in built.stdout
    one_per_task = run_and_collect(project, "--tasks-per-vm", "1")
    reuse = run_and_collect(project)
    for run_id in (one_per_task, reuse):
        down = cli(folder, "down", run_id)
        assert "none left" in down.stdout
        assert vms_of(project, run_id) == []
    after = {blob.name for blob in project["bucket"].list_blobs()}
    outside = sorted(name for name in after - project["before"] if not name.startswith(project["prefix"] + "/"))
    assert outside == [], f"written outside the run store's prefix: {outside}"
