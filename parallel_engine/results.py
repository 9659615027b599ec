"""Reading a run back: task states, logs, and collected outputs with results.csv."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import psutil

from parallel_engine.errors import StoreError
from parallel_engine.model import AttemptStatus, TaskState
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
            "params": self.params,
        }


@dataclass(frozen=True)
class RunStatus:
    record: RunRecord
    run_state: str  # running | finished | cancelled | interrupted
    tasks: tuple[TaskView, ...]
    waiting: str = ""  # while a gce run waits for capacity: "queued (quota): ..." (runs/<id>/capacity.json)

    @property
    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for view in self.tasks:
            counts[str(view.state)] = counts.get(str(view.state), 0) + 1
        return counts

    def to_json(self) -> dict[str, object]:
        return {
            "run_id": self.record.run_id,
            "state": self.run_state,
            "backend": self.record.backend,
            "created": self.record.created,
            "source": self.record.source,
            "counts": self.counts,
            "waiting": self.waiting,
            "tasks": [view.to_json() for view in self.tasks],
        }


def budgets_of(record: RunRecord) -> Budgets:
    return Budgets(
        retries=int(record.spec.get("retries", 0)),
        infra_retries=int(record.spec.get("preemption_retries", 3)),
    )


def write_end(store: RunStore, run_id: str, state: str, at: float) -> None:
    store.blobs.write(f"runs/{run_id}/end.json", json.dumps({"state": state, "at": at}).encode())


def _run_state(store: RunStore, record: RunRecord) -> str:
    raw = store.blobs.read(f"runs/{record.run_id}/end.json")
    if raw is not None:
        return str(json.loads(raw).get("state", "finished"))
    owner = record.spec.get("orchestrator", {})
    if owner.get("host") == socket.gethostname() and not psutil.pid_exists(int(owner.get("pid", 0))):
        return "interrupted"
    return "running"


def run_status(store: RunStore, run_id: str) -> RunStatus:
    record = store.load_run(run_id)
    budgets = budgets_of(record)
    run_state = _run_state(store, record)
    attempts = store.attempts(run_id)
    views = []
    for task in record.tasks:
        history = attempts.get(task.id, [])
        state = task_state(history, budgets, run_cancelled=run_state in ("cancelled", "interrupted"))
        views.append(TaskView(task.id, state, tuple(history), dict(task.params)))
    return RunStatus(record, run_state, tuple(views), _waiting(store, run_id) if run_state == "running" else "")


def _waiting(store: RunStore, run_id: str) -> str:
    raw = store.blobs.read(f"runs/{run_id}/capacity.json")
    try:
        return str(json.loads(raw).get("reason", "")) if raw else ""
    except ValueError:
        return ""


def read_log(store: RunStore, run_id: str, task_id: str, attempt: int | None, stream: str) -> tuple[int, bytes]:
    status = run_status(store, run_id)
    view = next((v for v in status.tasks if v.task_id == task_id), None)
    if view is None:
        known = ", ".join(v.task_id for v in status.tasks[:10])
        raise StoreError(f"run {run_id} has no task '{task_id}'", hint=f"task ids look like: {known}")
    if not view.attempts:
        raise StoreError(f"task {task_id} of run {run_id} has not started yet: no logs")
    numbers = [a.attempt for a in view.attempts]
    chosen = attempt if attempt is not None else numbers[-1]
    if chosen not in numbers:
        raise StoreError(f"task {task_id} has no attempt {chosen}", hint=f"its attempts: {numbers}")
    return chosen, store.read_log(run_id, task_id, chosen, stream) or b""


def result_columns(record: RunRecord) -> list[str]:
    if record.columns:
        return list(record.columns)
    seen: dict[str, None] = {}
    for task in record.tasks:
        for name in task.params:
            seen.setdefault(name, None)
    return list(seen)


def collect(store: RunStore, run_id: str, dest: Path) -> tuple[Path, RunStatus]:
    """Outputs of each task's winning attempt under dest/<task_id>/, and dest/results.csv.

    Written to a staging folder beside `dest` and moved in per task, so an interrupted
    collect never leaves a half-copied task folder.
    """
    status = run_status(store, run_id)
    dest.mkdir(parents=True, exist_ok=True)
    winners = {view.task_id: view.result.attempt for view in status.tasks
               if view.state is TaskState.SUCCEEDED and view.result is not None}
    tasks_prefix = f"runs/{run_id}/tasks/"
    pairs: list[tuple[str, Path]] = []
    staged: dict[str, Path] = {}
    for key in store.blobs.list(tasks_prefix):  # one listing for the whole run
        task_id, attempt, kind, *rest = key[len(tasks_prefix):].split("/")
        if kind != "outputs" or not rest or winners.get(task_id) != int(attempt):
            continue
        if task_id not in staged:
            staged[task_id] = dest / f".collecting-{task_id}"
            shutil.rmtree(staged[task_id], ignore_errors=True)
        target = staged[task_id].joinpath(*rest)
        target.parent.mkdir(parents=True, exist_ok=True)
        pairs.append((key, target))
    store.blobs.fetch(pairs)
    for task_id in winners:
        final = dest / task_id
        shutil.rmtree(final, ignore_errors=True)
        if task_id in staged:
            os.replace(staged[task_id], final)
        else:
            final.mkdir()  # it succeeded and wrote nothing: an empty folder says so
    columns = result_columns(status.record)
    extra = [c for c in ("task_id",) if c not in columns]
    header = columns + extra + ["state", "exit_code", "attempts", "duration_s"]
    tmp = dest / ".results.csv.tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for view in status.tasks:
            duration = view.duration_s
            row = [view.params.get(c, "") for c in columns]
            row += [view.task_id] if extra else []
            row += [
                str(view.state),
                "" if view.exit_code is None else view.exit_code,
                len(view.attempts),
                "" if duration is None else f"{duration:.3f}",
            ]
            writer.writerow(row)
    os.replace(tmp, dest / "results.csv")
    return dest / "results.csv", status
