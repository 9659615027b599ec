"""Reading a run back: task states, logs, and collected outputs with results.csv."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import socket
from dataclasses import dataclass, replace
from pathlib import Path

from parallel_engine.errors import StoreError
from parallel_engine.model import RESULT_COLUMNS, AttemptState, AttemptStatus, TaskState
from parallel_engine.processes import orchestrator_alive
from parallel_engine.state import Budgets, task_state, winning_attempt
from parallel_engine.store import RunRecord, RunStore, write_atomic


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
    run_state: str  # running | finished | cancelled | failed | interrupted
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
    if owner.get("host") == socket.gethostname() and not orchestrator_alive(owner):
        return "interrupted"  # its pid is gone, a zombie, or another process's now
    return "running"


def _lost(history: list[AttemptStatus], record: RunRecord, run_state: str) -> list[AttemptStatus]:
    """Local workers are threads of the orchestrator: once it is gone (or the run stopped on an
    error, e.g. a store it could no longer write), a claimed attempt without a record will never
    get one, so it is `lost` (worker gone, no status), not running."""
    pid = record.spec.get("orchestrator", {}).get("pid")
    why = (f"its orchestrator (pid {pid}) is gone" if run_state == "interrupted"
           else "the run stopped on an error before this attempt's record was written")
    return [replace(a, state=AttemptState.LOST, reason=why) if a.state is AttemptState.RUNNING else a
            for a in history]


def run_status(store: RunStore, run_id: str) -> RunStatus:
    record = store.load_run(run_id)
    run_state = _run_state(store, record)
    waiting = _waiting(store, run_id) if run_state == "running" else ""
    return status_of(record, run_state, store.attempts(run_id), waiting)


def status_of(
    record: RunRecord, run_state: str, attempts: dict[str, list[AttemptStatus]], waiting: str = ""
) -> RunStatus:
    """A run's status from its attempts, wherever they were read (the store, or a finished scheduler)."""
    budgets = budgets_of(record)
    views = []
    for task in record.tasks:
        history = attempts.get(task.id, [])
        if run_state in ("interrupted", "failed") and record.backend == "local":
            history = _lost(history, record, run_state)
        state = task_state(history, budgets, run_cancelled=run_state in ("cancelled", "interrupted", "failed"))
        views.append(TaskView(task.id, state, tuple(history), dict(task.params)))
    return RunStatus(record, run_state, tuple(views), waiting)


def capacity_key(run_id: str) -> str:
    """`runs/<run>/capacity.json`: whether a gce run waits for capacity, for `status` anywhere."""
    return f"runs/{run_id}/capacity.json"


def write_waiting(store: RunStore, run_id: str, waiting: str | None, at: float) -> None:
    """Record that the run waits for capacity (`waiting` says why) or, with None, that it does not."""
    record = {"waiting": waiting is not None, "reason": waiting or "", "at": at}
    store.blobs.write(capacity_key(run_id), json.dumps(record).encode())


def _waiting(store: RunStore, run_id: str) -> str:
    raw = store.blobs.read(capacity_key(run_id))
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


#: In a --dest folder: the names (task folders, results.csv) that `collect` wrote and may replace.
COLLECTED_MARKER = ".parallel-engine-collected"
RESULTS_CSV = "results.csv"


def collect(store: RunStore, run_id: str, dest: Path) -> tuple[Path, RunStatus]:
    """Outputs of each task's winning attempt under dest/<task_id>/, and dest/results.csv.

    Written to a staging folder beside `dest` and moved in per task, so an interrupted
    collect never leaves a half-copied task folder. Only what an earlier collect wrote is
    ever replaced (COLLECTED_MARKER lists it): `--dest .` never deletes a folder of yours
    that happens to share a task's name. Disk errors become a StoreError naming the path.
    """
    status = run_status(store, run_id)
    if dest.exists() and not dest.is_dir():
        raise StoreError(f"{dest} is a file, not a folder: cannot collect into it",
                         hint="give --dest a folder (a missing one is created)")
    try:
        _collect(store, status, dest)
    except OSError as exc:
        raise StoreError(f"cannot collect into {dest}: {exc.filename or dest}: {exc.strerror or exc}",
                         hint="check that you may write there, and free space") from None
    return dest / RESULTS_CSV, status


def _owned(dest: Path) -> set[str]:
    """What earlier collects wrote into `dest` (nothing, if the marker is missing or unreadable)."""
    try:
        names = json.loads((dest / COLLECTED_MARKER).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return set()
    return {name for name in names if isinstance(name, str)} if isinstance(names, list) else set()


def _claim_names(dest: Path, names: list[str]) -> None:
    """Refuse to touch what collect did not write; then record what it is about to write."""
    owned = _owned(dest)
    foreign = [name for name in names if name not in owned and os.path.lexists(dest / name)]
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise StoreError(
            f"{dest / foreign[0]} already exists and was not written by `parallel-engine collect`{more}: "
            "refusing to replace it",
            hint="collect into a new or empty folder (e.g. --dest results), or move it out of the way",
        )
    write_atomic(str(dest / COLLECTED_MARKER), json.dumps(sorted(owned | set(names))).encode())


def _replace(final: Path, staged: Path | None) -> None:
    if final.is_symlink() or final.is_file():
        final.unlink()
    elif final.exists():
        shutil.rmtree(final)
    if staged is not None:
        os.replace(staged, final)
    else:
        final.mkdir()  # it succeeded and wrote nothing: an empty folder says so


def _collect(store: RunStore, status: RunStatus, dest: Path) -> None:
    run_id = status.record.run_id
    dest.mkdir(parents=True, exist_ok=True)
    winners = {view.task_id: view.result.attempt for view in status.tasks
               if view.state is TaskState.SUCCEEDED and view.result is not None}
    _claim_names(dest, [*winners, RESULTS_CSV])
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
        _replace(dest / task_id, staged.get(task_id))
    columns = result_columns(status.record)
    extra = [c for c in ("task_id",) if c not in columns]
    header = columns + extra + list(RESULT_COLUMNS)
    table = io.StringIO(newline="")
    writer = csv.writer(table)
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
    write_atomic(str(dest / RESULTS_CSV), table.getvalue().encode("utf-8"))

