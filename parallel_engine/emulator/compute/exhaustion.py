"""Creation refusals the control API switches on: a zone out of capacity, or quota as if spent.

They last for a while (real seconds), for a number of creations, or until cleared, so a test can
check that the orchestrator backs off and recovers when capacity returns.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any


class ControlError(Exception):
    """A control-API request that cannot be carried out (e.g. preempting a standard VM)."""


class Exhaustion:
    """Creation refusals switched on by the control API, for a while, a number of times, or until cleared."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: dict[str, list[float]] = {}  # kind → [deadline, remaining]

    def set(self, kind: str, seconds: float | None = None, count: int | None = None) -> None:
        if kind not in ("zone", "quota"):
            raise ControlError(f"unknown exhaustion kind {kind!r} (zone or quota)")
        deadline = time.monotonic() + seconds if seconds is not None else math.inf
        with self._lock:
            self._rules[kind] = [deadline, float(count) if count is not None else math.inf]

    def clear(self, kind: str | None = None) -> None:
        with self._lock:
            if kind is None:
                self._rules.clear()
            else:
                self._rules.pop(kind, None)

    def take(self, kind: str) -> bool:
        """Whether a creation is refused now for `kind` (using up one of a counted refusal)."""
        with self._lock:
            rule = self._rules.get(kind)
            if rule is None:
                return False
            if time.monotonic() >= rule[0] or rule[1] <= 0:
                del self._rules[kind]
                return False
            rule[1] -= 1
            return True

    def describe(self) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            return {
                kind: {
                    "secondsLeft": None if rule[0] == math.inf else max(0.0, rule[0] - now),
                    "refusalsLeft": None if rule[1] == math.inf else int(rule[1]),
                }
                for kind, rule in self._rules.items()
            }
