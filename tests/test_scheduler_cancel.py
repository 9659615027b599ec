"""A cancel ends the scheduler whatever order its events arrive in, and every task is closed.

The pools here are simulations driven from the scheduler's own calls (`submit`, `check` when
it finds no event, `cancel`, `close`), so each interleaving is exact and replayable by its seed.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from parallel_engine import scheduler as scheduler_module
from parallel_engine.backends.base import Finished, OnEvent, Started
from parallel_engine.model import AttemptState, AttemptStatus, Task, TaskState
from parallel_engine.scheduler import Scheduler
from parallel_engine.state import Budgets
from tests.helpers import run_with_deadline


def _status(task_id: str, attempt: int, state: AttemptState) -> AttemptStatus:
    return AttemptStatus(task_id, attempt, state, started_at=time.time())


class StartedInFlightPool:
    """t1 starts and its `started` is read; then the cancel lands while t2's `started` is still queued."""

    def __init__(self, on_event: OnEvent, cancel: threading.Event) -> None:
        self.on_event, self.cancel_event = on_event, cancel
        self.statuses: dict[str, AttemptStatus] = {}

    def start(self) -> None:
        pass

    def submit(self, task: Task, attempt: int) -> None:
        if task.id == "t1":
            self._start("t1")

    def check(self) -> None:  # the scheduler read t1's `started` and found nothing more
        if not self.cancel_event.is_set():
            self.cancel_event.set()
            self._start("t2")  # a worker started t2 just now: its event waits in the queue

    def cancel(self) -> None:  # both attempts are killed; their ends land in the same batch
        for task_id in ("t2", "t1"):
            status = self.statuses[task_id]
            status.state, status.finished_at = AttemptState.CANCELLED, time.time()
            self.on_event(Finished(status))

    def close(self) -> None:
        pass

    def _start(self, task_id: str) -> None:
        self.statuses[task_id] = _status(task_id, 1, AttemptState.RUNNING)
        self.on_event(Started(self.statuses[task_id]))


def test_cancel_while_a_started_event_is_queued_ends_the_run_with_every_task_cancelled() -> None:
    cancel = threading.Event()
    scheduler = Scheduler((Task("t1"), Task("t2")), Budgets(retries=0),
                          lambda on_event: StartedInFlightPool(on_event, cancel))
    outcome = run_with_deadline(scheduler, cancel)
    assert outcome.cancelled
    assert outcome.states == {"t1": TaskState.CANCELLED, "t2": TaskState.CANCELLED}
    assert [a.state for a in outcome.attempts["t2"]] == [AttemptState.CANCELLED]


class SimulatedPool:
    """Workers simulated step by step: each time the scheduler finds no event, a random burst of
    starts and ends (and, at a random step, the cancel) happens, some of it after the cancel, as
    workers that had already taken an attempt do. On cancel every running attempt ends, in random
    order, and some workers still start what they had taken (then it is killed at once)."""

    def __init__(self, on_event: OnEvent, rng: random.Random, cancel: threading.Event, quota: int,
                 cancel_at: int) -> None:
        self.on_event, self.rng, self.cancel_event = on_event, rng, cancel
        self.quota, self.cancel_at, self.steps = quota, cancel_at, 0
        self.pending: list[tuple[Task, int]] = []
        self.running: list[AttemptStatus] = []
        self.cancelled = False
        self.taken: list[tuple[Task, int]] = []  # dequeued by a worker before the cancel
        self.started_after_cancel = 0

    def start(self) -> None:
        pass

    def submit(self, task: Task, attempt: int) -> None:
        self.pending.append((task, attempt))

    def check(self) -> None:
        if self.cancelled:
            return  # nothing starts or ends any more: the scheduler must not wait for it
        self.steps += 1
        for _ in range(self.rng.randint(1, 4)):
            self._step()
        if self.steps == self.cancel_at:
            self.cancel_event.set()
            for _ in range(self.rng.randint(0, 3)):  # events that land right after the signal
                self._step()
            self.taken = [self.pending.pop(0) for _ in range(min(len(self.pending), self.rng.randint(0, 2)))]

    def cancel(self) -> None:
        self.cancelled = True
        ending = self.running + [self._started(task, attempt) for task, attempt in self.taken]
        self.started_after_cancel = len(self.taken)
        self.running = []
        self.rng.shuffle(ending)
        for status in ending:
            self._end(status, AttemptState.CANCELLED)

    def close(self) -> None:
        pass

    def _step(self) -> None:
        can_start = self.pending and len(self.running) < self.quota
        if can_start and (not self.running or self.rng.random() < 0.5):
            task, attempt = self.pending.pop(self.rng.randrange(len(self.pending)))
            self.running.append(self._started(task, attempt))
        elif self.running:
            status = self.running.pop(self.rng.randrange(len(self.running)))
            self._end(status, self.rng.choice([AttemptState.SUCCEEDED, AttemptState.FAILED, AttemptState.TIMEOUT]))

    def _started(self, task: Task, attempt: int) -> AttemptStatus:
        status = _status(task.id, attempt, AttemptState.RUNNING)
        self.on_event(Started(status))
        return status

    def _end(self, status: AttemptStatus, state: AttemptState) -> None:
        status.state, status.finished_at = state, time.time()
        self.on_event(Finished(status))


def test_cancel_at_random_moments_always_ends_with_every_task_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler_module, "EVENT_PAUSE_MIN_S", 0.0)  # no pause between simulated steps
    master = random.SystemRandom().randrange(2**32)
    for index in range(300):
        seed = master + index
        rng = random.Random(seed)
        cancel = threading.Event()
        tasks = tuple(Task(f"t{i}") for i in range(rng.randint(1, 12)))
        pools: list[SimulatedPool] = []

        def make_pool(on_event: OnEvent, rng: random.Random = rng, cancel: threading.Event = cancel) -> SimulatedPool:
            pools.append(SimulatedPool(on_event, rng, cancel, rng.randint(1, 4), cancel_at=rng.randint(1, 20)))
            return pools[0]

        scheduler = Scheduler(tasks, Budgets(retries=rng.randint(0, 2), infra_retries=0), make_pool)
        try:
            outcome = run_with_deadline(scheduler, cancel)
        except AssertionError as exc:
            raise AssertionError(f"seed {seed}: {exc}") from None
        closed = {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED}
        assert set(outcome.states.values()) <= closed, f"seed {seed}: {outcome.states}"
        for task_id, history in outcome.attempts.items():
            assert all(a.state is not AttemptState.RUNNING for a in history), f"seed {seed}: {task_id} {history}"
            if any(a.state is AttemptState.SUCCEEDED for a in history):
                assert outcome.states[task_id] is TaskState.SUCCEEDED, f"seed {seed}: {task_id}"
        assert outcome.cancelled == pools[0].cancelled, f"seed {seed}"
