"""`reap`: the net under every leak beside maxRunDuration. Every VM labelled with a run, in every
zone of the project, is judged against the store: its run is over (finished, cancelled, failed),
unknown to the store, or nobody orchestrates it (a stale lease) and the VM's worker stopped its
heartbeat. Only VMs older than `--older-than` are judged (a run in another store looks unknown
here: the age keeps its young VMs safe). Listed first; deleted only when asked."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

from parallel_engine.backends.gce.compute import Compute
from parallel_engine.errors import RunNotFoundError
from parallel_engine.lease import holder_alive
from parallel_engine.protocol import HEARTBEAT
from parallel_engine.store import RunStore


@dataclass(frozen=True)
class Doomed:
    zone: str
    name: str
    run_id: str
    why: str


def _created(stamp: str) -> float:
    try:
        return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time()  # unreadable: taken as new, so never reaped for its age


def _why(store: RunStore, run_id: str, vm: str, stale_s: float, now: float) -> str | None:
    """Why VM `vm` of `run_id` should go, or None if it may still be doing the run's work."""
    try:
        store.check_run(run_id)
    except RunNotFoundError:
        return "its run is unknown to this store"
    ended = store.read_end(run_id)
    if ended is not None:
        return f"its run is over ({ended})"
    lease = store.read_lease(run_id)
    if lease is not None and holder_alive(lease[1], now):
        return None  # orchestrated: its orchestrator deals with its VMs
    claimed = store.worker_attempt(run_id, vm)
    beat = None
    if claimed is not None:
        raw = store.read_attempt_file(run_id, claimed[0], claimed[1], HEARTBEAT)
        try:
            beat = float(raw) if raw else None
        except ValueError:
            beat = None
    if beat is not None and now - beat < stale_s:
        return None  # working alone, as VMs do: `resume` takes the run over
    return "nobody orchestrates its run and its worker stopped its heartbeat"


def doomed_vms(compute: Compute, store: RunStore, older_than_s: float, stale_s: float) -> list[Doomed]:
    """The VMs `reap` deletes, with why."""
    now = time.time()
    found = []
    for zone, name, run_id, _status, created in compute.list_labelled():
        if now - _created(created) < older_than_s:
            continue
        why = _why(store, run_id, name, stale_s, now)
        if why is not None:
            found.append(Doomed(zone, name, run_id, why))
    return found
