"""A run store that vanishes, turns read-only or fills up under a running run stops that run with
one clear error (exit 2): never a success, never a store quietly rebuilt, no process left."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from parallel_engine.backends.local.pool import LocalPool
from parallel_engine.errors import StoreError
from parallel_engine.model import AttemptState, AttemptStatus, Task
from parallel_engine.scheduler import Scheduler
from parallel_engine.state import Budgets
from parallel_engine.store import LocalBlobs, RunStore
from tests.faults.runs import (
    AS_A_USER,
    STORE,
    attempts,
    check_leftovers,
    check_whole,
    describe,
    end_state,
    ended,
    read_only,
    remove,
    run_folder,
    start_run,
    wait_for,
)
from tests.helpers import run_with_deadline

BOUND_S = 30.0  # the run must stop this soon after the fault (its tasks would run 300 s)
LONG = "sleep 300"


def started_long_run(tmp_path: Path, running: int = 2, launcher: tuple[str, ...] = ()) -> tuple[subprocess.Popen[str], Path]:
    """A run of 4 tasks of `sleep 300`, 2 at a time, once `running` of them have started."""
    proc = start_run(tmp_path, [LONG] * 4, "-j", "2", launcher=launcher)
    run = wait_for(lambda: run_folder(tmp_path), 60, "the run to be created")
    wait_for(lambda: len(list((run / "tasks").glob("*/1/stdout.log"))) >= running, 60, "tasks to run")
    return proc, run


def test_store_deleted_under_long_tasks_stops_the_run_with_exit_2_and_is_not_rebuilt(tmp_path: Path) -> None:
    proc, run = started_long_run(tmp_path)
    remove(tmp_path / STORE)
    since = time.monotonic()
    try:
        result = ended(proc, BOUND_S, since)
    finally:
        check_leftovers(run.name)
    assert result.code == 2, describe(result)
    assert f"the run's folder {run} is gone" in result.stderr and "Traceback" not in result.stderr, describe(result)
    assert not (tmp_path / STORE).exists(), "the deleted store was written again"


def test_store_deleted_under_short_tasks_stops_the_run_with_exit_2_and_is_not_rebuilt(tmp_path: Path) -> None:
    proc = start_run(tmp_path, ["true"] * 3000, "-j", "2")
    run = wait_for(lambda: run_folder(tmp_path), 60, "the run to be created")
    wait_for(lambda: len(list(run.glob("events/*"))) >= 20, 60, "tasks to finish")
    remove(tmp_path / STORE)
    try:
        result = ended(proc, BOUND_S, time.monotonic())
    finally:
        check_leftovers(run.name)
    assert result.code == 2 and "is gone" in result.stderr and "Traceback" not in result.stderr, describe(result)
    assert not (tmp_path / STORE).exists(), "the deleted store was written again"


def test_store_made_read_only_under_long_tasks_stops_the_run_with_exit_2(tmp_path: Path) -> None:
    proc, run = started_long_run(tmp_path, launcher=AS_A_USER)
    with read_only(tmp_path / STORE):
        try:
            result = ended(proc, BOUND_S, time.monotonic())
        finally:
            check_leftovers(run.name)
    assert result.code == 2, describe(result)
    assert f"the run's folder {run} cannot be written any more" in result.stderr, describe(result)
    check_whole(tmp_path / STORE)
    assert all(record is None for record in attempts(run).values())  # nothing could be recorded
    assert end_state(run) is None  # nor the end: `status` tells it from the dead orchestrator
    status = subprocess.run([sys.executable, "-m", "parallel_engine", "status", run.name, "--store", STORE, "--json"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert '"state": "interrupted"' in status.stdout and '"running"' not in status.stdout, status.stdout


def test_a_write_into_a_run_folder_that_vanished_fails_and_does_not_make_it_again(tmp_path: Path) -> None:
    blobs = LocalBlobs(tmp_path)
    store = RunStore(blobs, str(tmp_path))
    store.add_run_folders("r1")
    (tmp_path / "runs/r1/tasks/t/1").mkdir(parents=True)
    blobs.write("runs/r1/tasks/t/1/status.json", b"{}")
    shutil.rmtree(tmp_path / "runs")
    for write in (lambda: blobs.write("runs/r1/end.json", b"{}"),
                  lambda: blobs.create("runs/r1/claims/t.1", b"w"),
                  lambda: store.add_event("r1", AttemptStatus("t", 1, AttemptState.SUCCEEDED)),
                  lambda: blobs.write("runs/r1/tasks/t/1/status.json", b"{}")):
        with pytest.raises(StoreError, match="its folder is gone"):
            write()
    assert not (tmp_path / "runs").exists()


# A disk that refuses the bytes of a claim after its file was created: RLIMIT_FSIZE lets the
# create through and fails the write (EFBIG), as a full disk can. Run in a child: pytest keeps its limit.
FAILED_CLAIM = r"""
import resource, signal, sys
from pathlib import Path
from parallel_engine.errors import StoreError
from parallel_engine.store import local_store
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
store = local_store(Path(sys.argv[1]))
store.add_run_folders("r1")
resource.setrlimit(resource.RLIMIT_FSIZE, (4, 4))
try:
    store.claim("r1", "t1", 1, "a-worker-whose-name-does-not-fit")
except StoreError as exc:
    print(exc.message)
    sys.exit(0)
sys.exit("the claim did not fail")
"""


def test_a_claim_whose_holder_cannot_be_written_leaves_no_claim(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", FAILED_CLAIM, str(tmp_path)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "cannot write" in done.stdout and "claims/t1.1" in done.stdout
    assert list((tmp_path / "runs/r1/claims").iterdir()) == []  # the attempt can still be claimed


class FullStore(RunStore):
    """A local store whose disk fills up at the first attempt record."""

    def write_status(self, run_id: str, status: AttemptStatus) -> None:
        raise StoreError(f"cannot write {self.where}/runs/{run_id}/...: No space left on device")


class InstantAttempt:
    def wait(self, timeout: float | None) -> int:
        return 0

    def kill(self) -> None:
        pass

    def killed(self) -> bool:
        return False

    def exit_reason(self) -> None:
        return None


class InstantRuntime:
    """Attempts that end at once: a worker that kept claiming would take many in a few ms."""

    name = "instant"

    def start(self, spec: Any) -> InstantAttempt:
        return InstantAttempt()

    def close(self) -> None:
        pass


def test_after_the_first_fatal_store_error_no_worker_claims_another_attempt(tmp_path: Path) -> None:
    store = FullStore(LocalBlobs(tmp_path), str(tmp_path))
    store.add_run_folders("r1")
    tasks = tuple(Task(f"t{i}", ("x",)) for i in range(500))
    scheduler = Scheduler(tasks, Budgets(), lambda on_event: LocalPool(store, "r1", InstantRuntime(), 4, None, on_event))
    with pytest.raises(StoreError, match="No space left on device"):
        run_with_deadline(scheduler, threading.Event())
    claims = list((tmp_path / "runs/r1/claims").iterdir())
    assert len(claims) <= 4, f"{len(claims)} attempts claimed after the disk filled up (4 workers)"


@pytest.fixture()
def small_disk(tmp_path: Path) -> Any:
    """A 2 MB tmpfs at tmp_path/disk (root only: elsewhere a loud skip)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a small tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def test_a_full_disk_stops_the_run_with_exit_2_and_leaves_no_empty_claim(tmp_path: Path, small_disk: Path) -> None:
    # Each task writes 256 KiB of output: the 2 MB disk fills within the first ten or so.
    filler = 'sh -c "head -c 262144 /dev/zero > $PE_OUTPUT_DIR/blob"'
    proc = start_run(tmp_path, [filler] * 100, "-j", "2", store=str(small_disk / "store"))
    result = ended(proc, BOUND_S, time.monotonic())
    run = next((small_disk / "store/runs").iterdir())
    check_leftovers(run.name)
    assert result.code == 2 and "No space left on device" in result.stderr, describe(result)
    assert end_state(run) in (None, "failed")  # written if the full disk still took it
    claimed = attempts(run)
    assert all((run / "claims" / f"{task}.{n}").read_bytes() for task, n in claimed), "a claim without its holder"
    unrecorded = [key for key, record in claimed.items() if record is None]
    assert len(unrecorded) <= 2, f"claimed after the disk filled up: {unrecorded}"
