"""`parallel-engine wait RUN` and `Run.wait()`: follow a run to its end, read-only, and exit as it ended."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import parallel_engine as pe
from parallel_engine import results
from parallel_engine.follow import exit_code, follow
from parallel_engine.lease import take as take_lease
from parallel_engine.processes import this_orchestrator
from parallel_engine.results import run_status
from parallel_engine.store import LocalBlobs, RunStore, local_store
from tests.helpers import FAILED, SUCCEEDED, cli, cli_env, gated, record_run

RUN = "20260101-120000-abcde"


class ReadOnlyBlobs(LocalBlobs):
    """A store folder that refuses every write: what only reads it cannot notice."""

    def write(self, key: str, data: bytes) -> None:
        raise AssertionError(f"wrote {key}")

    def create(self, key: str, data: bytes) -> bool:
        raise AssertionError(f"created {key}")

    def delete(self, key: str) -> None:
        raise AssertionError(f"deleted {key}")


@pytest.mark.parametrize(("histories", "ended", "code"), [
    ({"a": [SUCCEEDED], "b": [SUCCEEDED]}, "finished", 0),
    ({"a": [SUCCEEDED], "b": [FAILED]}, "finished", 1),
    ({"a": [SUCCEEDED], "b": [None]}, "cancelled", 130),
    ({"a": [SUCCEEDED], "b": [None]}, "failed", 3),
])
def test_wait_exits_as_the_run_ended(tmp_path: Path, histories: dict, ended: str, code: int) -> None:
    record_run(local_store(tmp_path / "store"), RUN, histories, ended=ended)
    done = cli("wait", RUN, "--store", "store", cwd=tmp_path)
    assert done.returncode == code, done.stdout + done.stderr
    assert f"run {RUN}: " in done.stdout


def dead_orchestrator() -> dict:
    """The identity of an orchestrator that ran here and is gone."""
    with subprocess.Popen([sys.executable, "-c", "pass"]) as gone:
        owner = {**this_orchestrator(), "pid": gone.pid}
    from parallel_engine.processes import process_start
    owner["started"] = "ticks:1"  # even a reused pid is another process
    assert process_start(gone.pid) != owner["started"]
    return owner


def interrupted_run(store: RunStore) -> None:
    record = record_run(store, RUN, {"a": [SUCCEEDED], "b": [None]}, ended=None)
    store.save_run(dataclasses.replace(record, spec={**record.spec, "orchestrator": dead_orchestrator()}))


def test_wait_on_a_run_whose_orchestrator_is_gone_says_so_and_exits_4(tmp_path: Path) -> None:
    interrupted_run(local_store(tmp_path / "store"))
    done = cli("wait", RUN, "--store", "store", cwd=tmp_path)
    assert done.returncode == 4, done.stdout + done.stderr
    assert f"run {RUN} is interrupted: its orchestrator" in done.stderr


def test_following_a_run_never_writes_to_its_store(tmp_path: Path) -> None:
    interrupted_run(local_store(tmp_path))
    status = follow(RunStore(ReadOnlyBlobs(tmp_path), str(tmp_path)), RUN, lambda status: None)
    assert status.run_state == "interrupted" and exit_code(status) == 4


def test_a_run_that_records_its_end_as_its_orchestrator_exits_is_not_read_as_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = local_store(tmp_path)
    record = record_run(store, RUN, {"a": [SUCCEEDED]}, ended=None)
    store.save_run(dataclasses.replace(record, spec={**record.spec, "orchestrator": this_orchestrator()}))

    def ends_then_exits(owner: dict) -> bool:  # between the read of end.json and the liveness check
        store.write_end(RUN, "finished", 30.0)
        return False

    monkeypatch.setattr(results, "orchestrator_alive", ends_then_exits)
    assert run_status(store, RUN).run_state == "finished"



def test_a_run_whose_lease_holder_records_the_end_and_releases_is_not_read_as_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same race where the run holds a lease (every run does): the orchestrator writes
    end.json, then releases its lease, between the follower's read of end.json and of the lease."""
    store = local_store(tmp_path)
    record_run(store, RUN, {"a": [SUCCEEDED]}, ended=None)
    take_lease(store, RUN, "run")

    def ends_then_releases(holder: dict) -> bool:
        store.write_end(RUN, "finished", 30.0)
        return False

    monkeypatch.setattr(results, "holder_alive", ends_then_releases)
    assert run_status(store, RUN).run_state == "finished"

# -- a run another process orchestrates, followed from its start to its end ----------------------
@pytest.fixture()
def gated_run(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    """`run` of three tasks (exit codes 0, 0, 1) that wait for the file `go`, in its own process."""
    with gated(tmp_path, [0, 0, 1]) as started:
        yield started


def start_wait(tmp_path: Path, run_id: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "parallel_engine", "wait", run_id], cwd=tmp_path,
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_wait_follows_a_run_another_process_orchestrates_to_its_end_and_exits_as_it_did(
    gated_run: tuple[subprocess.Popen[str], str, Path], tmp_path: Path
) -> None:
    proc, run_id, go = gated_run
    waiting = start_wait(tmp_path, run_id)
    assert not (tmp_path / ".parallel-engine" / "runs" / run_id / "end.json").exists()
    go.touch()
    out, err = waiting.communicate(timeout=120)
    assert proc.wait(timeout=60) == 1
    assert waiting.returncode == 1, out + err
    assert f"run {run_id}: 1 failed, 2 succeeded" in out


def test_run_wait_in_python_follows_another_process_run_without_writing(
    gated_run: tuple[subprocess.Popen[str], str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc, run_id, go = gated_run
    monkeypatch.chdir(tmp_path)
    handle = pe.attach(run_id)
    handle.store = RunStore(ReadOnlyBlobs(tmp_path / ".parallel-engine"), "read-only")
    seen: list[str] = []
    monkeypatch.setattr(results, "status_of", spy(results.status_of, seen))
    go.touch()
    status = handle.wait(progress=False, poll_s=0.05)
    assert status.run_state == "finished" and status.counts == {"succeeded": 2, "failed": 1}
    assert seen[0] == "running" and seen[-1] == "finished"  # followed from before its end
    assert proc.wait(timeout=60) == 1


def spy(status_of, seen: list[str]):  # type: ignore[no-untyped-def]
    def wrapped(record, run_state, *args):  # type: ignore[no-untyped-def]
        seen.append(run_state)
        return status_of(record, run_state, *args)
    return wrapped


@pytest.mark.parametrize(("stop", "code", "said"), [
    (signal.SIGINT, 130, "was cancelled"),
    (signal.SIGKILL, 4, "is interrupted: its orchestrator"),
])
def test_wait_exits_130_for_a_cancelled_run_and_4_for_one_whose_orchestrator_was_killed(
    gated_run: tuple[subprocess.Popen[str], str, Path], tmp_path: Path, stop: int, code: int, said: str
) -> None:
    proc, run_id, go = gated_run
    waiting = start_wait(tmp_path, run_id)
    proc.send_signal(stop)
    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == code, out + err
    assert said in err


def test_the_command_line_loads_no_progress_bar_ipython_pandas_or_pyarrow_until_it_needs_one() -> None:
    probe = ("import sys, parallel_engine.cli\n"
             "print(sorted(m for m in ('rich.progress', 'IPython', 'pandas', 'pyarrow') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
