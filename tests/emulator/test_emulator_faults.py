"""The control API's faults, each seen through the real Google clients as the orchestrator sees it."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request

import pytest
from google.api_core import exceptions as gexc
from google.cloud import compute_v1

from parallel_engine.emulator import Emulator
from tests.emulator.emulator_helpers import (
    Clients,
    bearer,
    claim_script,
    console,
    make_instance,
    user_credentials,
    wait_for,
)


def test_429_burst_on_insert_is_not_retried_by_the_client(clients: Clients) -> None:
    clients.cloud.control.fail_next(3, status=429, method="POST", path=r"/instances$")
    for _ in range(3):
        with pytest.raises(gexc.TooManyRequests) as info:
            clients.insert(make_instance("burst"))
        assert info.value.errors[0]["reason"] == "rateLimitExceeded"
    assert not clients.wait(clients.insert(make_instance("burst"))).error.errors
    counts = clients.cloud.control.calls()["compute"]
    assert counts["byMethod"]["compute.instances.insert"] == {"orchestrator": 4}
    assert counts["injected"] == {"compute.instances.insert": 3}


def test_zone_exhaustion_fails_creations_until_it_clears(clients: Clients) -> None:
    clients.cloud.control.exhaust("zone", seconds=0.5)
    failed = clients.wait(clients.insert(make_instance("unlucky")))
    assert failed.error.errors[0].code == "ZONE_RESOURCE_POOL_EXHAUSTED"
    assert failed.http_error_status_code == 503
    with pytest.raises(gexc.NotFound):
        clients.get("unlucky")
    time.sleep(0.6)
    assert not clients.wait(clients.insert(make_instance("unlucky"))).error.errors


def test_quota_exhaustion_for_a_count_then_cleared(clients: Clients) -> None:
    clients.cloud.control.exhaust("quota", count=2)
    for name in ("q-1", "q-2"):
        failed = clients.wait(clients.insert(make_instance(name)))
        assert failed.error.errors[0].code == "QUOTA_EXCEEDED" and failed.http_error_status_code == 403
    assert not clients.wait(clients.insert(make_instance("q-3"))).error.errors
    clients.cloud.control.exhaust("zone")
    assert clients.wait(clients.insert(make_instance("q-4"))).error.errors
    clients.cloud.control.clear_exhaustion()
    assert not clients.wait(clients.insert(make_instance("q-4"))).error.errors


PREEMPTION_WATCH = r"""
MD="http://${GCE_METADATA_HOST}/computeMetadata/v1"
trap 'echo got-sigterm' TERM
echo "preempted-before: $(curl -sf -D "$TMPDIR/headers" -H 'Metadata-Flavor: Google' "$MD/instance/preempted")"
etag=$(tr -d '\r' < "$TMPDIR/headers" | sed -n 's/^[Ee][Tt][Aa][Gg]: //p')
# The soft-off SIGTERM reaches the whole process group as the flag flips (as systemd's shutdown does
# on COS); this curl ignores it so that the new value, not the signal, ends its wait. `last_etag`:
# a flip between the read above and this wait is answered at once, not missed.
value=$(trap '' TERM; curl -sf -H 'Metadata-Flavor: Google' "$MD/instance/preempted?wait_for_change=true&last_etag=$etag")
echo "preempted-after: $value"
sleep 300 & wait
"""


@pytest.mark.parametrize("action,final", [("DELETE", None), ("STOP", "TERMINATED")])
def test_preemption_soft_shutdown_then_operation_listed(clients: Clients, action: str, final: str | None) -> None:
    clients.cloud.control.set_clock(preemption_notice_seconds=300)  # 3 s here: room to watch the shutdown
    clients.wait(clients.insert(make_instance("spot-1", script=PREEMPTION_WATCH, spot=True, action=action)))
    wait_for(lambda: "preempted-before: FALSE" in console(clients, "spot-1"), what="the watcher")
    operation = clients.cloud.control.preempt("spot-1")
    assert operation["operationType"] == "compute.instances.preempted" and operation["user"] == "system"
    text = wait_for(lambda: (t := console(clients, "spot-1")) and "preempted-after: TRUE" in t and t, what="notice")
    assert clients.get("spot-1").status == "STOPPING"  # the ~30 s (scaled) soft shutdown
    wait_for(lambda: "got-sigterm" in console(clients, "spot-1"), what="SIGTERM to the startup script")
    if final is None:
        clients.wait_gone("spot-1", timeout=10)
    else:
        clients.wait_status("spot-1", final, timeout=10)
    request = compute_v1.ListZoneOperationsRequest(
        project=clients.project, zone=clients.zone, filter='operationType="compute.instances.preempted"'
    )
    ops = list(clients.operations.list(request=request))
    assert len(ops) == 1
    assert ops[0].user == "system" and ops[0].target_link.endswith("/instances/spot-1")
    assert ops[0].status == compute_v1.Operation.Status.DONE
    assert "preempted-after: TRUE" in text


def test_only_spot_vms_can_be_preempted(clients: Clients) -> None:
    from parallel_engine.emulator import ControlError

    clients.wait(clients.insert(make_instance("standard")))
    with pytest.raises(ControlError):
        clients.cloud.control.preempt("standard")


def test_latency_slows_every_matching_call(clients: Clients) -> None:
    clients.cloud.control.set_latency(0.3, service="compute", method="GET")
    started = time.monotonic()
    list(clients.instances.list(project=clients.project, zone=clients.zone))
    assert time.monotonic() - started >= 0.3
    clients.cloud.control.set_latency(0.2, service="storage")
    started = time.monotonic()
    clients.storage.bucket(clients.cloud.bucket).blob("slow").upload_from_string("x")
    assert time.monotonic() - started >= 0.2
    clients.cloud.control.clear_latency()
    started = time.monotonic()
    list(clients.instances.list(project=clients.project, zone=clients.zone))
    assert time.monotonic() - started < 0.3


def test_call_counts_tell_the_orchestrator_from_the_vms(clients: Clients) -> None:
    clients.cloud.control.reset_calls()
    clients.wait(clients.insert(make_instance("counted", script=claim_script(clients))))
    wait_for(lambda: "upload 2:" in console(clients, "counted"), what="uploads")
    clients.storage.bucket(clients.cloud.bucket).blob("claims/counted").download_as_bytes()
    calls = clients.cloud.control.calls()
    storage = calls["storage"]
    assert storage["byVm"] == {"counted": 2}
    assert storage["byMethod"]["storage.objects.insert"] == {"vm": 2}
    assert storage["byMethod"]["storage.objects.get"] == {"orchestrator": 1}
    compute = calls["compute"]
    assert compute["byCaller"].get("vm", 0) == 0
    assert compute["byMethod"]["compute.instances.insert"] == {"orchestrator": 1}


def test_time_scale_is_readable_and_changeable(clients: Clients) -> None:
    clock = clients.cloud.control.clock()
    assert clock["timeScale"] == 0.01 and clock["preemptionNoticeSeconds"] == 30
    clients.cloud.control.set_clock(boot_seconds=100)
    started = time.monotonic()
    clients.wait(clients.insert(make_instance("slow-boot")))
    clients.wait_status("slow-boot", "RUNNING")
    assert time.monotonic() - started >= 0.9


def _operations(clients: Clients, operation_type: str) -> list[compute_v1.Operation]:
    request = compute_v1.ListZoneOperationsRequest(
        project=clients.project, zone=clients.zone, filter=f'operationType="{operation_type}"'
    )
    return list(clients.operations.list(request=request))


def test_lost_response_then_retry_with_request_id_returns_the_same_operation(clients: Clients) -> None:
    clients.cloud.control.fail_next(1, status=503, method="POST", path=r"/instances\?", after=True)
    request = compute_v1.InsertInstanceRequest(
        project=clients.project, zone=clients.zone, instance_resource=make_instance("lost"),
        request_id="5f1c1d6e-1111-4222-8333-444455556666",
    )  # fmt: skip
    with pytest.raises(gexc.ServiceUnavailable):
        clients.instances.insert(request=request)
    assert clients.get("lost").name == "lost"  # the insert happened although its answer was lost
    retried = clients.instances.insert(request=request)  # same requestId: the same operation, no 409
    assert not clients.wait(retried).error.errors
    assert [op.name for op in _operations(clients, "insert")] == [retried.name]
    with pytest.raises(gexc.Conflict):
        clients.insert(make_instance("lost"))  # without a requestId the retry is a duplicate


def _bulk_request(clients: Clients, request_id: str, count: int = 3) -> compute_v1.BulkInsertInstanceRequest:
    template = make_instance("template")
    resource = compute_v1.BulkInsertInstanceResource(
        count=count, name_pattern="lost-##",
        instance_properties=compute_v1.InstanceProperties(
            machine_type="e2-standard-2", disks=template.disks, network_interfaces=template.network_interfaces,
            service_accounts=template.service_accounts,
        ),
    )  # fmt: skip
    return compute_v1.BulkInsertInstanceRequest(
        project=clients.project, zone=clients.zone, bulk_insert_instance_resource_resource=resource,
        request_id=request_id,
    )  # fmt: skip


def _names(clients: Clients) -> list[str]:
    return sorted(i.name for i in clients.instances.list(project=clients.project, zone=clients.zone))


def test_bulk_insert_retried_with_its_request_id_after_a_lost_answer_creates_once(clients: Clients) -> None:
    clients.cloud.control.fail_next(1, status=503, method="POST", path=r"/instances/bulkInsert", after=True)
    request = _bulk_request(clients, "0b7a4c1e-2222-4333-8444-555566667777")
    with pytest.raises(gexc.ServiceUnavailable):
        clients.instances.bulk_insert(request=request)
    assert _names(clients) == ["lost-01", "lost-02", "lost-03"]  # carried out; the answer was lost
    retried = clients.instances.bulk_insert(request=request)  # a namePattern retry would make 3 more
    assert not clients.wait(retried).error.errors
    assert _names(clients) == ["lost-01", "lost-02", "lost-03"]
    assert [op.name for op in _operations(clients, "bulkInsert")] == [retried.name]


def test_request_id_is_forgotten_after_its_window(clients: Clients) -> None:
    request = _bulk_request(clients, "9c3e7a55-3333-4444-8555-666677778888", count=1)
    first = clients.instances.bulk_insert(request=request)
    assert clients.instances.bulk_insert(request=request).name == first.name  # within 60 min (36 s here)
    clients.cloud.control.set_clock(request_id_window_seconds=5)  # now 0.05 s
    time.sleep(0.1)  # past the window: the same id is a new request
    assert clients.instances.bulk_insert(request=request).name != first.name
    assert _names(clients) == ["lost-01", "lost-02"]


def test_request_ids_act_once_per_id_and_never_wait_on_another_id() -> None:
    from parallel_engine.emulator.clock import Clock
    from parallel_engine.emulator.compute.idempotency import RequestIds

    made: dict[str, dict] = {}
    ids = RequestIds(Clock(), lambda zone, name: made[name])
    acted: list[str] = []
    both_acting = threading.Barrier(2, timeout=10)

    def insert(name: str, meet: bool) -> dict:
        acted.append(name)
        if meet:
            both_acting.wait()  # passes only while the other id's call acts too
        else:
            time.sleep(0.2)  # a slow validation: the repeat must wait for it, then replay it
        made[name] = {"kind": "compute#operation", "zone": "zones/z", "name": name}
        return made[name]

    def call(request_id: str, name: str, meet: bool, out: list[dict]) -> None:
        out.append(ids.once("compute.instances.insert", request_id, lambda: insert(name, meet)))

    results: list[dict] = []
    calls = [threading.Thread(target=call, args=(f"00000000-0000-4000-8000-00000000000{n}", f"op-{n}", True, results))
             for n in (1, 2)]  # fmt: skip
    calls += [threading.Thread(target=call, args=("00000000-0000-4000-8000-000000000003", f"op-3{n}", False, results))
              for n in "ab"]  # fmt: skip
    for thread in calls:
        thread.start()
    for thread in calls:
        thread.join(timeout=15)
    assert sorted(acted) in (["op-1", "op-2", "op-3a"], ["op-1", "op-2", "op-3b"])  # the repeat did not act
    assert len(results) == 4 and len({r["name"] for r in results}) == 3  # it got the first call's operation
    assert ids._busy == {}  # noqa: SLF001 - no lock is kept once its calls are over


@pytest.mark.parametrize("request_id", ["not-a-uuid", "00000000-0000-0000-0000-000000000000"])
def test_request_id_must_be_a_non_zero_uuid(clients: Clients, request_id: str) -> None:
    request = compute_v1.InsertInstanceRequest(
        project=clients.project, zone=clients.zone, instance_resource=make_instance("bad-id"), request_id=request_id
    )
    with pytest.raises(gexc.BadRequest) as info:
        clients.instances.insert(request=request)
    assert info.value.errors[0]["reason"] == "invalid"
    with pytest.raises(gexc.NotFound):
        clients.get("bad-id")


def test_faults_can_target_only_the_vms_calls(clients: Clients) -> None:
    clients.cloud.control.fail_next(1, status=503, path="/upload/", service="storage", caller="vm")
    clients.storage.bucket(clients.cloud.bucket).blob("from-orchestrator").upload_from_string("x")
    clients.wait(clients.insert(make_instance("target", script=claim_script(clients))))
    text = wait_for(lambda: (t := console(clients, "target")) and "upload 2:" in t and t, what="uploads")
    assert "upload 1: 503" in text and "upload 2: 200" in text


@pytest.mark.parametrize("service", ["compute", "storage", "cloudbuild"])
def test_only_a_401_carries_www_authenticate(cloud: Emulator, service: str) -> None:
    """As on Google: every 401 has WWW-Authenticate, even an injected one; no other answer has it, not even
    a fault injected after a call that was refused with 401 (the refusal happened, its answer was lost)."""
    url = {
        "compute": f"{cloud.compute_endpoint}/compute/v1/projects/{cloud.project}/zones/{cloud.zone}/instances",
        "storage": f"{cloud.storage_endpoint}/storage/v1/b/{cloud.bucket}/o",
        "cloudbuild": f"{cloud.cloudbuild_endpoint}/v1/projects/{cloud.project}/builds",
    }[service]
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never a proxy

    def get(token: str | None = None) -> tuple[int, str | None]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            with opener.open(urllib.request.Request(url, headers=headers), timeout=30) as reply:
                return reply.status, reply.headers.get("WWW-Authenticate")
        except urllib.error.HTTPError as error:
            return error.code, error.headers.get("WWW-Authenticate")

    challenge = 'Bearer realm="https://accounts.google.com/"'
    valid = bearer(user_credentials(cloud))
    assert get("ya29.made-up") == (401, challenge)
    assert get() == (401, challenge)  # no token at all
    cloud.control.fail_next(1, 503, service=service, after=True)
    assert get("ya29.made-up") == (503, None)
    cloud.control.fail_next(1, 503, service=service)
    assert get(valid) == (503, None)
    cloud.control.fail_next(1, 401, service=service)
    assert get(valid) == (401, challenge)
    assert get(valid) == (200, None)
    assert cloud.control.calls()[service]["injected"] and cloud.control.pending_faults()[service] == 0
