"""`status` with workers and parameters, `--failed`, `--watch`; `logs --follow` of a running attempt."""

from __future__ import annotations

import dataclasses
import json
import os
import pty
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from parallel_engine.follow import tail_log
from parallel_engine.model import AttemptState, AttemptStatus
from parallel_engine.processes import this_orchestrator
from parallel_engine.store import local_store
from tests.helpers import FAILED, SUCCEEDED, cli, cli_env, gated, record_run, wait_for

RUN = "20260101-120000-abcde"
LONG = "x" * 300


def test_status_shows_each_tasks_worker_and_parameters_cut_to_the_terminal_width(tmp_path: Path) -> None:
    record_run(local_store(tmp_path / "store"), RUN, {"a": [SUCCEEDED], LONG[:90]: [FAILED]})
    shown = cli("status", RUN, "--store", "store", cwd=tmp_path, env={"COLUMNS": "120"})
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert all(len(line) <= 120 for line in lines), shown.stdout
    row = next(line for line in lines if line.startswith("│ a "))
    assert "worker-a" in row and "x=a" in row
    assert any("x=xxxxx" in line and line.rstrip(" │").endswith("…") for line in lines), shown.stdout


def test_status_all_keeps_whole_parameters_for_a_pipe(tmp_path: Path) -> None:
    record_run(local_store(tmp_path / "store"), RUN, {LONG[:90]: [SUCCEEDED]})
    shown = cli("status", RUN, "--all", "--store", "store", cwd=tmp_path, env={"COLUMNS": "60"})
    header, row = shown.stdout.splitlines()[:2]
    assert header.split() == ["task", "state", "attempts", "exit", "code", "duration", "s", "worker", "reason", "parameters"]
    assert row.endswith(f"x={LONG[:90]}") and f"worker-{LONG[:90]}" in row


def test_status_failed_lists_only_failed_tasks_with_reason_and_last_stderr_lines(tmp_path: Path) -> None:
    store = local_store(tmp_path / "store")
    record_run(store, RUN, {"good": [SUCCEEDED], "bad": [FAILED], "worse": [FAILED]})
    for task in ("bad", "worse"):
        store.blobs.write(f"runs/{RUN}/tasks/{task}/1/stderr.log", f"line 1\nline 2\n{task} broke\n".encode())
    shown = cli("status", RUN, "--failed", "--store", "store", cwd=tmp_path, env={"COLUMNS": "150"})
    assert shown.returncode == 0, shown.stderr
    assert "good" not in shown.stdout
    for task in ("bad", "worse"):
        assert f"│ {task} " in shown.stdout and f"--- task {task}, attempt 1: last stderr lines" in shown.stdout
        assert f"{task} broke" in shown.stdout
    assert "exit code 3" in shown.stdout and "worker-bad" in shown.stdout


def test_status_failed_of_a_run_where_nothing_failed_says_so(tmp_path: Path) -> None:
    record_run(local_store(tmp_path / "store"), RUN, {"good": [SUCCEEDED]})
    shown = cli("status", RUN, "--failed", "--store", "store", cwd=tmp_path)
    assert f"run {RUN} (finished): no task failed" in shown.stdout


def read_all(fd: int, into: queue.Queue[bytes]) -> None:
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # the other end closed (EIO on Linux)
            data = b""
        into.put(data)
        if not data:
            return


class Terminal:
    """A command on a pseudo-terminal (150 columns), everything it draws gathered as it comes."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.primary, secondary = pty.openpty()
        self.process = subprocess.Popen([sys.executable, "-m", "parallel_engine", *args], cwd=cwd,
                                        env={**cli_env(), "COLUMNS": "150", "TERM": "xterm"},
                                        stdin=subprocess.DEVNULL, stdout=secondary, stderr=secondary)
        os.close(secondary)
        self.chunks: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=read_all, args=(self.primary, self.chunks), daemon=True).start()
        self.seen = b""

    def saw(self, text: bytes) -> bool:
        while not self.chunks.empty():
            self.seen += self.chunks.get()
        return text in self.seen

    def close(self) -> None:
        os.close(self.primary)


def test_status_watch_redraws_on_a_terminal_until_the_run_ends(tmp_path: Path) -> None:
    with gated(tmp_path, [0, 1]) as (run, run_id, go):
        watch = Terminal(tmp_path, "status", run_id, "--watch")
        wait_for(lambda: watch.saw(f"run {run_id} (running)".encode()), 60, "the running run drawn")
        assert watch.process.poll() is None  # still watching
        go.touch()
        assert watch.process.wait(timeout=60) == 0
        wait_for(lambda: watch.saw(f"run {run_id} (finished)".encode()), 10, "the finished run drawn")
        assert run.wait(timeout=60) == 1
        watch.close()
    assert b"1 failed, 1 succeeded" in watch.seen


def test_status_watch_off_a_terminal_prints_the_ended_run_once(tmp_path: Path) -> None:
    with gated(tmp_path, [0]) as (run, run_id, go):
        watch = subprocess.Popen([sys.executable, "-m", "parallel_engine", "status", run_id, "--watch"],
                                 cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        go.touch()
        out, err = watch.communicate(timeout=120)
    assert watch.returncode == 0, err
    assert out.count(f"run {run_id} (") == 1 and f"run {run_id} (finished)" in out


def test_logs_follow_prints_what_a_running_attempt_writes_until_it_ends(tmp_path: Path) -> None:
    with gated(tmp_path, [0]) as (run, run_id, go):
        follow = subprocess.Popen([sys.executable, "-m", "parallel_engine", "logs", run_id, "1", "--follow"],
                                  cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert follow.stdout is not None
        first = follow.stdout.readline()  # printed while the attempt still runs
        assert first == b"started\n" and follow.poll() is None
        go.touch()
        rest, err = follow.communicate(timeout=120)
    assert follow.returncode == 0, err
    assert rest == b"released\n"
    assert b"task 1 attempt 1: ended" in err


def test_status_views_that_exclude_each_other_are_refused(tmp_path: Path) -> None:
    record_run(local_store(tmp_path / "store"), RUN, {"good": [SUCCEEDED]})
    for flags in (["--json", "--failed"], ["--all", "--json"], ["--watch", "--json"], ["--watch", "--all"]):
        shown = cli("status", RUN, *flags, "--store", "store", cwd=tmp_path)
        assert shown.returncode == 2 and "choose one" in shown.stderr, flags


def test_logs_follow_of_a_queued_task_waits_for_its_first_attempt(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    record = record_run(store, RUN, {"a": [None], "b": []}, ended=None)
    store.save_run(dataclasses.replace(record, spec={**record.spec, "orchestrator": this_orchestrator()}))
    written: list[bytes] = []
    pauses: list[float] = []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        time.sleep(seconds)

    follower = threading.Thread(target=tail_log, args=(store, RUN, "b", None, "stdout", written.append, 0.01, pause))
    follower.start()
    try:
        wait_for(lambda: len(pauses) >= 3 or not follower.is_alive(), 10, "the follower to look three times")
        assert follower.is_alive() and written == []  # still waiting for the task to start
        store.claim(RUN, "b", 1, "worker-b")
        store.add_attempt_folders(RUN, "b", 1)
        store.blobs.write(f"runs/{RUN}/tasks/b/1/stdout.log", b"hello\n")
        wait_for(lambda: written == [b"hello\n"], 10, "the first attempt's log")
        store.record_end(RUN, AttemptStatus("b", 1, AttemptState.SUCCEEDED, 0, 1.0, 2.0, "worker-b"))
    finally:
        follower.join(timeout=10)
    assert not follower.is_alive() and written == [b"hello\n"]


def test_ctrl_c_stops_wait_with_130_and_the_run_goes_on(tmp_path: Path) -> None:
    with gated(tmp_path, [0, 1]) as (run, run_id, go):
        waiting = Terminal(tmp_path, "wait", run_id)
        wait_for(lambda: waiting.saw(b"tasks"), 60, "wait's progress bar")  # it is following
        waiting.process.send_signal(signal.SIGINT)
        assert waiting.process.wait(timeout=60) == 130
        wait_for(lambda: waiting.saw(b"the run itself goes on"), 10, "what wait says")
        assert run.poll() is None  # untouched
        go.touch()
        assert run.wait(timeout=60) == 1
        waiting.close()
    assert b"Traceback" not in waiting.seen and b"Aborted" not in waiting.seen


def test_status_json_gives_each_tasks_worker(tmp_path: Path) -> None:
    record_run(local_store(tmp_path / "store"), RUN, {"a": [SUCCEEDED], "b": []})
    shown = cli("status", RUN, "--json", "--store", "store", cwd=tmp_path)
    tasks = {task["task_id"]: task for task in json.loads(shown.stdout)["tasks"]}
    assert tasks["a"]["worker"] == "worker-a" and tasks["b"]["worker"] == ""
