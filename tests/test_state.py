"""The pure decisions: task state and retry budgets."""

from __future__ import annotations

from parallel_engine.model import AttemptState as A
from parallel_engine.model import AttemptStatus, TaskState
from parallel_engine.state import Budgets, retry_allowed, task_state, winning_attempt


def attempts(*states: A) -> list[AttemptStatus]:
    return [AttemptStatus("t", n, s, exit_code=0 if s is A.SUCCEEDED else 1) for n, s in enumerate(states, 1)]


def test_no_attempt_is_queued() -> None:
    assert task_state([], Budgets()) is TaskState.QUEUED


def test_program_failures_use_the_retries_budget() -> None:
    budgets = Budgets(retries=1, infra_retries=5)
    assert retry_allowed(attempts(A.FAILED), budgets)
    assert not retry_allowed(attempts(A.FAILED, A.TIMEOUT), budgets)
    assert task_state(attempts(A.FAILED, A.TIMEOUT), budgets) is TaskState.FAILED


def test_preemptions_do_not_spend_the_program_budget() -> None:
    budgets = Budgets(retries=0, infra_retries=2)
    assert retry_allowed(attempts(A.PREEMPTED, A.LOST), budgets)
    assert not retry_allowed(attempts(A.PREEMPTED, A.LOST, A.INFRA), budgets)
    assert not retry_allowed(attempts(A.PREEMPTED, A.FAILED), budgets)


def test_first_success_wins_even_after_later_attempts() -> None:
    history = attempts(A.FAILED, A.SUCCEEDED, A.FAILED)
    assert task_state(history, Budgets()) is TaskState.SUCCEEDED
    assert winning_attempt(history).attempt == 2


def test_cancelled_run_turns_queued_tasks_cancelled() -> None:
    assert task_state([], Budgets(), run_cancelled=True) is TaskState.CANCELLED
    assert task_state(attempts(A.CANCELLED), Budgets()) is TaskState.CANCELLED
