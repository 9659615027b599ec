"""The process runtime and the local pool's bookkeeping: what a spawned task sees, and how it ends."""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import psutil

from parallel_engine.model import AttemptState, AttemptStatus, TaskState
from parallel_engine.runtimes.process import ProcessRuntime
from parallel_engine.scheduler import _States
from parallel_engine.store import local_store
from tests.helpers import process_spec


def test_child_gets_default_sigpipe_as_from_a_shell(tmp_path: Path) -> None:
    # Python ignores SIGPIPE; a child that inherited that would see EPIPE instead of dying,
    # and a shell cannot even un-ignore it. `kill -PIPE $$` must kill the shell: 128 + 13.
    running = ProcessRuntime().start(process_spec(tmp_path, ("sh", "-c", "kill -s PIPE $$; echo survived")))
    assert running.wait(30) == 128 + signal.SIGPIPE
    assert b"survived" not in (tmp_path / "stdout.log").read_bytes()


def test_child_reads_eof_on_stdin_and_writes_both_logs_apart(tmp_path: Path) -> None:
    running = ProcessRuntime().start(process_spec(
        tmp_path, ("sh", "-c", 'read line; echo "read=$?"; echo "to stderr" >&2; echo "$PE_TASK_ID"')))
    assert running.wait(30) == 0
    assert (tmp_path / "stdout.log").read_bytes() == b"read=1\nt\n"
    assert (tmp_path / "stderr.log").read_bytes() == b"to stderr\n"


def test_child_runs_in_its_own_session(tmp_path: Path) -> None:
    running = ProcessRuntime().start(process_spec(tmp_path, ("sh", "-c", "ps -o sid= -p $$")))
    assert running.wait(30) == 0
    assert int((tmp_path / "stdout.log").read_text()) == running.pid  # type: ignore[attr-defined]
    assert os.getsid(0) != running.pid  # type: ignore[attr-defined]


def test_kill_before_anyone_waits_still_ends_the_tree_and_keeps_the_exit_code(tmp_path: Path) -> None:
    running = ProcessRuntime().start(process_spec(tmp_path, ("sh", "-c", "sleep 600 & sleep 600; wait")))
    deadline = time.monotonic() + 30
    while not psutil.Process(running.pid).children() and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.01)
    tree = [running.pid, *(c.pid for c in psutil.Process(running.pid).children(recursive=True))]  # type: ignore[attr-defined]
    assert len(tree) >= 3
    running.kill()  # from the thread that will wait: must not block on a reaper that is not there
    assert running.wait(None) == 128 + signal.SIGTERM
    assert not [pid for pid in tree if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]


def test_unknown_program_is_a_backend_error_naming_it(tmp_path: Path) -> None:
    from parallel_engine.errors import BackendError

    try:
        ProcessRuntime().start(process_spec(tmp_path, ("no-such-program-anywhere",)))
    except BackendError as exc:
        assert "no-such-program-anywhere" in exc.message
    else:
        raise AssertionError("expected BackendError")


def test_state_counts_follow_every_transition() -> None:
    rng = random.Random(7)
    ids = [str(i) for i in range(50)]
    states = _States(ids)
    choices = list(TaskState)
    for _ in range(2000):
        states[rng.choice(ids)] = rng.choice(choices)
        assert states.counts == Counter(str(s) for s in states.values())


def test_status_record_round_trips_every_field() -> None:
    status = AttemptStatus("t", 2, AttemptState.TIMEOUT, exit_code=137, started_at=1.5, finished_at=3.25,
                           worker="w-1", reason="timed out after 1 s")
    assert AttemptStatus.from_json(status.to_json()) == status


def test_event_marker_is_written_for_each_finished_attempt(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    store.add_run_folders("r")
    for attempt, state in ((1, AttemptState.FAILED), (2, AttemptState.SUCCEEDED)):
        (tmp_path / f"runs/r/tasks/t/{attempt}").mkdir(parents=True)  # as a worker makes it
        status = AttemptStatus("t", attempt, state, exit_code=0)
        store.write_status("r", status)
        store.add_event("r", status)
    names = [key.rsplit("/", 1)[1] for key in store.events_after("r")]
    assert [name.rsplit("-", 1)[1] for name in names] == ["t.1", "t.2"]
    # The record stays whole and the marker does not change it: on disk they share an inode,
    # so a marker costs no new inode (most of what an attempt costs on ext4).
    assert store.read_status("r", "t", 1) == AttemptStatus("t", 1, AttemptState.FAILED, exit_code=0)
    first_marker = tmp_path / store.events_after("r")[0]
    assert first_marker.stat().st_ino == (tmp_path / "runs/r/tasks/t/1/status.json").stat().st_ino
