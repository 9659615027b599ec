"""Reading a run back: task states and logs (collecting outputs is parallel_engine/collect.py)."""

from __future__ import annotations

import datetime as dt
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

from parallel_engine.backends.base import backend_class
from parallel_engine.errors import StoreError, brief
from parallel_engine.model import AttemptState, AttemptStatus, TaskState
from parallel_engine.lease import holder_alive
from parallel_engine.processes import orchestrator_alive
from parallel_engine.state import Budgets, task_state, winning_attempt
from parallel_engine.store import RunRecord, RunStore


@dataclass(frozen=True)
class TaskView:
    task_id: str
    state: TaskState
    attempts: tuple[AttemptStatus, ...]
    params: dict[str, str]

    @property
    def result(self) -> AttemptStatus | None:
        return winning_attempt(list(self.attempts))

    @property
    def exit_code(self) -> int | None:
        result = self.result
        return result.exit_code if result else None

    @property
    def duration_s(self) -> float | None:
        result = self.result
        return result.duration_s if result else None

    def to_json(self) -> dict[str, object]:
        result = self.result
        return {
            "task_id": self.task_id,
            "state": str(self.state),
            "attempts": len(self.attempts),
            "exit_code": self.exit_code,
            "duration_s": self.duration_s,
            "reason": result.reason if result else "",
            "worker": result.worker if result else "",
            "params": self.params,
        }


@dataclass(frozen=True)
class RunStatus:
    record: RunRecord
    run_state: str  # running | finished | cancelled | failed | interrupted
    tasks: tuple[TaskView, ...]
    waiting: str = ""  # while a gce run waits for capacity: "queued (quota): ..." (runs/<id>/capacity.json)
    last_seen: float | None = None  # interrupted: when its orchestrator last refreshed its lease

    @property
    def how_to_continue(self) -> str:
        """For a run nobody orchestrates: what it is, and the command that takes it over."""
        if self.run_state != "interrupted":
            return ""
        when = ""
        if self.last_seen:
            when = f" (its orchestrator was last seen {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.last_seen))})"
        return (f"interrupted{when}: nobody orchestrates run {self.record.run_id} any more; "
                f"continue it with `parallel-engine resume {self.record.run_id}` "
                f"(or stop what is left with `parallel-engine cancel {self.record.run_id}`)")

    @property
    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for view in self.tasks:
            counts[str(view.state)] = counts.get(str(view.state), 0) + 1
        return counts

    def _head(self) -> dict[str, object]:
        return {
            "run_id": self.record.run_id,
            "state": self.run_state,
            "backend": self.record.backend,
            "created": self.record.created,
            "source": self.record.source,
            "counts": self.counts,
            "waiting": self.waiting,
        }

    def to_json(self) -> dict[str, object]:
        return {**self._head(), "tasks": [view.to_json() for view in self.tasks]}

    def iter_json(self) -> Iterator[str]:
        """`to_json()` as JSON text, one task per line, a piece at a time: `status --json` of a
        big run never holds the whole document's text (rich's print_json of it took 2.4 GB at 50,000 tasks)."""
        head = json.dumps(self._head(), ensure_ascii=False)
        yield head[:-1] + ', "tasks": ['
        separator = "\n"
        for view in self.tasks:
            yield separator + json.dumps(view.to_json(), ensure_ascii=False)
            separator = ",\n"
        yield "\n]}\n"


def utc_text(at: float | None) -> str:
    """A time as ISO 8601 in UTC, to the millisecond ("" when unknown)."""
    if at is None:
        return ""
    return dt.datetime.fromtimestamp(at, dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def result_fields(view: TaskView) -> dict[str, object]:
    """What a task's result adds to its parameters (model.RESULT_COLUMNS), from its winning
    attempt (or its last one, which tells why it did not succeed); None where unknown."""
    result = view.result
    return {
        "state": str(view.state),
        "exit_code": view.exit_code,
        "attempts": len(view.attempts),
        "duration_s": view.duration_s,
        "worker": result.worker if result else "",
        "started_at": utc_text(result.started_at if result else None),
        "finished_at": utc_text(result.finished_at if result else None),
        "reason": " ".join(result.reason.splitlines()) if result else "",
    }


def result_columns(record: RunRecord) -> list[str]:
    """The parameter columns, in the task source's order."""
    if record.columns:
        return list(record.columns)
    seen: dict[str, None] = {}
    for task in record.tasks:
        for name in task.params:
            seen.setdefault(name, None)
    return list(seen)


def result_rows(store: RunStore, status: RunStatus) -> list[dict[str, object]]:
    """`Run.results()`: per task its parameters, task_id, results.csv's columns, and `outputs`:
    where its winning (or last) attempt's outputs are in the store ("" before it started)."""
    columns = result_columns(status.record)
    rows = []
    for view in status.tasks:
        result = view.result
        outputs = (store.location(store.attempt_prefix(status.record.run_id, view.task_id, result.attempt) + "outputs")
                   if result else "")
        rows.append({**{name: view.params.get(name, "") for name in columns}, "task_id": view.task_id,
                     **result_fields(view), "outputs": outputs})
    return rows


def budgets_of(record: RunRecord) -> Budgets:
    return Budgets(
        retries=int(record.spec.get("retries", 0)),
        infra_retries=int(record.spec.get("preemption_retries", 3)),
    )


def run_state(store: RunStore, record: RunRecord) -> str:
    """How the run stands (running, finished, cancelled, failed, interrupted) without reading its attempts."""
    ended = store.read_end(record.run_id)
    if ended is not None:
        return ended
    lease = store.read_lease(record.run_id)
    if lease is not None:  # who holds the run now (a resume may have taken it from run.json's orchestrator)
        alive = holder_alive(lease[1])
    else:
        owner = record.spec.get("orchestrator", {})
        alive = owner.get("host") != socket.gethostname() or orchestrator_alive(owner)
    # A holder found gone (or its lease released) may have written end.json and exited since the
    # first read: read it again, or a run that just ended reads interrupted.
    return "running" if alive else store.read_end(record.run_id) or "interrupted"


def _lost(history: list[AttemptStatus], record: RunRecord, run_state: str) -> list[AttemptStatus]:
    """Workers that die with their orchestrator (local threads): once it is gone (or the run
    stopped on an error, e.g. a store it could no longer write), a claimed attempt without a
    record will never get one, so it is `lost` (worker gone, no status), not running."""
    pid = record.spec.get("orchestrator", {}).get("pid")
    why = (f"its orchestrator (pid {pid}) is gone" if run_state == "interrupted"
           else "the run stopped on an error before this attempt's record was written")
    return [replace(a, state=AttemptState.LOST, reason=why) if a.state is AttemptState.RUNNING else a
            for a in history]


def run_status(store: RunStore, run_id: str) -> RunStatus:
    record = store.load_run(run_id)
    state = run_state(store, record)
    waiting = store.read_capacity(run_id) if state == "running" else ""
    status = status_of(record, state, store.attempts(run_id), waiting)
    if state == "interrupted":
        lease = store.read_lease(run_id)
        status = replace(status, last_seen=float(lease[1].get("at", 0)) or None if lease else None)
    return status


def status_of(
    record: RunRecord, run_state: str, attempts: dict[str, list[AttemptStatus]], waiting: str = ""
) -> RunStatus:
    """A run's status from its attempts, wherever they were read (the store, or a finished scheduler)."""
    budgets = budgets_of(record)
    orphaned = run_state in ("interrupted", "failed") and not backend_class(record.backend).workers_outlive_orchestrator
    views = []
    for task in record.tasks:
        history = attempts.get(task.id, [])
        if orphaned:
            history = _lost(history, record, run_state)
        state = task_state(history, budgets, run_cancelled=run_state in ("cancelled", "interrupted", "failed"))
        views.append(TaskView(task.id, state, tuple(history), dict(task.params)))
    return RunStatus(record, run_state, tuple(views), waiting)


def read_log(store: RunStore, run_id: str, task_id: str, attempt: int | None, stream: str) -> tuple[int, bytes]:
    """One attempt's log (the latest by default). The task's attempts are its claims: one listing,
    no attempt record read (a big run's `logs` used to read all of them)."""
    record = store.load_run(run_id)
    if not any(task.id == task_id for task in record.tasks):
        known = ", ".join(task.id for task in record.tasks[:10])
        raise StoreError(f"run {run_id} has no task '{brief(task_id)}'", hint=f"task ids look like: {known}")
    numbers = sorted(number for claimed, number in store.claimed(run_id) if claimed == task_id)
    if not numbers:
        raise StoreError(f"task {task_id} of run {run_id} has not started yet: no logs")
    chosen = attempt if attempt is not None else numbers[-1]
    if chosen not in numbers:
        raise StoreError(f"task {task_id} has no attempt {chosen}", hint=f"its attempts: {numbers}")
    return chosen, store.read_log(run_id, task_id, chosen, stream) or b""
