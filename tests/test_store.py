"""The local run store: atomic writes, atomic claims, the layout parallel_engine/protocol.py defines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from parallel_engine.errors import StoreError
from parallel_engine.model import AttemptState, AttemptStatus, Task
from parallel_engine.protocol import parse_attempt
from parallel_engine.store import LocalBlobs, RunRecord, local_store
from tests.helpers import racing_claims


def test_claim_is_granted_to_exactly_one_of_many_racing_workers(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    store.add_run_folders("r1")
    winners = racing_claims(store, 16)
    assert len(winners) == 1
    assert (tmp_path / "runs/r1/claims/t1.1").read_text() == winners[0]


def test_write_replaces_whole_files_and_leaves_no_temporaries(tmp_path: Path) -> None:
    blobs = LocalBlobs(tmp_path)
    blobs.add_folders(["a/"])
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
    (tmp_path / "runs/r1/tasks/t1/1").mkdir(parents=True)  # the attempt's folder, as the local worker makes it
    store.write_status("r1", status)
    store.add_event("r1", status)
    assert json.loads((tmp_path / "runs/r1/tasks/t1/1/status.json").read_text())["state"] == "succeeded"
    (event,) = store.events_after("r1")
    assert event.startswith("runs/r1/events/") and event.endswith("-t1.1")
    assert store.events_after("r1", after=event) == []
    assert store.load_run("r1") == record
    assert store.attempts("r1") == {"t1": [status]}
    assert store.run_ids() == ["r1"]


# A real disk error halfway through a write: the file-size limit (RLIMIT_FSIZE) lets the first
# 64 KiB land, then the kernel refuses the rest (EFBIG). Run in a child so pytest keeps its limit.
HALF_WRITE = r"""
import resource, signal, sys
from pathlib import Path
from parallel_engine.errors import StoreError
from parallel_engine.store import LocalBlobs
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
try:
    LocalBlobs(Path(sys.argv[1])).write("runs/r1/run.json", b"x" * 1_000_000)
except StoreError as exc:
    print(exc.message)
    sys.exit(0)
sys.exit("the write did not fail")
"""


def test_write_that_fails_halfway_keeps_the_old_content_and_leaves_no_temporary(tmp_path: Path) -> None:
    blobs = LocalBlobs(tmp_path)
    blobs.add_folders(["runs/r1/"])
    blobs.write("runs/r1/run.json", b'{"old": true}')
    done = subprocess.run([sys.executable, "-c", HALF_WRITE, str(tmp_path)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"cannot write {tmp_path}/runs/r1/run.json" in done.stdout  # a StoreError naming the path
    assert json.loads((tmp_path / "runs/r1/run.json").read_bytes()) == {"old": True}
    assert [p.name for p in (tmp_path / "runs/r1").iterdir()] == ["run.json"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_writers_in_two_processes_never_share_a_temporary(tmp_path: Path) -> None:
    # A forked child keeps its parent's thread id: with the thread id alone in the temporary's
    # name, both processes write into the same temporary and one rename finds it gone.
    blobs = LocalBlobs(tmp_path)
    payloads = {b"p" * 400_000, b"c" * 400_000}
    pid = os.fork()
    if pid == 0:  # the child: write its payload many times, report by exit status only
        code = 0
        try:
            for _ in range(100):
                blobs.write("k", b"c" * 400_000)
        except BaseException:  # noqa: BLE001 - the parent reads the exit status
            code = 1
        os._exit(code)
    errors: list[str] = []
    for _ in range(100):
        try:
            blobs.write("k", b"p" * 400_000)
        except (StoreError, OSError) as exc:  # OSError: what it raised before disk errors were translated
            errors.append(str(exc))
        assert blobs.read("k") in payloads  # always one whole payload, never a mix
    _, status = os.waitpid(pid, 0)
    assert errors == [] and os.waitstatus_to_exitcode(status) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["k"]


def test_disk_errors_in_the_store_are_store_errors_naming_the_path(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    blobs = LocalBlobs(tmp_path / "file")
    with pytest.raises(StoreError, match=f"cannot write {tmp_path}/file/runs/r1/run.json: Not a directory"):
        blobs.write("runs/r1/run.json", b"{}")
    with pytest.raises(StoreError, match="Not a directory"):
        blobs.create("runs/r1/claims/t.1", b"w")
    assert blobs.read("runs/r1/run.json") is None  # missing is not an error


def test_attempt_names_parse_as_task_and_number() -> None:
    assert parse_attempt("t1.2") == ("t1", 2)
    assert parse_attempt("c.d.3") == ("c.d", 3)  # a task id may hold dots: the last one splits
    for bad in ("-", "", "t1", ".1", "t1.", "t1.x", "t1.\u00b2", "t1.-1"):  # "²" is a digit to str.isdigit
        assert parse_attempt(bad) is None, bad


def test_worker_records_show_a_rewrite_as_a_new_generation_and_new_bytes_as_a_new_hash(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    store.blobs.add_folders(["runs/r1/workers/"])
    record = tmp_path / "runs/r1/workers/vm-a"

    def rewrite(data: bytes) -> tuple[int, str]:
        if record.exists():
            os.utime(record, ns=(1, 1))  # as if written long ago: any rewrite now has a newer mtime
        store.blobs.write("runs/r1/workers/vm-a", data)
        return store.worker_records("r1")["vm-a"]

    first = rewrite(b"-")
    beat = rewrite(b"-")
    claimed = rewrite(b"t1.1")
    assert beat[0] != first[0] and beat[1] == first[1]  # a heartbeat: same bytes rewritten
    assert claimed[1] != beat[1]  # a new claim: new bytes
    store.blobs.write("runs/r1/workers/vm-b", b"-")
    assert sorted(store.worker_records("r1")) == ["vm-a", "vm-b"] and store.worker_records("r2") == {}


def test_a_local_log_is_read_from_an_offset(tmp_path: Path) -> None:
    blobs = LocalBlobs(tmp_path)
    (tmp_path / "runs/r/tasks/t/1").mkdir(parents=True)
    blobs.write("runs/r/tasks/t/1/stdout.log", b"0123\xff56789")
    assert blobs.read_from("runs/r/tasks/t/1/stdout.log", 0) == b"0123\xff56789"
    assert blobs.read_from("runs/r/tasks/t/1/stdout.log", 4) == b"\xff56789"
    assert blobs.read_from("runs/r/tasks/t/1/stdout.log", 10) == b""
    assert blobs.read_from("runs/r/tasks/t/1/stdout.log", 11) == b""
    assert blobs.read_from("runs/r/tasks/t/1/stderr.log", 3) is None
