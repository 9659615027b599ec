"""The local pool under faults: every attempt ends with a record, and the run always ends."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from parallel_engine.backends.local.pool import LocalPool
from parallel_engine.errors import BackendError
from parallel_engine.model import AttemptState, Task, TaskState
from parallel_engine.runtimes.base import AttemptSpec
from parallel_engine.runtimes.process import ProcessRuntime
from parallel_engine.scheduler import Outcome, Scheduler
from parallel_engine.state import Budgets
from parallel_engine.store import RunStore, local_store

DEADLINE_S = 60  # generous: a hang is what these tests catch, not slowness


class RaisingRuntime:
    """A runtime whose `start` (or the attempt's `wait`) raises what it is given."""

    name = "raising"

    def __init__(self, on_start: BaseException | None = None, on_wait: BaseException | None = None) -> None:
        self.on_start = on_start
        self.on_wait = on_wait

    def start(self, spec: AttemptSpec) -> Any:
        if self.on_start is not None:
            raise self.on_start
        runtime = self

        class Attempt:
            def wait(self, timeout: float | None) -> int | None:
                raise runtime.on_wait  # type: ignore[misc]

            def kill(self) -> None:
                pass

        return Attempt()

    def close(self) -> None:
        pass


def run_to_the_end(store: RunStore, runtime: Any, tasks: tuple[Task, ...], budgets: Budgets,
                   timeout_s: float | None = None, cancel: threading.Event | None = None) -> Outcome:
    """Run the scheduler over a LocalPool in a thread; fail (not hang) if it never ends."""
    store.add_run_folders("r1")
    scheduler = Scheduler(tasks, budgets, lambda on_event: LocalPool(store, "r1", runtime, 2, timeout_s, on_event))
    return run_with_deadline(scheduler, cancel or threading.Event())


def run_with_deadline(scheduler: Scheduler, cancel: threading.Event) -> Outcome:
    """`scheduler.run(cancel)` in a thread: its outcome, or what it raised; fails if it never ends."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["outcome"] = scheduler.run(cancel)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(DEADLINE_S)
    assert not thread.is_alive(), f"the run did not end within {DEADLINE_S} s"
    if "error" in result:
        raise result["error"]
    return result["outcome"]


def test_runtime_whose_start_raises_value_error_ends_the_run_with_infra_attempts(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    runtime = RaisingRuntime(on_start=ValueError("embedded null byte"))
    outcome = run_to_the_end(store, runtime, (Task("t1", ("x",)),), Budgets(infra_retries=1))
    assert outcome.states == {"t1": TaskState.FAILED}
    recorded = store.attempts("r1")["t1"]
    assert [a.state for a in recorded] == [AttemptState.INFRA, AttemptState.INFRA]
    assert "ValueError: embedded null byte" in recorded[0].reason


def test_nul_in_argv_reaching_the_process_runtime_is_a_recorded_infra_attempt(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    runtime = ProcessRuntime([sys.executable, "-c", "pass"])
    tasks = (Task("bad", ("a\0b",)), Task("good", ("ok",)))  # e.g. from a run.json no loader checked
    outcome = run_to_the_end(store, runtime, tasks, Budgets(infra_retries=0))
    assert outcome.states == {"bad": TaskState.FAILED, "good": TaskState.SUCCEEDED}
    (attempt,) = store.attempts("r1")["bad"]
    assert attempt.state is AttemptState.INFRA and "null byte" in attempt.reason


def test_attempt_that_fails_after_starting_ends_the_run_with_an_error_not_a_hang(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    runtime = RaisingRuntime(on_wait=RuntimeError("the engine went away"))
    with pytest.raises(BackendError, match="RuntimeError: the engine went away"):
        run_to_the_end(store, runtime, (Task("t1", ("x",)),), Budgets())


class WorkerKiller(BaseException):
    """Not an Exception: nothing in the worker may swallow it, so its thread dies."""


def test_dead_worker_thread_ends_the_run_with_an_error_not_a_hang(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    with pytest.raises(BackendError, match="stopped unexpectedly .*WorkerKiller"):
        run_to_the_end(store, RaisingRuntime(on_start=WorkerKiller("gone")), (Task("t1", ("x",)),), Budgets())

