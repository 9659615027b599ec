"""The runtime seam: start one attempt, wait for it, kill it. Nothing else."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class AttemptSpec:
    """Everything a runtime needs to run one attempt of one task.

    `argv` is the task's argument list (or its full command when `command_override`);
    `env` holds only the PE_* variables: a runtime adds them to its own environment.
    """

    run_id: str
    task_id: str
    attempt: int
    argv: tuple[str, ...]
    command_override: bool
    env: dict[str, str]
    output_dir: Path
    stdout_path: Path
    stderr_path: Path
    timeout_s: float | None


class ExitStatusLost(Exception):
    """The attempt ended but its exit status cannot be read (its process was reaped by someone
    else): what happened is unknown, so it is never recorded as a success."""


class RunningAttempt(Protocol):
    def wait(self, timeout: float | None) -> int | None:
        """The exit code, or None if still running after `timeout` seconds; raises ExitStatusLost
        if it ended with a status nobody can read."""

    def kill(self) -> None:
        """Stop the attempt and everything it started; idempotent; returns once they are gone."""

    def killed(self) -> bool:
        """Once `wait` returned: True if a `kill` stopped the attempt while it still ran, False if
        it ended by itself (its exit code then says how it went). Decided at the moment the kill
        is sent, so an attempt that exits as its timeout fires is judged by what really happened."""

    def exit_reason(self) -> str | None:
        """Once `wait` returned a code: why it ended, when the code alone would mislead (e.g. an
        out-of-memory kill, which is only 137); None when the code says it all."""


class Runtime(Protocol):
    name: str

    def start(self, spec: AttemptSpec) -> RunningAttempt:
        """Start the attempt; raise BackendError if it cannot start at all (an `infra` attempt)."""

    def close(self) -> None:
        """Release anything held (clients, connections)."""
