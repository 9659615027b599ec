"""One thread that fires delayed callbacks (boots, operation ends, preemption deadlines).

Callbacks run on a small pool so that one slow action (killing a process tree, removing containers)
does not delay every other VM's timeline.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)


class Timers:
    def __init__(self, workers: int = 8) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="emulator-action")
        self._thread = threading.Thread(target=self._loop, name="emulator-timers", daemon=True)
        self._thread.start()

    def after(self, seconds: float, action: Callable[[], None]) -> None:
        """Run `action` on the pool once `seconds` (real) have passed."""
        with self._cond:
            if self._stopped:
                return
            heapq.heappush(self._heap, (time.monotonic() + max(0.0, seconds), next(self._seq), action))
            self._cond.notify()

    def run_now(self, action: Callable[[], None]) -> None:
        self.after(0, action)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                if self._stopped:
                    return
                _, _, action = heapq.heappop(self._heap)
            try:
                self._pool.submit(self._guard, action)
            except RuntimeError:  # pool shut down meanwhile
                return

    @staticmethod
    def _guard(action: Callable[[], None]) -> None:
        try:
            action()
        except Exception:  # an action must never kill the timeline of other VMs
            log.exception("emulator action failed")

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cond.notify_all()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=True, cancel_futures=True)
