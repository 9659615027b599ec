"""`parallel-engine doctor` on gce against the emulated cloud: every check passes on a project set
up as a run needs it, and the control API makes each one fail, each ✗ carrying its fix."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from parallel_engine.backends.base import backend_for
from parallel_engine.config import Config, load_config
from parallel_engine.doctor import Check
from parallel_engine.emulator import Emulator
from parallel_engine.emulator.serve import config_values
from tests.emulator.emulator_helpers import bearer, push_tiny_image, user_credentials
from tests.helpers import cli

pytestmark = pytest.mark.emulator


def ready(cloud: Emulator, **extra: Any) -> dict[str, Any]:
    """The emulator's own config, with an image pushed and its build recorded (as `build` leaves it)."""
    assert cloud.registry_host, "the emulated cloud has no registry (apt-get install docker-registry)"
    values: dict[str, Any] = config_values(cloud)
    repository = f"{cloud.project}/parallel-engine/app"
    digest = push_tiny_image(cloud.registry_host, repository, bearer(user_credentials(cloud)))
    config = load_config(None, flags=values, environ={})
    backend_for(config).open_store().save_build({"image": values["IMAGE"], "digest": digest})
    return {**values, **extra}


def doctor(values: dict[str, Any]) -> dict[str, Check]:
    config: Config = load_config(None, flags=values, environ={})
    return {check.name: check for check in backend_for(config).doctor()}


def failed(checks: dict[str, Check]) -> dict[str, Check]:
    return {name: check for name, check in checks.items() if not check.ok}


def test_every_check_passes_on_a_ready_project_and_doctor_exits_0(cloud: Emulator, tmp_path: Path) -> None:
    values = ready(cloud)
    (tmp_path / ".config.yaml").write_text(yaml.safe_dump(values))
    done = cli("doctor", cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "✗" not in done.stdout and done.stdout.count("✓") == 12 and "all checks passed" in done.stdout
    checks = doctor(values)
    assert failed(checks) == {}
    assert "quota CPUS" in checks and "its roles" in checks


def test_a_disabled_api_fails_with_the_enable_command(cloud: Emulator) -> None:
    values = ready(cloud)
    cloud.control.disable_api("cloudbuild", "artifactregistry")
    check = doctor(values)["APIs enabled"]
    assert not check.ok
    assert check.detail == "disabled: cloudbuild.googleapis.com artifactregistry.googleapis.com"
    assert check.fix == f"gcloud services enable cloudbuild.googleapis.com artifactregistry.googleapis.com --project {cloud.project}"


def test_disabled_resource_manager_fails_the_first_check_and_the_rest_say_why_not_checked(cloud: Emulator) -> None:
    values = ready(cloud)
    cloud.control.disable_api("cloudresourcemanager")
    checks = doctor(values)
    first = checks["credentials and project"]
    assert not first.ok and "cloudresourcemanager.googleapis.com is disabled" in first.detail
    assert first.fix == f"gcloud services enable cloudresourcemanager.googleapis.com --project {cloud.project}"
    assert checks["bucket"].detail == "not checked: the credentials and project check failed"


def test_revoked_credentials_fail_with_the_login_fix(cloud: Emulator) -> None:
    values = ready(cloud)
    cloud.control.revoke_credentials()
    first = doctor(values)["credentials and project"]
    assert not first.ok and "invalid_grant" in first.detail and "login" in first.fix


def test_a_missing_bucket_fails_with_the_create_command(cloud: Emulator) -> None:
    values = ready(cloud, BUCKET="no-such-bucket-here")
    checks = doctor(values)
    assert not checks["bucket"].ok and checks["bucket"].detail == "gs://no-such-bucket-here does not exist"
    assert checks["bucket"].fix.startswith(f"gcloud storage buckets create gs://no-such-bucket-here --location {cloud.region}")
    assert checks["bucket writable"].detail == "not checked: the bucket check failed"


def test_a_bucket_the_user_cannot_write_fails_with_the_grant(cloud: Emulator) -> None:
    values = ready(cloud)
    cloud.control.deny("storage.objects.create", "storage.objects.delete")
    check = doctor(values)["bucket writable"]
    assert not check.ok and "storage.objects.create, storage.objects.delete" in check.detail
    assert "--role roles/storage.objectUser" in check.fix


def test_a_bucket_in_another_region_fails_with_the_egress_fix(cloud: Emulator) -> None:
    values = ready(cloud)
    assert doctor(values)["bucket location"].ok
    cloud.control.set_bucket_location("EU")
    check = doctor(values)["bucket location"]
    assert not check.ok and f"the bucket is in EU, the VMs in {cloud.region}" in check.detail
    assert f"--location {cloud.region}" in check.fix


def test_an_unset_registry_fails(cloud: Emulator) -> None:
    values = {k: v for k, v in ready(cloud).items() if k != "REGISTRY"}
    check = doctor(values)["registry"]
    assert not check.ok and "REGISTRY is not set" in check.detail and "artifacts repositories create" in check.fix


def test_an_image_deleted_from_the_registry_fails_with_build_again(cloud: Emulator) -> None:
    values = ready(cloud)
    assert doctor(values)["image pushed"].ok
    cloud.control.delete_image(values["IMAGE"].rsplit(":", 1)[0] + ":v1")
    check = doctor(values)["image pushed"]
    assert not check.ok and "answers 404" in check.detail and check.fix == "run `parallel-engine build` again"


def test_an_image_never_built_fails_with_build(cloud: Emulator) -> None:
    values = {**config_values(cloud)}
    check = doctor(values)["image pushed"]
    assert not check.ok and "no build of" in check.detail and check.fix == "run `parallel-engine build`"


def test_a_deleted_service_account_fails(cloud: Emulator) -> None:
    values = ready(cloud)
    email = f"{cloud.project_number}-compute@developer.gserviceaccount.com"
    cloud.control.delete_service_account(email)
    checks = doctor(values)
    assert not checks["VMs' service account"].ok and f"{email} (the project's default compute account) does not exist" \
        == checks["VMs' service account"].detail
    assert checks["its roles"].detail == "not checked: the service account check failed"


def test_a_revoked_role_fails_with_the_grants_the_account_needs(cloud: Emulator) -> None:
    values = ready(cloud)
    member = f"serviceAccount:{cloud.project_number}-compute@developer.gserviceaccount.com"
    cloud.control.revoke_role("roles/editor", member)
    check = doctor(values)["its roles"]
    assert not check.ok
    assert "storage.objects.create" in check.detail and "compute.instances.delete" in check.detail
    assert f"gcloud storage buckets add-iam-policy-binding gs://{cloud.bucket} --member {member} --role roles/storage.objectUser" in check.fix
    assert f"gcloud projects add-iam-policy-binding {cloud.project} --member {member} --role roles/compute.instanceAdmin.v1" in check.fix
    cloud.control.grant_role("roles/storage.objectUser", member, bucket=cloud.bucket)
    check = doctor(values)["its roles"]
    assert "storage.objects" not in check.detail and "compute.instances.delete" in check.detail


def test_quotas_too_small_for_vm_quotas_fail_with_what_fits(cloud: Emulator) -> None:
    values = ready(cloud, VM_QUOTAS=8, MACHINE_TYPE="n1-standard-4")
    cloud.control.set_quota("CPUS", 24)
    cloud.control.set_quota("INSTANCES", 5)
    cloud.control.set_quota("IN_USE_ADDRESSES", 2)
    checks = doctor(values)
    cpus = checks["quota CPUS"]
    assert not cpus.ok
    assert cpus.detail == f"CPUS: VM_QUOTAS 8 × 4 vCPUs (n1-standard-4) = 32, 24 free in {cloud.region} (limit 24, in use 0)"
    assert cpus.fix.startswith("lower VM_QUOTAS to 6 ")
    assert not checks["quota INSTANCES"].ok and checks["quota INSTANCES"].fix.startswith("lower VM_QUOTAS to 5 ")
    assert not checks["quota IN_USE_ADDRESSES"].ok
    assert doctor({**values, "EXTERNAL_IP": False})["quota IN_USE_ADDRESSES"].detail == "not needed (EXTERNAL_IP is false)"


def test_spot_vms_are_checked_against_preemptible_cpus_when_the_region_grants_it(cloud: Emulator) -> None:
    values = ready(cloud, VM_QUOTAS=4, MACHINE_TYPE="n1-standard-2", SPOT=True)
    cloud.control.set_quota("PREEMPTIBLE_CPUS", 4)
    check = doctor(values)["quota CPUS"]
    assert not check.ok and check.detail.startswith("PREEMPTIBLE_CPUS: VM_QUOTAS 4 × 2 vCPUs")
    assert check.fix.startswith("lower VM_QUOTAS to 2 ")


def test_a_server_error_or_an_unknown_zone_still_fails_with_a_fix(cloud: Emulator) -> None:
    values = ready(cloud)
    cloud.control.fail_next(3, 503, path="machineTypes")  # the quota checks' first read, each time
    quota = doctor(values)["quota CPUS"]
    assert not quota.ok and "(HTTP 503)" in quota.detail and "again" in quota.fix
    zone = doctor({**values, "ZONE": "us-central1-z"})["quota CPUS"]
    assert not zone.ok and "Unknown zone" in zone.detail and zone.fix == "choose one of `gcloud compute zones list`"


def test_an_answer_that_is_not_json_fails_its_check_not_doctor(cloud: Emulator) -> None:
    # A proxy or a wrong *_ENDPOINT answering 200 with a web page: a ✗ naming the endpoint, no traceback.
    class WebPage(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html>sign in to the proxy</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), WebPage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        values = ready(cloud, IAM_ENDPOINT=f"http://127.0.0.1:{server.server_address[1]}")
        check = doctor(values)["VMs' service account"]
    finally:
        server.shutdown()
    assert not check.ok and "is not JSON" in check.detail and f"127.0.0.1:{server.server_address[1]}" in check.detail
    assert "IAM_ENDPOINT" in check.fix or "proxy" in check.fix


def test_doctor_exits_2_when_a_check_fails(cloud: Emulator, tmp_path: Path) -> None:
    values = ready(cloud)
    cloud.control.set_bucket_location("EU")
    (tmp_path / ".config.yaml").write_text(yaml.safe_dump(values))
    done = cli("doctor", cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout.count("✗") == 1 and "1 of 12 checks failed" in done.stdout
    assert f"fix: use a bucket in {cloud.region}" in done.stdout
