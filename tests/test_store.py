"""The local run store: atomic writes, atomic claims, the layout DESIGN.md gives."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from parallel_engine.model import AttemptState, AttemptStatus, Task
from parallel_engine.store import LocalBlobs, RunRecord, local_store


def test_claim_is_granted_to_exactly_one_of_many_racing_workers(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    winners: list[str] = []
    barrier = threading.Barrier(16)

    def worker(name: str) -> None:
        barrier.wait()
        if store.claim("r1", "t1", 1, name):
            winners.append(name)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1
    assert (tmp_path / "runs/r1/claims/t1.1").read_text() == winners[0]


def test_write_replaces_whole_files_and_leaves_no_temporaries(tmp_path: Path) -> None:
    blobs = LocalBlobs(tmp_path)
    blobs.write("a/b.json", b'{"v": 1}')
    blobs.write("a/b.json", b'{"v": 2}')
    assert json.loads((tmp_path / "a/b.json").read_bytes()) == {"v": 2}
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.json"]
    assert blobs.list("a/") == ["a/b.json"]


def test_attempt_records_land_in_the_documented_layout(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    record = RunRecord("r1", 1.0, "local", "p.csv", ("x",), (Task("t1", ("--x=1",), {"x": "1"}),), {"retries": 0})
    store.save_run(record)
    assert store.claim("r1", "t1", 1, "w")
    (running,) = store.attempts("r1")["t1"]
    assert running.state is AttemptState.RUNNING and running.worker == "w"  # claimed, no record yet
    status = AttemptStatus("t1", 1, AttemptState.SUCCEEDED, 0, 1.0, 2.0, "w", "")
    store.write_status("r1", status)
    store.add_event("r1", status)
    assert json.loads((tmp_path / "runs/r1/tasks/t1/1/status.json").read_text())["state"] == "succeeded"
    (event,) = store.events_after("r1")
    assert event.startswith("runs/r1/events/") and event.endswith("-t1.1")
    assert store.events_after("r1", after=event) == []
    assert store.load_run("r1") == record
    assert store.attempts("r1") == {"t1": [status]}
    assert store.run_ids() == ["r1"]
