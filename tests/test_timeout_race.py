"""A timeout (or a cancel) that lands as the program exits: an attempt that ended by itself is
judged by its exit code, and `timeout`/`cancelled` mean only that we stopped it while it ran."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from parallel_engine.model import AttemptState, Task, TaskState
from parallel_engine.runtimes.base import AttemptSpec
from parallel_engine.runtimes.process import ProcessAttempt, ProcessRuntime
from parallel_engine.state import Budgets
from parallel_engine.store import local_store
from tests.helpers import process_spec, run_to_the_end

DEADLINE_S = 30.0


def wait_until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


class _KillAfterExit:
    """A process attempt held in the worst interleaving: the program has exited by itself, then
    the timeout's kill runs, and only then does the worker reap it."""

    def __init__(self, inner: ProcessAttempt) -> None:
        self.inner = inner
        self.kill_tried = threading.Event()

    def wait(self, timeout: float | None) -> int | None:
        wait_until(self.inner._exited, "the program to exit by itself")
        assert self.kill_tried.wait(DEADLINE_S), "the timeout never fired"
        return self.inner.wait(timeout)

    def kill(self) -> None:
        self.inner.kill()
        self.kill_tried.set()

    def killed(self) -> bool:
        return self.inner.killed()

    def exit_reason(self) -> str | None:
        return self.inner.exit_reason()


class KillAfterExitRuntime:
    name = "process"

    def __init__(self) -> None:
        self.inner = ProcessRuntime()

    def start(self, spec: AttemptSpec) -> _KillAfterExit:
        return _KillAfterExit(self.inner.start(spec))

    def close(self) -> None:
        pass


def test_program_that_exits_0_as_its_timeout_fires_is_succeeded_and_not_run_again(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    task = Task("t1", command=("sh", "-c", 'echo done > "$PE_OUTPUT_DIR/out"'))
    outcome = run_to_the_end(store, KillAfterExitRuntime(), (task,), Budgets(retries=1), timeout_s=0.2)
    assert outcome.states == {"t1": TaskState.SUCCEEDED}
    (attempt,) = store.attempts("r1")["t1"]  # its retry budget untouched: it did not time out
    assert (attempt.state, attempt.exit_code, attempt.reason) == (AttemptState.SUCCEEDED, 0, "")
    assert (tmp_path / "runs/r1/tasks/t1/1/outputs/out").read_text() == "done\n"


def test_program_that_exits_1_as_its_timeout_fires_is_failed_with_its_own_exit_code(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    task = Task("t1", command=("sh", "-c", "exit 1"))
    run_to_the_end(store, KillAfterExitRuntime(), (task,), Budgets(), timeout_s=0.2)
    (attempt,) = store.attempts("r1")["t1"]
    assert (attempt.state, attempt.exit_code) == (AttemptState.FAILED, 1)


# Exits 0 as soon as SIGTERM comes: an exit code of 0 that does not mean the work was done.
TRAPS_TERM = ("sh", "-c", 'trap "exit 0" TERM; echo running > "$PE_OUTPUT_DIR/running"; sleep 300 & wait')


def test_program_killed_by_its_timeout_is_timeout_even_if_it_exits_0_on_sigterm(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    run_to_the_end(store, ProcessRuntime(), (Task("t1", command=TRAPS_TERM),), Budgets(), timeout_s=0.5)
    (attempt,) = store.attempts("r1")["t1"]
    assert (attempt.state, attempt.exit_code) == (AttemptState.TIMEOUT, 0)
    assert attempt.reason == "timed out after 0.5 s"


def test_program_stopped_by_a_cancel_is_cancelled_even_if_it_exits_0_on_sigterm(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    cancel = threading.Event()
    running = tmp_path / "runs/r1/tasks/t1/1/outputs/running"
    threading.Thread(target=lambda: (wait_until(running.exists, "the task to run"), cancel.set()), daemon=True).start()
    outcome = run_to_the_end(store, ProcessRuntime(), (Task("t1", command=TRAPS_TERM),), Budgets(), cancel=cancel)
    assert outcome.cancelled and outcome.states == {"t1": TaskState.CANCELLED}
    (attempt,) = store.attempts("r1")["t1"]
    assert (attempt.state, attempt.exit_code) == (AttemptState.CANCELLED, 0)


def test_kill_of_a_program_that_already_exited_says_it_was_not_killed(tmp_path: Path) -> None:
    attempt = ProcessRuntime().start(process_spec(tmp_path, ("sh", "-c", "exit 4")))
    wait_until(attempt._exited, "the program to exit")
    attempt.kill()
    assert attempt.wait(None) == 4 and not attempt.killed()


def test_kill_of_a_running_program_says_it_was_killed(tmp_path: Path) -> None:
    attempt = ProcessRuntime().start(process_spec(tmp_path, ("sleep", "300")))
    assert attempt.wait(0.2) is None
    attempt.kill()
    assert attempt.wait(None) == 128 + 15 and attempt.killed()

