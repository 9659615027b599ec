"""Faults every user meets during `parallel-engine run`, each at a moment drawn from the seed:
Ctrl-C and SIGTERM (at the start, in the middle, at the end; sometimes twice), timeouts that
land as tasks exit, an ignored SIGCHLD, and a store removed or made read-only under the run.

Each try runs the real command line and checks what harness.py asks: it ended within a bound,
with the right exit code (and end.json saying the same), every attempt's record equals what
really happened, no process of the run is left, and nothing is half-written.

What really happened is read from the tasks themselves: each writes `out` into its outputs when
it finishes its work. Half of them die of SIGTERM (143, 137 after the grace): for those the exit
code tells exactly whether we stopped them. The other half trap SIGTERM, write `term` and exit 0,
so only `term` tells that we stopped them: such a task must never be recorded succeeded. (A trap
is not proof the other way: a shell that gets SIGTERM as it exits may exit 0 without running it.)
"""

from __future__ import annotations

import json
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.faults.harness import scenario
from tests.faults.runs import (
    AS_A_USER,
    STORE,
    Ended,
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
from tests.helpers import cli_env

BOUND_S = 30.0  # every fault here must end the command this soon (Ctrl-C's kill grace is 2 s)
KILLED_CODES = (128 + signal.SIGTERM, 128 + signal.SIGKILL)
SIGNALS = {"ctrl-c": signal.SIGINT, "sigterm": signal.SIGTERM}
# Before parallel_engine's first line runs (Python's own start-up) a signal ends the command as
# it ends any Python program (killed, or KeyboardInterrupt); nothing exists yet. From there on,
# while the CLI loads (~0.3 s), parallel_engine/entry.py ends it with one line and exit 130.
DIED_OF = {-signal.SIGINT, -signal.SIGTERM}
WHILE_LOADING = "interrupted: parallel-engine stopped as it started; nothing was done"


def task(seconds: float, trap: bool = True) -> str:
    """A task line: works `seconds`, then writes `out`; with `trap`, SIGTERM writes `term`, exit 0."""
    work = f'sleep {seconds:.3f} & wait; echo ok > "$PE_OUTPUT_DIR/out"'
    if trap:
        work = f'trap \'echo > "$PE_OUTPUT_DIR/term"; exit 0\' TERM; {work}'
    return shlex.join(["sh", "-c", work])


def truth(run: Path, task_id: str, attempt: int) -> tuple[bool, bool]:
    """(finished its work, got our SIGTERM) as the attempt's own files say."""
    outputs = run / "tasks" / task_id / str(attempt) / "outputs"
    return (outputs / "out").exists(), (outputs / "term").exists()


def check_records(run: Path, stopped_state: str, trapping: set[str]) -> dict[tuple[str, int], dict[str, Any]]:
    """Every claimed attempt has a record equal to what happened: succeeded = exited 0 by itself
    after its work; `stopped_state` (timeout or cancelled) = we signalled it while it ran.
    `trapping`: the ids of the tasks that trap SIGTERM."""
    found = attempts(run)
    for (task_id, number), record in sorted(found.items()):
        assert record is not None, f"attempt {task_id}.{number} was claimed but never recorded"
        finished, termed = truth(run, task_id, number)
        state, code, where = record["state"], record["exit_code"], f"{task_id}.{number} (trap: {task_id in trapping})"
        if state == "succeeded":
            assert code == 0 and finished and not termed, f"{where} recorded succeeded: {record}, out={finished} term={termed}"
        elif state == stopped_state and task_id not in trapping:
            assert code in KILLED_CODES, f"{where} recorded {state} but exited by itself: {record}"
        elif state != stopped_state:
            raise AssertionError(f"{where} recorded {state}: {record}")
        if termed:
            assert state == stopped_state, f"{where} got our SIGTERM but is recorded {record}"
    return {key: record for key, record in found.items() if record is not None}


def tasks(rng: random.Random, seconds: list[float]) -> tuple[list[str], set[str]]:
    """Task lines working these many seconds, half of them trapping SIGTERM; and the trapping ids."""
    traps = [rng.random() < 0.5 for _ in seconds]
    return [task(s, trap) for s, trap in zip(seconds, traps)], {str(i + 1) for i, trap in enumerate(traps) if trap}


def check_short_records(run: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """For `true` (no trap, no output): succeeded = exit 0; cancelled = died of our signal."""
    records = attempts(run)
    for key, record in records.items():
        assert record is not None, f"attempt {key} was claimed but never recorded"
        assert (record["state"], record["exit_code"]) in (("succeeded", 0), *(("cancelled", c) for c in KILLED_CODES)), record
    return {key: record for key, record in records.items() if record is not None}


def events(run: Path) -> int:
    return len(list(run.glob("events/*")))


def signal_run(rng: random.Random, tmp: Path, sig: signal.Signals, phase: str, count: int = 12,
               short: bool = False) -> None:
    quota = rng.randint(1, 3)
    lines, trapping = (["true"] * count, set()) if short else tasks(rng, [rng.uniform(0.02, 0.2) for _ in range(count)])
    proc = start_run(tmp, lines, "-j", str(quota), "--runtime", "process")
    started = time.monotonic()
    if phase == "start" and rng.random() < 0.25:  # the command's own start-up, before the run exists
        time.sleep(rng.uniform(0.0, 0.8))
    elif phase == "start":  # the run just created: its first tasks starting
        wait_for(lambda: run_folder(tmp), BOUND_S, "the run to be created")
        time.sleep(rng.uniform(0.0, 0.15))
    else:
        run = wait_for(lambda: run_folder(tmp), BOUND_S, "the run to be created")
        lo, hi = (count // 10, count // 2) if phase == "middle" else (count - quota - 1, count - quota)
        target = rng.randint(max(lo, 0), max(hi, 0))
        wait_for(lambda: events(run) >= target or proc.poll() is not None, BOUND_S, f"{target} tasks to end")
        time.sleep(rng.uniform(0.0, 0.2 if phase == "middle" else 0.3))
    proc.send_signal(sig)
    if rng.random() < 0.3:  # an impatient user presses again
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(rng.choice([signal.SIGINT, signal.SIGTERM]))
    result = ended(proc, BOUND_S, started)
    run = run_folder(tmp)
    if run is None:  # the signal came before the run existed: nothing was created, nothing runs
        if result.code == 130:  # our handler was in place: the run command's, or entry.py's
            assert "interrupted before the run started" in result.stderr or \
                result.stderr == WHILE_LOADING + "\n", describe(result)
        else:  # Python's own start-up was interrupted, as any Python program's is
            assert result.code in DIED_OF or "KeyboardInterrupt" in result.stderr, describe(result)
        return
    try:
        assert "Traceback" not in result.stderr, describe(result)
        state = end_state(run)
        assert state in ("cancelled", "finished"), f"end.json: {state}; {describe(result)}"
        assert result.code == (130 if state == "cancelled" else 0), f"end.json says {state}; {describe(result)}"
        records = check_short_records(run) if short else check_records(run, "cancelled", trapping)
        if state == "finished":
            assert len(records) == count and all(r["state"] == "succeeded" for r in records.values()), describe(result)
        check_whole(tmp / STORE)
    finally:
        check_leftovers(run.name)


for _name, _sig in SIGNALS.items():
    for _phase in ("start", "middle", "end"):
        scenario(f"{_name} at random: {_phase}", ci_tries=3)(
            lambda rng, tmp, sig=_sig, phase=_phase: signal_run(rng, tmp, sig, phase))


@scenario("ctrl-c at random: 3,000 short tasks", ci_tries=1)
def ctrl_c_many_short_tasks(rng: random.Random, tmp: Path) -> None:
    signal_run(rng, tmp, signal.SIGINT, "middle", count=3000, short=True)


@scenario("timeout landing on exit", ci_tries=3)
def timeout_on_exit(rng: random.Random, tmp: Path) -> None:
    timeout = rng.uniform(0.05, 0.3)
    retries = rng.randint(0, 1)
    lines, trapping = tasks(rng, [max(timeout + rng.uniform(-0.02, 0.02), 0.0) for _ in range(16)])
    proc = start_run(tmp, lines, "-j", str(rng.randint(2, 4)), "--runtime", "process",
                     "--timeout", f"{timeout:.3f}", "--retries", str(retries))
    result = ended(proc, 60.0, time.monotonic())
    run = run_folder(tmp)
    assert run is not None, describe(result)
    try:
        assert end_state(run) == "finished" and "Traceback" not in result.stderr, describe(result)
        records = check_records(run, "timeout", trapping)
        by_task: dict[str, list[dict[str, Any]]] = {}
        for (task_id, number), record in sorted(records.items(), key=lambda item: item[0][1]):
            by_task.setdefault(task_id, []).append(record)
        for task_id, history in by_task.items():
            done = [r["attempt"] for r in history if r["state"] == "succeeded"]
            assert not done or done[0] == history[-1]["attempt"], f"task {task_id} ran again after it succeeded: {history}"
            assert len(history) <= 1 + retries, f"task {task_id}: {history}"
        all_ok = all(history[-1]["state"] == "succeeded" for history in by_task.values())
        assert result.code == (0 if all_ok else 1), describe(result)
        check_whole(tmp / STORE)
    finally:
        check_leftovers(run.name)


# Ignores SIGCHLD, then becomes the command: the setting survives exec, as from a careless parent.
IGNORE_SIGCHLD = ("-c", "import os, signal, sys; signal.signal(signal.SIGCHLD, signal.SIG_IGN); os.execv(sys.argv[1], sys.argv[1:])")


@scenario("sigchld ignored", ci_tries=2)
def sigchld_ignored(rng: random.Random, tmp: Path) -> None:
    codes = [rng.choice([0, 1, 3, 7]) for _ in range(rng.randint(3, 10))]
    lines = [shlex.join(["sh", "-c", f"sleep {rng.uniform(0, 0.05):.3f}; exit {code}"]) for code in codes]
    proc = start_run(tmp, lines, "-j", str(rng.randint(1, 3)), "--runtime", "process",
                     launcher=(sys.executable, *IGNORE_SIGCHLD))
    result = ended(proc, 60.0, time.monotonic())
    run = run_folder(tmp)
    assert run is not None, describe(result)
    try:
        assert result.code == (1 if any(codes) else 0), describe(result)
        recorded = {task_id: (r["state"], r["exit_code"]) for (task_id, _), r in attempts(run).items() if r}
        expected = {str(i + 1): ("succeeded" if code == 0 else "failed", code) for i, code in enumerate(codes)}
        assert recorded == expected, f"recorded {recorded}, really {expected}"
    finally:
        check_leftovers(run.name)


def store_fault_run(rng: random.Random, tmp: Path, launcher: tuple[str, ...] = ()) -> tuple[subprocess.Popen[str], Path, float]:
    """A run of short tasks with tasks that work for a minute among them (so the fault lands while
    it runs), once it exists and a random moment later. Half the time the long ones come first
    and fill every worker: then nothing is written when the fault lands, and only the pool's
    own check can notice it."""
    quota = rng.randint(2, 4)
    seconds = [rng.uniform(0.02, 0.2) for _ in range(20)]
    long_first = rng.random() < 0.5
    for index in range(quota) if long_first else rng.sample(range(len(seconds)), 2):
        seconds[index] = 60.0
    lines, _ = tasks(rng, seconds)
    proc = start_run(tmp, lines, "-j", str(quota), "--runtime", "process", launcher=launcher)
    run = wait_for(lambda: run_folder(tmp), BOUND_S, "the run to be created")
    time.sleep(rng.uniform(0.0, 1.5))
    return proc, run, time.monotonic()


def check_stopped_by_store(result: Ended, *says: str) -> None:
    """Exit 2 with one error line saying why (and a hint), no traceback."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.code == 2 and len(errors) == 1 and "Traceback" not in result.stderr, describe(result)
    assert any(word in errors[0] for word in says), describe(result)


@scenario("store removed mid-run", ci_tries=2)
def store_removed(rng: random.Random, tmp: Path) -> None:
    proc, run, since = store_fault_run(rng, tmp)
    remove(tmp / STORE)
    try:
        result = ended(proc, BOUND_S, since)
    finally:
        check_leftovers(run.name)
    check_stopped_by_store(result, "is gone")
    assert not (tmp / STORE).exists(), "the removed store was written again"


@scenario("store made read-only mid-run", ci_tries=2)
def store_read_only(rng: random.Random, tmp: Path) -> None:
    proc, run, since = store_fault_run(rng, tmp, launcher=AS_A_USER)
    with read_only(tmp / STORE):
        try:
            result = ended(proc, BOUND_S, since)
        finally:
            check_leftovers(run.name)
    check_stopped_by_store(result, "cannot be written", "Read-only file system", "Permission denied")
    check_whole(tmp / STORE)
    for (task_id, number), record in attempts(run).items():  # what was recorded before is right
        if record is not None and record["state"] == "succeeded":
            assert truth(run, task_id, number) == (True, False), f"{task_id}.{number}: {record}"
    status = subprocess.run([sys.executable, "-m", "parallel_engine", "status", run.name, "--store", STORE, "--json"],
                            cwd=tmp, env=cli_env(), capture_output=True, text=True, timeout=60)
    shown = json.loads(status.stdout)
    assert shown["state"] in ("interrupted", "failed"), status.stdout
    assert all(view["state"] != "running" for view in shown["tasks"]), status.stdout
