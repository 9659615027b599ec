"""One orchestrator at a time: the lease a run's orchestrator holds in the store.

A lease names its holder (host, pid and the pid's start time, what it runs) and when it was
last refreshed. The holder rewrites it every LEASE_REFRESH_S while it lives. Whether a holder
still lives is exact on its own host (its pid and start time, parallel_engine/processes.py) and
judged elsewhere by the refresh: a lease not refreshed for LEASE_STALE_S is stale (a machine that
sleeps or lost its network stops refreshing, so a generous margin). Taking a lease over is
creating the next generation's key, an atomic create: of two machines resuming at once, one wins.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from parallel_engine.errors import ParallelEngineError, RunBusyError
from parallel_engine.processes import orchestrator_alive, this_orchestrator
from parallel_engine.store import RunStore

LEASE_REFRESH_S = 20.0
LEASE_STALE_S = 120.0


def holder_alive(holder: dict[str, Any], now: float | None = None) -> bool:
    """Whether the lease's holder still orchestrates: exact on its host, by its refresh elsewhere."""
    if holder.get("released"):
        return False
    if holder.get("host") == socket.gethostname():
        return orchestrator_alive(holder)
    try:
        at = float(holder.get("at", 0))
    except (TypeError, ValueError):
        return False
    return (time.time() if now is None else now) - at < LEASE_STALE_S


def where(holder: dict[str, Any]) -> str:
    """The holder, as a user finds it: "pid 123 on host-a (run, refreshed 4 s ago)"."""
    age = time.time() - float(holder.get("at", 0) or 0)
    return f"pid {holder.get('pid')} on {holder.get('host')} ({holder.get('command', '?')}, refreshed {age:.0f} s ago)"


@dataclass
class Lease:
    """The lease this process holds on a run; `keep` refreshes it in a thread until `release`."""

    store: RunStore
    run_id: str
    generation: int
    holder: dict[str, Any]
    _stop: threading.Event
    _thread: threading.Thread | None = None

    def keep(self, on_refresh: Callable[[], None] = lambda: None, every: float | None = None) -> None:
        """Refresh the lease every `every` seconds in a thread, calling `on_refresh` each time (a
        look at the store: was the run cancelled from elsewhere?). Stops refreshing if a newer
        generation took the lease over (`resume --force`)."""

        period = LEASE_REFRESH_S if every is None else every

        def refresh() -> None:
            while not self._stop.wait(period):
                try:
                    newest = self.store.read_lease(self.run_id)
                    if newest is not None and newest[0] != self.generation:
                        return  # taken over: the newer holder orchestrates
                    self.holder["at"] = time.time()
                    self.store.refresh_lease(self.run_id, self.generation, self.holder)
                    on_refresh()
                except ParallelEngineError:
                    continue  # the run notices a lost store itself; a refresh is not worth a crash

        self._thread = threading.Thread(target=refresh, name=f"lease-{self.run_id}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop refreshing and say nobody holds the run (kept if a newer generation took it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        newest = self.store.read_lease(self.run_id)
        if newest is None or newest[0] == self.generation:
            self.store.refresh_lease(self.run_id, self.generation, {**self.holder, "released": True})


def take(store: RunStore, run_id: str, command: str, force: bool = False) -> Lease:
    """Take the run's lease: refused (RunBusyError, saying where it runs) while its holder lives,
    unless `force`; a stale or released one is taken over."""
    newest = store.read_lease(run_id)
    generation = 1
    if newest is not None:
        previous, holder = newest
        if holder_alive(holder) and not force:
            raise RunBusyError(
                f"run {run_id} is orchestrated by {where(holder)}",
                hint="follow it with `parallel-engine status`; stop it with `parallel-engine cancel`; "
                f"--force takes it over anyway (only when that orchestrator is surely gone: two at once "
                f"would each start workers; it is judged gone after {LEASE_STALE_S:.0f} s without a refresh)",
            )
        generation = previous + 1
    holder = {**this_orchestrator(), "command": command, "at": time.time()}
    if not store.take_lease(run_id, generation, holder):
        raise RunBusyError(f"run {run_id} was just taken over by another orchestrator",
                           hint="`parallel-engine status` shows who runs it")
    return Lease(store, run_id, generation, holder, threading.Event())


def orchestrated(store: RunStore, run_id: str) -> dict[str, Any] | None:
    """The live holder of the run's lease, or None when nobody orchestrates it (or no lease was
    ever taken: a run recorded before leases; its run.json names its orchestrator)."""
    newest = store.read_lease(run_id)
    if newest is None:
        return None
    return newest[1] if holder_alive(newest[1]) else None
