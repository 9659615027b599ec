"""The scheduler seeded with a run's attempts (`resume`), over a scripted in-memory pool: each
task goes on from where its history stops, under the same budgets as a live run."""

from __future__ import annotations

import threading
import time
from typing import Any

from parallel_engine.backends.base import Finished
from parallel_engine.model import AttemptState, AttemptStatus, Task, TaskState
from parallel_engine.scheduler import Scheduler
from parallel_engine.state import Budgets
from tests.helpers import SUCCEEDED, ScriptedPool, outcomes, run_with_deadline


def ended(task_id: str, attempt: int, state: AttemptState) -> AttemptStatus:
    return AttemptStatus(task_id, attempt, state, 0 if state is AttemptState.SUCCEEDED else 1, 1.0, 2.0, "w", "")


class AdoptingPool(ScriptedPool):
    """What a resumed pool does first: the attempt its dead orchestrator's worker held is gone (`lost`)."""

    def start(self) -> None:
        self.on_event(Finished(AttemptStatus("running", 1, AttemptState.LOST, None, None, time.time(), "w", "gone")))
        super().start()


def test_a_resumed_run_goes_on_from_each_tasks_history() -> None:
    history = {
        "succeeded": [ended("succeeded", 1, AttemptState.SUCCEEDED)],
        "retry-due": [ended("retry-due", 1, AttemptState.FAILED)],
        "spent": [ended("spent", 1, AttemptState.FAILED), ended("spent", 2, AttemptState.FAILED)],
        "cancelled": [ended("cancelled", 1, AttemptState.CANCELLED)],
        "running": [AttemptStatus("running", 1, AttemptState.RUNNING, worker="w")],
    }
    pools: list[AdoptingPool] = []

    def make_pool(on_event: Any) -> AdoptingPool:
        pools.append(AdoptingPool(on_event, outcomes(SUCCEEDED)))
        return pools[0]

    tasks = tuple(Task(task_id) for task_id in ("new", *history))
    scheduler = Scheduler(tasks, Budgets(retries=1, infra_retries=1), make_pool, history=history)
    outcome = run_with_deadline(scheduler, threading.Event())
    assert sorted(pools[0].submitted) == [("cancelled", 2), ("new", 1), ("retry-due", 2), ("running", 2)]
    assert outcome.states == {"new": TaskState.SUCCEEDED, "succeeded": TaskState.SUCCEEDED,
                              "retry-due": TaskState.SUCCEEDED, "spent": TaskState.FAILED,
                              "cancelled": TaskState.SUCCEEDED, "running": TaskState.SUCCEEDED}
    assert [a.state for a in outcome.attempts["running"]] == [AttemptState.LOST, AttemptState.SUCCEEDED]
    assert not outcome.cancelled
