"""An ignored SIGCHLD (inherited from whatever started us) must never turn a failed task into a
success: the default is restored, and an exit status that still cannot be read is `lost`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import parallel_engine as pe
from parallel_engine.errors import BackendError
from parallel_engine.model import AttemptState, Task, TaskState
from parallel_engine.runtimes.base import ExitStatusLost
from parallel_engine.runtimes.process import ProcessRuntime
from parallel_engine.state import Budgets
from parallel_engine.store import local_store
from tests.helpers import RaisingRuntime, cli_env, process_spec, run_to_the_end

TASKS = "sh -c 'exit 3'\nfalse\nsh -c 'exit 7'\ntrue\n"
# Ignores SIGCHLD, then becomes the command: the setting survives exec, as from a careless parent.
LAUNCHER = "import os, signal, sys; signal.signal(signal.SIGCHLD, signal.SIG_IGN); os.execv(sys.argv[1], sys.argv[1:])"


@pytest.fixture()
def sigchld_ignored() -> Iterator[None]:
    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGCHLD, previous)


def recorded(store_root: Path) -> dict[str, tuple[str, int | None]]:
    found = {}
    for path in store_root.glob("runs/*/tasks/*/*/status.json"):
        status = json.loads(path.read_text())
        found[status["task_id"]] = (status["state"], status["exit_code"])
    return found


EXPECTED = {"1": ("failed", 3), "2": ("failed", 1), "3": ("failed", 7), "4": ("succeeded", 0)}


def test_cli_started_with_sigchld_ignored_records_each_tasks_real_exit_code(tmp_path: Path) -> None:
    (tmp_path / "tasks.txt").write_text(TASKS)
    done = subprocess.run(
        [sys.executable, "-c", LAUNCHER, sys.executable, "-m", "parallel_engine", "run", "tasks.txt", "-j", "2", "-q"],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "3 failed, 1 succeeded" in done.stdout
    assert recorded(tmp_path / ".parallel-engine") == EXPECTED
    (end,) = (tmp_path / ".parallel-engine").glob("runs/*/end.json")
    assert json.loads(end.read_text())["state"] == "finished"


def test_api_called_with_sigchld_ignored_records_each_tasks_real_exit_code(
    tmp_path: Path, sigchld_ignored: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tasks.txt").write_text(TASKS)
    monkeypatch.chdir(tmp_path)
    handle = pe.run("tasks.txt", jobs=2, store=str(tmp_path / "store"))
    assert {v.task_id: (str(v.state), v.exit_code) for v in handle.status().tasks} == EXPECTED
    assert recorded(tmp_path / "store") == EXPECTED
    assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL  # restored for good: a later run needs it too


def test_api_called_from_another_thread_with_sigchld_ignored_is_refused_before_anything_runs(
    tmp_path: Path, sigchld_ignored: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tasks.txt").write_text(TASKS)
    monkeypatch.chdir(tmp_path)
    raised: list[BaseException] = []

    def target() -> None:
        try:
            pe.run("tasks.txt", jobs=2, store=str(tmp_path / "store"), runtime="process")
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            raised.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(60)
    assert len(raised) == 1 and isinstance(raised[0], BackendError), raised
    assert "SIGCHLD is ignored" in raised[0].message
    assert not (tmp_path / "store" / "runs").exists()


def test_exit_status_reaped_by_someone_else_is_an_error_not_exit_0(tmp_path: Path) -> None:
    running = ProcessRuntime().start(process_spec(tmp_path, ("sh", "-c", "exit 5")))
    deadline = time.monotonic() + 30
    while os.waitid(os.P_PID, running.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        assert time.monotonic() < deadline, "the child never exited"
        time.sleep(0.01)
    os.waitpid(running.pid, 0)  # someone else reaps it: its status is gone
    with pytest.raises(ExitStatusLost):
        running.wait(None)


def test_attempt_whose_exit_status_is_lost_is_recorded_lost_never_succeeded(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    runtime = RaisingRuntime(on_wait=ExitStatusLost("process 42 ended but its exit status could not be read"))
    outcome = run_to_the_end(store, runtime, (Task("t1", ("x",)),), Budgets(retries=0, infra_retries=1))
    assert outcome.states == {"t1": TaskState.FAILED}
    recorded_attempts = store.attempts("r1")["t1"]
    assert [a.state for a in recorded_attempts] == [AttemptState.LOST, AttemptState.LOST]
    assert recorded_attempts[0].exit_code is None and "could not be read" in recorded_attempts[0].reason

