"""The gce pool: workers are Compute Engine VMs that claim attempts from the run's bucket.

The pool publishes claimable attempts (`open/<task>.<attempt>`), keeps at most QUOTA VMs alive,
and reads what changed since its last look (one instances list and one incremental events
list per poll, whatever the task count). A VM that vanished with a claimed, unfinished attempt
makes that attempt `preempted` (if Google recorded a preemption) or `lost`. It reports facts
(backends/base.py: Started is never sent, a VM's claim is seen only through its end); the
scheduler decides retries and when repeated infra failures end the run.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field

from parallel_engine.backends.base import Finished, InfoFn, OnEvent, PoolFailed, WorkerFailed, verdicts_taken
from parallel_engine.backends.gce.compute import CapacityRefused, Compute, delete_run_vms
from parallel_engine.backends.gce.settings import GceSettings
from parallel_engine.backends.gce.vm import (
    batch_name_pattern,
    bulk_body,
    instance_body,
    instance_properties,
    task_vm_name,
)
from parallel_engine.config import Config
from parallel_engine.crash import crash_point
from parallel_engine.errors import AccessError, BackendError, ParallelEngineError
from parallel_engine.model import AttemptState, AttemptStatus, Task
from parallel_engine.names import label_value
from parallel_engine.protocol import EVENT_STAMP, parse_event
from parallel_engine.store import RunStore

ScriptFor = Callable[[tuple[tuple[str, int], ...] | None], str]

#: A VM in these states may still write its attempt's record: STOPPING is the soft shutdown (a
#: preempted worker records `preempted` then), so it is settled only once gone or TERMINATED.
ALIVE = ("PROVISIONING", "STAGING", "RUNNING", "STOPPING", "SUSPENDING", "REPAIRING")
ORCHESTRATOR = "orchestrator"
EVENT_LOOKBACK_S = 60.0
#: Between two polls the events alone are read this often: an attempt's end (a retry to open,
#: the run's last end) is taken in within this, not a whole POLL_INTERVAL (one cheap listing).
EVENTS_EVERY_S = 0.5
PUBLISHERS = 16  # concurrent uploads of argv and open markers
INSERTERS = 32  # concurrent one-VM-per-task inserts (each waits for its zone operation)
NEVER_REPORTED_FIX = ("fix the VM settings (service account, SCOPES, network), then run again; "
                      "if its worker is only slow to start (a slow registry), raise BOOT_TIMEOUT")


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
        store.record_end(run_id, status)
        cancelled.append(status)
    return cancelled


@dataclass
class WorkerSeen:
    """What the monitor knows of one VM's record (`runs/<run>/workers/<vm>`)."""

    generation: int
    md5: str
    changed_at: float  # monotonic time the generation was first seen
    attempt: tuple[str, int] | None = None  # the attempt the VM claimed last (reuse mode)


@dataclass
class Vm:
    """What the monitor knows of one VM of the run (or one asked for): one record per VM."""

    zone: str | None = None  # known once listed or created; None while only asked for
    attempt: tuple[str, int] | None = None  # a one-task VM's attempt: known before the VM exists
    inflight: bool = False  # a one-task VM asked for whose insert is not answered yet
    record: WorkerSeen | None = None  # its worker's record, as last listed
    running_since: float | None = None  # monotonic time it was first seen RUNNING
    done_at: float | None = None  # a one-task VM whose attempt ended (it should delete itself)
    doomed: str | None = None  # we deleted it: why (the `lost` reason of what it held)


def stale_after(config: Config) -> float:
    """A RUNNING VM whose record did not change for this long has a dead or hung worker."""
    return 3 * config.heartbeat


@dataclass
class GcePool:
    """Workers on Compute Engine for one run: the scheduler's `Pool` (backends/base.py)."""

    settings: GceSettings
    store: RunStore
    run_id: str
    compute: Compute
    script_for: ScriptFor
    on_event: OnEvent
    info: InfoFn
    quota: int
    #: resume: the attempts a dead orchestrator's VMs claimed and never recorded, with their
    #: tasks. Adopted when the pool starts: watched as if this pool had started them.
    adopted: tuple[tuple[Task, AttemptStatus], ...] = ()
    _open: dict[tuple[str, int], Task] = field(default_factory=dict)
    _pending: deque[tuple[str, int]] = field(default_factory=deque)  # one-VM-per-task attempts without a VM
    _vms: dict[str, Vm] = field(default_factory=dict)  # every VM listed, created or asked for, until settled
    _settled: set[str] = field(default_factory=set)  # VMs gone (or TERMINATED) and settled: names never return
    _newest_stamp: float = 0.0
    _handled_events: set[str] = field(default_factory=set)
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
    _background_error: BaseException | None = None

    @property
    def config(self) -> Config:
        return self.settings.config

    @property
    def per_task(self) -> bool:
        return self.settings.per_task

    def _vm(self, name: str) -> Vm:
        """The record of VM `name`, made on first sight."""
        with self._lock:
            return self._vms.setdefault(name, Vm())

    def _known(self) -> list[str]:
        """The VMs listed or created (not only asked for), not settled yet."""
        with self._lock:
            return [name for name, vm in self._vms.items() if vm.zone is not None]

    # -- the scheduler's Pool -----------------------------------------------------------
    def start(self) -> None:
        if self.adopted:
            self._adopt()
        self._thread = threading.Thread(target=self._loop, name="gce-monitor", daemon=True)
        self._thread.start()

    def _adopt(self) -> None:
        """Take over a run's VMs (resume): list them by label in every zone, so they count
        against the quota and are watched; a one-task VM is matched to its attempt by name (the
        running ones, and the open ones whose VM was booting). Each adopted attempt whose VM is
        gone ends now: with the record it wrote meanwhile, or as `lost`."""
        with self._lock:
            for task, status in self.adopted:
                self._open[(status.task_id, status.attempt)] = task
        items = [*((s.task_id, s.attempt) for _, s in self.adopted), *self.store.opened(self.run_id)]
        named = {task_vm_name(self.run_id, *item): item for item in items}
        alive: set[str] = set()
        for zone in self.settings.zones:
            for name, state in self.compute.list_run(zone, self.run_id).items():
                self._listed_zones.add(zone)
                vm = self._vm(name)
                vm.zone = zone
                if self.per_task:
                    vm.attempt = named.get(name)
                if state in ALIVE:
                    alive.add(name)
        watched = sum(1 for _, status in self.adopted if status.worker in alive)
        self.info(f"adopted {len(alive)} live VM(s) of the run, running {watched} of its attempts")
        for _, status in self.adopted:
            if status.worker in alive:
                continue
            finished = self.store.read_status(self.run_id, status.task_id, status.attempt)
            if finished is None:
                finished = AttemptStatus(status.task_id, status.attempt, AttemptState.LOST, None, None, time.time(),
                                         status.worker, f"its VM {status.worker} was gone when the run was resumed")
                self.store.record_end(self.run_id, finished)
            self._finished(finished)

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
            self.store.publish_task(self.run_id, task)
        self.store.open_attempt(self.run_id, task.id, attempt)
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
            self.on_event(Finished(status))

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._teardown()

    def check(self) -> None:
        """Nothing to check from the scheduler's thread: the monitor reports its own failure."""

    # -- the monitor --------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._poll()
                self._between_polls()
            except Exception as exc:  # noqa: BLE001 - handed to the scheduler, which stops the run
                error = exc if isinstance(exc, ParallelEngineError) else BackendError(f"gce monitor: {exc!r}")
                self.on_event(PoolFailed(error))
                return

    def _between_polls(self) -> None:
        """Until the next poll (POLL_INTERVAL), the events alone every EVENTS_EVERY_S: the VM
        listing and the workers' records keep the poll's pace."""
        next_poll = time.monotonic() + self.config.poll_interval
        while not self._stop.wait(min(EVENTS_EVERY_S, max(0.0, next_poll - time.monotonic()))):
            if time.monotonic() >= next_poll:
                return
            try:
                ends = self._new_ends()
            except Exception as exc:  # noqa: BLE001 - nothing was taken in; the poll reads again, and fails the run if it fails too
                self.info(f"reading the run's events failed ({exc!r}); the next poll reads them again")
                continue
            for status in ends:
                self._finished(status)

    def _poll(self) -> None:
        """One look: the run's VMs, the events since the last look, the workers' records; then
        settle what vanished, deal with dead or hung workers, and start VMs for what is open."""
        if self._background_error is not None:
            raise self._background_error
        known = self._known()  # only VMs known before the listing can be missing from it (inserts run meanwhile)
        vms: dict[str, str] = {}
        for zone in [z for z in self.settings.zones if z == self.settings.zone or z in self._listed_zones]:
            for name, status in self.compute.list_run(zone, self.run_id).items():
                vms[name] = status
                if name not in self._settled:
                    vm = self._vm(name)
                    vm.zone = vm.zone or zone
        self._read_events()
        self._read_workers()
        gone = [name for name in known if name in self._vms and vms.get(name, "GONE") not in ALIVE]
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
        with self._lock:
            done = [(name, vm) for name, vm in self._vms.items() if vm.done_at is not None]
        for name, vm in done:
            if vms.get(name) in ALIVE and vm.done_at is not None and now - vm.done_at > grace:
                self.info(f"deleting {name}: its work is done but it did not delete itself")
                self._doom(name, f"VM {name} was deleted after its work was done")
                vm.done_at = None

    def _read_events(self) -> None:
        for status in self._new_ends():
            self._finished(status)

    def _new_ends(self) -> list[AttemptStatus]:
        """The ends of the events since the last look. Workers stamp events with their own clocks
        and upload them at their own pace, so one stamped earlier can land after one we already
        read: each look starts EVENT_LOOKBACK_S before the newest stamp seen and skips the keys
        already handled. Only reads: the keys count as handled once all of them were read, so a
        read that fails leaves every one of them to the next look."""
        prefix = self.store.events_prefix(self.run_id)
        start = f"{prefix}{EVENT_STAMP % max(0.0, self._newest_stamp - EVENT_LOOKBACK_S)}" if self._newest_stamp else ""
        read: list[str] = []
        ends: list[AttemptStatus] = []
        newest = self._newest_stamp
        for key in self.store.events_after(self.run_id, start):
            if key in self._handled_events:
                continue
            read.append(key)
            parsed = parse_event(key[len(prefix):])
            if parsed is None:
                continue
            stamp, task_id, attempt = parsed
            newest = max(newest, stamp)
            status = self.store.read_status(self.run_id, task_id, attempt)
            if status is not None:
                ends.append(status)
        self._newest_stamp = newest
        horizon = f"{prefix}{EVENT_STAMP % max(0.0, newest - EVENT_LOOKBACK_S)}"
        self._handled_events = {key for key in (*self._handled_events, *read) if key >= horizon}
        return ends

    def _read_workers(self) -> None:
        """The workers' records in one listing: a new generation is a heartbeat; a new md5 is a
        new claim (reuse mode reads that record: which attempt this VM may hold)."""
        now = time.monotonic()
        for name, (generation, md5) in self.store.worker_records(self.run_id).items():
            vm = self._vm(name)
            seen = vm.record
            if seen is not None and seen.generation == generation:
                continue
            attempt = seen.attempt if seen is not None else None
            if not self.per_task and (seen is None or seen.md5 != md5):
                attempt = self.store.worker_attempt(self.run_id, name)
            vm.record = WorkerSeen(generation, md5, now, attempt)

    def _finished(self, status: AttemptStatus) -> None:
        key = (status.task_id, status.attempt)
        with self._lock:
            if self._open.pop(key, None) is None:
                return  # already seen
            for vm in self._vms.values():
                if vm.attempt == key:
                    vm.done_at = time.monotonic()
        crash_point("poll")  # an end seen, not yet taken in
        self.store.close_attempt(self.run_id, status.task_id, status.attempt)
        self.on_event(Finished(status))

    def _held_by(self, name: str) -> tuple[str, int] | None:
        """The attempt VM `name` may hold: its rendered one, or the one its record names."""
        vm = self._vms.get(name)
        if vm is None:
            return None
        if self.per_task:
            return vm.attempt
        return vm.record.attempt if vm.record is not None else None

    def _settle_gone(self, gone: list[str], vms: dict[str, str]) -> None:
        """The attempt each vanished VM held, if it is still open, ends with the VM's own record
        when one was written; otherwise as preempted (Google recorded a preemption) or lost.
        Only that VM's attempt is read: the cost is per vanished VM, not per task. Preemptions
        are listed only in zones where a vanished VM still held an open attempt: a one-task VM
        that finished and deleted itself (the common case) needs no Compute call."""
        with self._lock:
            holding = {name: item for name in gone if (item := self._held_by(name)) is not None and item in self._open}
            zones = {name: self._vms[name].zone for name in gone}
        preempted: set[str] = set()
        for zone in {zones[name] for name in holding}:
            if zone is not None:
                preempted |= self.compute.preempted(zone)
        for name in gone:
            item = holding.get(name)
            with self._lock:
                still_open = item in self._open
            if item is not None and still_open:
                self._settle_attempt(name, *item, preempted=name in preempted)
            zone = zones[name]
            if name in vms and self._vms[name].doomed is None and zone is not None:
                self.compute.delete(zone, name, wait=False)  # TERMINATED: not ours to keep
            self._forget(name)
            self._settled.add(name)

    def _settle_attempt(self, name: str, task_id: str, attempt: int, preempted: bool) -> None:
        holder = self.store.holder(self.run_id, task_id, attempt) or ""
        if holder != name:
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
            doomed = self._vms[name].doomed
            state, reason = AttemptState.LOST, doomed or f"VM {name} went away without recording the attempt"
        self.store.record_end(self.run_id, AttemptStatus(task_id, attempt, state, None, None, time.time(), name, reason))

    def _forget(self, name: str) -> None:
        with self._lock:
            vm = self._vms.pop(name, None)
        if vm is not None and vm.record is not None:
            self.store.forget_worker(self.run_id, name)

    def _check_workers(self, vms: dict[str, str]) -> None:
        """RUNNING VMs whose worker is dead or hung (its record stopped changing), or never came
        up (no record long after boot), are deleted; their attempts settle once they are gone."""
        now = time.monotonic()
        for name, status in vms.items():
            vm = self._vms.get(name)
            if status != "RUNNING" or vm is None or vm.zone is None or vm.doomed is not None or vm.done_at is not None:
                continue  # (a one-task VM whose work is done: `_delete_lingering` deals with it)
            if vm.running_since is None:
                vm.running_since = now
            if vm.record is None:
                if now - vm.running_since > self.config.boot_timeout:
                    self._never_reported(name)
            elif now - vm.record.changed_at > stale_after(self.config):
                self.info(f"deleting {name}: its worker's heartbeat stopped")
                self._doom(name, f"the worker on VM {name} stopped its heartbeat for {stale_after(self.config):g} s")

    def _never_reported(self, name: str) -> None:
        reason = (f"the VM's worker never reported within BOOT_TIMEOUT ({self.config.boot_timeout:g} s) of boot "
                  "(its startup script failed, or the VM cannot write the bucket: see its serial console)")
        item = self._held_by(name)  # reuse: None, the VM has no record
        if item is not None:
            task_id, attempt = item
            if not self.store.claim(self.run_id, task_id, attempt, ORCHESTRATOR):
                return  # the worker just claimed it: it is up after all
            status = AttemptStatus(task_id, attempt, AttemptState.INFRA, None, None, time.time(), name, reason)
            self.store.record_end(self.run_id, status)
        self.info(f"deleting {name}: {reason}")
        self._doom(name, reason)
        if item is None:  # no attempt carries it (reuse): the VM itself is the failure
            self.on_event(WorkerFailed(name, reason, noun="VM", fix=NEVER_REPORTED_FIX))

    def _doom(self, name: str, reason: str) -> None:
        vm = self._vms[name]
        vm.doomed = reason
        if vm.zone is not None:
            self.compute.delete(vm.zone, name, wait=False)

    def _create_workers(self, alive: int) -> None:
        """Ask for VMs in the first zone, in order (ZONE, then FALLBACK_ZONES), that is not resting
        after a capacity refusal: so the run returns to ZONE as soon as it has capacity again.
        Only once the scheduler has taken its verdicts on what this pool reported: never a VM in
        the moment between an infra failure and the run stopping for it (INFRA_FAILURE_LIMIT);
        if it has not caught up within a poll interval, no VM this poll."""
        if not verdicts_taken(self.on_event, self._stop, self.config.poll_interval):
            return
        now = time.monotonic()
        zone = next((z for z in self.settings.zones if self._zone_rest.get(z, 0.0) <= now), None)
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
            after = next((z for z in self.settings.zones if self._zone_rest.get(z, 0.0) <= now), None)
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
        self.store.write_capacity(self.run_id, waiting, time.time())

    def _create_reuse(self, zone: str, alive: int) -> int:
        with self._lock:
            wanted = min(self.quota, len(self._open)) - alive
        if wanted <= 0:
            return 0
        self._batch += 1
        properties = instance_properties(self.config, zone, self.script_for(None), self.run_id, "reuse")
        pattern = batch_name_pattern(self.run_id, self._batch)
        crash_point("vm-create")
        self.compute.bulk_insert(zone, bulk_body(properties, pattern, wanted))
        crash_point("vm-created")
        self.info(f"started {wanted} worker VM(s) in {zone}")
        return wanted

    def _create_per_task(self, zone: str, alive: int) -> None:
        """One insert per pending attempt, as many as the quota has room for, fired from a thread
        pool without waiting: the monitor keeps polling (and starts more) while they are in flight.
        VMs asked for but not yet listed count against the quota."""
        with self._lock:
            unlisted = sum(1 for vm in self._vms.values() if vm.inflight and vm.zone is None)
            room = max(0, self.quota - alive - unlisted)
            batch = [self._pending.popleft() for _ in range(min(room, len(self._pending)))]
            names = [task_vm_name(self.run_id, task_id, attempt) for task_id, attempt in batch]
            for name, item in zip(names, batch, strict=True):
                # Its attempt is known before the insert: a VM that dies young still settles it.
                self._vms[name] = Vm(attempt=item, inflight=True)
        for name, item in zip(names, batch, strict=True):
            self._inserter.submit(self._insert_one, zone, name, item)

    def _insert_one(self, zone: str, name: str, item: tuple[str, int]) -> None:
        properties = instance_properties(self.config, zone, self.script_for((item,)), self.run_id, label_value(item[0]))
        crash_point("vm-create")
        try:
            self.compute.insert(zone, instance_body(properties, name, zone))
            crash_point("vm-created")
        except CapacityRefused as exc:
            with self._lock:
                vm = self._vms.get(name)
                if vm is not None and vm.zone is None:
                    del self._vms[name]  # never existed: the attempt waits for the next VM
                elif vm is not None:
                    vm.inflight, vm.attempt = False, None
                self._pending.appendleft(item)
            self._refused(zone, exc)
            return
        except BaseException as exc:  # noqa: BLE001 - the monitor raises it: the run stops
            with self._lock:
                vm = self._vms.get(name)
                if vm is not None:
                    vm.inflight = False
                self._background_error = self._background_error or exc
            return
        with self._lock:
            vm = self._vms.get(name)
            if vm is not None:
                vm.inflight = False
                vm.zone = vm.zone or zone
        self._note_capacity(None)

    def _teardown(self) -> None:
        with self._lock:
            if self._torn_down:
                return
            self._torn_down = True
        self._writer.shutdown(wait=True, cancel_futures=True)
        self._inserter.shutdown(wait=True, cancel_futures=True)  # no insert lands after the teardown
        crash_point("teardown")
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
        try:  # every VM is gone: no worker appends to a log any more
            self.store.delete_tails(self.run_id)
        except ParallelEngineError as exc:  # only temporary objects; the run's end must still be recorded
            self.info(f"could not delete the log tails of run {self.run_id} (runs/{self.run_id}/tails/): {exc}")
