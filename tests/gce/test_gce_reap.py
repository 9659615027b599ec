"""`reap`: the VMs of the project's runs that no run needs any more, judged against the store,
listed first and deleted only with --yes (on the emulator)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from parallel_engine.api import open_store
from parallel_engine.backends.gce.compute import Compute
from parallel_engine.backends.gce.vm import instance_body, instance_properties
from parallel_engine.emulator import Emulator
from parallel_engine.lease import LEASE_STALE_S, take
from parallel_engine.protocol import heartbeat_key, worker_key
from parallel_engine.store import RunRecord
from tests.gce.gce_helpers import config_for, settings
from tests.helpers import cli

pytestmark = [pytest.mark.emulator, pytest.mark.docker]

IMAGE = "unused:latest"


def test_reap_lists_then_deletes_only_the_vms_no_run_needs(cloud: Emulator, tmp_path: Path) -> None:
    config = config_for(cloud, IMAGE)
    compute, store = Compute(config), open_store(config)
    now = time.time()
    stale = {"host": "another-machine", "pid": 1, "started": "ticks:1", "command": "run", "at": now - LEASE_STALE_S - 60}
    runs = {
        "reap-finished": "gone",  # over
        "reap-orchestrated": "kept",  # its orchestrator (this process) lives
        "reap-abandoned": "gone",  # stale lease, no heartbeat
        "reap-working-alone": "kept",  # stale lease, its worker beats
    }
    for run_id in runs:
        store.save_run(RunRecord(run_id, now, "gce", "p.csv", (), (), {}))
    store.write_end("reap-finished", "finished", now)
    lease = take(store, "reap-orchestrated", "run")
    for run_id in ("reap-abandoned", "reap-working-alone"):
        assert store.take_lease(run_id, 1, stale)
    store.blobs.write(worker_key("reap-working-alone", "pe-reap-working-alone"), b"t1.1")
    store.blobs.write(heartbeat_key("reap-working-alone", "t1", 1), str(time.time() + 3600).encode())
    vms = {f"pe-{run_id}": run_id for run_id in runs} | {"pe-reap-unknown": "reap-no-such-run"}
    for name, run_id in vms.items():
        compute.insert(cloud.zone, instance_body(instance_properties(config, cloud.zone, "sleep 600", run_id, "reuse"),
                                                 name, cloud.zone))
    (tmp_path / ".config.yaml").write_text(yaml.safe_dump(settings(cloud, IMAGE)))
    try:
        young = cli("reap", cwd=tmp_path)  # default --older-than 2h: these VMs are minutes old
        assert young.returncode == 0 and "no VM to reap" in young.stdout, young.stdout + young.stderr
        listed = cli("reap", "--older-than", "0s", cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        doomed = {"pe-reap-finished": "its run is over (finished)",
                  "pe-reap-abandoned": "nobody orchestrates its run and its worker stopped its heartbeat",
                  "pe-reap-unknown": "its run is unknown to this store"}
        for name, why in doomed.items():
            assert f"{cloud.zone}/{name} (run {vms[name]}): {why}" in listed.stdout, listed.stdout
        assert "3 VM(s) would delete (run again with --yes)" in listed.stdout
        assert "working-alone" not in listed.stdout and "orchestrated" not in listed.stdout
        assert set(compute.list_run(cloud.zone, "reap-finished")) == {"pe-reap-finished"}  # only listed
        deleted = cli("reap", "--older-than", "0s", "--yes", cwd=tmp_path)
        assert deleted.returncode == 0 and "3 VM(s) deleted" in deleted.stdout, deleted.stdout + deleted.stderr
        left = {name for run_id in set(vms.values()) for name in compute.list_run(cloud.zone, run_id)}
        assert left == {"pe-reap-orchestrated", "pe-reap-working-alone"}
    finally:
        lease.release()
        for run_id in set(vms.values()):
            for name in compute.list_run(cloud.zone, run_id):
                compute.delete(cloud.zone, name)


def test_reap_of_a_bad_duration_is_one_line(tmp_path: Path) -> None:
    done = cli("reap", "--older-than", "soon", cwd=tmp_path)
    assert done.returncode == 2 and "error: --older-than 'soon' is not a duration" in done.stderr
