"""One orchestrator at a time: the lease in the store (parallel_engine/lease.py)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from parallel_engine.errors import RunBusyError
from parallel_engine.lease import LEASE_STALE_S, holder_alive, take
from parallel_engine.processes import this_orchestrator
from parallel_engine.results import run_status
from parallel_engine.store import RunRecord, RunStore, local_store
from tests.helpers import wait_for

RUN = "20260101-000000-lease"


@pytest.fixture()
def store(tmp_path: Path) -> RunStore:
    store = local_store(tmp_path / "store")
    store.save_run(RunRecord(RUN, time.time(), "gce", "p.csv", (), (), {}))
    return store


def elsewhere(at: float) -> dict[str, object]:
    return {"host": "another-machine", "pid": 1, "started": "ticks:1", "command": "run", "at": at}


def test_a_lease_refreshed_elsewhere_refuses_a_second_orchestrator_and_says_where(store: RunStore) -> None:
    assert store.take_lease(RUN, 1, elsewhere(time.time() - 5))
    with pytest.raises(RunBusyError) as caught:
        take(store, RUN, "resume")
    assert caught.value.message.startswith(f"run {RUN} is orchestrated by pid 1 on another-machine (run, refreshed ")
    assert "--force" in (caught.value.hint or "")
    assert run_status(store, RUN).run_state == "running"


def test_a_lease_not_refreshed_for_the_stale_time_is_taken_over(store: RunStore) -> None:
    assert store.take_lease(RUN, 1, elsewhere(time.time() - LEASE_STALE_S - 1))
    assert run_status(store, RUN).run_state == "interrupted"
    lease = take(store, RUN, "resume")
    assert lease.generation == 2
    newest = store.read_lease(RUN)
    assert newest is not None and newest[0] == 2 and newest[1]["command"] == "resume"
    assert run_status(store, RUN).run_state == "running"


def test_force_takes_a_live_lease(store: RunStore) -> None:
    assert store.take_lease(RUN, 1, elsewhere(time.time()))
    assert take(store, RUN, "resume", force=True).generation == 2


def test_two_takers_of_the_same_generation_one_wins(store: RunStore) -> None:
    assert store.take_lease(RUN, 1, elsewhere(time.time()))
    assert not store.take_lease(RUN, 1, elsewhere(time.time()))


def test_a_holder_on_this_machine_is_judged_by_its_pid_and_start_not_its_refresh() -> None:
    me = {**this_orchestrator(), "at": 0.0}  # never refreshed, but alive
    assert holder_alive(me)
    assert not holder_alive({**me, "started": "ticks:0"})  # the pid, now another process's
    assert not holder_alive({**me, "released": True})


def test_a_kept_lease_is_refreshed_and_released(store: RunStore) -> None:
    lease = take(store, RUN, "run")
    first = lease.holder["at"]
    seen = threading.Event()
    lease.keep(on_refresh=seen.set, every=0.01)
    wait_for(seen.is_set, 10, "a refresh")
    newest = store.read_lease(RUN)
    assert newest is not None and newest[1]["at"] > first
    lease.release()
    newest = store.read_lease(RUN)
    assert newest is not None and newest[1]["released"] is True
    assert run_status(store, RUN).run_state == "interrupted"  # released without an end: nobody holds it


def test_a_lease_taken_over_is_no_longer_refreshed_by_its_old_holder(store: RunStore) -> None:
    lease = take(store, RUN, "run")
    taker = take(store, RUN, "resume", force=True)
    refreshed = threading.Event()
    lease.keep(on_refresh=refreshed.set, every=0.01)
    assert lease._thread is not None
    lease._thread.join(10)
    assert not lease._thread.is_alive() and not refreshed.is_set()
    lease.release()  # the newer holder's lease stays as it is
    newest = store.read_lease(RUN)
    assert newest is not None and newest[0] == taker.generation and "released" not in newest[1]


def test_a_run_cancelled_from_another_machine_stops_at_its_next_lease_refresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cancel` of a run orchestrated elsewhere writes end.json `cancelled`: the orchestrator reads
    it when it refreshes its lease and cancels, as Ctrl-C would."""
    import parallel_engine as pe
    from parallel_engine import lease as lease_module
    from parallel_engine.runtimes.process import kill_run_processes, run_processes

    monkeypatch.setattr(lease_module, "LEASE_REFRESH_S", 0.05)
    (tmp_path / "tasks.txt").write_text("sleep 300\nsleep 300\n")
    store = local_store(tmp_path / "store")
    done: list[object] = []
    thread = threading.Thread(target=lambda: done.append(pe.run(
        tmp_path / "tasks.txt", runtime="process", store=str(tmp_path / "store"), jobs=2)), daemon=True)
    thread.start()
    try:
        wait_for(lambda: store.run_ids() and len(run_processes(store.run_ids()[0])) == 2, 60, "both tasks to run")
        (run_id,) = store.run_ids()
        store.write_end(run_id, "cancelled", time.time())  # what `cancel` on another machine writes first
        thread.join(60)
        assert not thread.is_alive(), "the run did not stop"
    finally:
        for run_id in store.run_ids():
            kill_run_processes(run_id)
    (run,) = done
    assert run.cancelled  # type: ignore[attr-defined]
    assert run_processes(run_id) == []
    assert sorted(str(a.state) for a in (a for h in store.attempts(run_id).values() for a in h)) == ["cancelled"] * 2
