"""Reading a run back (`status`, `runs`, the store's attempts): right at any size, cheap at 50,000
tasks (bench/status_scale.py prints the figures), and a store that is not there said so."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from parallel_engine.model import AttemptState
from parallel_engine.errors import StoreError
from parallel_engine.results import read_log, run_status
from parallel_engine.store import LocalBlobs, RunStore, local_store
from tests.helpers import FAILED, SUCCEEDED, cli, cli_env, record_run

RUN = "20260101-120000-abcde"


class CountingBlobs(LocalBlobs):
    """LocalBlobs that remembers every read and listing it was asked for."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads: list[str] = []
        self.batches: list[list[str]] = []
        self.listings: list[str] = []

    def read(self, key: str) -> bytes | None:
        self.reads.append(key)
        return super().read(key)

    def read_many(self, keys: list[str]) -> list[bytes | None]:
        self.batches.append(list(keys))
        return [LocalBlobs.read(self, key) for key in keys]

    def list(self, prefix: str, start_after: str = "") -> list[str]:
        self.listings.append(prefix)
        return super().list(prefix, start_after)


def test_attempts_are_read_with_one_listing_and_claims_read_only_for_running_attempts(tmp_path: Path) -> None:
    record_run(local_store(tmp_path), RUN, {"a": [SUCCEEDED], "b": [FAILED, SUCCEEDED], "c": [FAILED, None]},
               retries=1, ended=None)
    blobs = CountingBlobs(tmp_path)
    attempts = RunStore(blobs, str(tmp_path)).attempts(RUN)
    assert {task: [str(a.state) for a in history] for task, history in attempts.items()} == {
        "a": ["succeeded"], "b": ["failed", "succeeded"], "c": ["failed", "running"]}
    assert attempts["c"][1].worker == "worker-c"  # the holder, from its claim
    assert blobs.listings == [f"runs/{RUN}/claims/"]
    assert blobs.reads == []  # nothing read one by one
    records, holders = blobs.batches
    assert sorted(records) == sorted(f"runs/{RUN}/tasks/{t}/{n}/status.json"
                                     for t, n in [("a", 1), ("b", 1), ("b", 2), ("c", 1), ("c", 2)])
    assert holders == [f"runs/{RUN}/claims/c.2"]


def test_a_log_is_found_from_the_claims_without_reading_every_attempt_record(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    record_run(store, RUN, {"a": [SUCCEEDED], "b": [FAILED, SUCCEEDED], "c": [FAILED]}, retries=1)
    store.blobs.write(f"runs/{RUN}/tasks/b/2/stdout.log", b"second try\n")
    blobs = CountingBlobs(tmp_path)
    assert read_log(RunStore(blobs, str(tmp_path)), RUN, "b", None, "stdout") == (2, b"second try\n")
    assert blobs.reads == [f"runs/{RUN}/run.json", f"runs/{RUN}/tasks/b/2/stdout.log"] and blobs.batches == []
    with pytest.raises(StoreError, match="task b has no attempt 3"):
        read_log(store, RUN, "b", 3, "stdout")
    with pytest.raises(StoreError, match="has no task 'z'"):
        read_log(store, RUN, "z", None, "stdout")


def big_run(tmp_path: Path, tasks: int = 250) -> dict[str, Any]:
    """A run of `tasks` tasks: every 50th failed for good, one still queued, one named in unicode."""
    histories: dict[str, list[Any]] = {f"t{i:04d}": [FAILED] if i % 50 == 7 else [SUCCEEDED] for i in range(tasks)}
    histories["t0003"] = []
    histories["t0249-café"] = histories.pop("t0249")
    record_run(local_store(tmp_path / "store"), RUN, histories, ended="running")
    return histories


def test_status_of_a_big_run_lists_only_the_tasks_that_did_not_succeed_and_says_how_to_see_all(tmp_path: Path) -> None:
    big_run(tmp_path)
    shown = cli("status", RUN, "--store", "store", cwd=tmp_path, env={"COLUMNS": "120"})
    assert shown.returncode == 0, shown.stderr
    listed = [line.split("│")[1].strip() for line in shown.stdout.splitlines() if line.startswith("│ t")]
    assert listed == ["t0003", "t0007", "t0057", "t0107", "t0157", "t0207"]
    assert f"`parallel-engine status {RUN} --all` lists all 250 tasks" in shown.stdout
    assert "5 failed, 1 queued, 244 succeeded" in shown.stdout


def test_status_all_prints_every_task_as_one_aligned_plain_line(tmp_path: Path) -> None:
    big_run(tmp_path)
    shown = cli("status", RUN, "--all", "--store", "store", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].split() == ["task", "state", "attempts", "exit", "code", "duration", "s", "worker", "reason",
                                "parameters"]
    rows = lines[1:251]
    assert [row.split()[0] for row in rows] == [f"t{i:04d}" for i in range(249)] + ["t0249-café"]
    assert rows[7].split() == ["t0007", "failed", "1", "3", "2.50", "worker-t0007", "exit", "code", "3", "x=t0007"]
    assert rows[3].split() == ["t0003", "queued", "0", "x=t0003"]
    state_column = lines[0].index("state")
    assert all(row[state_column - 2:state_column] == "  " and row[state_column] != " " for row in rows)
    assert lines[251] == "5 failed, 1 queued, 244 succeeded"


def test_status_json_is_one_document_with_every_task_and_unicode_kept(tmp_path: Path) -> None:
    histories = big_run(tmp_path)
    store = local_store(tmp_path / "store")
    shown = cli("status", RUN, "--json", "--store", "store", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert document == json.loads(json.dumps(run_status(store, RUN).to_json()))
    assert len(document["tasks"]) == len(histories) and document["counts"]["failed"] == 5
    assert '"t0249-café"' in shown.stdout  # UTF-8 text, as rich's print_json wrote it


def test_status_json_streamed_equals_the_status_as_json(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    record_run(store, RUN, {"é": [SUCCEEDED], "b": [(AttemptState.TIMEOUT, None, "timed out\nafter 1s")]})
    status = run_status(store, RUN)
    assert json.loads("".join(status.iter_json())) == json.loads(json.dumps(status.to_json()))


@pytest.mark.parametrize("command", [["runs"], ["runs", "--json"], ["status", RUN], ["logs", RUN, "a"],
                                     ["collect", RUN, "--dest", "out"], ["down", RUN]])
def test_a_store_folder_that_does_not_exist_is_said_so_with_exit_2(tmp_path: Path, command: list[str]) -> None:
    done = cli(*command, "--store", "no-such-store", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"error: no run store at {tmp_path / 'no-such-store'}" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert not (tmp_path / "out").exists()


def test_a_reader_that_stops_early_ends_status_quietly_with_141(tmp_path: Path) -> None:
    # 4,000 lines (~200 kB): more than the pipe holds, so writing meets the closed pipe
    record_run(local_store(tmp_path / "store"), RUN, {f"t{i:04d}": [SUCCEEDED] for i in range(4000)})
    proc = subprocess.Popen([sys.executable, "-m", "parallel_engine", "status", RUN, "--all", "--store", "store"],
                            cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().split()[:2] == [b"task", b"state"]
    proc.stdout.close()  # as `| head -1` does
    stderr = proc.stderr.read()
    assert proc.wait(timeout=60) == 141, stderr
    assert stderr == b""
