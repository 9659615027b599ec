"""The one exception hierarchy. The CLI turns each into one line, a hint, and an exit code."""

from __future__ import annotations

import reprlib

# Documented exit codes (README "Exit codes").
EXIT_OK = 0
EXIT_TASKS_FAILED = 1
EXIT_USAGE = 2
EXIT_BACKEND = 3
EXIT_RUN_INTERRUPTED = 4  # `wait`: the run's orchestrator is gone without recording an end
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # the reader of our output stopped early (`status --all | head`): 128 + SIGPIPE


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


class RunBusyError(ParallelEngineError):
    """Another orchestrator holds the run's lease and still lives (`resume` without --force)."""


class AccessError(ParallelEngineError):
    """Google refused us for a reason the user must fix in their setup: credentials missing,
    unreadable or refused, or a permission or an API missing (exit 2, like bad input)."""


class CredentialsError(AccessError):
    """No Google credentials, an unreadable or malformed credentials file, or credentials Google
    refuses (a revoked or expired refresh token, a deleted key)."""


class PermissionDenied(AccessError):
    """Google answered 403: the credentials lack a permission, or an API is not enabled."""


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


class BuildError(BackendError):
    """Building the image failed."""


class Interrupted(ParallelEngineError):
    """The run was stopped by SIGINT/SIGTERM; running attempts were cancelled."""

    exit_code = EXIT_INTERRUPTED


_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxstring, _BRIEF.maxother = 2, 60, 60
_BRIEF.maxlist = _BRIEF.maxtuple = _BRIEF.maxdict = _BRIEF.maxset = 4


def brief(text: str, limit: int = 80) -> str:
    """Text from the user's input as a message shows it: whole if short, else its start and '...'."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown(value: object, limit: int = 80) -> str:
    """A value from the user's input as a message quotes it: its repr, at most `limit` characters.
    Cheap however big the value is (reprlib never builds the whole text): a message must never
    print, or even build, a 1 MB cell or an expanded YAML structure."""
    try:
        return brief(_BRIEF.repr(value), limit)
    except ValueError:  # e.g. an int past Python's digit limit
        return f"<a {type(value).__name__}>"
