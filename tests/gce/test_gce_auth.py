"""The gce path with real google-auth flows against the emulated cloud, which authenticates like Google:
tokens fetched at its OAuth endpoint, refreshed when they expire mid-run, a revoked login or key, a
missing permission and a disabled API, each one clear line with its fix and exit code 2."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import parallel_engine as pe
from parallel_engine.api import open_store
from parallel_engine.emulator import Emulator
from tests.gce.gce_helpers import (
    BackgroundRun,
    config_for,
    first_claim_holder,
    run_vms,
    settings,
)
from tests.helpers import ROOT, cli

pytestmark = [pytest.mark.emulator, pytest.mark.docker]
#: Three tasks that last long enough for a token to expire while the run goes on (three.yaml)...
SLEEPERS = {"tasks": [{"id": f"t{i}", "command": ["python", "-c", "import time; time.sleep(1.5)"]} for i in range(3)]}
#: ...and three that end at once, for runs that only count how they authenticated (quick.yaml).
QUICK = {"tasks": [{"id": f"t{i}", "command": ["python", "-c", "pass"]} for i in range(3)]}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "three.yaml").write_text(yaml.safe_dump(SLEEPERS))
    (tmp_path / "quick.yaml").write_text(yaml.safe_dump(QUICK))
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "Dockerfile").write_text("FROM python:3.11-slim\n")
    shutil.copy(ROOT / "cloudbuild.yaml", tmp_path / "cloudbuild.yaml")
    return tmp_path


def write_config(cloud: Emulator, workdir: Path, image: str = "img", **extra: Any) -> None:
    values = {k: v for k, v in settings(cloud, image, **extra).items() if v is not None}
    values["CLOUDBUILD_ENDPOINT"] = cloud.cloudbuild_endpoint
    (workdir / ".config.yaml").write_text(yaml.safe_dump(values))


def error_line(stderr: str) -> str:
    (line,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    return line


def orchestrator_refusals(cloud: Emulator) -> int:
    calls = cloud.control.calls()
    return sum(per.get("orchestrator", 0) for service in ("compute", "storage")
               for per in calls[service]["unauthenticated"].values())  # fmt: skip


def test_a_run_fetches_its_tokens_at_the_token_endpoint_and_every_call_carries_one(
    cloud: Emulator, example_image: str, workdir: Path
) -> None:
    run = pe.run(workdir / "quick.yaml", config=config_for(cloud, example_image, VM_QUOTAS=2))
    assert run.status().counts == {"succeeded": 3}
    calls = cloud.control.calls()
    assert calls["oauth"]["byMethod"]["oauth2.token.refresh_token"]["orchestrator"] >= 1  # the ADC file's grant
    for service in ("compute", "storage"):
        assert calls[service]["byCaller"].get("orchestrator", 0) > 0
        assert "unknown" not in calls[service]["byCaller"], calls[service]  # no call without a valid token
        assert orchestrator_refusals(cloud) == 0
    assert run_vms(cloud, run.run_id) == []


def test_an_access_token_that_expires_mid_run_is_refreshed_and_the_run_goes_on(
    cloud: Emulator, example_image: str, workdir: Path
) -> None:
    # Tokens that outlive google-auth's refresh margin (3m45s), so its clients keep one until refused.
    cloud.control.set_clock(token_lifetime_seconds=200_000)  # 2,000 s real at this time scale
    config = config_for(cloud, example_image, VM_QUOTAS=2)
    with BackgroundRun(workdir / "three.yaml", config) as started:
        first_claim_holder(open_store(config), "t0")
        grants = cloud.control.calls()["oauth"]["total"]
        assert cloud.control.expire_tokens("orchestrator") >= 1
        run, error = started.outcome()
    assert error is None, error
    assert run.status().counts == {"succeeded": 3}
    assert orchestrator_refusals(cloud) >= 1  # the expired token was refused (401)...
    assert cloud.control.calls()["oauth"]["total"] > grants  # ...and a new one fetched with the refresh token
    assert run_vms(cloud, run.run_id) == []


def test_a_login_revoked_mid_run_stops_it_with_one_line_saying_to_log_in_again(
    cloud: Emulator, example_image: str, workdir: Path
) -> None:
    write_config(cloud, workdir, example_image, VM_QUOTAS=2)
    long = {"tasks": [{"id": f"t{i}", "command": ["python", "-c", "import time; time.sleep(120)"]} for i in range(2)]}
    (workdir / "long.yaml").write_text(yaml.safe_dump(long))
    proc = subprocess.Popen([sys.executable, "-m", "parallel_engine", "run", "long.yaml", "-q"], cwd=workdir,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        run_id, _ = first_claim_holder(open_store(config_for(cloud, example_image)), "t0")
        cloud.control.revoke_credentials()
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, stderr
    line = error_line(stderr)
    assert "Google refused to refresh your credentials: Token has been expired or revoked. (invalid_grant)" in line
    assert "gcloud auth application-default login" in stderr and f"parallel-engine down {run_id}" in stderr
    assert "Traceback" not in stderr


def test_a_revoked_service_account_key_is_refused_with_one_line(cloud: Emulator, workdir: Path) -> None:
    write_config(cloud, workdir, CREDENTIALS_FILE=str(cloud.service_account_file))
    assert cli("down", "some-run", cwd=workdir).returncode == 0  # the key works: its self-signed JWTs too
    cloud.control.revoke_credentials()
    down = cli("down", "some-run", cwd=workdir)  # Compute: a self-signed JWT, refused with 401
    assert down.returncode == 2, down.stderr
    assert "Compute Engine refused your credentials (401)" in error_line(down.stderr)
    runs = cli("runs", cwd=workdir)  # Storage: the key's JWT grant, refused at the token endpoint
    assert runs.returncode == 2, runs.stderr
    assert "Invalid JWT Signature. (invalid_grant)" in error_line(runs.stderr)
    assert "Traceback" not in down.stderr + runs.stderr


def test_a_service_account_key_runs_the_gce_path_with_the_project_it_carries(
    cloud: Emulator, example_image: str, workdir: Path
) -> None:
    config = config_for(cloud, example_image, PROJECT_ID=None, CREDENTIALS_FILE=str(cloud.service_account_file))
    assert config.project_id is None
    run = pe.run(workdir / "quick.yaml", config=config)
    assert run.status().counts == {"succeeded": 3}
    assert open_store(config).load_run(run.run_id).spec["project"] == cloud.project
    grants = cloud.control.calls()["oauth"]["byMethod"]
    assert grants["oauth2.token.jwt-bearer"]["orchestrator"] >= 1 and "oauth2.token.refresh_token" not in grants
    assert orchestrator_refusals(cloud) == 0
    assert run_vms(cloud, run.run_id) == []


def test_a_project_id_other_than_the_keys_is_one_warning_line(cloud: Emulator, workdir: Path) -> None:
    write_config(cloud, workdir, CREDENTIALS_FILE=str(cloud.service_account_file), PROJECT_ID="another-project")
    done = cli("runs", cwd=workdir)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, done.stderr
    assert f"belong to project {cloud.project}: using another-project" in warnings[0]


DENIED = [  # (permission, command, role the hint names)
    ("compute.instances.create", ["run", "three.yaml"], "roles/compute.instanceAdmin.v1"),
    ("compute.instances.list", ["down", "some-run"], "roles/compute.instanceAdmin.v1"),
    ("storage.objects.list", ["runs"], "roles/storage.objectAdmin"),
    ("storage.objects.create", ["run", "three.yaml"], "roles/storage.objectAdmin"),
    ("cloudbuild.builds.create", ["build"], "roles/cloudbuild.builds.editor"),
]


@pytest.mark.parametrize("permission,command,role", DENIED, ids=[d[0] for d in DENIED])
def test_a_missing_permission_is_one_line_naming_it_and_the_role_that_grants_it(
    cloud: Emulator, workdir: Path, permission: str, command: list[str], role: str
) -> None:
    write_config(cloud, workdir, f"{cloud.registry_host or '127.0.0.1:5000'}/p/r/app:1")
    cloud.control.deny(permission)
    done = cli(*command, cwd=workdir, timeout=180)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"your credentials lack the permission {permission}" in error_line(done.stderr)
    assert f"hint: grant your account {role}" in done.stderr and "Traceback" not in done.stderr


DISABLED = [  # (service, command, API as named)
    ("compute", ["run", "three.yaml"], "Compute Engine"),
    ("storage", ["runs"], "Cloud Storage"),
    ("cloudbuild", ["build"], "Cloud Build"),
]


@pytest.mark.parametrize("service,command,api", DISABLED, ids=[d[0] for d in DISABLED])
def test_a_disabled_api_is_one_line_with_the_command_that_enables_it(
    cloud: Emulator, workdir: Path, service: str, command: list[str], api: str
) -> None:
    write_config(cloud, workdir, f"{cloud.registry_host or '127.0.0.1:5000'}/p/r/app:1")
    cloud.control.disable_api(service)
    done = cli(*command, cwd=workdir, timeout=180)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"the {api} API is not enabled in project {cloud.project}" in error_line(done.stderr)
    assert f"gcloud services enable {service}.googleapis.com --project {cloud.project}" in done.stderr
    assert "Traceback" not in done.stderr
