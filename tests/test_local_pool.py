"""The local pool under faults: every attempt ends with a record, and the run always ends."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from parallel_engine.errors import BackendError
from parallel_engine.model import AttemptState, Task, TaskState
from parallel_engine.runtimes.process import ProcessRuntime
from parallel_engine.state import Budgets
from parallel_engine.store import local_store
from tests.helpers import RaisingRuntime, run_to_the_end


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

