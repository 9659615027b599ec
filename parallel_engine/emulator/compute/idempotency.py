"""Google's `requestId`: a mutating call repeated with the same id returns the first call's operation.

A client whose answer was lost (a timeout, a 503 after the work was done) retries with the same
requestId and must not act twice; Google guarantees this for at least 60 minutes after the first
request (`request_id_window_seconds` here, scaled by the clock). The id must be a UUID other than
the zero UUID.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from parallel_engine.emulator.clock import Clock
from parallel_engine.emulator.compute.errors import ApiError, invalid

_ZERO = uuid.UUID(int=0)


def check_request_id(value: str) -> None:
    """400 `invalid` unless `value` is a non-zero UUID, as Google answers."""
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        parsed = _ZERO
    if parsed == _ZERO:
        raise invalid("requestId", value, "Must be a valid UUID other than the zero UUID.")


class RequestIds:
    """(method, requestId) -> the operation the first call returned, for the window."""

    def __init__(self, clock: Clock, find: Callable[[str, str], dict[str, Any]]) -> None:
        self._clock = clock
        self._find = find  # (zone, operation name) -> the operation now; ApiError when it is gone
        self._lock = threading.Lock()  # guards the two dicts below, never held across a call
        #: -> zone, operation, when recorded; in the order recorded, so the oldest are first
        self._seen: dict[tuple[str, str], tuple[str, str, float]] = {}
        #: a lock per key with a call in flight, and how many calls use it: two concurrent repeats act
        #: once, calls with different ids run (and validate) side by side
        self._busy: dict[tuple[str, str], tuple[threading.Lock, int]] = {}

    def once(self, method: str, request_id: str | None, act: Callable[[], Any]) -> Any:
        """`act()`, unless a call of `method` with `request_id` already returned an operation."""
        if not request_id:
            return act()
        check_request_id(request_id)
        key = (method, request_id)
        with self._lock:
            lock, users = self._busy.get(key) or (threading.Lock(), 0)
            self._busy[key] = (lock, users + 1)
        try:
            with lock:
                return self._once(key, act)
        finally:
            with self._lock:  # the last user drops the lock: ids are unique per call, the dict must not grow
                users = self._busy[key][1] - 1
                if users:
                    self._busy[key] = (lock, users)
                else:
                    del self._busy[key]

    def _once(self, key: tuple[str, str], act: Callable[[], Any]) -> Any:
        with self._lock:
            self._forget_old()
            known = self._seen.get(key)
        if known is not None:
            try:
                return self._find(known[0], known[1])
            except ApiError:  # the operation was deleted meanwhile: nothing to replay
                with self._lock:
                    self._seen.pop(key, None)
        result = act()
        if isinstance(result, dict) and result.get("kind") == "compute#operation":
            zone = str(result["zone"]).rsplit("/", 1)[-1]
            with self._lock:  # recorded now, at the end of the dict: it stays in time order
                self._seen.pop(key, None)
                self._seen[key] = (zone, str(result["name"]), time.monotonic())
        return result

    def _forget_old(self) -> None:
        """Drop the entries older than the window, from the front (the caller holds the lock)."""
        now = time.monotonic()
        window = self._clock.real(self._clock.durations.request_id_window_seconds)
        while self._seen:
            oldest = next(iter(self._seen))
            if now - self._seen[oldest][2] < window:
                break
            del self._seen[oldest]
