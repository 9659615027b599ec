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
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from typing import Any

from parallel_engine.config import Config
from parallel_engine.backends.gce.credentials import google_project
from parallel_engine.errors import AccessError, BackendError, ParallelEngineError
from parallel_engine.backends.gce.vm import (
    RUN_LABEL,
    bulk_body,
    instance_body,
    instance_properties,
    to_bulk,
    to_instance,
)
from parallel_engine.backends.gce.clients import call_google, compute_client
from parallel_engine.model import AttemptState, AttemptStatus, Task
from parallel_engine.names import gce_name, label_value
from parallel_engine.results import write_waiting
from parallel_engine.store import RunStore, parse_attempt
from parallel_engine.backends.gce.startup import encode_argv

ScriptFor = Callable[[tuple[tuple[str, int], ...] | None], str]
Event = Callable[[str, Any], None]

CAPACITY_MARKERS = ("QUOTA_EXCEEDED", "Quota '", "ZONE_RESOURCE_POOL_EXHAUSTED", "does not have enough resources")
#: A VM in these states may still write its attempt's record: STOPPING is the soft shutdown (a
#: preempted worker records `preempted` then), so it is settled only once gone or TERMINATED.
ALIVE = ("PROVISIONING", "STAGING", "RUNNING", "STOPPING", "SUSPENDING", "REPAIRING")
ORCHESTRATOR = "orchestrator"
EVENT_LOOKBACK_S = 60.0
PUBLISHERS = 16  # concurrent uploads of argv and open markers
INSERTERS = 32  # concurrent one-VM-per-task inserts (each waits for its zone operation)


class CapacityRefused(BackendError):
    """Quota or zone capacity said no: wait for capacity (or try a fallback zone), not a failure."""


class Compute:
    """The few Compute verbs the backend needs; every call retried, zone operations waited on by hand."""

    def __init__(self, config: Config) -> None:
        self.project = google_project(config)
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
        return vm.labels.get(RUN_LABEL) == body["labels"][RUN_LABEL]  # never empty: the run id

    def bulk_insert(self, zone: str, body: dict[str, Any]) -> None:
        """Create identical VMs in one call; its `requestId` makes a retried call one batch, not two."""
        from google.cloud import compute_v1

        request = compute_v1.BulkInsertInstanceRequest(
            project=self.project, zone=zone, bulk_insert_instance_resource_resource=to_bulk(body),
            request_id=str(uuid.uuid4()),
        )
        self._mutate(zone, self.instances.bulk_insert, request)

    def delete(self, zone: str, name: str, wait: bool = True) -> None:
        """Delete a VM (already gone is fine). `wait=False` returns once Google accepted it: the
        monitor sees the VM go on a later poll instead of blocking on it now."""
        from google.api_core.exceptions import NotFound
        from google.cloud import compute_v1

        request = compute_v1.DeleteInstanceRequest(
            project=self.project, zone=zone, instance=name, request_id=str(uuid.uuid4())
        )
        try:
            if wait:
                self._mutate(zone, self.instances.delete, request)
            else:
                call_google(self.instances.delete, request=request)
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

    def list_run_everywhere(self, run_id: str) -> list[tuple[str, str]]:
        """(zone, name) of the run's VMs in every zone of the project: one aggregatedList (paged by
        the client), so `down` finds VMs in zones this machine's config does not name."""
        from google.cloud import compute_v1

        request = compute_v1.AggregatedListInstancesRequest(
            project=self.project, filter=f'labels.{RUN_LABEL} = "{run_id}"'
        )
        found = []
        for scope, listed in call_google(self.instances.aggregated_list, request=request):
            zone = scope.rsplit("/", 1)[-1]
            found += [(zone, vm.name) for vm in listed.instances]
        return found

    def preempted(self, zone: str) -> set[str]:
        """Names of VMs in `zone` that Google recorded as preempted."""
        from google.cloud import compute_v1

        request = compute_v1.ListZoneOperationsRequest(
            project=self.project, zone=zone, filter='operationType="compute.instances.preempted"'
        )
        return {op.target_link.rsplit("/", 1)[-1] for op in call_google(self.operations.list, request=request)}


def running_among(store: RunStore, run_id: str, candidates: Iterable[tuple[str, int]]) -> list[AttemptStatus]:
    """The candidates that were claimed and have no record, as `running` with their holder as the
    worker. One listing of `claims/`; only a claimed candidate's record (and then its claim) is
    read, so cancelling a large run costs its running attempts, not its open ones."""
    wanted = set(candidates)
    running = []
    for task_id, attempt in store.claimed(run_id):
        if (task_id, attempt) not in wanted or store.read_status(run_id, task_id, attempt) is not None:
            continue
        holder = store.holder(run_id, task_id, attempt)
        if holder is not None:
            running.append(AttemptStatus(task_id, attempt, AttemptState.RUNNING, worker=holder))
    return running


def cancel_running(store: RunStore, run_id: str, running: Iterable[AttemptStatus]) -> list[AttemptStatus]:
    """Record `cancelled` (and its event) for each attempt that was running (`running_among`, or
    `RunStore.attempts`): once the run's VMs are gone nobody else will, and `status` would say
    running forever. Writes only: the caller has read what is running."""
    cancelled = []
    for was in running:
        status = AttemptStatus(was.task_id, was.attempt, AttemptState.CANCELLED, None, None, time.time(),
                               was.worker, "the run was cancelled")
        store.write_status(run_id, status)
        store.add_event(run_id, status)
        cancelled.append(status)
    return cancelled


def delete_run_vms(compute: Compute, run_id: str, timeout: float = 600) -> int:
    """Delete every VM labelled with the run, in any zone, concurrently, then check none is left.
    Returns how many."""
    deleted = 0
    deadline = time.monotonic() + timeout
    while True:
        found = compute.list_run_everywhere(run_id)
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
class WorkerSeen:
    """What the monitor knows of one VM's record (`runs/<run>/workers/<vm>`)."""

    generation: int
    md5: str
    changed_at: float  # monotonic time the generation was first seen
    attempt: tuple[str, int] | None = None  # the attempt the VM claimed last (reuse mode)


def stale_after(config: Config) -> float:
    """A RUNNING VM whose record did not change for this long has a dead or hung worker."""
    return 3 * config.heartbeat


def boot_timeout(config: Config) -> float:
    """A RUNNING VM with no record after this long never got its worker going (the prelude died,
    or the VM cannot write the bucket): an `infra` failure."""
    return 5 * config.heartbeat + 10 * config.poll_interval


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
    _workers: dict[str, WorkerSeen] = field(default_factory=dict)  # VM → its record, as last listed
    _running_since: dict[str, float] = field(default_factory=dict)
    _doomed: dict[str, str] = field(default_factory=dict)  # VMs we deleted → why (the lost reason)
    _settled: set[str] = field(default_factory=set)  # VMs gone (or TERMINATED) and settled: names never return
    _newest_stamp: float = 0.0
    _handled_events: set[str] = field(default_factory=set)
    _infra: Counter[str] = field(default_factory=Counter)
    _zone_rest: dict[str, float] = field(default_factory=dict)  # zone → when it may be asked again
    _listed_zones: set[str] = field(default_factory=set)  # zones VMs were asked for in (and ZONE)
    _waiting: str | None = None  # why the run waits for capacity, as last recorded
    _batch: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _torn_down: bool = False
    _writer: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=PUBLISHERS, thread_name_prefix="gce-publish"))
    _publishing: set[Future[None]] = field(default_factory=set)
    _inserter: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=INSERTERS, thread_name_prefix="gce-insert"))
    _inflight: set[str] = field(default_factory=set)  # one-task VMs asked for, insert not answered yet
    _background_error: BaseException | None = None

    @property
    def zones(self) -> list[str]:
        assert self.config.zone is not None
        return [self.config.zone, *self.config.fallback_zones]

    @property
    def per_task(self) -> bool:
        return self.config.tasks_per_vm == 1

    def _key(self, what: str, name: str = "") -> str:
        return f"runs/{self.run_id}/{what}/{name}"

    # -- the scheduler's Pool -----------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="gce-monitor", daemon=True)
        self._thread.start()

    def submit(self, task: Task, attempt: int) -> None:
        """Make an attempt claimable. Its objects are written in the background, many at once
        (two sequential uploads per task would make a 100,000-task start take hours); a one-task
        VM is asked for only once its argv is in the bucket. A write that fails stops the run."""
        with self._lock:
            self._open[(task.id, attempt)] = task
            future = self._writer.submit(self._publish, task, attempt)
            self._publishing.add(future)
        future.add_done_callback(self._published)

    def _publish(self, task: Task, attempt: int) -> None:
        if attempt == 1:
            kind = "command" if task.command is not None else "argv"
            items = task.command if task.command is not None else task.argv
            self.store.blobs.write(self._key(kind, task.id), encode_argv(items))
        self.store.blobs.create(self._key("open", f"{task.id}.{attempt}"), b"")
        if self.per_task:
            with self._lock:
                self._pending.append((task.id, attempt))

    def _published(self, future: Future[None]) -> None:
        with self._lock:
            self._publishing.discard(future)
            if not future.cancelled() and future.exception() is not None and self._background_error is None:
                self._background_error = future.exception()

    def wait_published(self) -> None:
        """Block until every attempt submitted so far is in the bucket."""
        with self._lock:
            outstanding = list(self._publishing)
        futures_wait(outstanding)

    def cancel(self) -> None:
        """Stop: the monitor first (so it starts no VM after the teardown), every VM deleted, then
        each claimed attempt without a record is recorded `cancelled` (no VM can write one now)."""
        self.close()
        with self._lock:
            candidates = list(self._open)
        for status in cancel_running(self.store, self.run_id, running_among(self.store, self.run_id, candidates)):
            self.on_event("finished", status)

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
        """One look: the run's VMs, the events since the last look, the workers' records; then
        settle what vanished, deal with dead or hung workers, and start VMs for what is open."""
        if self._background_error is not None:
            raise self._background_error
        with self._lock:  # only VMs known before the listing can be missing from it (inserts run meanwhile)
            known = list(self._seen)
        vms: dict[str, str] = {}
        for zone in [z for z in self.zones if z == self.config.zone or z in self._listed_zones]:
            for name, status in self.compute.list_run(zone, self.run_id).items():
                vms[name] = status
                if name not in self._settled:
                    self._seen.setdefault(name, zone)
        self._read_events()
        self._read_workers()
        gone = [name for name in known if name in self._seen and vms.get(name, "GONE") not in ALIVE]
        if gone:
            self._settle_gone(gone, vms)
        self._check_workers(vms)
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
                self._doom(vm, f"VM {vm} was deleted after its work was done")
                del self._done_at[vm]

    def _read_events(self) -> None:
        """Events since the last look. Workers stamp events with their own clocks and upload them
        at their own pace, so one stamped earlier can land after one we already read: each look
        starts EVENT_LOOKBACK_S before the newest stamp seen and skips the keys already handled."""
        prefix = self._key("events")
        start = f"{prefix}{max(0.0, self._newest_stamp - EVENT_LOOKBACK_S):017.6f}" if self._newest_stamp else ""
        for key in self.store.events_after(self.run_id, start):
            if key in self._handled_events:
                continue
            self._handled_events.add(key)
            name = key[len(prefix):]
            stamp, task_attempt = name[:17], name[18:]  # "<17-char stamp>-<task>.<attempt>"
            self._newest_stamp = max(self._newest_stamp, float(stamp))
            parsed = parse_attempt(task_attempt)
            if parsed is None:
                continue
            status = self.store.read_status(self.run_id, *parsed)
            if status is not None:
                self._finished(status)
        horizon = f"{prefix}{max(0.0, self._newest_stamp - EVENT_LOOKBACK_S):017.6f}"
        self._handled_events = {key for key in self._handled_events if key >= horizon}

    def _read_workers(self) -> None:
        """The workers' records in one listing: a new generation is a heartbeat; a new md5 is a
        new claim (reuse mode reads that record: which attempt this VM may hold)."""
        now = time.monotonic()
        for vm, (generation, md5) in self.store.worker_records(self.run_id).items():
            seen = self._workers.get(vm)
            if seen is not None and seen.generation == generation:
                continue
            attempt = seen.attempt if seen is not None else None
            if not self.per_task and (seen is None or seen.md5 != md5):
                record = self.store.blobs.read(self._key("workers", vm)) or b""
                attempt = parse_attempt(record.decode(errors="replace").strip())
            self._workers[vm] = WorkerSeen(generation, md5, now, attempt)

    def _finished(self, status: AttemptStatus) -> None:
        key = (status.task_id, status.attempt)
        with self._lock:
            if self._open.pop(key, None) is None:
                return  # already seen
            for vm, item in self._vm_attempt.items():
                if item == key:
                    self._done_at[vm] = time.monotonic()
        self.store.blobs.delete(self._key("open", f"{status.task_id}.{status.attempt}"))
        if status.state is AttemptState.INFRA:
            self._count_infra(status.reason)
        self.on_event("finished", status)

    def _count_infra(self, reason: str, vm: bool = False) -> None:
        """One more identical infra failure: of an attempt, or (`vm`) of a reuse VM whose worker
        never reported, which no attempt carries. INFRA_FAILURE_LIMIT of them stop the run."""
        self._infra[reason] += 1
        count = self._infra[reason]
        if count < self.config.infra_failure_limit:
            return
        if vm:
            raise BackendError(
                f"stopping early: {count} VMs failed the same way before running any attempt: {reason}",
                hint="fix the VM settings (service account, SCOPES, network), then run again",
            )
        raise BackendError(
            f"stopping early: {count} attempts failed the same way before starting: {reason}",
            hint="fix the image or the VM settings (see `parallel-engine logs`), then run again",
        )

    def _held_by(self, vm: str) -> tuple[str, int] | None:
        """The attempt `vm` may hold: its rendered one, or the one its record names."""
        if self.per_task:
            return self._vm_attempt.get(vm)
        seen = self._workers.get(vm)
        return seen.attempt if seen is not None else None

    def _settle_gone(self, gone: list[str], vms: dict[str, str]) -> None:
        """The attempt each vanished VM held, if it is still open, ends with the VM's own record
        when one was written; otherwise as preempted (Google recorded a preemption) or lost.
        Only that VM's attempt is read: the cost is per vanished VM, not per task. Preemptions
        are listed only in zones where a vanished VM still held an open attempt: a one-task VM
        that finished and deleted itself (the common case) needs no Compute call."""
        with self._lock:
            holding = {vm: item for vm in gone if (item := self._held_by(vm)) is not None and item in self._open}
        preempted: set[str] = set()
        for zone in {self._seen[vm] for vm in holding}:
            preempted |= self.compute.preempted(zone)
        for vm in gone:
            item = holding.get(vm)
            with self._lock:
                still_open = item in self._open
            if item is not None and still_open:
                self._settle_attempt(vm, *item, preempted=vm in preempted)
            if vm in vms and vm not in self._doomed:
                self.compute.delete(self._seen[vm], vm, wait=False)  # TERMINATED: not ours to keep
            self._forget(vm)
            self._settled.add(vm)

    def _settle_attempt(self, vm: str, task_id: str, attempt: int, preempted: bool) -> None:
        holder = (self.store.blobs.read(self._key("claims", f"{task_id}.{attempt}")) or b"").decode()
        if holder != vm:
            if holder or not self.per_task or not self.store.claim(self.run_id, task_id, attempt, ORCHESTRATOR):
                return  # someone else's, or (reuse) never claimed: still claimable
            # A one-task VM died before claiming: the orchestrator holds it now, so no late
            # worker can start it.
        finished = self.store.read_status(self.run_id, task_id, attempt)
        if finished is not None:  # it did finish: take the record now, whatever its event does
            self._finished(finished)
            return
        if preempted:
            state, reason = AttemptState.PREEMPTED, "VM preempted"
        else:
            state, reason = AttemptState.LOST, self._doomed.get(vm, f"VM {vm} went away without recording the attempt")
        self._record(AttemptStatus(task_id, attempt, state, None, None, time.time(), vm, reason))

    def _record(self, status: AttemptStatus) -> None:
        """An attempt record the orchestrator writes; the scheduler hears of it through its event."""
        self.store.write_status(self.run_id, status)
        self.store.add_event(self.run_id, status)

    def _forget(self, vm: str) -> None:
        self._seen.pop(vm, None)
        self._done_at.pop(vm, None)
        self._running_since.pop(vm, None)
        self._doomed.pop(vm, None)
        if self._workers.pop(vm, None) is not None:
            self.store.blobs.delete(self._key("workers", vm))
        with self._lock:
            self._vm_attempt.pop(vm, None)

    def _check_workers(self, vms: dict[str, str]) -> None:
        """RUNNING VMs whose worker is dead or hung (its record stopped changing), or never came
        up (no record long after boot), are deleted; their attempts settle once they are gone."""
        now = time.monotonic()
        for vm, status in vms.items():
            if status != "RUNNING" or vm in self._doomed or vm in self._done_at or vm not in self._seen:
                continue  # (a one-task VM whose work is done: `_delete_lingering` deals with it)
            since = self._running_since.setdefault(vm, now)
            seen = self._workers.get(vm)
            if seen is None:
                if now - since > boot_timeout(self.config):
                    self._never_reported(vm)
            elif now - seen.changed_at > stale_after(self.config):
                self.info(f"deleting {vm}: its worker's heartbeat stopped")
                self._doom(vm, f"the worker on VM {vm} stopped its heartbeat for {stale_after(self.config):g} s")

    def _never_reported(self, vm: str) -> None:
        reason = (f"the VM's worker never reported within {boot_timeout(self.config):g} s of boot "
                  "(its startup script failed, or the VM cannot write the bucket: see its serial console)")
        item = self._held_by(vm)  # reuse: None, the VM has no record
        if item is not None:
            task_id, attempt = item
            if not self.store.claim(self.run_id, task_id, attempt, ORCHESTRATOR):
                return  # the worker just claimed it: it is up after all
            self._record(AttemptStatus(task_id, attempt, AttemptState.INFRA, None, None, time.time(), vm, reason))
        self.info(f"deleting {vm}: {reason}")
        self._doom(vm, reason)
        if item is None:
            self._count_infra(reason, vm=True)  # no attempt carries it (reuse): count the VM

    def _doom(self, vm: str, reason: str) -> None:
        self._doomed[vm] = reason
        self.compute.delete(self._seen[vm], vm, wait=False)

    def _create_workers(self, alive: int) -> None:
        """Ask for VMs in the first zone, in order (ZONE, then FALLBACK_ZONES), that is not resting
        after a capacity refusal: so the run returns to ZONE as soon as it has capacity again."""
        now = time.monotonic()
        zone = next((z for z in self.zones if self._zone_rest.get(z, 0.0) <= now), None)
        if zone is None:
            return  # every zone refused a moment ago: queued (quota)
        self._listed_zones.add(zone)
        if self.per_task:
            self._create_per_task(zone, alive)
            return
        try:
            created = self._create_reuse(zone, alive)
        except CapacityRefused as exc:
            self._refused(zone, exc)
            return
        if created:
            self._note_capacity(None)

    def _refused(self, zone: str, exc: CapacityRefused) -> None:
        now = time.monotonic()
        with self._lock:
            self._zone_rest[zone] = now + max(5 * self.config.poll_interval, 1.0)
            after = next((z for z in self.zones if self._zone_rest.get(z, 0.0) <= now), None)
        waiting = f"{zone} refused ({exc.message}); " + (f"trying {after}" if after else "waiting for capacity")
        self.info(f"queued (quota): {waiting}")
        self._note_capacity(f"queued (quota): {waiting}")

    def _note_capacity(self, waiting: str | None) -> None:
        """`runs/<run>/capacity.json`: whether the run waits for capacity, for `status` anywhere.
        Written only when that changes."""
        with self._lock:
            if waiting == self._waiting:
                return
            self._waiting = waiting
        write_waiting(self.store, self.run_id, waiting, time.time())

    def _create_reuse(self, zone: str, alive: int) -> int:
        with self._lock:
            wanted = min(self.quota, len(self._open)) - alive
        if wanted <= 0:
            return 0
        self._batch += 1
        properties = instance_properties(self.config, zone, self.script_for(None), self.run_id, "reuse")
        pattern = gce_name("pe", self.run_id, f"b{self._batch}") + "-###"
        self.compute.bulk_insert(zone, bulk_body(properties, pattern, wanted))
        self.info(f"started {wanted} worker VM(s) in {zone}")
        return wanted

    def _create_per_task(self, zone: str, alive: int) -> None:
        """One insert per pending attempt, as many as the quota has room for, fired from a thread
        pool without waiting: the monitor keeps polling (and starts more) while they are in flight.
        VMs asked for but not yet listed count against the quota."""
        with self._lock:
            unlisted = sum(1 for name in self._inflight if name not in self._seen)
            room = max(0, self.quota - alive - unlisted)
            batch = [self._pending.popleft() for _ in range(min(room, len(self._pending)))]
            names = [gce_name("pe", self.run_id, task_id, str(attempt)) for task_id, attempt in batch]
            for name, item in zip(names, batch, strict=True):
                self._inflight.add(name)
                self._vm_attempt[name] = item  # before the insert: a VM that dies young still settles it
        for name, item in zip(names, batch, strict=True):
            self._inserter.submit(self._insert_one, zone, name, item)

    def _insert_one(self, zone: str, name: str, item: tuple[str, int]) -> None:
        properties = instance_properties(self.config, zone, self.script_for((item,)), self.run_id, label_value(item[0]))
        try:
            self.compute.insert(zone, instance_body(properties, name, zone))
        except CapacityRefused as exc:
            with self._lock:
                self._inflight.discard(name)
                self._vm_attempt.pop(name, None)
                self._pending.appendleft(item)
            self._refused(zone, exc)
            return
        except BaseException as exc:  # noqa: BLE001 - the monitor raises it: the run stops
            with self._lock:
                self._inflight.discard(name)
                self._background_error = self._background_error or exc
            return
        with self._lock:
            self._inflight.discard(name)
            self._seen.setdefault(name, zone)
        self._note_capacity(None)

    def _teardown(self) -> None:
        with self._lock:
            if self._torn_down:
                return
            self._torn_down = True
        self._writer.shutdown(wait=True, cancel_futures=True)
        self._inserter.shutdown(wait=True, cancel_futures=True)  # no insert lands after the teardown
        try:
            deleted = delete_run_vms(self.compute, self.run_id)
        except AccessError as exc:  # e.g. the login was revoked mid-run: say what is left, and how to end it
            raise type(exc)(
                f"{exc.message}; the VMs of run {self.run_id} could not be checked or deleted",
                hint=f"{exc.hint}; then `parallel-engine down {self.run_id}` (each VM also deletes itself "
                     f"after MAX_RUN_DURATION, {self.config.max_run_duration:g} s)",
            ) from exc
        if deleted:
            self.info(f"deleted {deleted} VM(s) of run {self.run_id}")
