"""Compute's per-project API rate limits: reads and mutations per (emulated) minute.

Google counts a bulkInsert as one request; so does this. The window is one minute of emulated time,
so a scaled test that polls at the scaled rate meets the limits a real run would.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from parallel_engine.emulator.clock import Clock

READ = "read"
MUTATION = "mutation"


class RateLimiter:
    def __init__(self, clock: Clock, reads_per_minute: int = 1500, mutations_per_minute: int = 1500) -> None:
        self.clock = clock
        self.limits = {READ: reads_per_minute, MUTATION: mutations_per_minute}
        self._calls: dict[str, deque[float]] = {READ: deque(), MUTATION: deque()}
        self._lock = threading.Lock()

    def set_limits(self, reads: int | None = None, mutations: int | None = None) -> None:
        with self._lock:
            if reads is not None:
                self.limits[READ] = reads
            if mutations is not None:
                self.limits[MUTATION] = mutations

    def take(self, kind: str) -> bool:
        """Count one call; False when it is over the limit (the call is refused and not counted)."""
        now = time.monotonic()
        window = self.clock.real(60.0)
        with self._lock:
            calls = self._calls[kind]
            while calls and calls[0] <= now - window:
                calls.popleft()
            if len(calls) >= self.limits[kind]:
                return False
            calls.append(now)
            return True
