"""The run store in a bucket (emulated Storage): same keys and guarantees as on local disk."""

from __future__ import annotations


import threading

import pytest
from google.cloud import storage

from parallel_engine import gcs_client
from parallel_engine.backends.gce.clients import storage_client
from parallel_engine.backends.gce.blobs import GCSBlobs
from parallel_engine.emulator import Emulator
from parallel_engine.errors import BackendError
from parallel_engine.model import AttemptState, AttemptStatus, Task
from parallel_engine.store import RunRecord, RunStore
from tests.emulator.emulator_helpers import user_credentials
from tests.gce.gce_helpers import config_for
from tests.helpers import racing_claims


def bucket_store(cloud: Emulator, prefix: str = "pe") -> RunStore:
    client = storage.Client(project=cloud.project, credentials=user_credentials(cloud),
                            client_options={"api_endpoint": cloud.storage_endpoint})
    return RunStore(GCSBlobs(client, cloud.bucket, prefix), f"gs://{cloud.bucket}/{prefix}")


def test_our_storage_clients_never_probe_the_bucket_in_the_background(cloud: Emulator,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """google-cloud-storage 3.11+ calls buckets.get from a thread on a bucket's first use and after
    a 404: calls we never asked for, refused to object-only accounts, timing-dependent."""
    monkeypatch.delenv(gcs_client.NO_BUCKET_PROBES, raising=False)
    before = set(threading.enumerate())
    store = RunStore(GCSBlobs(storage_client(config_for(cloud, "img")), cloud.bucket, "probe"), "")
    cloud.control.reset_calls()
    store.blobs.write("a", b"1")
    assert store.blobs.read("never-written") is None  # a 404
    assert store.blobs.read("a") == b"1"
    for thread in set(threading.enumerate()) - before:  # a probe runs in a thread of its own
        if "process_request_thread" not in thread.name:  # not the emulator serving a connection
            thread.join(timeout=30)
    assert "storage.buckets.get" not in cloud.control.calls()["storage"]["byMethod"]


def test_only_one_of_racing_claimants_gets_a_bucket_claim(cloud: Emulator) -> None:
    store = bucket_store(cloud)
    assert len(racing_claims(store, 6)) == 1


def test_bucket_store_keeps_the_local_layout_and_reads_back(cloud: Emulator) -> None:
    store = bucket_store(cloud)
    record = RunRecord("r1", 1.0, "gce", "p.csv", ("x",), (Task("t1", ("--x=1",), {"x": "1"}),), {"retries": 0})
    store.save_run(record)
    assert store.load_run("r1") == record
    assert store.claim("r1", "t1", 1, "vm-a")
    assert store.attempts("r1")["t1"][0].state is AttemptState.RUNNING
    status = AttemptStatus("t1", 1, AttemptState.SUCCEEDED, 0, 1.0, 2.0, "vm-a", "")
    store.write_status("r1", status)
    store.add_event("r1", status)
    assert store.attempts("r1") == {"t1": [status]}
    (event,) = store.events_after("r1")
    assert event.startswith("runs/r1/events/") and store.events_after("r1", after=event) == []
    assert store.run_ids() == ["r1"]
    names = [b.name for b in store.blobs.client.list_blobs(cloud.bucket, prefix="pe/runs/r1/")]  # type: ignore[attr-defined]
    assert "pe/runs/r1/tasks/t1/1/status.json" in names and "pe/runs/r1/claims/t1.1" in names


def test_bucket_worker_records_show_a_rewrite_as_a_new_generation_and_new_bytes_as_a_new_hash(cloud: Emulator) -> None:
    store = bucket_store(cloud)
    versions = []
    for data in (b"-", b"-", b"t1.1"):  # the prelude, a heartbeat, a new claim
        store.blobs.write("runs/r1/workers/vm-a", data)
        versions.append(store.worker_records("r1")["vm-a"])
    first, beat, claimed = versions
    assert beat[0] != first[0] and beat[1] == first[1]
    assert claimed[1] != beat[1]
    assert list(store.worker_records("r1")) == ["vm-a"] and store.worker_records("r2") == {}


def test_a_storage_failure_names_the_object(cloud: Emulator) -> None:
    store = bucket_store(cloud)
    cloud.control.fail_next(1, 403, method="GET", path="status.json", service="storage")  # not retried
    with pytest.raises(BackendError, match=rf"gs://{cloud.bucket}/pe/runs/r1/tasks/t1/1/status.json\): 403"):
        store.read_status("r1", "t1", 1)
    cloud.control.fail_next(1, 403, method="GET", path="/o", service="storage")
    with pytest.raises(BackendError, match=rf"gs://{cloud.bucket}/pe/runs/r1/claims/\): 403"):
        store.attempts("r1")  # a listing names its prefix


def test_bucket_reads_many_objects_together_in_order_and_a_failure_names_its_object(cloud: Emulator) -> None:
    store = bucket_store(cloud)
    keys = [f"runs/r1/records/k{i:02d}.json" for i in range(20)]
    for key in keys[::2]:
        store.blobs.write(key, key.encode())
    assert store.blobs.read_many(keys) == [key.encode() if i % 2 == 0 else None for i, key in enumerate(keys)]
    cloud.control.fail_next(1, 403, method="GET", path="k08.json", service="storage")  # not retried
    with pytest.raises(BackendError, match=rf"gs://{cloud.bucket}/pe/runs/r1/records/k08.json\): 403"):
        store.blobs.read_many(keys)
