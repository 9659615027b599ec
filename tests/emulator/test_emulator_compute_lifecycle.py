"""VM lifecycles with the real compute client: boot, startup script, list, quotas, deletion."""

from __future__ import annotations

import re
from datetime import datetime

import psutil
import pytest
from google.api_core import exceptions as gexc
from google.cloud import compute_v1

from parallel_engine.emulator import Emulator
from tests.emulator.emulator_helpers import (
    TIME_SCALE,
    Clients,
    claim_script,
    console,
    make_instance,
    wait_for,
)


def test_insert_boot_script_claims_in_bucket_then_delete(clients: Clients) -> None:
    op = clients.insert(make_instance("worker-1", script=claim_script(clients)))
    done = clients.wait(op)
    assert done.status == compute_v1.Operation.Status.DONE and not done.error.errors
    assert clients.wait_status("worker-1", "RUNNING").status == "RUNNING"
    blob = clients.storage.bucket(clients.cloud.bucket).blob("claims/worker-1")
    wait_for(lambda: "upload 2:" in console(clients, "worker-1"), what="the script's uploads")
    assert blob.download_as_bytes() == b"worker-1"
    text = console(clients, "worker-1")
    assert "upload 1: 200" in text and "upload 2: 412" in text
    assert clients.get("worker-1").status == "RUNNING"  # a finished script leaves the VM running
    deleted = clients.delete("worker-1")
    assert not deleted.error.errors
    with pytest.raises(gexc.NotFound):
        clients.get("worker-1")


def test_serial_port_output_pages_by_offset(clients: Clients) -> None:
    clients.wait(clients.insert(make_instance("talker", script="for i in 1 2 3; do echo line-$i; done")))
    wait_for(lambda: "exit status 0" in console(clients, "talker"), what="output")
    first = clients.instances.get_serial_port_output(project=clients.project, zone=clients.zone, instance="talker")
    again = clients.instances.get_serial_port_output(
        request=compute_v1.GetSerialPortOutputInstanceRequest(
            project=clients.project, zone=clients.zone, instance="talker", start=first.next_
        )
    )
    assert "line-1" in first.contents and again.contents == "" and again.start == first.next_


def test_vm_path_is_container_optimized_os_like(clients: Clients) -> None:
    script = (
        "for tool in bash curl sleep base64 mktemp docker-credential-gcr python3 gcloud gsutil jq; do\n"
        "  if command -v $tool >/dev/null; then echo have-$tool; else echo lack-$tool; fi\ndone\n"
        'echo "env: $(env | cut -d= -f1 | sort | tr "\\n" " ")"\n'
    )
    clients.wait(clients.insert(make_instance("cos", script=script)))
    text = wait_for(lambda: (t := console(clients, "cos")) and "env:" in t and t, what="output")
    for tool in ("bash", "curl", "sleep", "base64", "mktemp", "docker-credential-gcr"):
        assert f"have-{tool}" in text
    for tool in ("python3", "gcloud", "gsutil", "jq"):
        assert f"lack-{tool}" in text
    env_line = next(line for line in text.splitlines() if line.startswith("env:"))
    assert "GCE_METADATA_HOST" in env_line and "GCE_METADATA_IP" in env_line
    assert "STORAGE_EMULATOR_HOST" not in env_line  # a real VM gets no endpoint variables


def test_bulk_insert_of_ten_then_list_by_label_with_paging(clients: Clients) -> None:
    resource = compute_v1.BulkInsertInstanceResource(
        count=10,
        name_pattern="run-a-###",
        instance_properties=compute_v1.InstanceProperties(
            machine_type="e2-standard-2",
            labels={"parallel-engine-run": "a", "parallel-engine-worker": "w"},
            disks=make_instance("x").disks,
            network_interfaces=[compute_v1.NetworkInterface(network="global/networks/default")],
        ),
    )
    op = clients.instances.bulk_insert(
        project=clients.project, zone=clients.zone, bulk_insert_instance_resource_resource=resource
    )
    done = clients.wait(op)
    assert not done.error.errors and done.operation_type == "bulkInsert"
    clients.wait(clients.insert(make_instance("other", labels={"parallel-engine-run": "b"})))
    request = compute_v1.ListInstancesRequest(
        project=clients.project, zone=clients.zone, filter='labels.parallel-engine-run = "a"', max_results=3
    )
    pages = list(clients.instances.list(request=request).pages)
    assert [len(page.items) for page in pages] == [3, 3, 3, 1]
    names = [i.name for page in pages for i in page.items]
    assert names == [f"run-a-{n:03d}" for n in range(1, 11)]
    both = compute_v1.ListInstancesRequest(
        project=clients.project,
        zone=clients.zone,
        filter='labels.parallel-engine-run = "a" AND labels.parallel-engine-worker = "w"',
    )
    assert len(list(clients.instances.list(request=both))) == 10


def _cpus(clients: Clients) -> tuple[float, float]:
    region = clients.regions.get(project=clients.project, region=clients.cloud.region)
    quota = next(q for q in region.quotas if q.metric == "CPUS")
    return quota.usage, quota.limit


def test_zone_operations_list_pages_and_filters(clients: Clients) -> None:
    inserted = [clients.insert(make_instance(f"op-{n}", machine_type="e2-micro")).name for n in range(5)]
    for name in inserted:
        clients.wait(compute_v1.Operation(name=name))
    clients.delete("op-0")
    request = compute_v1.ListZoneOperationsRequest(
        project=clients.project, zone=clients.zone, max_results=2, filter='operationType="insert"'
    )
    pages = list(clients.operations.list(request=request).pages)
    assert [len(page.items) for page in pages] == [2, 2, 1]
    assert sorted(op.name for page in pages for op in page.items) == sorted(inserted)
    everything = compute_v1.ListZoneOperationsRequest(project=clients.project, zone=clients.zone, max_results=4)
    kinds = sorted(op.operation_type for op in clients.operations.list(request=everything))
    assert kinds == ["delete"] + ["insert"] * 5


def test_cpu_quota_counts_machine_types_and_frees_on_delete(clients: Clients) -> None:
    clients.cloud.control.set_quota("CPUS", 8)
    for name in ("big-1", "big-2"):
        assert not clients.wait(clients.insert(make_instance(name, machine_type="n1-standard-4"))).error.errors
    assert _cpus(clients) == (8.0, 8.0)
    refused = clients.wait(clients.insert(make_instance("big-3", machine_type="n1-standard-1")))
    assert refused.error.errors[0].code == "QUOTA_EXCEEDED"
    assert refused.http_error_status_code == 403
    assert "Quota 'CPUS' exceeded" in refused.error.errors[0].message
    with pytest.raises(gexc.NotFound):
        clients.get("big-3")
    clients.delete("big-1")
    assert _cpus(clients) == (4.0, 8.0)
    assert not clients.wait(clients.insert(make_instance("big-3", machine_type="n1-standard-4"))).error.errors


def test_external_ip_counts_in_use_addresses(clients: Clients) -> None:
    clients.cloud.control.set_quota("IN_USE_ADDRESSES", 1)
    assert not clients.wait(clients.insert(make_instance("ip-1", external_ip=True))).error.errors
    assert not clients.wait(clients.insert(make_instance("no-ip"))).error.errors
    refused = clients.wait(clients.insert(make_instance("ip-2", external_ip=True)))
    assert refused.error.errors[0].code == "QUOTA_EXCEEDED"
    assert "IN_USE_ADDRESSES" in refused.error.errors[0].message


def test_instances_quota_counts_vms_whatever_their_size_and_stopped_ones_too(clients: Clients) -> None:
    clients.cloud.control.set_quota("INSTANCES", 2)
    for name in ("one", "two"):
        assert not clients.wait(clients.insert(make_instance(name, machine_type="e2-micro"))).error.errors
    refused = clients.wait(clients.insert(make_instance("three", machine_type="e2-micro")))
    assert refused.error.errors[0].code == "QUOTA_EXCEEDED" and refused.http_error_status_code == 403
    assert "Quota 'INSTANCES' exceeded" in refused.error.errors[0].message
    clients.wait(clients.instances.stop(project=clients.project, zone=clients.zone, instance="two"))
    clients.wait_status("two", "TERMINATED")  # a stopped VM still counts as an instance
    assert clients.wait(clients.insert(make_instance("three", machine_type="e2-micro"))).error.errors
    clients.delete("one")
    assert not clients.wait(clients.insert(make_instance("three", machine_type="e2-micro"))).error.errors


def test_bulk_insert_quota_is_checked_upfront_and_min_count_allows_partial(clients: Clients) -> None:
    clients.cloud.control.set_quota("CPUS", 6)
    resource = compute_v1.BulkInsertInstanceResource(
        count=5,
        name_pattern="b-#",
        instance_properties=compute_v1.InstanceProperties(machine_type="e2-standard-2", disks=make_instance("x").disks),
    )

    def bulk() -> compute_v1.Operation:
        return clients.instances.bulk_insert(
            project=clients.project, zone=clients.zone, bulk_insert_instance_resource_resource=resource
        )

    with pytest.raises(gexc.Forbidden) as info:
        bulk()
    assert info.value.errors[0]["reason"] == "quotaExceeded"
    resource.min_count = 2
    done = clients.wait(bulk())
    assert not done.error.errors
    status = done.instances_bulk_insert_operation_metadata.per_location_status[f"zones/{clients.zone}"]
    assert (status.created_vm_count, status.failed_to_create_vm_count) == (3, 2)
    assert len(list(clients.instances.list(project=clients.project, zone=clients.zone))) == 3


def test_deleting_a_vm_kills_its_process_tree(clients: Clients) -> None:
    script = (
        "sleep 300 &\n"
        "( sleep 300; echo never ) &\n"
        "setsid sleep 300 &\n"
        "echo \"PIDS $$ $(pgrep -d ' ' -s 0 2>/dev/null)\"\n"
        "sleep 300\n"
    )
    clients.wait(clients.insert(make_instance("tree", script=script)))
    clients.wait_status("tree", "RUNNING")
    pids = wait_for(lambda: len(clients.cloud.control.pids("tree")) >= 5 and clients.cloud.control.pids("tree"),
                    what="the script's processes")  # fmt: skip
    clients.delete("tree")
    survivors = [pid for pid in pids if _alive(pid)]
    assert survivors == []


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_max_run_duration_delete_removes_the_vm(clients: Clients) -> None:
    clients.wait(clients.insert(make_instance("limited", script="sleep 300", max_run_seconds=30, action="DELETE")))
    clients.wait_status("limited", "RUNNING")
    clients.wait_gone("limited", timeout=10)
    assert _cpus(clients)[0] == 0.0


def test_max_run_duration_stop_terminates_and_frees_cpus(clients: Clients) -> None:
    clients.wait(clients.insert(make_instance("stopper", script="sleep 300", max_run_seconds=30, action="STOP")))
    clients.wait_status("stopper", "RUNNING")
    assert clients.wait_status("stopper", "TERMINATED", timeout=10).status == "TERMINATED"
    assert clients.cloud.control.pids("stopper") == []
    assert _cpus(clients)[0] == 0.0


def _seconds(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp).timestamp()


def _limits_reached(seed: int) -> list[float]:
    """When maxRunDuration acted on three VMs (30 s limits) of a fresh emulator seeded with `seed`.

    The lateness drawn for each VM is what its console prints; each VM must also really reach
    TERMINATED that long after it started running, plus the stop grace (its own timestamps, read on
    the emulator's time scale).
    """
    with Emulator(time_scale=TIME_SCALE, seed=seed) as cloud:
        clients = Clients(cloud)
        clock = cloud.control.clock()
        scale, grace = clock["timeScale"], clock["stopSeconds"]
        resolution = 0.001 / scale  # the timestamps count milliseconds
        slack = 0.25 / scale  # real time for the power-off itself (kill the tree, remove containers), generously
        names = [f"late-{n}" for n in range(3)]
        for name in names:
            clients.wait(clients.insert(make_instance(name, script="sleep 300", max_run_seconds=30, action="STOP")))
        found = re.compile(r"maxRunDuration reached after ([0-9.]+) s")
        drawn = [
            float(wait_for(lambda n=name: found.search(console(clients, n)), what="the limit").group(1))
            for name in names
        ]
        for name, after in zip(names, drawn, strict=True):
            vm = clients.wait_status(name, "TERMINATED", timeout=10)
            ran = (_seconds(vm.last_stop_timestamp) - _seconds(vm.last_start_timestamp)) / scale
            assert after + grace - resolution <= ran <= after + grace + slack, (name, after, ran)
        return drawn


def test_max_run_duration_acts_up_to_30_s_late_repeatably_under_a_seed() -> None:
    first = _limits_reached(seed=7)
    assert all(30 <= after <= 60 for after in first) and len(set(first)) == 3  # each VM its own lateness
    assert _limits_reached(seed=7) == first


def test_stop_then_start_runs_the_startup_script_again(clients: Clients) -> None:
    clients.wait(clients.insert(make_instance("again", script="echo boot-run")))
    wait_for(lambda: console(clients, "again").count("boot-run") == 1, what="first boot")
    clients.wait(clients.instances.stop(project=clients.project, zone=clients.zone, instance="again"))
    clients.wait_status("again", "TERMINATED")
    clients.wait(clients.instances.start(project=clients.project, zone=clients.zone, instance="again"))
    wait_for(lambda: console(clients, "again").count("boot-run") == 2, what="second boot")


def test_vm_deletes_itself_with_its_metadata_token(clients: Clients) -> None:
    script = r"""
MD="http://${GCE_METADATA_HOST}/computeMetadata/v1"
H='Metadata-Flavor: Google'
json=$(curl -sf -H "$H" "$MD/instance/service-accounts/default/token")
[[ $json =~ \"access_token\":\ *\"([^\"]+)\" ]]
name=$(curl -sf -H "$H" "$MD/instance/name")
zone=$(curl -sf -H "$H" "$MD/instance/zone")
project=$(curl -sf -H "$H" "$MD/project/project-id")
curl -s -X DELETE -H "Authorization: Bearer ${BASH_REMATCH[1]}" \
  "__COMPUTE__/compute/v1/projects/$project/zones/${zone##*/}/instances/$name"
sleep 300
""".replace("__COMPUTE__", clients.cloud.compute_endpoint)
    clients.wait(clients.insert(make_instance("self-deleting", script=script)))
    clients.wait_gone("self-deleting")
    ops = clients.operations.list(
        request=compute_v1.ListZoneOperationsRequest(
            project=clients.project, zone=clients.zone, filter='operationType = "delete"'
        )
    )
    assert [op.user for op in ops] == [f"{clients.cloud.project_number}-compute@developer.gserviceaccount.com"]
    compute = clients.cloud.control.calls()["compute"]
    assert compute["byMethod"]["compute.instances.delete"] == {"vm": 1}  # the VM's call, counted as the VM's
    assert compute["byVm"] == {"self-deleting": 1}


def test_vm_token_without_compute_scope_cannot_delete(clients: Clients) -> None:
    script = (
        r"""
MD="http://${GCE_METADATA_HOST}/computeMetadata/v1"
json=$(curl -sf -H 'Metadata-Flavor: Google' "$MD/instance/service-accounts/default/token")
[[ $json =~ \"access_token\":\ *\"([^\"]+)\" ]]
curl -s -X DELETE -H "Authorization: Bearer ${BASH_REMATCH[1]}" \
  "__COMPUTE__/compute/v1/projects/__PROJECT__/zones/__ZONE__/instances/readonly"
echo; echo done-trying
""".replace("__COMPUTE__", clients.cloud.compute_endpoint)
        .replace("__PROJECT__", clients.project)
        .replace("__ZONE__", clients.zone)
    )
    scopes = ("https://www.googleapis.com/auth/devstorage.read_write",)
    clients.wait(clients.insert(make_instance("readonly", script=script, scopes=scopes)))
    text = wait_for(lambda: (t := console(clients, "readonly")) and "done-trying" in t and t, what="the attempt")
    assert re.search(r'"reason": "insufficientPermissions"', text)
    assert clients.get("readonly").status == "RUNNING"


def test_gpu_quota_counts_guest_accelerators(clients: Clients) -> None:
    def gpu_vm(name: str) -> compute_v1.Instance:
        instance = make_instance(name, machine_type="n1-standard-4")
        instance.guest_accelerators = [
            compute_v1.AcceleratorConfig(
                accelerator_type=f"zones/{clients.zone}/acceleratorTypes/nvidia-tesla-t4", accelerator_count=1
            )
        ]
        instance.scheduling = compute_v1.Scheduling(on_host_maintenance="TERMINATE")
        return instance

    assert not clients.wait(clients.insert(gpu_vm("gpu-1"))).error.errors  # a new project has 1 T4
    refused = clients.wait(clients.insert(gpu_vm("gpu-2")))
    assert refused.error.errors[0].code == "QUOTA_EXCEEDED"
    assert "NVIDIA_T4_GPUS" in refused.error.errors[0].message
