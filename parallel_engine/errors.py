"""The one exception hierarchy. The CLI turns each into one line, a hint, and an exit code."""

from __future__ import annotations

# Documented exit codes (README "Exit codes").
EXIT_OK = 0
EXIT_TASKS_FAILED = 1
EXIT_USAGE = 2
EXIT_BACKEND = 3
EXIT_INTERRUPTED = 130


class ParallelEngineError(Exception):
    """Base of every error parallel-engine raises on purpose."""

    exit_code: int = EXIT_USAGE

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(ParallelEngineError):
    """A config key is unknown, of the wrong type, or missing for the chosen backend."""


class TaskSourceError(ParallelEngineError):
    """params.csv, a YAML task file or a task list cannot be turned into tasks."""


class NameCollisionError(ParallelEngineError):
    """Two tasks or workers would get the same derived name."""


class StoreError(ParallelEngineError):
    """The run store is missing, unreadable, or a run cannot be found in it."""


class RunNotFoundError(StoreError):
    """No run with that id exists in the store."""


class MissingExtraError(ParallelEngineError):
    """An optional feature needs a package that is not installed: one of parallel-engine's extras."""

    def __init__(self, feature: str, extra: str, missing: str) -> None:
        super().__init__(
            f"{feature} needs the Python package '{missing}', which is not installed",
            hint=f"pip install 'parallel-engine[{extra}]'",
        )
        self.extra = extra


class BackendError(ParallelEngineError):
    """A backend (local runtime, Docker, Google) failed in a way the user must act on."""

    exit_code = EXIT_BACKEND


class QuotaError(BackendError):
    """Capacity is refused for good (not a wait-for-capacity case)."""


class BuildError(BackendError):
    """Building the image failed."""


class Interrupted(ParallelEngineError):
    """The run was stopped by SIGINT/SIGTERM; running attempts were cancelled."""

    exit_code = EXIT_INTERRUPTED
