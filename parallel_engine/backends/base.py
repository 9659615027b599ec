"""The backend seam, in one file: what a backend gives a run, what its pool reports, the registry.

A run (parallel_engine/api.py) asks the registry for the backend its config names and gets from
it the run store, a `Plan` (the backend's part of run.json and a way to make its `Pool`), and
the commands that reach the backend's workers from outside a run: `build`, `down`, `render`.
The scheduler (parallel_engine/scheduler.py) drives the pool and is the only place that
decides; a pool only starts, watches and stops workers and reports facts as typed events.
docs/architecture.md draws the whole picture. Nothing outside this file branches on a
backend's name: it looks the backend up here.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from parallel_engine.errors import ConfigError, ParallelEngineError
from parallel_engine.model import AttemptStatus, Task

if TYPE_CHECKING:
    from parallel_engine.config import Config
    from parallel_engine.doctor import Check
    from parallel_engine.runtimes.base import Runtime
    from parallel_engine.store import RunRecord, RunStore

InfoFn = Callable[[str], None]


# -- what a pool reports ------------------------------------------------------------------------
@dataclass(frozen=True)
class Started:
    """An attempt was claimed and runs on `status.worker` (its record comes when it ends)."""

    status: AttemptStatus


@dataclass(frozen=True)
class Finished:
    """An attempt ended and its record is in the store. An `infra` end (it never started) says
    why in `status.reason`: the scheduler counts identical reasons (INFRA_FAILURE_LIMIT)."""

    status: AttemptStatus


@dataclass(frozen=True)
class WorkerFailed:
    """A worker failed before it ran any attempt, so no attempt carries the failure (a reuse VM
    whose worker never reported). Counted like an `infra` end; `fix` is the hint to show if
    the scheduler stops the run for it."""

    worker: str
    reason: str
    noun: str = "worker"  # what the user calls a worker of this backend: "VM"
    fix: str = ""


@dataclass(frozen=True)
class PoolFailed:
    """The pool cannot go on (its store vanished, a worker thread died, Google refused us): the
    scheduler stops the run with this error, after stopping every worker."""

    error: ParallelEngineError


Event = Started | Finished | WorkerFailed | PoolFailed


class OnEvent(Protocol):
    """Where a pool reports (the scheduler's inbox): called from any thread; the scheduler applies
    the events in the order they came."""

    def __call__(self, event: Event) -> None: ...

    def caught_up(self) -> bool:
        """True once the scheduler has applied every event sent so far, so its verdicts on them
        are taken (a retry submitted, or the run stopping). A pool that is about to spend on what
        it reported (start a VM for what is open) asks first: a verdict is never too late."""


def verdicts_taken(on_event: OnEvent, stop: threading.Event, timeout: float, step: float = 0.005) -> bool:
    """Wait until the scheduler has applied every event `on_event` carried (`caught_up`), at most
    `timeout` seconds: what a pool calls before it spends on facts it reported (a VM for what is
    open). False if it did not catch up in time, or `stop` was set (the run is stopping)."""
    deadline = time.monotonic() + timeout
    while not on_event.caught_up():
        if time.monotonic() > deadline or stop.wait(step):
            return False
    return not stop.is_set()


class Pool(Protocol):
    """A backend's workers for one run, as the scheduler drives them. Every method but `check`
    is called from the scheduler's thread; events may come from any thread."""

    def start(self) -> None:
        """Get ready to run attempts (threads, a monitor); create nothing the run does not need yet."""

    def submit(self, task: Task, attempt: int) -> None:
        """Make this attempt claimable by a worker; never blocks on the workers."""

    def cancel(self) -> None:
        """Stop every worker; each attempt that was running ends as `cancelled` (a `Finished`)."""

    def close(self) -> None:
        """Release the workers once the run is over (idempotent, also after `cancel`)."""

    def check(self) -> None:
        """Raise if the pool can no longer report (a worker died, its store is gone): called when
        no event came, so a silent pool cannot keep the run waiting forever."""


@dataclass(frozen=True)
class Plan:
    """What a backend contributes to one run: its part of run.json's spec (`runtime` at least),
    how to make its pool (given where to send events), and a last net once the run is over."""

    spec: dict[str, Any]
    make_pool: Callable[[OnEvent], Pool]
    cleanup: Callable[[], None] = field(default=lambda: None)


@dataclass(frozen=True)
class Built:
    """What `build` made: the image id (local) or the pushed digest (gce), and a line to show."""

    ref: str
    summary: str


class Backend(Protocol):
    """Where workers come from. Made from a checked `Config` (`backend_for`); cheap to make:
    nothing is created or asked of a cloud until a method needs it.

    Where the next features go (docs/architecture.md, "What comes next"): `reap` lists the backend's labelled workers; `doctor` and `run --dry-run` ask the backend
    what `plan` would need, without `make_pool`.
    """

    #: The name in `BACKEND` and in run.json.
    name: ClassVar[str]
    #: True when workers carry on without their orchestrator (VMs); False when they die with it
    #: (threads of the orchestrator): then an interrupted run's unrecorded attempts are lost.
    workers_outlive_orchestrator: ClassVar[bool]
    #: How a report names the busy time of its workers, and what that figure leaves out.
    busy_time: ClassVar[tuple[str, str]]

    def __init__(self, config: Config) -> None: ...

    @classmethod
    def check_config(cls, config: Config) -> None:
        """Raise ConfigError for what this backend cannot start without (all of it at once)."""

    @classmethod
    def default_quota(cls) -> int:
        """Workers at once when VM_QUOTAS is unset."""

    def open_store(self) -> RunStore:
        """The run store to write: a local folder, or the bucket."""

    def existing_store(self) -> RunStore:
        """The run store to read: one that does not exist is an error, never an empty store."""

    def plan(self, store: RunStore, run_id: str, quota: int, tasks: tuple[Task, ...], say: InfoFn) -> Plan:
        """Everything the run needs of this backend, checked before run.json is written: a bad
        setting is one clear error while nothing exists yet."""

    def resume(self, store: RunStore, record: RunRecord, running: list[AttemptStatus], say: InfoFn) -> Plan:
        """A plan to take over `record`'s run (nobody orchestrates it, its lease is ours), made
        from what the run recorded, not from today's settings. `running` are the attempts its
        workers claimed and never recorded: the pool re-attaches to the workers that still run
        them, or settles each as a `Finished` fact (`lost`) once it knows the worker is gone."""

    def build(self, context: Path, on_line: InfoFn) -> Built:
        """Build CONTEXT into IMAGE where this backend's workers can run it."""

    def down(self, run_id: str) -> str:
        """Remove whatever of the run is still running (from any machine where it can be
        reached), record what it stopped, and say what was removed."""

    def reap(self, older_than_s: float, delete: bool) -> list[str]:
        """One line per worker (older than `older_than_s`) that no run needs any more: its run is
        over or unknown to the store, or nobody orchestrates it and it stopped its heartbeat;
        each removed when `delete`."""

    def render(self, run_id: str, task: tuple[str, int] | None, vm_request: bool, say: InfoFn) -> str:
        """Exactly what this backend gives a worker (the gce startup script or VM request)."""

    def doctor(self) -> Iterator[Check]:
        """This backend's checks of everything a run needs (parallel_engine/doctor.py), each as it is made."""

    def debug_runtime(self, say: InfoFn) -> Runtime:
        """The runtime a worker of this backend runs a task with, ready on this machine (its
        image present), for `debug` to start one task exactly as a worker would."""


# -- the registry ---------------------------------------------------------------------------
#: Each backend's class, as "module:Class", imported only when that backend is used (a local
#: run never imports a Google library).
BACKENDS: dict[str, str] = {
    "local": "parallel_engine.backends.local.backend:LocalBackend",
    "gce": "parallel_engine.backends.gce.backend:GceBackend",
}
BACKEND_NAMES: tuple[str, ...] = tuple(BACKENDS)


def backend_class(name: str) -> type[Backend]:
    """The class of the backend called `name`."""
    where = BACKENDS.get(name)
    if where is None:
        raise ConfigError(f"unknown backend {name!r}", hint=f"BACKEND is one of: {', '.join(BACKEND_NAMES)}")
    module, _, attribute = where.partition(":")
    found: type[Backend] = getattr(importlib.import_module(module), attribute)
    return found


def backend_for(config: Config) -> Backend:
    """The backend `config` names, made from it."""
    return backend_class(config.backend)(config)
