"""The only place that decides: what to start, what to retry, when the run is over.

It drives a backend's `Pool` (parallel_engine/backends/base.py) and folds the facts the pool
reports (`Started`, `Finished`, `WorkerFailed`, `PoolFailed`) into task states; retries follow
the budgets (state.py), and INFRA_FAILURE_LIMIT identical infra failures end the run early.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from parallel_engine.backends.base import Event, Finished, OnEvent, Pool, PoolFailed, Started, WorkerFailed
from parallel_engine.crash import crash_point
from parallel_engine.errors import BackendError
from parallel_engine.model import AttemptState, AttemptStatus, Task, TaskState
from parallel_engine.state import Budgets, retry_allowed, task_state

ProgressFn = Callable[[Counter[str]], None]

# A progress callback at most this often: counting is O(1) per event, drawing is not free.
PROGRESS_INTERVAL_S = 0.1
# The scheduler drains its events in batches, pausing between drains rather than being woken
# by each one: a wake per event (a Condition round trip and a GIL handoff) was most of its cost
# on short tasks (bench/local_overhead.py). The pause doubles while nothing arrives, up to the max.
EVENT_PAUSE_MIN_S = 0.005
EVENT_PAUSE_MAX_S = 0.1


@dataclass
class Outcome:
    states: dict[str, TaskState]
    attempts: dict[str, list[AttemptStatus]]
    cancelled: bool

    @property
    def counts(self) -> Counter[str]:
        return Counter(str(s) for s in self.states.values())


class _States(dict[str, TaskState]):
    """Task states that keep their own counts, so a progress report costs O(1) per event, not O(tasks)."""

    def __init__(self, task_ids: list[str]) -> None:
        super().__init__((task_id, TaskState.QUEUED) for task_id in task_ids)
        self._counts: Counter[TaskState] = Counter({TaskState.QUEUED: len(task_ids)} if task_ids else {})

    @property
    def counts(self) -> Counter[str]:
        return Counter({str(state): n for state, n in self._counts.items() if n})

    @property
    def open(self) -> int:
        """Tasks not closed yet: read from the states themselves, so no event order can make it drift."""
        return self._counts[TaskState.QUEUED] + self._counts[TaskState.RUNNING]

    def __setitem__(self, task_id: str, state: TaskState) -> None:
        counts = self._counts
        old = self.get(task_id)
        if old is not None:
            counts[old] -= 1
        counts[state] += 1
        super().__setitem__(task_id, state)


class Inbox:
    """The events a pool sends, in arrival order, and how many the scheduler has applied: what
    `OnEvent.caught_up` answers. Never blocked on (see Scheduler.run)."""

    def __init__(self) -> None:
        # Never blocked on: on CPython 3.11 a signal handler that runs inside
        # SimpleQueue.get(timeout) and outlasts the timeout leaves get() blocked for good.
        self._queue: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._sent = 0
        self.applied = 0  # written by the scheduler's thread only

    def __call__(self, event: Event) -> None:
        with self._lock:
            self._sent += 1
        self._queue.put(event)

    def caught_up(self) -> bool:
        with self._lock:
            return self.applied >= self._sent

    def drain(self) -> list[Event]:
        """Every event waiting, without blocking."""
        batch: list[Event] = []
        while True:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                return batch


class Scheduler:
    def __init__(
        self,
        tasks: tuple[Task, ...],
        budgets: Budgets,
        make_pool: Callable[[OnEvent], Pool],
        progress: ProgressFn | None = None,
        history: dict[str, list[AttemptStatus]] | None = None,
    ) -> None:
        """`history`: the attempts a run already has in the store (`resume`): a task with none
        starts at attempt 1; one whose last attempt ended is decided as if that end had just
        come (a retry, or closed), except a cancelled one, which runs again; one still running
        waits for its end, which the pool reports."""
        self.tasks = {task.id: task for task in tasks}
        self.budgets = budgets
        self.progress = progress
        self.events = Inbox()
        self.pool = make_pool(self.events)
        self.attempts: dict[str, list[AttemptStatus]] = {task_id: [] for task_id in self.tasks}
        self._history = history or {}
        self._infra: Counter[str] = Counter()  # identical infra failures, by reason
        self._reported_at = 0.0

    def run(self, cancel: threading.Event) -> Outcome:
        states = _States(list(self.tasks))
        self.pool.start()
        for task in self.tasks.values():
            past = self._history.get(task.id)
            if not past:
                self.pool.submit(task, 1)
            elif past[-1].state is AttemptState.RUNNING:
                self.attempts[task.id] = list(past)
                states[task.id] = TaskState.RUNNING
            elif past[-1].state is AttemptState.CANCELLED:
                # Stopped by a cancel whose run never recorded its end (the orchestrator died
                # during it): resuming is finishing the run, so the task runs again, outside the budgets.
                self.attempts[task.id] = list(past)
                self.pool.submit(task, past[-1].attempt + 1)
            else:
                self.attempts[task.id] = list(past[:-1])
                self._close(past[-1], states, False)
        self._report(states)
        cancelled = False
        pause = EVENT_PAUSE_MIN_S
        try:
            while states.open:
                if cancel.is_set() and not cancelled:
                    cancelled = True
                    self.pool.cancel()
                    # Queued tasks never start now; running ones end as cancelled. A task whose
                    # `started` is still on its way is among the queued: that event makes it
                    # running again, and its `finished` closes it.
                    for task_id in [t for t, state in states.items() if state is TaskState.QUEUED]:
                        states[task_id] = TaskState.CANCELLED
                    continue
                batch = self.events.drain()
                if not batch:
                    self.pool.check()  # a dead worker sends nothing: never wait on it forever
                    time.sleep(pause)  # interrupted by a signal's handler, then resumed (PEP 475)
                    pause = min(pause * 2, EVENT_PAUSE_MAX_S)
                    continue
                pause = EVENT_PAUSE_MIN_S
                for event in batch:
                    self._apply(event, states, cancelled)
                    self.events.applied += 1  # after its verdict: a pool waiting on it may go on
                self._report(states, final=False)
        except BaseException:
            if not cancelled:  # whatever went wrong, no attempt outlives the run
                cancelled = True
                self.pool.cancel()
            raise
        finally:
            if not cancelled and cancel.is_set():  # a signal after the last task closed
                self.pool.cancel()
            self.pool.close()
        # Events that raced with the end (a cancel) still belong in the record.
        for event in self.events.drain():
            if not isinstance(event, PoolFailed):  # the run is over: an error now changes nothing
                self._apply(event, states, True)
        self._report(states)
        # Cancelled only if the cancel stopped something: a signal that lands once every task
        # has closed changes nothing, and the run finished.
        return Outcome(states, self.attempts, cancelled)

    def _apply(self, event: Event, states: _States, cancelled: bool) -> None:
        """Fold one event into the run's state; raise to end the run."""
        if isinstance(event, Started):
            self.attempts[event.status.task_id].append(event.status)
            states[event.status.task_id] = TaskState.RUNNING
        elif isinstance(event, Finished):
            status = event.status
            self._close(status, states, cancelled)
            if status.state is AttemptState.INFRA and not cancelled:
                self._count_infra(status.reason, "attempts", "before starting",
                                  "fix the image or the worker settings (see `parallel-engine logs`), then run again")
        elif isinstance(event, WorkerFailed):
            if not cancelled:
                self._count_infra(event.reason, f"{event.noun}s", "before running any attempt",
                                  event.fix or "fix the worker settings, then run again")
        else:  # PoolFailed: the pool cannot go on (e.g. every VM refused for good)
            raise event.error

    def _close(self, status: AttemptStatus, states: _States, cancelled: bool) -> None:
        """An attempt ended: retry its task if the budgets allow, else settle the task's state."""
        history = self.attempts[status.task_id]
        history[:] = [a for a in history if a.attempt != status.attempt] + [status]
        history.sort(key=lambda a: a.attempt)
        if not cancelled and status.state is not AttemptState.SUCCEEDED and retry_allowed(history, self.budgets):
            states[status.task_id] = TaskState.QUEUED
            crash_point("retry-due")
            self.pool.submit(self.tasks[status.task_id], status.attempt + 1)
            return
        states[status.task_id] = task_state(history, self.budgets, run_cancelled=cancelled)

    def _count_infra(self, reason: str, what: str, when: str, fix: str) -> None:
        """One more infra failure: INFRA_FAILURE_LIMIT with the same reason (an image nobody can
        pull, VMs that never come up) end the run instead of burning workers on it."""
        limit = self.budgets.infra_failure_limit
        if limit is None:
            return
        self._infra[reason] += 1
        count = self._infra[reason]
        if count >= limit:
            raise BackendError(f"stopping early: {count} {what} failed the same way {when}: {reason}", hint=fix)

    def _report(self, states: _States, final: bool = True) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if final or now - self._reported_at >= PROGRESS_INTERVAL_S:
            self._reported_at = now
            self.progress(states.counts)
