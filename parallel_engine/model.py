"""Plain data shared by every part: tasks, attempt states, attempt records."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


@dataclass(frozen=True)
class Task:
    """One unit of work: a parameter set turned into arguments.

    `argv` is appended to the run's COMMAND (or the image's entrypoint). When a task
    carries its own full command (YAML `command`, a task-list line) `command` is set
    and replaces COMMAND; `argv` is then empty.
    """

    id: str
    argv: tuple[str, ...] = ()
    params: dict[str, str] = field(default_factory=dict)
    command: tuple[str, ...] | None = None
    source: str = ""  # "file:line", for error messages

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "argv": list(self.argv),
            "params": dict(self.params),
            "command": list(self.command) if self.command is not None else None,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Task":
        command = data.get("command")
        return cls(
            id=data["id"],
            argv=tuple(data.get("argv", ())),
            params=dict(data.get("params", {})),
            command=tuple(command) if command is not None else None,
            source=data.get("source", ""),
        )


#: The columns results.csv adds after the params columns (and task_id), and `Run.results()` with
#: `outputs`: a params column or a YAML argument cannot take one of these names, or the table
#: would have two of them.
RESULT_COLUMNS = ("state", "exit_code", "attempts", "duration_s", "worker", "started_at", "finished_at", "reason")
RESERVED_COLUMNS = (*RESULT_COLUMNS, "outputs")

#: The files `collect` writes at the top of --dest, beside one folder per task: no task id may take
#: one of these names (compared case-insensitively, as some filesystems compare names).
COLLECT_FILES = ("results.csv", "skipped.csv", "results.parquet")


@dataclass(frozen=True)
class TaskList:
    """What a task source yields: the tasks and, for tables, the parameter columns in order."""

    path: str
    tasks: tuple[Task, ...]
    columns: tuple[str, ...] = ()


class AttemptState(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # program exited non-zero
    TIMEOUT = "timeout"
    PREEMPTED = "preempted"
    LOST = "lost"  # worker gone, no status
    INFRA = "infra"  # never started
    CANCELLED = "cancelled"


# Attempt ends charged to the program's retry budget vs. the infrastructure's.
PROGRAM_FAILURES = frozenset({AttemptState.FAILED, AttemptState.TIMEOUT})
INFRA_FAILURES = frozenset({AttemptState.PREEMPTED, AttemptState.LOST, AttemptState.INFRA})


class TaskState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass
class AttemptStatus:
    """The record of one attempt, stored as tasks/<task>/<attempt>/status.json."""

    task_id: str
    attempt: int
    state: AttemptState
    exit_code: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    worker: str = ""
    reason: str = ""

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    def to_json(self) -> dict[str, Any]:
        # Spelled out rather than dataclasses.asdict: written once per attempt, asdict's deep copy shows.
        return {
            "task_id": self.task_id, "attempt": self.attempt, "state": str(self.state),
            "exit_code": self.exit_code, "started_at": self.started_at, "finished_at": self.finished_at,
            "worker": self.worker, "reason": self.reason,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "AttemptStatus":
        return cls(
            task_id=data["task_id"],
            attempt=int(data["attempt"]),
            state=AttemptState(data["state"]),
            exit_code=data.get("exit_code"),
            started_at=data.get("started_at"),
            finished_at=data.get("finished_at"),
            worker=data.get("worker", ""),
            reason=data.get("reason", ""),
        )
