"""Pure decisions over attempt records: a task's state, and whether it gets another attempt.

Kept free of I/O so the scheduler, `status` and `collect` agree, and so it is trivially testable.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from parallel_engine.model import (
    INFRA_FAILURES,
    PROGRAM_FAILURES,
    AttemptState,
    AttemptStatus,
    TaskState,
)


@dataclass(frozen=True)
class Budgets:
    """Separate budgets: a flaky program is not a preempted VM."""

    retries: int = 0  # program failures and timeouts
    infra_retries: int = 3  # preemptions, lost workers, attempts that never started
    #: Identical infra failures (same reason) that end the run early; None: never.
    infra_failure_limit: int | None = None


def retry_allowed(attempts: list[AttemptStatus], budgets: Budgets) -> bool:
    """True if the last (finished, unsuccessful) attempt may be followed by another."""
    if not attempts:
        return True
    last = attempts[-1]
    if last.state in (AttemptState.SUCCEEDED, AttemptState.RUNNING, AttemptState.CANCELLED):
        return False
    counts = Counter(a.state for a in attempts)
    program = sum(counts[s] for s in PROGRAM_FAILURES)
    infra = sum(counts[s] for s in INFRA_FAILURES)
    if last.state in PROGRAM_FAILURES:
        return program <= budgets.retries
    return infra <= budgets.infra_retries


def task_state(attempts: list[AttemptStatus], budgets: Budgets, run_cancelled: bool = False) -> TaskState:
    if any(a.state is AttemptState.SUCCEEDED for a in attempts):
        return TaskState.SUCCEEDED
    if attempts and attempts[-1].state is AttemptState.RUNNING:
        return TaskState.RUNNING
    if attempts and attempts[-1].state is AttemptState.CANCELLED:
        return TaskState.CANCELLED
    if attempts and not retry_allowed(attempts, budgets):
        return TaskState.FAILED
    return TaskState.CANCELLED if run_cancelled else TaskState.QUEUED


def winning_attempt(attempts: list[AttemptStatus]) -> AttemptStatus | None:
    """The first succeeded attempt is the task's result; otherwise the last one tells why."""
    for attempt in attempts:
        if attempt.state is AttemptState.SUCCEEDED:
            return attempt
    return attempts[-1] if attempts else None
