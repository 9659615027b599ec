"""The gce backend: workers are Compute Engine VMs that claim attempts from the run's bucket.

The pool publishes claimable attempts (`open/<task>.<attempt>`), keeps at most QUOTA VMs alive,
and reads what changed since its last look (one instances list and one incremental events
list per poll, whatever the task count). A VM that vanished with a claimed, unfinished attempt
makes that attempt `preempted` (if Google recorded a preemption) or `lost`. It decides nothing
about retries: the scheduler does.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from parallel_engine.config import Config
from parallel_engine.errors import BackendError, ParallelEngineError
from parallel_engine.gce_vm import (
    RUN_LABEL,
    bulk_body,
    instance_body,
    instance_properties,
    to_bulk,
    to_instance,
)
from parallel_engine.google_clients import call_google, compute_client
from parallel_engine.model import AttemptState, AttemptStatus, Task
from parallel_engine.names import gce_name, label_value
from parallel_engine.store import RunStore
from parallel_engine.worker import encode_argv

ScriptFor = Callable[[tuple[tuple[str, int], ...] | None], str]
Event = Callable[[str, Any], None]

CAPACITY_MARKERS = ("QUOTA_EXCEEDED", "Quota '", "ZONE_RESOURCE_POOL_EXHAUSTED", "does not have enough resources")
ALIVE = ("PROVISIONING", "STAGING", "RUNNING")
ORCHESTRATOR = "orchestrator"
EVENT_LOOKBACK_S = 60.0


class CapacityRefused(BackendError):
    """Quota or zone capacity said no: wait for capacity (or try a fallback zone), not a failure."""


class Compute:
    """The few Compute verbs the backend needs; every call retried, zone operations waited on by hand."""

    def __init__(self, config: Config) -> None:
        assert config.project_id is not None
        self.project = config.project_id
        self.instances = compute_client(config, "InstancesClient")
        self.operations = compute_client(config, "ZoneOperationsClient")

    def _wait(self, zone: str, operation: Any, timeout: float = 600) -> None:
        from google.cloud import compute_v1

        deadline = time.monotonic() + timeout
        while operation.status != compute_v1.Operation.Status.DONE:
            if time.monotonic() > deadline:
                raise BackendError(f"Compute operation {operation.name} not done after {timeout:g} s")
            operation = call_google(self.operations.wait, project=self.project, zone=zone, operation=operation.name)
        errors = list(operation.error.errors) if operation.error else []
        if errors:
            message = "; ".join(f"{e.code}: {e.message}" for e in errors)
            if any(marker in message for marker in CAPACITY_MARKERS):
                raise CapacityRefused(message)
            raise BackendError(f"Compute refused the request: {message}")

    def _mutate(self, zone: str, func: Callable[..., Any], request: Any) -> None:
        try:
            operation = call_google(func, request=request)
        except BackendError as exc:
            if any(marker in str(exc) for marker in CAPACITY_MARKERS):
                raise CapacityRefused(str(exc)) from exc
            raise
        self._wait(zone, operation)

    def insert(self, zone: str, body: dict[str, Any]) -> None:
        """Create one VM. One `requestId` per logical call, the same on every retry: a retry of a
        create whose answer was lost gets the first operation back instead of a second VM (or a 409).
        A 409 anyway (the id forgotten) is success when the VM is this run's: it is the one we asked for."""
        from google.api_core.exceptions import Conflict
        from google.cloud import compute_v1

        request = compute_v1.InsertInstanceRequest(
            project=self.project, zone=zone, instance_resource=to_instance(body), request_id=str(uuid.uuid4())
        )
        try:
            self._mutate(zone, self.instances.insert, request)
        except BackendError as exc:
            if not isinstance(exc.__cause__, Conflict) or not self._is_ours(zone, body):
                raise

    def _is_ours(self, zone: str, body: dict[str, Any]) -> bool:
        from google.api_core.exceptions import NotFound

        try:
            vm = call_google(self.instances.get, project=self.project, zone=zone, instance=body["name"])
        except BackendError as exc:
            if isinstance(exc.__cause__, NotFound):
                return False
            raise
        return bool(vm.labels.get(RUN_LABEL)) and vm.labels.get(RUN_LABEL) == body["labels"][RUN_LABEL]

    def bulk_insert(self, zone: str, body: dict[str, Any]) -> None:
        """Create identical VMs in one call; its `requestId` makes a retried call one batch, not two."""
        from google.cloud import compute_v1

        request = compute_v1.BulkInsertInstanceRequest(
            project=self.project, zone=zone, bulk_insert_instance_resource_resource=to_bulk(body),
            request_id=str(uuid.uuid4()),
        )
        self._mutate(zone, self.instances.bulk_insert, request)

    def delete(self, zone: str, name: str) -> None:
        from google.api_core.exceptions import NotFound
        from google.cloud import compute_v1

        request = compute_v1.DeleteInstanceRequest(
            project=self.project, zone=zone, instance=name, request_id=str(uuid.uuid4())
        )
        try:
            self._mutate(zone, self.instances.delete, request)
        except BackendError as exc:
            if not isinstance(exc.__cause__, NotFound) and "not found" not in str(exc).lower():
                raise

    def list_run(self, zone: str, run_id: str) -> dict[str, str]:
        """{name: status} of the run's VMs in `zone`: one list call (paged by the client)."""
        from google.cloud import compute_v1

        request = compute_v1.ListInstancesRequest(
            project=self.project, zone=zone, filter=f'labels.{RUN_LABEL} = "{run_id}"'
        )
        return {vm.name: vm.status for vm in call_google(self.instances.list, request=request)}

    def preempted(self, zone: str) -> set[str]:
        """Names of VMs in `zone` that Google recorded as preempted."""
        from google.cloud import compute_v1

        request = compute_v1.ListZoneOperationsRequest(
            project=self.project, zone=zone, filter='operationType="compute.instances.preempted"'
        )
        return {op.target_link.rsplit("/", 1)[-1] for op in call_google(self.operations.list, request=request)}


def delete_run_vms(compute: Compute, zones: list[str], run_id: str, timeout: float = 600) -> int:
    """Delete every VM labelled with the run, concurrently, then check none is left. Returns how many."""
    deleted = 0
    deadline = time.monotonic() + timeout
    while True:
        found = [(zone, name) for zone in zones for name in compute.list_run(zone, run_id)]
        if not found:
            return deleted
        if time.monotonic() > deadline:
            left = ", ".join(name for _, name in found)
            raise BackendError(f"VMs of run {run_id} still exist after {timeout:g} s: {left}",
                               hint=f"run `parallel-engine down {run_id}` again, or delete them in the console")
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(lambda item: compute.delete(*item), found))
        deleted += len(found)


@dataclass
class GcePool:
    """Workers on Compute Engine for one run; the scheduler's `Pool`."""

    config: Config
    store: RunStore
    run_id: str
    compute: Compute
    script_for: ScriptFor
    on_event: Event
    info: Callable[[str], None]
    quota: int
    _open: dict[tuple[str, int], Task] = field(default_factory=dict)
    _pending: deque[tuple[str, int]] = field(default_factory=deque)  # one-VM-per-task attempts without a VM
    _vm_attempt: dict[str, tuple[str, int]] = field(default_factory=dict)
    _done_at: dict[str, float] = field(default_factory=dict)  # one-task VMs whose attempt ended
    _seen: dict[str, str] = field(default_factory=dict)  # VM → zone, every VM ever listed or created
    _newest_stamp: float = 0.0
    _handled_events: set[str] = field(default_factory=set)
    _infra: Counter[str] = field(default_factory=Counter)
    _capacity_until: float = 0.0
    _zone_index: int = 0
    _batch: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _torn_down: bool = False

    @property
    def zones(self) -> list[str]:
        assert self.config.zone is not None
        return [self.config.zone, *self.config.fallback_zones]

    @property
    def per_task(self) -> bool:
        return self.config.tasks_per_vm == 1

    # -- the scheduler's Pool -----------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="gce-monitor", daemon=True)
        self._thread.start()

    def submit(self, task: Task, attempt: int) -> None:
        if attempt == 1:
            kind = "command" if task.command is not None else "argv"
            items = task.command if task.command is not None else task.argv
            self.store.blobs.write(f"runs/{self.run_id}/{kind}/{task.id}", encode_argv(items))
        self.store.blobs.create(f"runs/{self.run_id}/open/{task.id}.{attempt}", b"")
        with self._lock:
            self._open[(task.id, attempt)] = task
            if self.per_task:
                self._pending.append((task.id, attempt))

    def cancel(self) -> None:
        self._stop.set()
        self._teardown()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._teardown()

    # -- the monitor --------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._poll()
            except Exception as exc:  # noqa: BLE001 - handed to the scheduler, which stops the run
                self.on_event("fatal", exc if isinstance(exc, ParallelEngineError) else BackendError(f"gce monitor: {exc!r}"))
                return
            self._stop.wait(self.config.poll_interval)

    def _poll(self) -> None:
        vms: dict[str, str] = {}
        for zone in self.zones[: self._zone_index + 1]:
            for name, status in self.compute.list_run(zone, self.run_id).items():
                vms[name] = status
                self._seen.setdefault(name, zone)
        self._read_events()
        gone = [name for name in self._seen if vms.get(name, "GONE") not in ALIVE]
        if gone:
            self._settle_gone(gone)
        for name in gone:
            self._seen.pop(name, None)
            self._done_at.pop(name, None)
        self._delete_lingering(vms)
        with self._lock:
            nothing_open = not self._open
        if nothing_open:
            return
        alive = sum(1 for status in vms.values() if status in ALIVE)
        self._create_workers(alive)

    def _delete_lingering(self, vms: dict[str, str]) -> None:
        """A one-task VM still up well after its attempt ended did not delete itself: delete it."""
        grace = max(10 * self.config.poll_interval, 2 * self.config.heartbeat)
        now = time.monotonic()
        for vm, done_at in list(self._done_at.items()):
            if vms.get(vm) in ALIVE and now - done_at > grace:
                self.info(f"deleting {vm}: its work is done but it did not delete itself")
                self.compute.delete(self._seen[vm], vm)
                del self._done_at[vm]

    def _read_events(self) -> None:
        """Events since the last look. Workers stamp events with their own clocks and upload them
        at their own pace, so one stamped earlier can land after one we already read: each look
        starts EVENT_LOOKBACK_S before the newest stamp seen and skips the keys already handled."""
        prefix = f"runs/{self.run_id}/events/"
        start = f"{prefix}{max(0.0, self._newest_stamp - EVENT_LOOKBACK_S):017.6f}" if self._newest_stamp else ""
        for key in self.store.events_after(self.run_id, start):
            if key in self._handled_events:
                continue
            self._handled_events.add(key)
            name = key[len(prefix):]
            stamp, task_attempt = name[:17], name[18:]  # "<17-char stamp>-<task>.<attempt>"
            self._newest_stamp = max(self._newest_stamp, float(stamp))
            task_id, _, number = task_attempt.rpartition(".")
            status = self.store.read_status(self.run_id, task_id, int(number))
            if status is not None:
                self._finished(status)
        horizon = f"{prefix}{max(0.0, self._newest_stamp - EVENT_LOOKBACK_S):017.6f}"
        self._handled_events = {key for key in self._handled_events if key >= horizon}

    def _finished(self, status: AttemptStatus) -> None:
        key = (status.task_id, status.attempt)
        with self._lock:
            if self._open.pop(key, None) is None:
                return  # already seen
            for vm, item in self._vm_attempt.items():
                if item == key:
                    self._done_at[vm] = time.monotonic()
        self.store.blobs.delete(f"runs/{self.run_id}/open/{status.task_id}.{status.attempt}")
        if status.state is AttemptState.INFRA:
            self._infra[status.reason] += 1
            if self._infra[status.reason] >= self.config.infra_failure_limit:
                raise BackendError(
                    f"stopping early: {self._infra[status.reason]} attempts failed the same way before "
                    f"starting: {status.reason}",
                    hint="fix the image or the VM settings (see `parallel-engine logs`), then run again",
                )
        self.on_event("finished", status)

    def _settle_gone(self, gone: list[str]) -> None:
        """Attempts claimed by vanished VMs that wrote no record end as preempted or lost."""
        preempted: set[str] = set()
        for zone in {self._seen[name] for name in gone}:
            preempted |= self.compute.preempted(zone)
        with self._lock:
            candidates = list(self._open)
            vm_attempt = dict(self._vm_attempt)
        for task_id, attempt in candidates:
            holder = (self.store.blobs.read(f"runs/{self.run_id}/claims/{task_id}.{attempt}") or b"").decode()
            owner = next((vm for vm in gone if vm_attempt.get(vm) == (task_id, attempt)), None)
            if holder in gone:
                vm = holder
            elif not holder and owner is not None and self.store.claim(self.run_id, task_id, attempt, ORCHESTRATOR):
                vm = owner  # its VM died before claiming: nobody may run this attempt now
            else:
                continue
            finished = self.store.read_status(self.run_id, task_id, attempt)
            if finished is not None:  # it did finish: take the record now, whatever its event does
                self._finished(finished)
                continue
            state = AttemptState.PREEMPTED if vm in preempted else AttemptState.LOST
            reason = "VM preempted" if vm in preempted else f"VM {vm} went away without recording the attempt"
            status = AttemptStatus(task_id, attempt, state, None, None, time.time(), vm, reason)
            self.store.write_status(self.run_id, status)
            self.store.add_event(self.run_id, status)
        for vm in gone:
            with self._lock:
                self._vm_attempt.pop(vm, None)

    def _create_workers(self, alive: int) -> None:
        if time.monotonic() < self._capacity_until:
            return
        zone = self.zones[self._zone_index]
        try:
            if self.per_task:
                self._create_per_task(zone, alive)
            else:
                self._create_reuse(zone, alive)
        except CapacityRefused as exc:
            if self._zone_index + 1 < len(self.zones):
                self._zone_index += 1
                self.info(f"queued (quota): {zone} refused ({exc.message}); trying {self.zones[self._zone_index]}")
            else:
                self._capacity_until = time.monotonic() + max(5 * self.config.poll_interval, 1.0)
                self.info(f"queued (quota): waiting for capacity ({exc.message})")

    def _create_reuse(self, zone: str, alive: int) -> None:
        with self._lock:
            wanted = min(self.quota, len(self._open)) - alive
        if wanted <= 0:
            return
        self._batch += 1
        properties = instance_properties(self.config, zone, self.script_for(None), self.run_id, "reuse")
        pattern = gce_name("pe", self.run_id, f"b{self._batch}") + "-###"
        self.compute.bulk_insert(zone, bulk_body(properties, pattern, wanted))
        self.info(f"started {wanted} worker VM(s) in {zone}")

    def _create_per_task(self, zone: str, alive: int) -> None:
        with self._lock:
            room = max(0, self.quota - alive)
            batch = [self._pending.popleft() for _ in range(min(room, len(self._pending)))]
        if not batch:
            return

        def one(item: tuple[str, int]) -> tuple[tuple[str, int], BaseException | None]:
            task_id, attempt = item
            name = gce_name("pe", self.run_id, task_id, str(attempt))
            properties = instance_properties(self.config, zone, self.script_for((item,)), self.run_id, label_value(task_id))
            try:
                self.compute.insert(zone, instance_body(properties, name, zone))
            except BackendError as exc:
                return item, exc
            with self._lock:
                self._vm_attempt[name] = item
                self._seen[name] = zone
            return item, None

        # Concurrent inserts: never insert-then-wait one VM at a time.
        with ThreadPoolExecutor(max_workers=min(16, len(batch))) as pool:
            results = list(pool.map(one, batch))
        refused = [item for item, exc in results if isinstance(exc, CapacityRefused)]
        with self._lock:
            self._pending.extendleft(reversed(refused))
        for _, exc in results:
            if exc is not None and not isinstance(exc, CapacityRefused):
                raise exc
        if refused:
            raise CapacityRefused(str(next(exc for _, exc in results if exc is not None)))

    def _teardown(self) -> None:
        with self._lock:
            if self._torn_down:
                return
            self._torn_down = True
        deleted = delete_run_vms(self.compute, self.zones, self.run_id)
        if deleted:
            self.info(f"deleted {deleted} VM(s) of run {self.run_id}")
