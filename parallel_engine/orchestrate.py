"""Driving a run that exists in the store, under its lease: what `run` does once run.json is
written and what `resume` does once it took the run over, so both end the same way (end.json,
cleanup, the lease released). Also how `resume` and `cancel` read a run they take over."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from parallel_engine.backends.base import Backend, Plan
from parallel_engine.config import Config
from parallel_engine.crash import crash_point
from parallel_engine.errors import ParallelEngineError, RunBusyError
from parallel_engine.lease import Lease, orchestrated, where
from parallel_engine.model import AttemptState, AttemptStatus, Task
from parallel_engine.processes import orchestrator_alive
from parallel_engine.scheduler import Outcome, ProgressFn, Scheduler
from parallel_engine.state import Budgets
from parallel_engine.store import RunRecord, RunStore

#: How long `cancel` waits for a live orchestrator on this machine to stop its run.
CANCEL_WAIT_S = 120.0


def drive(store: RunStore, run_id: str, tasks: tuple[Task, ...], budgets: Budgets, plan: Plan,
          lease: Lease, cancel: threading.Event, progress: ProgressFn | None,
          history: dict[str, list[AttemptStatus]] | None = None) -> Outcome:
    """Run the scheduler to the end, keeping the lease; record how the run ended. A `cancel`
    written to the store from another machine (end.json says cancelled) stops it too."""
    lease.keep(on_refresh=lambda: cancel.set() if store.read_end(run_id) == "cancelled" else None)
    scheduler = Scheduler(tasks, budgets, plan.make_pool, progress, history)
    try:
        try:
            outcome = scheduler.run(cancel)  # a pool stops all its workers on the way out
        except BaseException:
            with suppress(ParallelEngineError):  # a broken store must not hide the first error
                store.write_end(run_id, "failed", time.time())
            raise
        finally:
            crash_point("teardown")
            plan.cleanup()
        store.write_end(run_id, "cancelled" if outcome.cancelled else "finished", time.time())
    finally:
        with suppress(ParallelEngineError):
            lease.release()
    return outcome


def budgets_for(record: RunRecord, config: Config) -> Budgets:
    """The run's budgets as it recorded them (a run recorded before INFRA_FAILURE_LIMIT was kept
    takes today's setting)."""
    spec = record.spec
    limit = spec.get("infra_failure_limit", config.infra_failure_limit)
    return Budgets(retries=int(spec.get("retries", 0)), infra_retries=int(spec.get("preemption_retries", 3)),
                   infra_failure_limit=None if limit is None else int(limit))


def check_resumable(store: RunStore, record: RunRecord, backend: Backend) -> None:
    """Refuse a run that ended, one of another backend, or one whose orchestrator (recorded in
    run.json, before leases) still runs here."""
    run_id = record.run_id
    if record.backend != backend.name:
        raise ParallelEngineError(
            f"run {run_id} ran on the {record.backend} backend, but BACKEND is {backend.name}",
            hint=f"resume it with the settings it ran with: --set BACKEND={record.backend}")
    ended = store.read_end(run_id)
    if ended is not None:
        raise ParallelEngineError(f"run {run_id} is over ({ended}): there is nothing to resume",
                                  hint=f"`parallel-engine status {run_id}` shows how it ended; "
                                       "`parallel-engine run` starts a new run")
    owner = _legacy_owner(store, record)
    if owner is not None:
        raise RunBusyError(f"run {run_id} is orchestrated by pid {owner.get('pid')} on {owner.get('host')}",
                           hint="follow it with `parallel-engine status`; stop it with `parallel-engine cancel`")


def running_attempts(history: dict[str, list[AttemptStatus]]) -> list[AttemptStatus]:
    """The attempts claimed and not recorded: what a dead orchestrator's workers held."""
    return [past[-1] for past in history.values() if past and past[-1].state is AttemptState.RUNNING]


@dataclass(frozen=True)
class Stopped:
    """What `cancel` did: who stopped the run, and what `down` removed."""

    by: str
    removed: str


def cancel_run(store: RunStore, record: RunRecord, backend: Backend) -> Stopped:
    """Stop a run from any machine. A live orchestrator on this machine is sent SIGTERM (it
    cancels its attempts and records the end itself); otherwise end.json says cancelled first
    (a live orchestrator elsewhere reads it at its next lease refresh and stops), then the
    backend removes the run's workers and each attempt that was running is recorded cancelled."""
    run_id = record.run_id
    ended = store.read_end(run_id)
    if ended is not None:
        raise ParallelEngineError(f"run {run_id} is over ({ended}): there is nothing to cancel",
                                  hint=f"`parallel-engine status {run_id}` shows how it ended")
    holder = orchestrated(store, run_id) or _legacy_owner(store, record)
    if holder is not None and holder.get("host") == socket.gethostname():
        os.kill(int(holder["pid"]), signal.SIGTERM)
        deadline = time.monotonic() + CANCEL_WAIT_S
        while store.read_end(run_id) is None and orchestrator_alive(holder):
            if time.monotonic() > deadline:
                raise ParallelEngineError(f"run {run_id}: its orchestrator ({where(holder)}) did not stop "
                                          f"within {CANCEL_WAIT_S:.0f} s of SIGTERM",
                                          hint=f"`kill -KILL {holder['pid']}`, then `parallel-engine cancel {run_id}`")
            time.sleep(0.05)
        if store.read_end(run_id) is not None:
            return Stopped(f"its orchestrator (pid {holder['pid']})", "")
    store.write_end(run_id, "cancelled", time.time())
    removed = backend.down(run_id)
    now = time.time()
    for status in running_attempts(store.attempts(run_id)):
        status.state, status.finished_at = AttemptState.CANCELLED, now
        status.reason = "cancelled: `parallel-engine cancel` stopped the run"
        store.record_end(run_id, status)
    by = f"`cancel` (its orchestrator, {where(holder)}, stops at its next lease refresh)" if holder else "`cancel`"
    return Stopped(by, removed)


def _legacy_owner(store: RunStore, record: RunRecord) -> dict[str, Any] | None:
    """A run recorded before leases: its run.json's orchestrator, if it still runs here."""
    owner: dict[str, Any] = record.spec.get("orchestrator", {})
    if store.read_lease(record.run_id) is None and owner.get("host") == socket.gethostname() and orchestrator_alive(owner):
        return owner
    return None
