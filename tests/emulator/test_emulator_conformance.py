"""Every item of DESIGN.md's "The real Google constraints", in one place, with the real Google clients.

Each refusal is asserted by HTTP status and Google's `reason`, as the orchestrator will see it. The
rules whose test needs a VM's whole life (preemption, a self-delete, the guest's PATH, ...) are
pinned next to that life in another file: `CONSTRAINTS` names the test of each item, and
`test_every_constraint_names_tests_that_exist` keeps that list true. What the emulator does not
enforce is listed too (and in the emulator's README).
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from google.api_core import exceptions as gexc
from google.cloud import compute_v1

from tests.emulator.emulator_helpers import Clients, make_instance

HERE = Path(__file__).parent
#: DESIGN.md's constraints, in its order -> "file::test" (this file when no file is given).
CONSTRAINTS: dict[str, list[str]] = {
    "instance names; bad -> 400 invalid; duplicate -> 409": [
        "test_insert_refuses_what_google_refuses", "test_duplicate_name_is_409_already_exists"],
    "labels: at most 64, key and value formats -> 400": [
        "test_insert_refuses_what_google_refuses", "test_insert_accepts_the_limits_themselves"],
    "metadata: value <= 256 KiB ('is too large'), all < 512 KiB, key format": [
        "test_insert_refuses_what_google_refuses", "test_an_oversized_metadata_value_says_it_is_too_large",
        "test_metadata_just_under_512_kib_in_total_is_accepted"],
    "maxRunDuration 30 s..120 days with STOP/DELETE; action on STANDARD needs a limit; SPOT no auto-restart": [
        "test_insert_refuses_what_google_refuses", "test_insert_accepts_the_limits_themselves",
        "test_emulator_compute_lifecycle.py::test_max_run_duration_delete_removes_the_vm",
        "test_emulator_compute_lifecycle.py::test_max_run_duration_stop_terminates_and_frees_cpus"],
    "the termination action may fire up to 30 s late": [
        "test_emulator_compute_lifecycle.py::test_max_run_duration_acts_up_to_30_s_late_repeatably_under_a_seed"],
    "preemption: soft shutdown, TERMINATED or 404, compute.instances.preempted by system, preempted TRUE": [
        "test_emulator_faults.py::test_preemption_soft_shutdown_then_operation_listed"],
    "bulkInsert: count, minCount, one run of #, perInstanceProperties names; one op, one request": [
        "test_bulk_insert_refuses_what_google_refuses", "test_bulk_insert_uses_per_instance_names_and_patterns_skip_them",
        "test_bulk_insert_refuses_a_name_given_twice", "test_bulk_insert_is_one_call_for_rate_limits",
        "test_emulator_compute_lifecycle.py::test_bulk_insert_quota_is_checked_upfront_and_min_count_allows_partial"],
    "rate limits per minute -> 403 rateLimitExceeded": [
        "test_bulk_insert_is_one_call_for_rate_limits", "test_read_rate_limit_is_403_rate_limit_exceeded"],
    "COS: bash, curl, docker, docker-credential-gcr; no gcloud, gsutil, python, jq": [
        "test_emulator_compute_lifecycle.py::test_vm_path_is_container_optimized_os_like"],
    "COS: HOME read-only, DOCKER_CONFIG before docker-credential-gcr configure-docker": [
        "test_emulator_metadata.py::test_docker_credential_helper_stand_in_needs_a_writable_docker_config"],
    "metadata server: Metadata-Flavor required (403); name, zone, project-id, attributes, token": [
        "test_emulator_metadata.py::test_metadata_server_answers_what_a_startup_script_asks"],
    "self-delete with the metadata token needs the compute or cloud-platform scope": [
        "test_emulator_compute_lifecycle.py::test_vm_deletes_itself_with_its_metadata_token",
        "test_emulator_compute_lifecycle.py::test_vm_token_without_compute_scope_cannot_delete"],
    "storage object names: 1-1024 bytes of UTF-8, no CR/LF, not . or ..": [
        "test_storage_refuses_invalid_object_names", "test_storage_accepts_the_longest_name_and_any_utf8",
        "test_storage_refuses_invalid_names_from_the_real_client_and_in_paths"],
    "storage: failed precondition -> 412 conditionNotMet; lists page at 1,000": [
        "test_emulator_storage.py::test_precondition_failure_has_google_reason_on_every_upload_kind",
        "test_emulator_storage.py::test_object_lists_page_at_one_thousand"],
    "cloud build: storageSource -> operations/build/P/ID; statuses; images[].digest, logUrl": [
        "test_registry_and_build.py::test_the_operation_carries_the_build_and_resolves_to_it",
        "test_registry_and_build.py::test_cloudbuild_yaml_builds_and_pushes_the_image_with_its_registry_digest",
        "test_registry_and_build.py::test_log_url_serves_the_build_log",
        "test_registry_and_build.py::test_build_past_its_timeout_ends_as_timeout",
        "test_registry_and_build.py::test_failing_step_fails_the_build_naming_the_step",
        "test_registry_and_build.py::test_cancel_stops_a_running_build_and_its_container",
        "test_emulator_cloudbuild.py::test_injected_build_failures_end_with_googles_status"],
}  # fmt: skip
#: DESIGN.md's constraints the emulator does not enforce: each must be named in its README's list.
NOT_ENFORCED = ("read-only `/`", "`noexec` mounts", "read-only HOME", "journalctl", "inbound traffic")


def test_every_constraint_names_tests_that_exist() -> None:
    for constraint, tests in CONSTRAINTS.items():
        assert tests, constraint
        for reference in tests:
            file, _, name = reference.rpartition("::")
            text = (HERE / (file or Path(__file__).name)).read_text()
            assert f"def {name}(" in text, f"{constraint}: no test {reference}"
    readme = (HERE.parents[1] / "parallel_engine" / "emulator" / "README.md").read_text()
    not_enforced = readme.split("**Not enforced here**", 1)[1].split("\n- **", 1)[0]
    assert [item for item in NOT_ENFORCED if item not in not_enforced] == []


def refused(call: Callable[[], Any]) -> tuple[int, str]:
    with pytest.raises(gexc.GoogleAPICallError) as info:
        call()
    return info.value.code, info.value.errors[0]["reason"]


def _insert(shared: Clients, instance: compute_v1.Instance) -> Callable[[], Any]:
    return lambda: shared.insert(instance)


def _with(mutate: Callable[[compute_v1.Instance], None], name: str = "ok-name") -> compute_v1.Instance:
    instance = make_instance(name)
    mutate(instance)
    return instance


def _scheduling(**fields: Any) -> Callable[[compute_v1.Instance], None]:
    def mutate(instance: compute_v1.Instance) -> None:
        scheduling = compute_v1.Scheduling()
        for key, value in fields.items():
            setattr(scheduling, key, value)
        instance.scheduling = scheduling

    return mutate


def _metadata(items: dict[str, str]) -> Callable[[compute_v1.Instance], None]:
    def mutate(instance: compute_v1.Instance) -> None:
        instance.metadata = compute_v1.Metadata(items=[compute_v1.Items(key=k, value=v) for k, v in items.items()])

    return mutate


def _labels(labels: dict[str, str]) -> Callable[[compute_v1.Instance], None]:
    def mutate(instance: compute_v1.Instance) -> None:
        instance.labels = labels

    return mutate


BAD_INSTANCES: dict[str, tuple[compute_v1.Instance, int, str]] = {
    "name starts with a digit": (make_instance("1vm"), 400, "invalid"),
    "name has uppercase": (make_instance("Vm-a"), 400, "invalid"),
    "name ends with a dash": (make_instance("vm-"), 400, "invalid"),
    "name has 64 characters": (make_instance("a" * 64), 400, "invalid"),
    "name has an underscore": (make_instance("vm_a"), 400, "invalid"),
    "65 labels": (_with(_labels({f"k{i}": "v" for i in range(65)})), 400, "invalid"),
    "label key starts with a digit": (_with(_labels({"1k": "v"})), 400, "invalid"),
    "label key has uppercase": (_with(_labels({"Key": "v"})), 400, "invalid"),
    "label key of 64 characters": (_with(_labels({"k" * 64: "v"})), 400, "invalid"),
    "label value with a dot": (_with(_labels({"k": "v.1"})), 400, "invalid"),
    "label value of 64 characters": (_with(_labels({"k": "v" * 64})), 400, "invalid"),
    "metadata value over 256 KiB": (_with(_metadata({"startup-script": "x" * 262145})), 400, "invalid"),
    "metadata over 512 KB in total": (
        _with(_metadata({f"k{i}": "x" * 200000 for i in range(3)})), 400, "invalid"),
    "metadata of exactly 512 KiB in total (it must be less)": (
        _with(_metadata({"k0": "x" * (262144 - 2), "k1": "x" * (262144 - 2)})), 400, "invalid"),
    "metadata key with a dot": (_with(_metadata({"bad.key": "v"})), 400, "invalid"),
    "maxRunDuration under 30 s": (
        _with(_scheduling(max_run_duration=compute_v1.Duration(seconds=29), instance_termination_action="DELETE")),
        400, "invalid"),
    "maxRunDuration over 120 days": (
        _with(_scheduling(max_run_duration=compute_v1.Duration(seconds=120 * 86400 + 1),
                          instance_termination_action="DELETE")), 400, "invalid"),
    "termination action on STANDARD without a time limit": (
        _with(_scheduling(instance_termination_action="DELETE")), 400, "invalid"),
    "termination action that is neither STOP nor DELETE": (
        _with(_scheduling(provisioning_model="SPOT", automatic_restart=False, instance_termination_action="REBOOT")),
        400, "invalid"),
    "SPOT with automaticRestart true": (
        _with(_scheduling(provisioning_model="SPOT", automatic_restart=True)), 400, "invalid"),
    "SPOT with live migration": (
        _with(_scheduling(provisioning_model="SPOT", automatic_restart=False, on_host_maintenance="MIGRATE")),
        400, "invalid"),
    "unknown machine type": (make_instance("ok-name", machine_type="e2-galactic-9"), 400, "invalid"),
    "GPU machine that would live-migrate": (make_instance("ok-name", machine_type="g2-standard-4"), 400, "invalid"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_INSTANCES), ids=list(BAD_INSTANCES))
def test_insert_refuses_what_google_refuses(shared: Clients, case: str) -> None:
    instance, status, reason = BAD_INSTANCES[case]
    assert refused(_insert(shared, instance)) == (status, reason)


GOOD_SCHEDULING: dict[str, compute_v1.Scheduling] = {
    "standard with a time limit and DELETE": compute_v1.Scheduling(
        max_run_duration=compute_v1.Duration(seconds=30), instance_termination_action="DELETE"),
    "standard with 120 days and STOP": compute_v1.Scheduling(
        max_run_duration=compute_v1.Duration(seconds=120 * 86400), instance_termination_action="STOP"),
    "spot with DELETE and no time limit": compute_v1.Scheduling(
        provisioning_model="SPOT", automatic_restart=False, instance_termination_action="DELETE"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(GOOD_SCHEDULING), ids=list(GOOD_SCHEDULING))
def test_insert_accepts_the_limits_themselves(clients: Clients, case: str) -> None:
    instance = make_instance("edge-ok")
    instance.scheduling = GOOD_SCHEDULING[case]
    instance.labels = {f"k{i}": "v" * 63 for i in range(64)}
    instance.metadata = compute_v1.Metadata(items=[compute_v1.Items(key="startup-script", value="#" * 262144)])
    done = clients.wait(clients.insert(instance))
    assert not done.error.errors


def test_metadata_just_under_512_kib_in_total_is_accepted(clients: Clients) -> None:
    items = {"k0": "x" * (262144 - 2), "k1": "x" * (262144 - 3)}  # keys and values: 524287 bytes
    done = clients.wait(clients.insert(_with(_metadata(items), name="just-under")))
    assert not done.error.errors


def test_an_oversized_metadata_value_says_it_is_too_large(shared: Clients) -> None:
    with pytest.raises(gexc.BadRequest) as info:
        shared.insert(_with(_metadata({"startup-script": "x" * 262145})))
    assert "is too large" in info.value.message


def test_duplicate_name_is_409_already_exists(clients: Clients) -> None:
    clients.wait(clients.insert(make_instance("twice")))
    assert refused(lambda: clients.insert(make_instance("twice"))) == (409, "alreadyExists")


def test_missing_instance_is_404_not_found(shared: Clients) -> None:
    assert refused(lambda: shared.get("nowhere")) == (404, "notFound")
    assert refused(lambda: shared.instances.delete(project=shared.project, zone=shared.zone, instance="nowhere")) == (
        404,
        "notFound",
    )


def test_unknown_project_is_404(shared: Clients) -> None:
    call = lambda: shared.instances.get(project="someone-else", zone=shared.zone, instance="x")  # noqa: E731
    assert refused(call) == (404, "notFound")


@pytest.mark.parametrize("zone", ["us-central1-z", "us-east1-a", "mars-north1-a"])
def test_a_zone_google_does_not_have_is_refused(shared: Clients, zone: str) -> None:
    # Google: 400 "Invalid value for field 'zone': 'Z'. Unknown zone." on zonal methods; zones.get says 404.
    instance = make_instance("zoned", zone=zone)
    assert refused(lambda: shared.instances.insert(project=shared.project, zone=zone, instance_resource=instance)) == (
        400, "invalid")  # fmt: skip
    assert refused(lambda: list(shared.instances.list(project=shared.project, zone=zone))) == (400, "invalid")
    zones = compute_v1.ZonesClient(client_options={"api_endpoint": shared.cloud.compute_endpoint},
                                   credentials=shared.credentials)  # fmt: skip
    assert refused(lambda: zones.get(project=shared.project, zone=zone)) == (404, "notFound")


def test_a_zone_of_another_region_google_has_is_usable(clients: Clients) -> None:
    zone = "europe-west1-b"  # a fallback zone far from the emulator's own
    instance = make_instance("abroad", zone=zone)
    done = clients.wait(clients.instances.insert(project=clients.project, zone=zone, instance_resource=instance),
                        zone=zone)  # fmt: skip
    assert not done.error.errors
    assert refused(lambda: clients.regions.get(project=clients.project, region="mars-north1")) == (404, "notFound")
    region = clients.regions.get(project=clients.project, region="europe-west1")
    assert sorted(z.rsplit("/", 1)[-1] for z in region.zones) == ["europe-west1-b", "europe-west1-c", "europe-west1-d"]


def _bulk(shared: Clients, **fields: Any) -> Callable[[], Any]:
    resource = compute_v1.BulkInsertInstanceResource(
        instance_properties=compute_v1.InstanceProperties(
            machine_type="e2-standard-2",
            disks=[compute_v1.AttachedDisk(boot=True, auto_delete=True,
                                           initialize_params=compute_v1.AttachedDiskInitializeParams(disk_size_gb=10))],
        ),
        **fields,
    )  # fmt: skip
    return lambda: shared.instances.bulk_insert(
        project=shared.project, zone=shared.zone, bulk_insert_instance_resource_resource=resource
    )


BAD_BULK: dict[str, tuple[dict[str, Any], str]] = {
    "count of zero": ({"count": 0, "name_pattern": "w-###"}, "invalid"),
    "count over 5000": ({"count": 5001, "name_pattern": "w-####"}, "invalid"),
    "minCount above count": ({"count": 2, "min_count": 3, "name_pattern": "w-###"}, "invalid"),
    "neither namePattern nor perInstanceProperties": ({"count": 2}, "required"),
    "two runs of #": ({"count": 2, "name_pattern": "w-##-##"}, "invalid"),
    "pattern too short for the count": ({"count": 11, "name_pattern": "w-#"}, "invalid"),
    "invalid per-instance name": ({
        "count": 1,
        "per_instance_properties": {"Bad_Name": compute_v1.BulkInsertInstanceResourcePerInstanceProperties()},
    }, "invalid"),
    "more names than count": ({
        "count": 1, "per_instance_properties": {n: compute_v1.BulkInsertInstanceResourcePerInstanceProperties()
                                                for n in ("a-1", "a-2")}}, "invalid"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_BULK), ids=list(BAD_BULK))
def test_bulk_insert_refuses_what_google_refuses(shared: Clients, case: str) -> None:
    fields, reason = BAD_BULK[case]
    assert refused(_bulk(shared, **fields)) == (400, reason)


def test_bulk_insert_duplicate_name_is_409(clients: Clients) -> None:
    clients.wait(clients.insert(make_instance("taken")))
    props = {"taken": compute_v1.BulkInsertInstanceResourcePerInstanceProperties()}
    assert refused(_bulk(clients, count=1, per_instance_properties=props)) == (409, "alreadyExists")


def test_bulk_insert_pattern_numbers_after_the_highest_existing(clients: Clients) -> None:
    clients.wait(clients.insert(make_instance("w-050")))
    done = clients.wait(_bulk(clients, count=2, name_pattern="w-###")())
    assert not done.error.errors
    names = sorted(i.name for i in clients.instances.list(project=clients.project, zone=clients.zone))
    assert names == ["w-050", "w-051", "w-052"]


def _cpus_in_use(clients: Clients) -> float:
    region = clients.regions.get(project=clients.project, region=clients.cloud.region)
    return next(q.usage for q in region.quotas if q.metric == "CPUS")


def test_bulk_insert_uses_per_instance_names_and_patterns_skip_them(clients: Clients) -> None:
    props = {n: compute_v1.BulkInsertInstanceResourcePerInstanceProperties() for n in ("w-001", "special")}
    done = clients.wait(_bulk(clients, count=3, name_pattern="w-###", per_instance_properties=props)())
    assert not done.error.errors
    names = sorted(i.name for i in clients.instances.list(project=clients.project, zone=clients.zone))
    assert names == ["special", "w-001", "w-002"]  # w-001 is taken by name, so the pattern goes on from it
    assert _cpus_in_use(clients) == 3 * 2  # three e2-standard-2, each counted once


def test_bulk_insert_refuses_a_name_given_twice(clients: Clients) -> None:
    body = (
        '{"count": 2, "namePattern": "w-#", "perInstanceProperties": {"twin": {}, "twin": {}}, '
        '"instanceProperties": '
        '{"machineType": "e2-standard-2", "disks": [{"boot": true, "initializeParams": {"diskSizeGb": "10"}}]}}'
    )
    zone = f"{clients.cloud.compute_endpoint}/compute/v1/projects/{clients.project}/zones/{clients.zone}"
    url = f"{zone}/instances/bulkInsert"
    key, _, token = clients.auth().partition(": ")
    headers = {"Content-Type": "application/json", key: token}
    request = urllib.request.Request(url, data=body.encode(), method="POST", headers=headers)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert (info.value.code, json.load(info.value)["error"]["errors"][0]["reason"]) == (400, "invalid")
    assert list(clients.instances.list(project=clients.project, zone=clients.zone)) == []
    assert _cpus_in_use(clients) == 0


def test_bulk_insert_is_one_call_for_rate_limits(clients: Clients) -> None:
    clients.cloud.control.set_rate_limits(mutations=2)
    clients.wait(_bulk(clients, count=10, name_pattern="r-##")())
    clients.insert(make_instance("one-more"))
    assert refused(lambda: clients.insert(make_instance("too-many"))) == (403, "rateLimitExceeded")


def test_read_rate_limit_is_403_rate_limit_exceeded(clients: Clients) -> None:
    clients.cloud.control.set_rate_limits(reads=3)
    for _ in range(3):
        list(clients.instances.list(project=clients.project, zone=clients.zone))
    assert refused(lambda: list(clients.instances.list(project=clients.project, zone=clients.zone))) == (
        403,
        "rateLimitExceeded",
    )


def test_machine_types_and_regions_read_like_google(shared: Clients) -> None:
    expected = {"n1-standard-1": 1, "e2-standard-2": 2, "n1-standard-4": 4}
    for name, cpus in expected.items():
        machine = shared.machine_types.get(project=shared.project, zone=shared.zone, machine_type=name)
        assert machine.guest_cpus == cpus
    assert refused(lambda: shared.machine_types.get(project=shared.project, zone=shared.zone, machine_type="zz-1")) == (
        404,
        "notFound",
    )
    region = shared.regions.get(project=shared.project, region="us-central1")
    metrics = {q.metric for q in region.quotas}
    assert {"CPUS", "INSTANCES", "IN_USE_ADDRESSES", "NVIDIA_T4_GPUS"} <= metrics


# -- Storage object names: 1-1024 bytes of UTF-8, no CR or LF, not `.` or `..` ---------------------------
BAD_OBJECT_NAMES = {"LF": "a\nb", "CR": "a\rb", "dot": ".", "dot-dot": "..", "1025 bytes": "x" * 1025}


def _upload(shared: Clients, kind: str, name: str) -> tuple[int, str]:
    """A media or multipart upload with curl (as a startup script sends it): status and errors[0].reason."""
    base = f"{shared.cloud.storage_endpoint}/upload/storage/v1/b/{shared.cloud.bucket}/o"
    if kind == "media":
        args = ["-X", "POST", "--data-binary", "x", f"{base}?uploadType=media&name={quote(name, safe='')}"]
    else:
        body = (f'--B\r\nContent-Type: application/json\r\n\r\n{json.dumps({"name": name})}\r\n'
                "--B\r\nContent-Type: text/plain\r\n\r\nx\r\n--B--\r\n")  # fmt: skip
        args = ["-X", "POST", "-H", "Content-Type: multipart/related; boundary=B", "--data-binary", body,
                f"{base}?uploadType=multipart"]  # fmt: skip
    out = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", "-H", shared.auth(), *args],
                         capture_output=True, text=True, check=True)  # fmt: skip
    reply, _, code = out.stdout.rpartition("\n")
    reason = json.loads(reply)["error"]["errors"][0]["reason"] if int(code) >= 400 else ""
    return int(code), reason


@pytest.mark.parametrize("kind", ["media", "multipart"])
@pytest.mark.parametrize("case", list(BAD_OBJECT_NAMES), ids=list(BAD_OBJECT_NAMES))
def test_storage_refuses_invalid_object_names(shared: Clients, kind: str, case: str) -> None:
    assert _upload(shared, kind, BAD_OBJECT_NAMES[case]) == (400, "invalid")
    names = {blob.name for blob in shared.storage.list_blobs(shared.cloud.bucket)}
    assert BAD_OBJECT_NAMES[case] not in names


@pytest.mark.parametrize("kind", ["media", "multipart"])
def test_storage_accepts_the_longest_name_and_any_utf8(shared: Clients, kind: str) -> None:
    for name in ("y" * 1024, "é" * 512, "runs/r 1/ünïcode.txt", "...", "a/./b"):
        assert _upload(shared, kind, name) == (200, "")


def test_storage_refuses_invalid_names_from_the_real_client_and_in_paths(shared: Clients) -> None:
    bucket = shared.storage.bucket(shared.cloud.bucket)
    with pytest.raises(gexc.BadRequest):
        bucket.blob("line\nbreak").upload_from_string("x", retry=None)  # a resumable or multipart upload
    with pytest.raises(gexc.BadRequest) as info:
        bucket.blob("x" * 1025).reload(retry=None)  # the decoded /o/{name} of a get
    assert info.value.errors[0]["reason"] == "invalid"
