"""Fault scenarios of the scheduler's verdicts: a pool never spends on facts the scheduler has not
judged yet.

INFRA_FAILURE_LIMIT is decided by the scheduler, from the pool's reports; the pool runs on its own
thread and would otherwise start a worker (a VM) in the moment between reporting the failure that
reaches the limit and the scheduler stopping the run: on the emulator that was a third VM where
the limit said two. The pool here is a monitor like the gce pool's: workers end with the same
infra failure after a random delay, the monitor reports each end and starts a worker for what is
open only once `verdicts_taken` (backends/base.py, what the gce pool calls) says the scheduler
has caught up. Whatever the moments, no more workers than the limit may ever start.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

from parallel_engine.backends.base import Finished, OnEvent, verdicts_taken
from parallel_engine.errors import BackendError
from parallel_engine.model import AttemptState, AttemptStatus, Task
from parallel_engine.scheduler import Scheduler
from parallel_engine.state import Budgets
from tests.faults.harness import scenario
from tests.helpers import run_with_deadline

REASON = "image pull failed: manifest unknown"


class InfraMonitorPool:
    """One worker at a time, each failing its attempt as `infra` after a random delay; a monitor
    thread reports the ends and starts workers for open attempts, as the gce pool does."""

    def __init__(self, on_event: OnEvent, rng: random.Random) -> None:
        self.on_event, self.rng = on_event, rng
        self.open: list[tuple[Task, int]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.started_workers = 0
        self.running: list[tuple[AttemptStatus, float]] = []  # (attempt, when it fails)
        self.thread = threading.Thread(target=self._monitor, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def submit(self, task: Task, attempt: int) -> None:
        with self.lock:
            self.open.append((task, attempt))

    def cancel(self) -> None:
        self.close()

    def close(self) -> None:
        self.stop.set()
        if self.thread is not threading.current_thread():
            self.thread.join(30)

    def check(self) -> None:
        pass

    def _monitor(self) -> None:
        while not self.stop.is_set():
            now = time.monotonic()
            ended = [status for status, at in self.running if at <= now]
            self.running = [(status, at) for status, at in self.running if at > now]
            for status in ended:  # the facts of this poll
                status.state, status.finished_at, status.reason = AttemptState.INFRA, time.time(), REASON
                self.on_event(Finished(status))
            if self.rng.random() < 0.5:  # sometimes a pause before spending, sometimes none
                time.sleep(self.rng.uniform(0, 0.003))
            if not self.running and self.open and verdicts_taken(self.on_event, self.stop, 1.0):
                with self.lock:
                    task, attempt = self.open.pop(0)
                self.started_workers += 1
                status = AttemptStatus(task.id, attempt, AttemptState.RUNNING, started_at=time.time())
                self.running.append((status, time.monotonic() + self.rng.uniform(0, 0.004)))
            self.stop.wait(self.rng.uniform(0, 0.002))


@scenario("scheduler: no worker starts after the infra-failure verdict", ci_tries=30)
def no_worker_after_the_infra_verdict(rng: random.Random, tmp: Path) -> None:
    limit = rng.randint(1, 4)
    tasks = tuple(Task(f"t{i}") for i in range(limit + rng.randint(1, 4)))
    pools: list[InfraMonitorPool] = []

    def make_pool(on_event: Any) -> InfraMonitorPool:
        pools.append(InfraMonitorPool(on_event, rng))
        return pools[0]

    scheduler = Scheduler(tasks, Budgets(infra_retries=0, infra_failure_limit=limit), make_pool)
    try:
        run_with_deadline(scheduler, threading.Event())
    except BackendError as exc:
        assert exc.message.startswith(f"stopping early: {limit} attempts failed the same way"), exc.message
    else:
        raise AssertionError("the run did not stop at the limit")
    assert pools[0].started_workers == limit, (
        f"{pools[0].started_workers} workers started, INFRA_FAILURE_LIMIT is {limit}")
