"""Emulated time: Google's durations (boot, preemption notice, ...) multiplied by one time scale.

A test runs with a scale of 0.01 so that a 30 s preemption notice takes 0.3 s; the orchestrator
reads the same scale from the control API to shrink its own polling and heartbeat periods.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass


@dataclass
class Durations:
    """Durations in Google seconds (unscaled)."""

    insert_seconds: float = 2.0  # an insert operation runs this long before DONE
    boot_seconds: float = 15.0  # insert → RUNNING and the startup script starts
    stop_seconds: float = 5.0  # delete/stop: SIGTERM, this grace, then power off
    preemption_notice_seconds: float = 30.0  # soft shutdown before a preempted VM is off
    max_run_late_seconds: float = 30.0  # maxRunDuration acts up to this late (a random share of it)
    operation_wait_seconds: float = 120.0  # the longest zoneOperations.wait blocks
    token_lifetime_seconds: float = 3600.0  # a metadata-server access token is valid this long
    request_id_window_seconds: float = 3600.0  # a repeated requestId returns the first operation this long


class Clock:
    """Time scale plus durations; thread-safe to change while running."""

    def __init__(self, time_scale: float = 1.0, durations: Durations | None = None) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be > 0")
        self._lock = threading.Lock()
        self.time_scale = time_scale
        self.durations = durations or Durations()

    def real(self, google_seconds: float) -> float:
        """Real seconds that stand for `google_seconds` of emulated time."""
        return max(0.0, google_seconds * self.time_scale)

    def configure(self, time_scale: float | None = None, **durations: float) -> None:
        with self._lock:
            if time_scale is not None:
                if time_scale <= 0:
                    raise ValueError("time_scale must be > 0")
                self.time_scale = time_scale
            for key, value in durations.items():
                if not hasattr(self.durations, key):
                    raise ValueError(f"unknown duration: {key}")
                setattr(self.durations, key, float(value))

    def describe(self) -> dict[str, float]:
        return {"timeScale": self.time_scale, **{_camel(k): v for k, v in asdict(self.durations).items()}}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)
