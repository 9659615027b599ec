"""What a run report shows, as plain data: one bar per attempt on its worker's lane, task
durations, and a summary. No plotting library here: `report.py` draws this, tests read it.

A run that is still going is a snapshot at `now`: a running attempt is drawn up to `now`.
Some attempts have no recorded start: a running one (its record is written when it ends) and
one the orchestrator ended for its worker (preempted, lost, infra, cancelled: it knows only
when). Such a bar starts when its worker was last seen free (the end of that worker's previous
attempt, or the run's creation): an honest lower bound, flagged `start_known=False` and said so
in the hover. An attempt with no time at all (lost when a local run's orchestrator died) is
counted in `undrawn`, not drawn.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from parallel_engine.model import AttemptState, AttemptStatus, TaskState
from parallel_engine.results import RunStatus, TaskView

STDERR_LINES = 10  # last lines of a failed task's stderr shown
STDERR_CHARS = 2000  # and at most this many characters of them (a single huge line stays short)
SHOWN_FAILED = 50  # failed tasks listed with their stderr (each costs one read of the store)
SHOWN_SLOWEST = 10
PARAMS_CHARS = 200  # parameters in a hover, cut beyond this (the file stays small at 10,000 tasks)
NO_WORKER = "(no worker recorded)"

StderrFn = Callable[[str, int], "bytes | None"]  # (task_id, attempt) -> that attempt's stderr


@dataclass(frozen=True)
class Bar:
    """One attempt on its worker's lane, in unix seconds."""

    worker: str
    task_id: str
    attempt: int
    state: str
    start: float
    end: float
    start_known: bool  # False: not recorded; drawn from when the worker was last free
    end_known: bool  # False: still running, drawn up to the snapshot
    exit_code: int | None
    reason: str
    params: str

    @property
    def duration_s(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class TaskLine:
    """A task in the slowest or failed list: the attempt that makes it so."""

    task_id: str
    params: str
    state: str  # the task's state
    attempts: int
    attempt: int
    attempt_state: str
    worker: str
    exit_code: int | None
    reason: str
    duration_s: float | None
    stderr_tail: str = ""


@dataclass(frozen=True)
class ReportData:
    run_id: str
    backend: str
    source: str
    run_state: str
    created: float
    snapshot_at: float
    waiting: str
    bars: tuple[Bar, ...]
    lanes: tuple[str, ...]  # workers, in order of their first attempt
    task_durations: tuple[tuple[str, float], ...]  # (task state, s) of each task's last timed attempt
    tasks_by_state: dict[str, int]
    attempts_by_state: dict[str, int]
    retries: int  # attempts after a task's first
    wall_s: float  # run created -> last attempt ended (or the snapshot, while running)
    busy_s: float  # the sum of the attempts' durations (running ones up to the snapshot)
    undrawn: int
    slowest: tuple[TaskLine, ...]
    failed: tuple[TaskLine, ...]
    failed_total: int
    notes: tuple[str, ...] = field(default=())

    @property
    def tasks(self) -> int:
        return sum(self.tasks_by_state.values())

    @property
    def attempts(self) -> int:
        return sum(self.attempts_by_state.values())

    @property
    def preemptions(self) -> int:
        return self.attempts_by_state.get(str(AttemptState.PREEMPTED), 0)

    @property
    def running(self) -> bool:
        return self.run_state == "running"


def params_text(params: dict[str, str]) -> str:
    text = ", ".join(f"{name}={value}" for name, value in params.items())
    return text if len(text) <= PARAMS_CHARS else text[: PARAMS_CHARS - 1] + "…"


def stderr_tail(data: bytes | None, lines: int = STDERR_LINES) -> str:
    """The last `lines` lines, at most STDERR_CHARS characters."""
    text = (data or b"")[-STDERR_CHARS * 4:].decode("utf-8", errors="replace").rstrip("\n")
    tail = "\n".join(text.splitlines()[-lines:])
    return tail if len(tail) <= STDERR_CHARS else "…" + tail[-STDERR_CHARS:]


def _bars(status: RunStatus, now: float) -> tuple[list[Bar], int]:
    """Every attempt placed on its worker's lane; and how many could not be placed (no time)."""
    lanes: dict[str, list[tuple[AttemptStatus, TaskView]]] = {}
    for view in status.tasks:
        for attempt in view.attempts:
            lanes.setdefault(attempt.worker or NO_WORKER, []).append((attempt, view))
    floor = status.record.created
    bars: list[Bar] = []
    undrawn = 0
    for worker, items in lanes.items():
        free_since = floor
        # A worker runs one attempt at a time: in the order they started (or, unrecorded, ended).
        for attempt, view in sorted(items, key=lambda item: _order(item[0], now)):
            running = attempt.state is AttemptState.RUNNING
            end = attempt.finished_at if attempt.finished_at is not None else (now if running else None)
            if end is None:
                undrawn += 1
                continue
            start = attempt.started_at if attempt.started_at is not None else min(free_since, end)
            free_since = max(free_since, end)
            bars.append(Bar(
                worker=worker, task_id=view.task_id, attempt=attempt.attempt, state=str(attempt.state),
                start=start, end=max(end, start), start_known=attempt.started_at is not None,
                end_known=attempt.finished_at is not None, exit_code=attempt.exit_code,
                reason=attempt.reason, params=params_text(view.params),
            ))
    return bars, undrawn


def _order(attempt: AttemptStatus, now: float) -> float:
    for moment in (attempt.started_at, attempt.finished_at):
        if moment is not None:
            return moment
    return now


def _line(view: TaskView, attempt: AttemptStatus, duration: float | None, tail: str = "") -> TaskLine:
    return TaskLine(
        task_id=view.task_id, params=params_text(view.params), state=str(view.state),
        attempts=len(view.attempts), attempt=attempt.attempt, attempt_state=str(attempt.state),
        worker=attempt.worker, exit_code=attempt.exit_code, reason=attempt.reason,
        duration_s=duration, stderr_tail=tail,
    )


def _slowest(status: RunStatus, bars: list[Bar]) -> tuple[TaskLine, ...]:
    """Tasks by their longest attempt with a recorded start (running ones count up to now)."""
    longest: dict[str, Bar] = {}
    for bar in bars:
        if bar.start_known and (bar.task_id not in longest or bar.duration_s > longest[bar.task_id].duration_s):
            longest[bar.task_id] = bar
    views = {view.task_id: view for view in status.tasks}
    ranked = sorted(longest.values(), key=lambda bar: -bar.duration_s)[:SHOWN_SLOWEST]
    lines = []
    for bar in ranked:
        view = views[bar.task_id]
        attempt = next(a for a in view.attempts if a.attempt == bar.attempt)
        lines.append(_line(view, attempt, bar.duration_s))
    return tuple(lines)


def _failed(status: RunStatus, stderr: StderrFn) -> tuple[tuple[TaskLine, ...], int]:
    failed = [view for view in status.tasks if view.state is TaskState.FAILED and view.attempts]
    lines = []
    for view in failed[:SHOWN_FAILED]:
        last = view.attempts[-1]
        lines.append(_line(view, last, last.duration_s, stderr_tail(stderr(view.task_id, last.attempt))))
    return tuple(lines), len(failed)


def _task_durations(status: RunStatus) -> tuple[tuple[str, float], ...]:
    durations = []
    for view in status.tasks:
        timed = [a.duration_s for a in view.attempts if a.duration_s is not None]
        if timed:
            durations.append((str(view.state), float(timed[-1])))
    return tuple(durations)


def report_data(status: RunStatus, stderr: StderrFn, now: float | None = None) -> ReportData:
    """The report of `status` as it stands at `now` (default: this moment)."""
    now = time.time() if now is None else now
    bars, undrawn = _bars(status, now)
    first_use: dict[str, float] = {}
    for bar in bars:
        first_use[bar.worker] = min(first_use.get(bar.worker, bar.start), bar.start)
    lanes = tuple(sorted(first_use, key=lambda worker: (first_use[worker], worker)))
    attempts = Counter(str(a.state) for view in status.tasks for a in view.attempts)
    last_end = max((bar.end for bar in bars), default=status.record.created)
    failed, failed_total = _failed(status, stderr)
    notes = []
    if undrawn:
        notes.append(f"{undrawn} attempt(s) have no recorded time (their worker was lost) and are not drawn")
    if any(not bar.start_known for bar in bars):
        notes.append("bars marked 'start not recorded' are drawn from when their worker was last free")
    return ReportData(
        run_id=status.record.run_id, backend=status.record.backend, source=status.record.source,
        run_state=status.run_state, created=status.record.created, snapshot_at=now, waiting=status.waiting,
        bars=tuple(bars), lanes=lanes, task_durations=_task_durations(status),
        tasks_by_state=dict(sorted(status.counts.items())), attempts_by_state=dict(sorted(attempts.items())),
        retries=sum(max(0, len(view.attempts) - 1) for view in status.tasks),
        wall_s=(now if status.run_state == "running" else last_end) - status.record.created,
        busy_s=sum(bar.duration_s for bar in bars if bar.start_known),
        undrawn=undrawn, slowest=_slowest(status, bars), failed=failed, failed_total=failed_total,
        notes=tuple(notes),
    )
