"""What a pre-flight check of a project reads (doctor, quota-aware run, run --dry-run), answered as
Google answers it, and the control API that makes each answer say no."""

from __future__ import annotations


import pytest
import requests
from google.api_core import exceptions as gexc
from google.auth.transport.requests import AuthorizedSession
from google.cloud import compute_v1

from parallel_engine.emulator import ControlError
from tests.emulator.emulator_helpers import (
    Clients,
    bearer,
    claim_script,
    console,
    make_instance,
    push_tiny_image,
    wait_for,
)


def _quotas(clients: Clients) -> dict[str, tuple[float, float]]:
    region = clients.regions.get(project=clients.project, region=clients.cloud.region)
    return {q.metric: (q.usage, q.limit) for q in region.quotas}


def test_regions_get_reports_each_quotas_limit_and_the_usage_of_the_live_vms(clients: Clients) -> None:
    control = clients.cloud.control
    control.set_quota("CPUS", 16)
    control.set_quota("IN_USE_ADDRESSES", 4)
    assert not clients.wait(clients.insert(make_instance("std", machine_type="e2-standard-4", external_ip=True))).error
    assert not clients.wait(clients.insert(make_instance("spot-a", machine_type="n1-standard-2", spot=True))).error
    quotas = _quotas(clients)
    # no preemptible quota granted (limit 0): a Spot VM's vCPUs count against CPUS, as on Google
    assert (quotas["CPUS"], quotas["PREEMPTIBLE_CPUS"]) == ((6.0, 16.0), (0.0, 0.0))
    assert quotas["INSTANCES"][0] == 2.0 and quotas["IN_USE_ADDRESSES"] == (1.0, 4.0)
    control.set_quota("PREEMPTIBLE_CPUS", 4)  # granted: Spot VMs count against it from now on
    assert not clients.wait(clients.insert(make_instance("spot-b", machine_type="n1-standard-4", spot=True))).error
    quotas = _quotas(clients)
    assert (quotas["CPUS"], quotas["PREEMPTIBLE_CPUS"]) == ((6.0, 16.0), (4.0, 4.0))
    refused = clients.wait(clients.insert(make_instance("spot-c", machine_type="n1-standard-1", spot=True)))
    assert refused.error.errors[0].code == "QUOTA_EXCEEDED"
    assert "Quota 'PREEMPTIBLE_CPUS' exceeded" in refused.error.errors[0].message
    clients.delete("spot-b")
    clients.delete("std")
    quotas = _quotas(clients)
    assert (quotas["CPUS"][0], quotas["PREEMPTIBLE_CPUS"][0], quotas["INSTANCES"][0]) == (2.0, 0.0, 1.0)
    assert quotas["IN_USE_ADDRESSES"][0] == 0.0


def test_zones_and_machine_types_read_as_google_answers_them(shared: Clients) -> None:
    credentials, options = shared.credentials, {"api_endpoint": shared.cloud.compute_endpoint}
    zones = compute_v1.ZonesClient(client_options=options, credentials=credentials)
    zone = zones.get(project=shared.project, zone=shared.zone)
    assert zone.status == "UP" and zone.region.endswith(f"/regions/{shared.cloud.region}")
    sizes = {"n1-standard-4": (4, 15360), "e2-standard-2": (2, 8192), "n2-standard-8": (8, 32768),
             "e2-medium": (2, 4096)}  # fmt: skip
    for name, (cpus, memory) in sizes.items():
        machine = shared.machine_types.get(project=shared.project, zone=shared.zone, machine_type=name)
        assert (machine.guest_cpus, machine.memory_mb) == (cpus, memory)
    request = compute_v1.ListMachineTypesRequest(project=shared.project, zone=shared.zone, filter="guestCpus = 4")
    listed = {m.name: m.guest_cpus for m in shared.machine_types.list(request=request)}
    assert "n1-standard-4" in listed and set(listed.values()) == {4}


def test_bucket_test_iam_permissions_answers_what_the_caller_holds(clients: Clients) -> None:
    bucket = clients.storage.bucket(clients.cloud.bucket)
    wanted = ["storage.objects.create", "storage.objects.get", "storage.objects.list", "storage.objects.delete"]
    assert bucket.test_iam_permissions(wanted) == wanted
    clients.cloud.control.deny("storage.objects.create")
    assert bucket.test_iam_permissions(wanted) == wanted[1:]
    clients.cloud.control.reset_access()
    policy = bucket.get_iam_policy()
    assert {b["role"]: b["members"] for b in policy.bindings}["roles/storage.legacyBucketOwner"] == {
        f"projectEditor:{clients.project}", f"projectOwner:{clients.project}"}  # fmt: skip
    with pytest.raises(gexc.NotFound):
        clients.storage.bucket("no-such-bucket").test_iam_permissions(wanted)


def test_the_vms_lose_a_role_revoked_from_their_service_account(clients: Clients) -> None:
    """The VMs' calls are checked against their account's roles: revoking roles/editor from the default
    compute account (and granting it nothing on the bucket) makes their uploads 403."""
    account = f"serviceAccount:{clients.cloud.project_number}-compute@developer.gserviceaccount.com"
    bindings = clients.cloud.control.revoke_role("roles/editor", account)
    assert all(account not in binding["members"] for binding in bindings)
    clients.wait(clients.insert(make_instance("uploader", script=claim_script(clients))))
    text = wait_for(lambda: (t := console(clients, "uploader")) and "upload 2:" in t and t, what="the uploads")
    assert "upload 1: 403" in text
    clients.cloud.control.grant_role("roles/storage.objectUser", account, bucket=clients.cloud.bucket)
    clients.wait(clients.insert(make_instance("uploader-2", script=claim_script(clients))))
    text = wait_for(lambda: (t := console(clients, "uploader-2")) and "upload 2:" in t and t, what="the uploads")
    assert "upload 1: 200" in text


def _session(clients: Clients) -> AuthorizedSession:
    return AuthorizedSession(clients.credentials)


def test_service_usage_says_which_apis_are_enabled(clients: Clients) -> None:
    cloud, session = clients.cloud, _session(clients)
    base = f"{cloud.serviceusage_endpoint}/v1/projects/{cloud.project}/services"
    compute = session.get(f"{base}/compute.googleapis.com").json()
    assert compute == {"name": f"projects/{cloud.project_number}/services/compute.googleapis.com",
                       "parent": f"projects/{cloud.project_number}",
                       "config": {"name": "compute.googleapis.com", "title": "Compute Engine API"},
                       "state": "ENABLED"}  # fmt: skip
    cloud.control.disable_api("compute", "artifactregistry")
    names = [f"projects/{cloud.project}/services/{api}.googleapis.com"
             for api in ("compute", "storage", "cloudbuild", "artifactregistry")]  # fmt: skip
    batch = session.get(f"{base}:batchGet", params=[("names", name) for name in names]).json()
    assert [s["state"] for s in batch["services"]] == ["DISABLED", "ENABLED", "ENABLED", "DISABLED"]
    by_number = session.get(f"{cloud.serviceusage_endpoint}/v1/projects/{cloud.project_number}/services/"
                            "cloudbuild.googleapis.com")  # fmt: skip
    assert by_number.json()["state"] == "ENABLED"
    unknown = session.get(f"{base}/nothing.googleapis.com")
    assert unknown.status_code == 403 and unknown.json()["error"]["status"] == "PERMISSION_DENIED"


def test_iam_service_account_get_and_what_deleting_it_does(clients: Clients) -> None:
    cloud, session = clients.cloud, _session(clients)
    email = f"{cloud.project_number}-compute@developer.gserviceaccount.com"
    url = f"{cloud.iam_endpoint}/v1/projects/{cloud.project}/serviceAccounts/{email}"
    account = session.get(url).json()
    assert account["email"] == email and account["projectId"] == cloud.project
    assert account["name"] == f"projects/{cloud.project}/serviceAccounts/{email}"
    assert session.get(f"{cloud.iam_endpoint}/v1/projects/-/serviceAccounts/{email}").json() == account
    cloud.control.delete_service_account(email)
    gone = session.get(url)
    assert gone.status_code == 404 and gone.json()["error"]["status"] == "NOT_FOUND"
    policy = session.post(f"{cloud.resourcemanager_endpoint}/v1/projects/{cloud.project}:getIamPolicy", json={})
    editors = next(b["members"] for b in policy.json()["bindings"] if b["role"] == "roles/editor")
    assert f"deleted:serviceAccount:{email}?uid={account['uniqueId']}" in editors
    failed = clients.wait(clients.insert(make_instance("orphan")))  # its account is the default one
    assert failed.error.errors[0].code == "EXTERNAL_RESOURCE_NOT_FOUND"
    assert f"'{email}' of type 'serviceAccount' was not found" in failed.error.errors[0].message
    with pytest.raises(gexc.NotFound):
        clients.get("orphan")


def test_roles_get_lists_a_predefined_roles_permissions(shared: Clients) -> None:
    session = _session(shared)
    role = session.get(f"{shared.cloud.iam_endpoint}/v1/roles/storage.objectAdmin").json()
    assert role["name"] == "roles/storage.objectAdmin"
    assert {"storage.objects.create", "storage.objects.get"} <= set(role["includedPermissions"])
    editor = set(session.get(f"{shared.cloud.iam_endpoint}/v1/roles/editor").json()["includedPermissions"])
    assert {"compute.instances.delete", "artifactregistry.repositories.downloadArtifacts"} <= editor
    assert session.get(f"{shared.cloud.iam_endpoint}/v1/roles/no.suchRole").status_code == 404


def test_resource_manager_answers_the_project_its_policy_and_test_iam_permissions(clients: Clients) -> None:
    cloud, session = clients.cloud, _session(clients)
    v1 = session.get(f"{cloud.resourcemanager_endpoint}/v1/projects/{cloud.project}").json()
    assert (v1["projectId"], v1["projectNumber"], v1["lifecycleState"]) == (cloud.project, str(cloud.project_number),
                                                                            "ACTIVE")  # fmt: skip
    v3 = session.get(f"{cloud.resourcemanager_endpoint}/v3/projects/{cloud.project}").json()
    assert (v3["name"], v3["state"]) == (f"projects/{cloud.project_number}", "ACTIVE")
    test = f"{cloud.resourcemanager_endpoint}/v1/projects/{cloud.project}:testIamPermissions"
    wanted = ["compute.instances.create", "compute.instances.delete", "iam.serviceAccounts.actAs"]
    assert session.post(test, json={"permissions": wanted}).json() == {"permissions": wanted}
    cloud.control.deny("compute.instances.create")
    assert session.post(test, json={"permissions": wanted}).json() == {"permissions": wanted[1:]}
    assert session.post(test, json={"permissions": ["compute.instances.create"]}).json() == {}
    other = session.post(f"{cloud.resourcemanager_endpoint}/v1/projects/someone-else:getIamPolicy", json={})
    assert other.status_code == 403


def test_the_bucket_is_in_the_zones_region_and_the_control_api_moves_it(clients: Clients) -> None:
    cloud = clients.cloud
    bucket = clients.storage.get_bucket(cloud.bucket)
    assert (bucket.location, bucket.location_type) == (cloud.region.upper(), "region")
    assert bucket._properties["projectNumber"] == str(cloud.project_number)  # noqa: SLF001 - no property for it
    cloud.control.set_bucket_location("EU")
    assert (clients.storage.get_bucket(cloud.bucket).location, clients.storage.get_bucket(cloud.bucket).location_type) \
        == ("EU", "multi-region")  # fmt: skip
    made = clients.storage.create_bucket("made-without-location")
    assert made.location == "US"  # Google's default
    listed = {b.name: b.location for b in clients.storage.list_buckets()}
    assert listed == {cloud.bucket: "EU", "made-without-location": "US"}


def test_an_image_deleted_through_the_control_api_is_missing_by_digest(clients: Clients) -> None:
    cloud = clients.cloud
    if not cloud.registry_host:
        pytest.skip("the emulated cloud has no registry (apt-get install docker-registry)")
    token = bearer(clients.credentials)
    repository = f"{cloud.project}/parallel-engine/app"
    digest = push_tiny_image(cloud.registry_host, repository, token)
    manifest = f"http://{cloud.registry_host}/v2/{repository}/manifests/{digest}"
    accept = {"Authorization": f"Bearer {token}", "Accept": "application/vnd.docker.distribution.manifest.v2+json"}
    assert requests.head(manifest, headers=accept, timeout=30).status_code == 200
    assert cloud.control.delete_image(f"{cloud.registry_host}/{repository}:v1") == digest
    assert requests.head(manifest, headers=accept, timeout=30).status_code == 404
    with pytest.raises(ControlError, match="no image"):
        cloud.control.delete_image(f"{cloud.registry_host}/{repository}@{digest}")


def _new_api_calls(clients: Clients) -> list[tuple[str, str]]:
    """(service, URL) of one read of each new method."""
    cloud = clients.cloud
    email = f"{cloud.project_number}-compute@developer.gserviceaccount.com"
    return [
        ("iam", f"{cloud.iam_endpoint}/v1/projects/{cloud.project}/serviceAccounts/{email}"),
        ("cloudresourcemanager", f"{cloud.resourcemanager_endpoint}/v1/projects/{cloud.project}"),
        ("serviceusage", f"{cloud.serviceusage_endpoint}/v1/projects/{cloud.project}/services/compute.googleapis.com"),
        ("storage", f"{cloud.storage_endpoint}/storage/v1/b/{cloud.bucket}/iam/testPermissions"
                    "?permissions=storage.objects.create"),
    ]  # fmt: skip


def test_every_new_method_needs_a_token_and_is_counted(clients: Clients) -> None:
    cloud = clients.cloud
    cloud.control.reset_calls()
    session = _session(clients)
    for _, url in _new_api_calls(clients):
        assert session.get(url).status_code == 200
        anonymous = requests.get(url, timeout=30)
        assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    calls = cloud.control.calls()
    assert calls["iam"]["byMethod"] == {"iam.serviceAccounts.get": {"orchestrator": 1, "unknown": 1}}
    both = {"orchestrator": 1, "unknown": 1}
    assert calls["cloudresourcemanager"]["byMethod"] == {"cloudresourcemanager.projects.get": both}
    assert calls["serviceusage"]["unauthenticated"] == {"serviceusage.services.get": {"unknown": 1}}
    assert calls["storage"]["byMethod"]["storage.buckets.testIamPermissions"] == {"orchestrator": 1, "unknown": 1}
    assert all(calls[service]["total"] == 2 for service in ("iam", "cloudresourcemanager", "serviceusage"))


def test_new_apis_can_be_disabled_failed_and_denied(clients: Clients) -> None:
    cloud, session = clients.cloud, _session(clients)
    (_, iam), (_, manager), (_, usage), _ = _new_api_calls(clients)
    cloud.control.disable_api("iam")
    disabled = session.get(iam).json()["error"]
    assert disabled["status"] == "PERMISSION_DENIED" and disabled["details"][0]["reason"] == "SERVICE_DISABLED"
    assert disabled["details"][0]["metadata"]["service"] == "iam.googleapis.com"
    cloud.control.reset_access()
    cloud.control.fail_next(1, 503, service="serviceusage")
    assert session.get(usage).status_code == 503
    assert session.get(usage).status_code == 200
    cloud.control.deny("resourcemanager.projects.get")
    denied = session.get(manager)
    assert denied.status_code == 403 and "resourcemanager.projects.get" in denied.json()["error"]["message"]

