"""The gce backend end to end against the emulated cloud, with the real Google clients and real VMs' scripts."""

from __future__ import annotations

import csv
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

import parallel_engine as pe
from parallel_engine.api import open_store
from parallel_engine.backends.base import Event
from parallel_engine.backends.gce.backend import script_for, without_tag
from parallel_engine.backends.gce.compute import Compute
from parallel_engine.backends.gce.pool import GcePool
from parallel_engine.backends.gce.settings import GceSettings
from parallel_engine.backends.gce.startup import WorkerSettings
from parallel_engine.backends.gce.vm import task_vm_name
from parallel_engine.config import Config, load_config
from parallel_engine.emulator import Emulator
from parallel_engine.errors import BackendError, StoreError
from parallel_engine.model import AttemptState, AttemptStatus, Task
from parallel_engine.store import RunStore
from parallel_engine.worker.image import tag as worker_image_tag
from tests.emulator.emulator_helpers import TIME_SCALE, wait_for
from tests.gce.gce_helpers import (
    BackgroundRun,
    config_for,
    first_claim_holder,
    run_in_thread,
    run_vms,
    settings,
)
from tests.helpers import ROOT, cli
from tests.hostile import VALUES

pytestmark = [pytest.mark.emulator, pytest.mark.docker]


class VmWatch:
    """Samples the emulator's VMs in the background (its control API, which no rate limit or call
    count sees): every VM seen with its zone, when it was first seen and (with `resources`) the
    instance as Compute stored it; and the most alive at once."""

    ALIVE = ("PROVISIONING", "STAGING", "RUNNING", "STOPPING")

    def __init__(self, cloud: Emulator, resources: bool = False) -> None:
        self.cloud = cloud
        self.zones: dict[str, str] = {}
        self.first_seen: dict[str, float] = {}
        self.resources: dict[str, Any] = {}
        self.most_alive = 0
        self._instances = Compute(config_for(cloud, "x")).instances if resources else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @property
    def names(self) -> set[str]:
        return set(self.zones)

    def in_order(self) -> list[str]:
        return sorted(self.first_seen, key=self.first_seen.__getitem__)

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                vms = self.cloud.control.vms()
            except Exception:  # noqa: BLE001 - a VM went away while it was listed: look again
                self._stop.wait(0.01)
                continue
            for vm in vms:
                if vm["name"] not in self.zones:
                    self.zones[vm["name"]] = vm["zone"]
                    self.first_seen[vm["name"]] = time.monotonic()
                    if self._instances is not None:
                        try:
                            self.resources[vm["name"]] = self._instances.get(
                                project=self.cloud.project, zone=vm["zone"], instance=vm["name"])
                        except Exception:  # noqa: BLE001 - gone already
                            pass
            self.most_alive = max(self.most_alive, sum(1 for vm in vms if vm["status"] in self.ALIVE))
            self._stop.wait(0.01)

    def __enter__(self) -> VmWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "code", tmp_path / "code")
    return tmp_path


@pytest.mark.parametrize("per_task", [False, True], ids=["reuse-workers", "one-vm-per-task"])
def test_example_params_run_on_vms_and_collect_with_no_vm_left(
    cloud: Emulator, example_image: str, workdir: Path, per_task: bool, request: pytest.FixtureRequest
) -> None:
    if per_task:
        run = pe.run(workdir / "code" / "params.csv", config=config_for(cloud, example_image, VM_QUOTAS=3, TASKS_PER_VM=1))
    else:  # the run test_report_gce.py reads too (VM_QUOTAS 3, reuse VMs)
        shared = request.getfixturevalue("example_run_on_reuse_vms")
        cloud, run = shared.cloud, shared.run
    assert run.status().counts == {"succeeded": 12}
    results = run.collect(workdir / "results")
    rows = list(csv.DictReader(open(results, newline="")))
    assert len(rows) == 12 and {r["state"] for r in rows} == {"succeeded"}
    for row in rows:
        summary = json.loads((workdir / "results" / row["task_id"] / "summary.json").read_text())
        assert summary["dataset"] == row["dataset"] and summary["var"] == int(row["var"])
    assert run_vms(cloud, run.run_id) == []


def test_failing_task_is_failed_with_its_exit_code_and_logs(cloud: Emulator, example_image: str, workdir: Path) -> None:
    (workdir / "fail.yaml").write_text(yaml.safe_dump({"tasks": [
        {"id": "bad", "argv": ["--dataset", "broken", "--fail"]},
        {"id": "good", "argv": ["--dataset", "fine"]},
    ]}))
    run = pe.run(workdir / "fail.yaml", config=config_for(cloud, example_image, RETRIES=1))
    views = {v.task_id: v for v in run.status().tasks}
    assert str(views["good"].state) == "succeeded"
    assert str(views["bad"].state) == "failed" and views["bad"].exit_code == 1
    assert [str(a.state) for a in views["bad"].attempts] == ["failed", "failed"], views["bad"].attempts
    assert "failing on purpose" in run.logs("bad", stderr=True)
    assert run_vms(cloud, run.run_id) == []


def test_hostile_values_arrive_byte_exact_in_the_vm_container(cloud: Emulator, example_image: str, workdir: Path) -> None:
    dump = "import json,os,sys; json.dump(sys.argv[1:], open(os.environ['PE_OUTPUT_DIR']+'/argv.json','w'))"
    (workdir / "hostile.yaml").write_text(yaml.safe_dump(
        {"tasks": [{"id": "h", "command": ["python", "-c", dump, *VALUES, ""]}]}, allow_unicode=True), encoding="utf-8")
    run = pe.run(workdir / "hostile.yaml", config=config_for(cloud, example_image))
    assert run.status().counts == {"succeeded": 1}
    run.collect(workdir / "out")
    assert json.loads((workdir / "out" / "h" / "argv.json").read_text()) == [*VALUES, ""]


def test_429_burst_on_instance_creation_is_retried(cloud: Emulator, example_image: str, workdir: Path) -> None:
    (workdir / "two.csv").write_text("dataset\na\nb\n")
    cloud.control.fail_next(3, 429, method="POST", path="instances", caller="orchestrator")
    run = pe.run(workdir / "two.csv", config=config_for(cloud, example_image, VM_QUOTAS=2))
    assert run.status().counts == {"succeeded": 2}
    assert cloud.control.pending_faults().get("compute", 0) == 0
    assert sum(cloud.control.calls()["compute"]["injected"].values()) >= 3


def test_a_lost_bulk_insert_answer_is_retried_as_the_same_batch(cloud: Emulator, example_image: str, workdir: Path) -> None:
    (workdir / "two.csv").write_text("dataset\na\nb\n")
    # The batch is created, but the orchestrator hears 503 and retries the call.
    cloud.control.fail_next(1, 503, method="POST", path="bulkInsert", caller="orchestrator", after=True)
    with VmWatch(cloud) as watch:
        run = pe.run(workdir / "two.csv", config=config_for(cloud, example_image, VM_QUOTAS=2))
    assert run.status().counts == {"succeeded": 2}
    assert cloud.control.calls()["compute"]["injected"] == {"compute.instances.bulkInsert": 1}
    assert len(watch.names) == 2 and watch.most_alive == 2, watch.names  # one batch, not two


def test_a_lost_insert_answer_is_retried_without_a_second_vm_or_a_conflict(
    cloud: Emulator, example_image: str, workdir: Path
) -> None:
    (workdir / "two.csv").write_text("dataset\na\nb\n")
    cloud.control.fail_next(2, 503, method="POST", path=r"/instances(\?|$)", caller="orchestrator", after=True)
    with VmWatch(cloud) as watch:
        run = pe.run(workdir / "two.csv", config=config_for(cloud, example_image, VM_QUOTAS=2, TASKS_PER_VM=1))
    assert run.status().counts == {"succeeded": 2}
    assert cloud.control.calls()["compute"]["injected"] == {"compute.instances.insert": 2}
    assert [len(view.attempts) for view in run.status().tasks] == [1, 1]
    assert len(watch.names) == 2


def test_server_errors_and_dropped_connections_are_retried(cloud: Emulator) -> None:
    import requests
    from google.api_core import exceptions as gexc
    from google.auth.exceptions import TransportError

    from parallel_engine.backends.gce.clients import _transient, is_google_error

    compute = Compute(config_for(cloud, "img"))
    for status in (500, 502, 504):
        cloud.control.fail_next(1, status, method="GET", path="/instances", caller="orchestrator")
    assert compute.list_run(cloud.zone, "nothing") == {}
    assert sum(cloud.control.calls()["compute"]["injected"].values()) == 3
    assert _transient(requests.ConnectionError("reset by peer")) and _transient(TransportError("dropped"))
    assert not _transient(ValueError("a bug is not retried"))
    # What is retried and still fails becomes a BackendError: every transient error is a Google one.
    transient = [requests.ConnectionError("x"), requests.Timeout("x"), TransportError("x"), ConnectionResetError(),
                 gexc.TooManyRequests("x"), gexc.ResourceExhausted("x"), gexc.InternalServerError("x"),
                 gexc.BadGateway("x"), gexc.ServiceUnavailable("x"), gexc.GatewayTimeout("x"),
                 gexc.Forbidden("rateLimitExceeded")]
    assert all(_transient(exc) and is_google_error(exc) for exc in transient)


def test_an_insert_conflict_is_success_only_for_this_runs_own_vm(cloud: Emulator) -> None:
    from parallel_engine.backends.gce.vm import instance_body, instance_properties

    config = config_for(cloud, "img")
    compute = Compute(config)
    ours = instance_body(instance_properties(config, cloud.zone, "sleep 600", "run-a", "t1"), "pe-same-name", cloud.zone)
    compute.insert(cloud.zone, ours)
    compute.insert(cloud.zone, ours)  # a second logical call (its request id forgotten): 409, but ours
    theirs = instance_body(instance_properties(config, cloud.zone, "sleep 600", "run-b", "t1"), "pe-same-name", cloud.zone)
    with pytest.raises(BackendError, match="already exists"):
        compute.insert(cloud.zone, theirs)
    assert list(compute.list_run(cloud.zone, "run-a")) == ["pe-same-name"]


def test_quota_refusal_waits_for_capacity_then_runs(cloud: Emulator, example_image: str, workdir: Path) -> None:
    (workdir / "two.csv").write_text("dataset\na\nb\n")
    cloud.control.exhaust("quota", count=2)
    said: list[str] = []
    run = pe.run(workdir / "two.csv", config=config_for(cloud, example_image, VM_QUOTAS=2), info=said.append)
    assert run.status().counts == {"succeeded": 2}
    assert any(line.startswith("queued (quota)") for line in said)


def test_preempted_vm_task_is_redone_and_not_counted_as_failure(
    cloud: Emulator, example_image: str, workdir: Path
) -> None:
    wait_first = "import os,time; time.sleep(60 if os.environ['PE_ATTEMPT'] == '1' else 0)"
    (workdir / "slow.yaml").write_text(yaml.safe_dump({"tasks": [{"id": "slow", "command": ["python", "-c", wait_first]}]}))
    config = config_for(cloud, example_image, SPOT=True, RETRIES=0)
    with BackgroundRun(workdir / "slow.yaml", config, timeout=180) as started:
        _, holder = first_claim_holder(open_store(config), "slow")
        cloud.control.preempt(holder)
        run, error = started.outcome()
    assert error is None, error
    (view,) = run.status().tasks
    assert [str(a.state) for a in view.attempts] == ["preempted", "succeeded"], view.attempts
    assert str(view.state) == "succeeded"
    assert view.attempts[1].worker != holder
    assert run_vms(cloud, run.run_id) == []


def test_a_worker_whose_heartbeat_stops_on_a_running_vm_is_lost_and_redone(
    cloud: Emulator, example_image: str, workdir: Path
) -> None:
    wait_first = "import os,time; time.sleep(60 if os.environ['PE_ATTEMPT'] == '1' else 0)"
    (workdir / "hang.yaml").write_text(yaml.safe_dump({"tasks": [{"id": "hang", "command": ["python", "-c", wait_first]}]}))
    config = config_for(cloud, example_image, HEARTBEAT=1.0)
    store = open_store(config)
    with BackgroundRun(workdir / "hang.yaml", config) as started:
        run_id, holder = first_claim_holder(store, "hang")
        wait_for(lambda: store.blobs.read(f"runs/{run_id}/tasks/hang/1/heartbeat"), timeout=30,
                 what="the first attempt's heartbeat")
        for pid in cloud.control.pids(holder):  # the worker (and its task) hang: the VM stays RUNNING
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                pass
        run, error = started.outcome()
    assert error is None, error
    (view,) = run.status().tasks
    assert [str(a.state) for a in view.attempts] == ["lost", "succeeded"], view.attempts
    assert "stopped its heartbeat" in view.attempts[0].reason and holder in view.attempts[0].reason
    assert view.attempts[1].worker != holder
    assert run_vms(cloud, run.run_id) == []


def test_a_worker_that_cannot_write_the_bucket_stops_the_run_early_as_infra(
    cloud: Emulator, example_image: str, workdir: Path
) -> None:
    """Read-only Storage scope: every claim is refused (403) and the VM cannot delete itself;
    without heartbeats read, its VM stayed RUNNING and the run waited for maxRunDuration."""
    (workdir / "two.csv").write_text("dataset\na\nb\n")
    config = config_for(cloud, example_image, VM_QUOTAS=1, INFRA_FAILURE_LIMIT=2, BOOT_TIMEOUT=3,
                        SCOPES=["https://www.googleapis.com/auth/devstorage.read_only"])
    with VmWatch(cloud) as watch:
        run, error = run_in_thread(workdir / "two.csv", config)
    assert run is None and isinstance(error, BackendError), error
    # Reuse VMs carry no attempt until they claim one: the VMs are counted, and said to be.
    assert "stopping early: 2 VMs failed the same way before running any attempt: " in error.message
    assert "never reported within BOOT_TIMEOUT (3 s)" in error.message and "raise BOOT_TIMEOUT" in error.hint
    assert len(watch.names) == 2  # one VM, then one replacement, then the limit
    assert not [vm for vm in cloud.control.vms() if vm["name"] in watch.names]


def test_a_one_task_vm_whose_prelude_dies_is_an_infra_attempt_and_retried(
    cloud: Emulator, example_image: str, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import parallel_engine.backends.gce.backend as gce_run

    real = gce_run.script_for

    def dying_first(config: Config, run_id: str, image: str, worker_image: str, self_delete: bool = True) -> Any:
        render = real(config, run_id, image, worker_image, self_delete)
        # Attempt 1's VM gets a script that dies at once (as a prelude would): no claim, no record.
        return lambda tasks: "#!/bin/bash\nexit 3\n" if tasks and tasks[0][1] == 1 else render(tasks)

    monkeypatch.setattr(gce_run, "script_for", dying_first)
    (workdir / "one.csv").write_text("dataset\na\n")
    run, error = run_in_thread(workdir / "one.csv", config_for(cloud, example_image, TASKS_PER_VM=1, BOOT_TIMEOUT=3))
    assert error is None, error
    (view,) = run.status().tasks
    assert [str(a.state) for a in view.attempts] == ["infra", "succeeded"], view.attempts
    assert "never reported within BOOT_TIMEOUT (3 s) of boot" in view.attempts[0].reason
    assert view.attempts[0].worker.startswith("pe-")  # the VM that never reported
    assert run_vms(cloud, run.run_id) == []


def test_a_vm_whose_worker_is_slow_to_start_is_kept_until_boot_timeout(
    cloud: Emulator, example_image: str, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The boot limit is BOOT_TIMEOUT (boot, worker image pull, container start), not a multiple
    of HEARTBEAT: a worker that reports only after 6 s (with HEARTBEAT 0.5 s and POLL_INTERVAL
    0.2 s, once a 4.5 s limit) runs its attempt on the VM it was given."""
    import parallel_engine.backends.gce.backend as gce_run

    real = gce_run.script_for

    def slow_start(config: Config, run_id: str, image: str, worker_image: str, self_delete: bool = True) -> Any:
        render = real(config, run_id, image, worker_image, self_delete)
        return lambda tasks: render(tasks).replace("#!/bin/bash\n", "#!/bin/bash\nsleep 6\n", 1)

    monkeypatch.setattr(gce_run, "script_for", slow_start)
    (workdir / "one.csv").write_text("dataset\na\n")
    config = config_for(cloud, example_image, TASKS_PER_VM=1, HEARTBEAT=0.5, POLL_INTERVAL=0.2, BOOT_TIMEOUT=60)
    run, error = run_in_thread(workdir / "one.csv", config)
    assert error is None, error
    (view,) = run.status().tasks
    assert [str(a.state) for a in view.attempts] == ["succeeded"], view.attempts
    assert run_vms(cloud, run.run_id) == []


GRACEFUL = """
import os, signal, sys, time
def finish(*_):
    time.sleep(2)  # saving takes a while: the VM is STOPPING meanwhile
    open(os.path.join(os.environ["PE_OUTPUT_DIR"], "graceful"), "w").write("saved")
    sys.exit(0)
signal.signal(signal.SIGTERM, finish)
print("ready", flush=True)
time.sleep(120)
"""


def test_a_preempted_worker_that_records_during_the_soft_shutdown_is_believed(
    cloud: Emulator, example_image: str, workdir: Path
) -> None:
    """The VM is STOPPING for the soft shutdown; the task saves its work on SIGTERM and exits 0.
    The orchestrator must wait for the worker's record, not call the attempt preempted and redo it."""
    cloud.control.set_clock(preemption_notice_seconds=500)  # 5 s here
    (workdir / "graceful.yaml").write_text(yaml.safe_dump({"tasks": [{"id": "g", "command": ["python", "-c", GRACEFUL]}]}))
    config = config_for(cloud, example_image, SPOT=True)
    store = open_store(config)
    with BackgroundRun(workdir / "graceful.yaml", config) as started:
        run_id, holder = first_claim_holder(store, "g")
        wait_for(lambda: b"ready" in (store.read_log(run_id, "g", 1, "stdout") or b""), timeout=30,
                 what="the task to be ready")
        cloud.control.preempt(holder)
        run, error = started.outcome()
    assert error is None, error
    (view,) = run.status().tasks
    assert [(str(a.state), a.worker) for a in view.attempts] == [("succeeded", holder)], view.attempts
    run.collect(workdir / "out")
    assert (workdir / "out" / "g" / "graceful").read_text() == "saved"


def test_run_flags_and_vm_settings_reach_the_request_compute_received(
    cloud: Emulator, example_image: str, workdir: Path
) -> None:
    scopes = ["https://www.googleapis.com/auth/devstorage.read_write", "https://www.googleapis.com/auth/compute"]
    extra = {"EXTERNAL_IP": False, "SUBNETWORK": "pe-subnet", "BOOT_DISK_GB": 25, "SCOPES": scopes,
             "MAX_RUN_DURATION": "2h", "LABELS": {"team": "ml", "cost-center": "42"}, "MACHINE_TYPE": "e2-small"}
    (workdir / ".config.yaml").write_text(yaml.safe_dump(settings(cloud, example_image, **extra)))
    (workdir / "one.csv").write_text("task_id,dataset\nonly,a\n")
    with VmWatch(cloud, resources=True) as watch:
        done = cli("run", "one.csv", "--spot", "--tasks-per-vm", "1", cwd=workdir)
    assert done.returncode == 0, done.stdout + done.stderr
    run_id = done.stdout.split()[1].rstrip(":")
    (name,) = watch.names
    assert name == f"pe-{run_id}-only-1"  # one VM per task (--tasks-per-vm 1), named after it
    vm = watch.resources[name]
    (nic,) = vm.network_interfaces
    assert list(nic.access_configs) == []  # EXTERNAL_IP: false
    assert nic.subnetwork.endswith("regions/us-central1/subnetworks/pe-subnet")
    assert vm.machine_type.endswith("/machineTypes/e2-small")
    (disk,) = vm.disks
    assert disk.disk_size_gb == 25 and disk.auto_delete and disk.boot
    (account,) = vm.service_accounts
    assert sorted(account.scopes) == sorted(scopes)
    assert vm.scheduling.provisioning_model == "SPOT" and vm.scheduling.automatic_restart is False
    assert vm.scheduling.max_run_duration.seconds == 7200
    assert vm.scheduling.instance_termination_action == "DELETE"
    assert dict(vm.labels) == {"team": "ml", "cost-center": "42", "parallel-engine-run": run_id,
                               "parallel-engine-worker": "only"}
    assert open_store(config_for(cloud, example_image)).load_run(run_id).spec["tasks_per_vm"] == 1


@pytest.mark.parametrize("per_task", [False, True], ids=["reuse-workers", "one-vm-per-task"])
def test_never_more_vms_alive_than_vm_quotas(cloud: Emulator, example_image: str, workdir: Path, per_task: bool) -> None:
    (workdir / "five.yaml").write_text(yaml.safe_dump({"tasks": [
        {"id": f"t{i}", "command": ["python", "-c", "import time; time.sleep(1)"]} for i in range(5)]}))
    extra = {"TASKS_PER_VM": 1} if per_task else {}
    with VmWatch(cloud) as watch:
        run = pe.run(workdir / "five.yaml", config=config_for(cloud, example_image, VM_QUOTAS=2, **extra))
    assert run.status().counts == {"succeeded": 5}
    assert watch.most_alive == 2, watch.most_alive  # the cap was reached, never passed
    assert len(watch.names) == (5 if per_task else 2)


def test_one_vm_per_task_inserts_go_out_concurrently(cloud: Emulator, example_image: str, workdir: Path) -> None:
    """Each insert takes 1 s: one after the other, six VMs would appear over 5 s or more."""
    cloud.control.set_latency(1.0, service="compute", method="POST", path=r"/instances(\?|$)")
    (workdir / "six.csv").write_text("dataset\n" + "".join(f"d{i}\n" for i in range(6)))
    with VmWatch(cloud) as watch:
        run = pe.run(workdir / "six.csv", config=config_for(cloud, example_image, VM_QUOTAS=6, TASKS_PER_VM=1))
    assert run.status().counts == {"succeeded": 6}
    # The six first attempts' VMs (a retry's VM, after a heartbeat missed on a loaded machine, is
    # another insert, later by design).
    firsts = [task_vm_name(run.run_id, str(i), 1) for i in range(1, 7)]
    assert set(firsts) <= set(watch.first_seen), (firsts, watch.in_order())
    seen = sorted(watch.first_seen[name] for name in firsts)
    assert seen[-1] - seen[0] < 2.5, seen  # a generous margin: not a benchmark


def test_infra_failure_limit_stops_a_run_whose_image_is_missing(
    cloud: Emulator, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import parallel_engine.backends.gce.backend as gce_run

    assert cloud.registry_host, "the emulated cloud has no registry (apt-get install docker-registry)"
    # Each VM still tries its 5 pulls, with the backoff of tests/gce/test_worker_vm.py between them
    # (0.05 s doubling, capped at 0.4 s) rather than Google's 1 s doubling: ~15 s less waiting per VM.
    monkeypatch.setattr(gce_run, "WorkerSettings", functools.partial(WorkerSettings, retry_base_s=0.05, retry_max_s=0.4))
    missing = f"{cloud.registry_host}/{cloud.project}/parallel-engine/missing@sha256:{'2' * 64}"
    (workdir / "five.csv").write_text("dataset\n" + "".join(f"d{i}\n" for i in range(5)))
    config = config_for(cloud, missing, PULL_POLICY="always", VM_QUOTAS=1, INFRA_FAILURE_LIMIT=2)
    with VmWatch(cloud) as watch:
        run, error = run_in_thread(workdir / "five.csv", config)
    assert run is None and isinstance(error, BackendError), error
    assert "stopping early: 2 attempts failed the same way before starting: image pull failed" in error.message
    assert "manifest unknown" in error.message
    assert len(watch.names) == 2  # not one VM per task: the run stopped at the limit
    assert not [vm for vm in cloud.control.vms() if vm["name"] in watch.names]


def test_a_refused_zone_falls_back_and_the_run_returns_to_zone_when_it_has_capacity(
    cloud: Emulator, example_image: str, workdir: Path
) -> None:
    fallback = "us-central1-b"
    (workdir / "two.yaml").write_text(yaml.safe_dump({"tasks": [
        {"id": f"t{i}", "command": ["python", "-c", "import time; time.sleep(2)"]} for i in range(2)]}))
    cloud.control.exhaust("zone", count=1)  # the first creation (in ZONE) is refused
    said: list[str] = []
    config = config_for(cloud, example_image, VM_QUOTAS=1, TASKS_PER_VM=1, FALLBACK_ZONES=[fallback])
    with VmWatch(cloud) as watch:
        run = pe.run(workdir / "two.yaml", config=config, info=said.append)
    assert run.status().counts == {"succeeded": 2}
    assert [watch.zones[name] for name in watch.in_order()] == [fallback, cloud.zone]
    assert any(line.startswith(f"queued (quota): {cloud.zone} refused") and f"trying {fallback}" in line for line in said)
    assert run_vms(cloud, run.run_id) == []


def test_queued_for_quota_shows_in_status_from_another_process(cloud: Emulator, example_image: str, workdir: Path) -> None:
    (workdir / ".config.yaml").write_text(yaml.safe_dump(settings(cloud, example_image)))
    (workdir / "one.csv").write_text("dataset\na\n")
    cloud.control.exhaust("quota")  # until cleared
    config = config_for(cloud, example_image)
    store = open_store(config)

    def waiting_shown() -> dict[str, Any] | None:
        run_ids = store.run_ids()
        if not (run_ids and store.read_capacity(run_ids[0])):
            return None
        done = cli("status", run_ids[0], "--json", cwd=workdir)
        assert done.returncode == 0, done.stdout + done.stderr
        shown = json.loads(done.stdout)
        if not shown["waiting"]:
            return None
        return {**shown, "table": cli("status", run_ids[0], cwd=workdir).stdout}

    with BackgroundRun(workdir / "one.csv", config, timeout=180) as started:
        try:
            shown = wait_for(waiting_shown, timeout=60, what="status --json to show the run waiting")
        finally:
            cloud.control.clear_exhaustion()
        run, error = started.outcome()
    assert shown["waiting"].startswith("queued (quota): "), shown
    assert "QUOTA_EXCEEDED" in shown["waiting"] or "Quota" in shown["waiting"]
    assert "queued (quota): " in shown["table"]  # the human table says it too
    assert error is None and run.status().counts == {"succeeded": 1}
    assert json.loads(cli("status", run.run_id, "--json", cwd=workdir).stdout)["waiting"] == ""


def test_sigterm_to_a_real_gce_run_deletes_every_vm(cloud: Emulator, example_image: str, workdir: Path) -> None:
    (workdir / ".config.yaml").write_text(yaml.safe_dump(settings(cloud, example_image, VM_QUOTAS=2)))
    (workdir / "long.yaml").write_text(yaml.safe_dump({"tasks": [
        {"id": f"t{i}", "command": ["python", "-c", "import time; time.sleep(120)"]} for i in range(3)]}))
    proc = subprocess.Popen([sys.executable, "-m", "parallel_engine", "run", "long.yaml"], cwd=workdir,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    config = config_for(cloud, example_image)
    store = open_store(config)
    deadline = time.monotonic() + 60
    run_id = ""
    while time.monotonic() < deadline:
        run_id = run_id or next(iter(store.run_ids()), "")
        if run_id and len(store.blobs.list(f"runs/{run_id}/claims/")) == 2:
            break
        time.sleep(0.1)
    else:
        proc.kill()
        raise AssertionError(f"two attempts were never claimed (run {run_id!r})")
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout + stderr
    assert run_vms(cloud, run_id) == []
    shown = cli("status", run_id, "--json", cwd=workdir)
    assert shown.returncode == 0, shown.stderr
    state = json.loads(shown.stdout)
    assert state["counts"] == {"cancelled": 3}, state
    claimed = [a for attempts in store.attempts(run_id).values() for a in attempts]
    assert sorted(str(a.state) for a in claimed) == ["cancelled", "cancelled"]  # recorded, not "running"
    assert len(store.events_after(run_id)) == 2


def test_down_deletes_a_runs_vms_from_another_process(cloud: Emulator, example_image: str, workdir: Path) -> None:
    config = config_for(cloud, example_image)
    compute = Compute(config)
    from parallel_engine.backends.gce.vm import instance_body, instance_properties

    # One of them in a zone this config does not name: `down` lists every zone (aggregatedList).
    for name, zone in (("pe-leaked-1", cloud.zone), ("pe-leaked-2", "us-central1-b")):
        props = instance_properties(config, zone, "sleep 600", "leaky-run", "reuse")
        compute.insert(zone, instance_body(props, name, zone))
    other = instance_properties(config, cloud.zone, "sleep 600", "other-run", "reuse")
    compute.insert(cloud.zone, instance_body(other, "pe-other", cloud.zone))
    store = open_store(config)
    assert store.claim("leaky-run", "t1", 1, "pe-leaked-1")  # an attempt running on a leaked VM
    (workdir / ".config.yaml").write_text(yaml.safe_dump(settings(cloud, example_image)))
    done = cli("down", "leaky-run", cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert "deleted 2 VM(s)" in done.stdout
    (attempt,) = store.attempts("leaky-run")["t1"]
    assert (attempt.state, attempt.worker) == (AttemptState.CANCELLED, "pe-leaked-1")
    assert compute.list_run_everywhere("leaky-run") == []
    assert list(compute.list_run(cloud.zone, "other-run")) == ["pe-other"]


def kind_and_status(event: Event) -> tuple[str, Any]:
    """A pool's event as (kind, status): "finished" for `Finished`."""
    return type(event).__name__.lower(), getattr(event, "status", None)


def poll_cost(cloud: Emulator, tasks: int, per_task: bool) -> tuple[int, int, int]:
    """Calls of one poll after two attempts finished and a VM vanished holding a third:
    (compute, storage object calls, all storage calls)."""
    from parallel_engine.backends.gce.vm import instance_body, instance_properties

    config = config_for(cloud, "img", **({"TASKS_PER_VM": 1} if per_task else {}))
    store = open_store(config)
    run_id = f"poll-{tasks}-{int(per_task)}"
    events: list[tuple[str, Any]] = []
    pool = one_vm_pool(config, store, run_id, events)
    pool._create_workers = lambda alive: None  # type: ignore[method-assign]  # monitoring cost only
    for index in range(tasks):
        pool.submit(Task(str(index), ("--i", str(index))), 1)
    pool.wait_published()
    # A worker VM holding attempt 3.1 as a worker leaves it: its record names the attempt
    # (written before the claim), then the claim.
    vm = f"pe-{run_id}-vanishing"
    props = instance_properties(config, cloud.zone, "sleep 600", run_id, "w")
    pool.compute.insert(cloud.zone, instance_body(props, vm, cloud.zone))
    if per_task:
        pool._vm(vm).attempt = ("3", 1)
    store.blobs.write(f"runs/{run_id}/workers/{vm}", b"3.1")
    assert store.claim(run_id, "3", 1, vm)
    pool._poll()
    for index in range(2):  # two attempts finished since the last look
        status = AttemptStatus(str(index), 1, AttemptState.SUCCEEDED, 0, 1.0, 2.0, "vm", "")
        store.write_status(pool.run_id, status)
        store.add_event(pool.run_id, status)
    pool.compute.delete(cloud.zone, vm)  # the VM vanishes with its attempt unfinished
    cloud.control.reset_calls()
    pool._poll()
    calls = cloud.control.calls()
    assert [kind for kind, _ in events] == ["finished", "finished"]
    lost = store.read_status(run_id, "3", 1)
    assert lost is not None and lost.state is AttemptState.LOST
    storage = calls["storage"]["byMethod"]
    objects = sum(n.get("orchestrator", 0) for method, n in storage.items() if method.startswith("storage.objects."))
    return calls["compute"]["byCaller"].get("orchestrator", 0), objects, calls["storage"]["byCaller"].get("orchestrator", 0)


@pytest.mark.parametrize("per_task", [False, True], ids=["reuse", "one-vm-per-task"])
def test_one_poll_costs_the_same_at_10_and_200_tasks_even_when_a_vm_vanishes(cloud: Emulator, per_task: bool) -> None:
    small, large = poll_cost(cloud, 10, per_task), poll_cost(cloud, 200, per_task)
    assert small == large, (small, large)
    # Compute: 1 instances list, 1 preemption-operations list. Storage objects: 1 events list +
    # per new event a status read and an open-marker delete; 1 workers list; for the vanished VM
    # its claim and status read, the lost record and its event, its worker record deleted.
    assert small[:2] == (2, 1 + 2 * 2 + 1 + 5), small


@pytest.mark.parametrize("per_task", [False, True], ids=["reuse", "one-vm-per-task"])
def test_a_vm_gone_after_its_attempt_finished_costs_no_preemption_listing(cloud: Emulator, per_task: bool) -> None:
    """The common end of a one-task VM: it recorded its attempt and deleted itself. Nothing is
    left to settle, so Google's preemption operations are not listed (poll_cost: they are when
    the vanished VM still held an open attempt)."""
    from parallel_engine.backends.gce.vm import instance_body, instance_properties

    config = config_for(cloud, "img", **({"TASKS_PER_VM": 1} if per_task else {}))
    store = open_store(config)
    run_id = f"done-{int(per_task)}"
    events: list[tuple[str, Any]] = []
    pool = one_vm_pool(config, store, run_id, events)
    pool._create_workers = lambda alive: None  # type: ignore[method-assign]  # monitoring only
    pool.submit(Task("t", ()), 1)
    pool.wait_published()
    vm = f"pe-{run_id}-finished"
    pool.compute.insert(cloud.zone, instance_body(instance_properties(config, cloud.zone, "sleep 600", run_id, "w"), vm, cloud.zone))
    if per_task:
        pool._vm(vm).attempt = ("t", 1)
    store.blobs.write(f"runs/{run_id}/workers/{vm}", b"t.1")
    assert store.claim(run_id, "t", 1, vm)
    pool._poll()
    status = AttemptStatus("t", 1, AttemptState.SUCCEEDED, 0, 1.0, 2.0, vm, "")
    store.write_status(run_id, status)
    store.add_event(run_id, status)
    pool.compute.delete(cloud.zone, vm)  # it finished, then deleted itself
    cloud.control.reset_calls()
    pool._poll()
    assert events == [("finished", status)]
    assert vm in pool._settled and store.blobs.read(f"runs/{run_id}/workers/{vm}") is None
    compute = cloud.control.calls()["compute"]["byMethod"]
    assert compute.get("compute.zoneOperations.list", {}).get("orchestrator", 0) == 0, compute


def one_vm_pool(config: Config, store: RunStore, run_id: str, events: list[tuple[str, Any]]) -> GcePool:
    """A gce pool of at most one VM for image "img", its events gathered in `events`."""
    settings = GceSettings.of(config)
    return GcePool(settings, store, run_id, Compute(config), script_for(settings, run_id, "img", "worker-img"),
                   lambda event: events.append(kind_and_status(event)), lambda m: None, quota=1)


def cancel_cost(cloud: Emulator, tasks: int) -> int:
    """Storage object calls of cancelling a pool with `tasks` open attempts, two of them claimed:
    one still running (it gets `cancelled`), one finished with its event not seen yet."""
    config = config_for(cloud, "img")
    store = open_store(config)
    run_id = f"cancel-{tasks}"
    events: list[tuple[str, Any]] = []
    pool = one_vm_pool(config, store, run_id, events)
    for index in range(tasks):
        pool.submit(Task(str(index), ("--i", str(index))), 1)
    pool.wait_published()
    assert store.claim(run_id, "0", 1, "pe-vm-a") and store.claim(run_id, "1", 1, "pe-vm-b")
    store.write_status(run_id, AttemptStatus("1", 1, AttemptState.SUCCEEDED, 0, 1.0, 2.0, "pe-vm-b", ""))
    cloud.control.reset_calls()
    before = time.time()
    pool.cancel()
    storage = cloud.control.calls()["storage"]["byMethod"]
    ((kind, cancelled),) = events
    assert kind == "finished" and cancelled == store.read_status(run_id, "0", 1)
    assert (cancelled.task_id, cancelled.attempt, cancelled.state, cancelled.exit_code, cancelled.started_at,
            cancelled.worker, cancelled.reason) == ("0", 1, AttemptState.CANCELLED, None, None, "pe-vm-a",
                                                    "the run was cancelled")
    assert cancelled.finished_at is not None and cancelled.finished_at >= before
    assert store.read_status(run_id, "1", 1).state is AttemptState.SUCCEEDED  # a record is never replaced
    assert [key.rsplit("-", 1)[1] for key in store.events_after(run_id)] == ["0.1"]
    return sum(n.get("orchestrator", 0) for method, n in storage.items() if method.startswith("storage.objects."))


def test_cancelling_reads_only_the_claimed_attempts_not_every_open_one(cloud: Emulator) -> None:
    small, large = cancel_cost(cloud, 10), cancel_cost(cloud, 200)
    # 1 claims list; the finished one: its record read; the running one: its record and claim
    # read, the cancelled record and its event written; tails/ listed once the VMs are gone.
    assert small == large == 1 + 1 + 4 + 1, (small, large)


def test_one_task_vm_that_does_not_delete_itself_is_deleted(
    cloud: Emulator, example_image: str, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import functools

    import parallel_engine.backends.gce.backend as gce_run

    monkeypatch.setattr(gce_run, "script_for", functools.partial(gce_run.script_for, self_delete=False))
    (workdir / "one.csv").write_text("dataset\na\nb\n")
    said: list[str] = []
    config = config_for(cloud, example_image, TASKS_PER_VM=1, VM_QUOTAS=1)
    # Two tasks, one VM at a time: the second VM can only start once the first is gone.
    run = pe.run(workdir / "one.csv", config=config, info=said.append)
    assert run.status().counts == {"succeeded": 2}
    assert any("did not delete itself" in line for line in said)
    assert run_vms(cloud, run.run_id) == []


def emulator_workdir(values: dict[str, Any], folder: Path) -> Path:
    """`folder` with the config `parallel-engine emulator` writes (`values`), the example's code/
    and cloudbuild.yaml: what `build`, `run` and `debug` read."""
    from parallel_engine.emulator.serve import render_config

    shutil.copytree(ROOT / "code", folder / "code")
    shutil.copy(ROOT / "cloudbuild.yaml", folder / "cloudbuild.yaml")
    (folder / ".config.yaml").write_text(render_config(values))
    return folder


@dataclass
class BuiltCloud:
    """An emulator on which `build` ran once with its own config (`values`)."""

    cloud: Emulator
    values: dict[str, Any]
    built: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def built_cloud(docker_engine: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuiltCloud]:
    """One `build` (Cloud Build, both images pushed to the registry: ~13 s) for the tests that
    start from it: the README's flow and `debug`. Each test works in its own folder and itself
    removes the local names of the image it must pull, so either runs alone or in any order."""
    from parallel_engine.emulator.serve import config_values

    with Emulator(time_scale=TIME_SCALE) as cloud:
        assert cloud.registry_host, "the emulated cloud has no registry (apt-get install docker-registry)"
        values = config_values(cloud)
        folder = emulator_workdir(values, tmp_path_factory.mktemp("built"))
        yield BuiltCloud(cloud, values, cli("build", cwd=folder, timeout=600))


def forget_locally(docker_engine: Any, *names: str) -> None:
    """Remove these local names (a tag, a digest reference) of an image, so that what comes next
    must pull it; never the image by id, which other names (the session's images) may share."""
    import docker.errors

    for name in names:
        try:
            docker_engine.images.remove(name, force=True)
        except docker.errors.ImageNotFound:
            pass


def test_the_emulators_own_config_builds_runs_and_collects(built_cloud: BuiltCloud, docker_engine: Any, tmp_path: Path) -> None:
    """The README's flow with exactly the config `parallel-engine emulator` writes (REGISTRY with a
    path included; its CREDENTIALS_FILE and TOKEN_URI): build -> run -> collect -> status, logs,
    runs, down, the VMs pulling the image by digest from the registry (through its gate, with their
    metadata tokens)."""
    cloud, values, built = built_cloud.cloud, built_cloud.values, built_cloud.built
    workdir = emulator_workdir(built_cloud.values, tmp_path)
    assert "/" in values["REGISTRY"]  # host/project/repo, as Artifact Registry names a repository
    image = values["IMAGE"]
    assert built.returncode == 0, built.stdout + built.stderr
    assert f"built and pushed {image}@sha256:" in built.stdout
    assert "log: http://127.0.0.1" in built.stderr  # the build's log URL is shown
    digest = built.stdout.split("@", 1)[1].split(";")[0]
    worker = f"{values['REGISTRY']}/parallel-engine-worker:{worker_image_tag()}"
    assert f"worker {worker}@sha256:" in built.stdout  # the worker image, built and pushed beside it
    worker_digest = built.stdout.split(f"worker {worker}@", 1)[1].split(";")[0]
    again = cli("build", cwd=workdir, timeout=600)  # the worker's content is unchanged: not rebuilt
    assert again.returncode == 0 and f"worker image {worker} is up to date ({worker_digest})" in again.stderr, again.stderr
    digest = again.stdout.split("@", 1)[1].split(";")[0]
    forget_locally(docker_engine, image, f"{without_tag(image)}@{digest}")  # the VMs must pull it from the registry
    done = cli("run", "code/params.csv", cwd=workdir, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    run_id = done.stdout.split()[1].rstrip(":")
    store = open_store(load_config(workdir / ".config.yaml", environ={}))
    spec = store.load_run(run_id).spec
    assert spec["image"] == image.rsplit(":", 1)[0] + "@" + digest
    assert spec["worker_image"] == worker.rsplit(":", 1)[0] + "@" + worker_digest  # both pinned
    consoles = "".join(p.read_text(errors="replace") for p in cloud.workdir.glob("vms/*/console.log"))
    assert "parallel-engine-start: run " in consoles and "parallel-engine-worker: " in consoles  # the short script, the Python worker
    collected = cli("collect", run_id, "--dest", "results", cwd=workdir)
    assert collected.returncode == 0, collected.stderr
    rows = list(csv.DictReader(open(workdir / "results" / "results.csv", newline="")))
    assert len(rows) == 12 and {r["state"] for r in rows} == {"succeeded"}
    for row in rows:  # every output, byte for byte as the task wrote it (main.py's own bytes)
        written = store.blobs.read(f"runs/{run_id}/tasks/{row['task_id']}/1/outputs/summary.json")
        assert written and (workdir / "results" / row["task_id"] / "summary.json").read_bytes() == written
        assert json.loads(written)["dataset"] == row["dataset"]
    assert run_vms(cloud, run_id) == []
    # The rest of the README's commands, with the same credentials (the config's CREDENTIALS_FILE).
    status = cli("status", run_id, "--json", cwd=workdir)
    assert status.returncode == 0 and json.loads(status.stdout)["counts"] == {"succeeded": 12}, status.stderr
    logs = cli("logs", run_id, rows[0]["task_id"], cwd=workdir)
    assert logs.returncode == 0 and rows[0]["dataset"] in logs.stdout, logs.stderr
    assert run_id in cli("runs", cwd=workdir).stdout
    down = cli("down", run_id, cwd=workdir)
    assert down.returncode == 0 and "deleted 0 VM(s); none left" in down.stdout, down.stderr
    assert cloud.control.calls()["oauth"]["byMethod"]["oauth2.token.refresh_token"]["orchestrator"] > 0


def test_a_bad_worker_setting_is_one_clear_error_before_any_vm(cloud: Emulator, workdir: Path) -> None:
    bad = settings(cloud, "img", REGISTRY="https://europe-west1-docker.pkg.dev/p/repo")
    (workdir / ".config.yaml").write_text(yaml.safe_dump(bad))
    done = cli("run", "code/params.csv", cwd=workdir)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "worker settings: registry 'https://" in done.stderr and "Traceback" not in done.stderr
    assert "gce monitor" not in done.stderr
    assert open_store(config_for(cloud, "img")).run_ids() == []  # nothing written
    assert cloud.control.calls()["compute"]["byMethod"].get("compute.instances.bulkInsert") is None


def test_a_run_whose_build_recorded_no_worker_image_is_refused_before_anything_is_written(
        cloud: Emulator, workdir: Path) -> None:
    # A build record from before the Python worker: IMAGE's digest, no worker image.
    open_store(config_for(cloud, "img")).save_build({"image": "img", "digest": "sha256:" + "a" * 64})
    (workdir / ".config.yaml").write_text(yaml.safe_dump(settings(cloud, "img")))
    done = cli("run", "code/params.csv", cwd=workdir)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "it names no worker image" in done.stderr and "run `parallel-engine build`" in done.stderr
    assert "Traceback" not in done.stderr
    assert open_store(config_for(cloud, "img")).run_ids() == []  # nothing written
    assert not cloud.control.calls()["compute"]["byMethod"]  # no VM asked for, no quota read


def test_an_event_that_lands_after_a_newer_one_is_still_seen(cloud: Emulator) -> None:
    config = config_for(cloud, "img")
    store = open_store(config)
    events: list[AttemptStatus] = []
    pool = GcePool(GceSettings.of(config), store, "late-event", Compute(config), script_for(GceSettings.of(config), "late-event", "img", "worker-img"),
                   lambda event: events.append(kind_and_status(event)[1]), lambda m: None, quota=1)
    pool._create_workers = lambda alive: None  # type: ignore[method-assign]
    for task_id in ("early", "late"):
        pool.submit(Task(task_id, ()), 1)
    pool.wait_published()
    now = time.time()
    for task_id, stamp in (("late", now), ("early", now - 5)):  # "early" was stamped first, uploaded last
        status = AttemptStatus(task_id, 1, AttemptState.SUCCEEDED, 0, 1.0, 2.0, "vm", "")
        store.write_status(pool.run_id, status)
        store.blobs.create(f"runs/{pool.run_id}/events/{stamp:017.6f}-{task_id}.1", b"succeeded")
        pool._poll()
    assert [s.task_id for s in events] == ["late", "early"]
    pool._poll()
    assert len(events) == 2  # nothing handled twice


def test_an_attempts_end_is_taken_in_between_two_polls(cloud: Emulator) -> None:
    """The events are read every EVENTS_EVERY_S between polls: with POLL_INTERVAL at a minute,
    an end still reaches the scheduler within seconds (the run's last end too: its VMs are
    deleted then), while the VMs are listed once."""
    from parallel_engine.backends.gce.pool import EVENTS_EVERY_S
    from tests.helpers import wait_for

    config = config_for(cloud, "img", POLL_INTERVAL=60)
    store = open_store(config)
    events: list[tuple[str, Any]] = []
    pool = one_vm_pool(config, store, "between-polls", events)
    pool._create_workers = lambda alive: None  # type: ignore[method-assign]
    pool.submit(Task("t", ()), 1)
    pool.wait_published()
    cloud.control.reset_calls()
    pool.start()
    try:
        status = AttemptStatus("t", 1, AttemptState.SUCCEEDED, 0, 1.0, 2.0, "vm", "")
        store.write_status(pool.run_id, status)
        store.add_event(pool.run_id, status)
        wait_for(lambda: events == [("finished", status)], 20 * EVENTS_EVERY_S, "the end, before the next poll")
        listed = cloud.control.calls()["compute"]["byMethod"].get("compute.instances.list", {})
        assert sum(listed.values()) == 1, listed
    finally:
        pool.close()



@pytest.mark.parametrize("failing", ["events_after", "read_status"])
def test_a_storage_failure_between_polls_neither_stops_the_run_nor_loses_the_end(
        cloud: Emulator, failing: str) -> None:
    """A read between polls that fails (after the client's own retries) is left to the next look:
    no PoolFailed, and the end whose status could not be read is taken in later, not skipped."""
    from parallel_engine.backends.gce.pool import EVENTS_EVERY_S
    from tests.helpers import wait_for

    config = config_for(cloud, "img", POLL_INTERVAL=60)
    store = open_store(config)
    events: list[tuple[str, Any]] = []
    infos: list[str] = []
    pool = one_vm_pool(config, store, f"between-polls-{failing.replace('_', '-')}", events)
    pool.info = infos.append
    pool._create_workers = lambda alive: None  # type: ignore[method-assign]
    pool.submit(Task("t", ()), 1)
    pool.wait_published()
    listings: list[int] = []
    failures: list[int] = []
    armed = threading.Event()
    real_listing, real_failing = store.events_after, getattr(store, failing)

    def listing(*args: Any) -> Any:
        if failing == "events_after" and armed.is_set() and len(failures) < 2:
            failures.append(1)
            raise StoreError("events_after: storage unavailable")
        found = real_listing(*args)
        listings.append(1)
        return found

    def flaky_status(*args: Any) -> Any:
        if armed.is_set() and len(failures) < 2:
            failures.append(1)
            raise StoreError("read_status: storage unavailable")
        return real_failing(*args)

    store.events_after = listing  # type: ignore[method-assign]
    if failing == "read_status":
        store.read_status = flaky_status  # type: ignore[method-assign]
    pool.start()
    try:
        wait_for(lambda: bool(listings), 10.0, "the first poll's listing of the events")  # the end comes after it
        armed.set()
        status = AttemptStatus("t", 1, AttemptState.SUCCEEDED, 0, 1.0, 2.0, "vm", "")
        store.write_status(pool.run_id, status)
        store.add_event(pool.run_id, status)
        wait_for(lambda: events == [("finished", status)], 40 * EVENTS_EVERY_S, "the end, after the failed reads")
        assert len(failures) == 2 and len([i for i in infos if "the next poll reads them again" in i]) == 2, infos
    finally:
        pool.close()


@pytest.mark.parametrize("how", ["the run's end", "down"])
def test_log_tails_a_dead_worker_left_are_deleted_once_no_vm_is_left(cloud: Emulator, how: str) -> None:
    """A worker that died between an append's upload and its final sync leaves its log's tail
    object under tails/: deleted when the run's VMs are gone (its teardown, or `down`)."""
    from parallel_engine.backends.gce.backend import GceBackend
    from parallel_engine.protocol import tail_key

    config = config_for(cloud, "img")
    store = open_store(config)
    run_id = f"tails-{'down' if how == 'down' else 'end'}"
    left = [tail_key(run_id, "t", 1, "stdout"), tail_key(run_id, "t", 2, "stderr")]
    for key in left:
        store.blobs.write(key, b"the last bytes before the worker died")
    kept = f"runs/{run_id}/tasks/t/1/stdout.log"
    store.blobs.write(kept, b"the log itself")
    if how == "down":
        assert GceBackend(config).down(run_id) == "deleted 0 VM(s); none left"
    else:
        pool = one_vm_pool(config, store, run_id, [])
        pool.close()
    assert [store.blobs.read(key) for key in left] == [None, None]
    assert store.blobs.read(kept) == b"the log itself"


def test_debug_from_a_gce_config_pulls_the_built_digest_with_the_users_credentials_and_runs_the_task(
        built_cloud: BuiltCloud, docker_engine: Any, tmp_path: Path) -> None:
    workdir = emulator_workdir(built_cloud.values, tmp_path)
    image = built_cloud.values["IMAGE"]
    assert built_cloud.built.returncode == 0, built_cloud.built.stdout + built_cloud.built.stderr
    digest = (open_store(load_config(workdir / ".config.yaml", environ={})).last_build() or {})["digest"]  # build's record
    pinned = without_tag(image) + "@" + digest
    forget_locally(docker_engine, image, pinned)  # debug must pull it from the registry
    printed = cli("debug", "code/params.csv", "--task", "3", "--print", cwd=workdir, timeout=300)
    assert printed.returncode == 0, printed.stderr
    assert f" {pinned} " in printed.stdout and "--network host" in printed.stdout
    assert f"pulling {pinned} with your Google credentials" in printed.stderr
    done = cli("debug", "code/params.csv", "--task", "3", cwd=workdir, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"image {pinned} is already here" in done.stderr
    summary = json.loads((workdir / "debug" / "3" / "summary.json").read_text())
    row = list(csv.DictReader(open(workdir / "code" / "params.csv", newline="")))[2]
    assert (summary["dataset"], summary["project"]) == (row["dataset"], row["project"])


def test_run_reads_the_quotas_first_and_caps_the_vms_at_what_fits(cloud: Emulator, example_image: str, workdir: Path) -> None:
    """CPUS 8 leaves room for 2 n1-standard-4: VM_QUOTAS 5 becomes 2 before any VM is asked for,
    said once, and no VM is ever refused for quota."""
    cloud.control.set_quota("CPUS", 8)
    (workdir / "five.yaml").write_text(yaml.safe_dump({"tasks": [
        {"id": f"t{i}", "command": ["python", "-c", "import time; time.sleep(1)"]} for i in range(5)]}))
    said: list[str] = []
    config = config_for(cloud, example_image, VM_QUOTAS=5, MACHINE_TYPE="n1-standard-4")
    with VmWatch(cloud) as watch:
        run = pe.run(workdir / "five.yaml", config=config, info=said.append)
    assert run.status().counts == {"succeeded": 5}
    assert f"VM_QUOTAS 5, but the CPUS quota of {cloud.region} leaves room for 2 n1-standard-4 (4 vCPUs): " \
           "running 2 at once" in said
    assert not [line for line in said if "queued (quota)" in line]
    assert watch.most_alive == 2, watch.most_alive
    assert run.store.load_run(run.run_id).spec["workers"] == 2
