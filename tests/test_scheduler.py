"""The scheduler's decisions over a scripted in-memory pool (tests/helpers.py: ScriptedPool): no
process, no store, so each case is exact and fast. Retries within each budget, the budgets kept
apart, INFRA_FAILURE_LIMIT decided here, a failed pool, and a cancel; how a cancel races with
starts and ends is tests/test_scheduler_cancel.py."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from parallel_engine.backends.base import Finished, PoolFailed, Started, WorkerFailed
from parallel_engine.errors import BackendError, StoreError
from parallel_engine.model import AttemptState, AttemptStatus, Task, TaskState
from parallel_engine.scheduler import Inbox, Outcome, Scheduler
from parallel_engine.state import Budgets
from tests.helpers import FAILED, SUCCEEDED, Outcome as Ended, Script, ScriptedPool, outcomes, run_with_deadline

PREEMPTED: Ended = (AttemptState.PREEMPTED, None, "VM preempted")
LOST: Ended = (AttemptState.LOST, None, "VM went away")
TIMEOUT: Ended = (AttemptState.TIMEOUT, None, "timed out after 1 s")
PULL_FAILED: Ended = (AttemptState.INFRA, None, "image pull failed: not found")


def run(tasks: int, script: Script, budgets: Budgets, quota: int = 2,
        cancel: threading.Event | None = None) -> tuple[Outcome, ScriptedPool]:
    pools: list[ScriptedPool] = []

    def make_pool(on_event: Any) -> ScriptedPool:
        pools.append(ScriptedPool(on_event, script, quota))
        return pools[0]

    scheduler = Scheduler(tuple(Task(f"t{i}") for i in range(tasks)), budgets, make_pool)
    try:
        return run_with_deadline(scheduler, cancel or threading.Event()), pools[0]
    finally:
        assert pools[0].closed, "the scheduler closes its pool however the run ends"


def states(outcome: Outcome, task: str = "t0") -> list[AttemptState]:
    return [attempt.state for attempt in outcome.attempts[task]]


def test_a_failing_task_is_retried_until_it_succeeds_within_retries() -> None:
    outcome, pool = run(1, outcomes(FAILED, FAILED, SUCCEEDED), Budgets(retries=2))
    assert outcome.states == {"t0": TaskState.SUCCEEDED} and not outcome.cancelled
    assert states(outcome) == [AttemptState.FAILED, AttemptState.FAILED, AttemptState.SUCCEEDED]
    assert pool.submitted == [("t0", 1), ("t0", 2), ("t0", 3)]


def test_a_task_that_spends_its_retries_fails_with_its_last_attempt() -> None:
    outcome, pool = run(3, outcomes(FAILED), Budgets(retries=1))
    assert set(outcome.states.values()) == {TaskState.FAILED}
    assert all(states(outcome, task) == [AttemptState.FAILED] * 2 for task in outcome.states)
    assert len(pool.submitted) == 6


def test_timeouts_spend_the_program_budget() -> None:
    outcome, _ = run(1, outcomes(TIMEOUT, TIMEOUT, SUCCEEDED), Budgets(retries=1, infra_retries=5))
    assert outcome.states == {"t0": TaskState.FAILED}
    assert states(outcome) == [AttemptState.TIMEOUT, AttemptState.TIMEOUT]


def test_preemptions_and_losses_spend_their_own_budget_not_the_programs() -> None:
    # retries=0: a program failure is final; the two preemptions and the loss are not its fault.
    outcome, _ = run(1, outcomes(PREEMPTED, LOST, PREEMPTED, SUCCEEDED), Budgets(retries=0, infra_retries=3))
    assert outcome.states == {"t0": TaskState.SUCCEEDED}
    assert states(outcome) == [AttemptState.PREEMPTED, AttemptState.LOST, AttemptState.PREEMPTED,
                               AttemptState.SUCCEEDED]


def test_a_task_lost_more_often_than_its_budget_allows_fails() -> None:
    outcome, _ = run(1, outcomes(LOST), Budgets(retries=5, infra_retries=2))
    assert outcome.states == {"t0": TaskState.FAILED}
    assert states(outcome) == [AttemptState.LOST] * 3


def test_identical_infra_failures_up_to_the_limit_stop_the_run_and_its_pool() -> None:
    with pytest.raises(BackendError) as raised:
        run(4, outcomes(PULL_FAILED), Budgets(infra_retries=3, infra_failure_limit=3), quota=1)
    assert raised.value.message == "stopping early: 3 attempts failed the same way before starting: image pull failed: not found"
    assert "parallel-engine logs" in (raised.value.hint or "")


def test_infra_failures_for_different_reasons_do_not_add_up() -> None:
    reasons = iter(f"image pull failed: reason {n}" for n in range(100))
    lock = threading.Lock()

    def each_its_own(task: Task, attempt: int) -> Ended:
        with lock:
            return AttemptState.INFRA, None, next(reasons)

    outcome, _ = run(3, each_its_own, Budgets(infra_retries=1, infra_failure_limit=2))
    assert set(outcome.states.values()) == {TaskState.FAILED}
    assert all(states(outcome, task) == [AttemptState.INFRA] * 2 for task in outcome.states)


def test_without_a_limit_infra_failures_only_spend_the_budget() -> None:
    outcome, _ = run(3, outcomes(PULL_FAILED), Budgets(infra_retries=2, infra_failure_limit=None))
    assert set(outcome.states.values()) == {TaskState.FAILED}


class FailingWorkersPool(ScriptedPool):
    """Workers that never report (as a gce VM whose startup fails): no attempt carries it."""

    def start(self) -> None:
        for index in range(3):
            self.on_event(WorkerFailed(f"vm-{index}", "the VM's worker never reported", noun="VM",
                                       fix="fix the VM settings"))


def test_workers_that_fail_before_any_attempt_count_toward_the_limit_and_are_named_as_the_pool_says() -> None:
    scheduler = Scheduler((Task("t0"),), Budgets(infra_failure_limit=2),
                          lambda on_event: FailingWorkersPool(on_event, outcomes(SUCCEEDED)))
    with pytest.raises(BackendError) as raised:
        run_with_deadline(scheduler, threading.Event())
    assert raised.value.message == ("stopping early: 2 VMs failed the same way before running any attempt: "
                                    "the VM's worker never reported")
    assert raised.value.hint == "fix the VM settings"


def test_a_failed_pool_stops_the_run_with_its_own_error_and_is_cancelled_and_closed() -> None:
    def broken(task: Task, attempt: int) -> Ended:
        raise StoreError("the run's folder is gone", hint="the run stops here")

    with pytest.raises(StoreError, match="the run's folder is gone"):
        run(2, broken, Budgets())
    # (run() asserts the pool was closed; a cancelled one starts nothing more)


def test_a_cancel_ends_running_attempts_cancelled_and_queued_tasks_never_start() -> None:
    cancel = threading.Event()
    started = threading.Event()

    def until_cancelled(task: Task, attempt: int) -> Ended:
        raise AssertionError("only the cancel ends an attempt here")

    pools: list[ScriptedPool] = []

    def make_pool(on_event: Any) -> ScriptedPool:
        def report(event: Any) -> None:
            on_event(event)
            if isinstance(event, Started):
                started.set()

        report.caught_up = on_event.caught_up  # type: ignore[attr-defined]
        pools.append(ScriptedPool(report, until_cancelled, quota=1, delay=lambda: 60.0))
        return pools[0]

    scheduler = Scheduler((Task("t0"), Task("t1"), Task("t2")), Budgets(retries=3), make_pool)
    threading.Thread(target=lambda: started.wait(30) and cancel.set(), daemon=True).start()
    outcome = run_with_deadline(scheduler, cancel)
    assert outcome.cancelled
    assert set(outcome.states.values()) == {TaskState.CANCELLED}
    running = [task for task, history in outcome.attempts.items() if history]
    assert len(running) == 1 and states(outcome, running[0]) == [AttemptState.CANCELLED]
    assert len(pools[0].submitted) == 3  # no retry of a cancelled attempt


def test_the_inbox_is_caught_up_only_once_the_scheduler_applied_every_event() -> None:
    inbox = Inbox()
    assert inbox.caught_up()
    status = AttemptStatus("t0", 1, AttemptState.RUNNING)
    inbox(Started(status))
    inbox(Finished(status))
    assert not inbox.caught_up()
    assert len(inbox.drain()) == 2 and not inbox.caught_up()  # taken, not yet applied
    inbox.applied += 2
    assert inbox.caught_up()
    inbox(PoolFailed(StoreError("x")))
    assert not inbox.caught_up()
