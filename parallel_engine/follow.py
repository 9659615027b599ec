"""Following a run to its end without taking it over (`wait`, `Run.wait()`): read-only.

It only reads the store (run.json, the attempts, end.json): no lease is taken, no retry is
published, nothing is written. A run ends for a follower when its end record appears, or when
`status` would call it interrupted (its orchestrator is gone: nobody will write that record).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from parallel_engine.errors import EXIT_BACKEND, EXIT_INTERRUPTED, EXIT_OK, EXIT_RUN_INTERRUPTED, EXIT_TASKS_FAILED
from parallel_engine.model import TaskState
from parallel_engine.results import RunStatus, read_log, run_state, run_status
from parallel_engine.store import RunStore

#: Between two reads of the store at least this long, and at least twice as long as a read took
#: (a read is one listing plus a batch of records: seconds at 100,000 tasks on a bucket).
POLL_S = 1.0

#: How each way a run can end is told to scripts (README "Exit codes").
EXIT_CODES = {
    "cancelled": EXIT_INTERRUPTED,  # what `run` itself exited with
    "interrupted": EXIT_RUN_INTERRUPTED,  # nobody will finish it: not the same as a cancel
    "failed": EXIT_BACKEND,  # the orchestrator stopped on an error (a lost store, a backend)
}


def follow(store: RunStore, run_id: str, on_status: Callable[[RunStatus], None],
           poll_s: float = POLL_S, sleep: Callable[[float], None] = time.sleep) -> RunStatus:
    """Read the run's status until it has ended, calling `on_status` with each reading; the last."""
    while True:
        began = time.monotonic()
        status = run_status(store, run_id)
        on_status(status)
        if status.run_state != "running":
            return status
        sleep(max(poll_s, 2 * (time.monotonic() - began)))


def exit_code(status: RunStatus) -> int:
    """The run's exit code as `run` gave it: 0 every task succeeded, 1 one failed, 130 cancelled;
    then what only a follower sees: 4 interrupted (its orchestrator is gone), 3 stopped on an error."""
    if status.run_state in EXIT_CODES:
        return EXIT_CODES[status.run_state]
    if all(view.state is TaskState.SUCCEEDED for view in status.tasks):
        return EXIT_OK
    return EXIT_TASKS_FAILED


def ending(status: RunStatus) -> str:
    """One line on how the run ended, when it did not simply finish."""
    run_id = status.record.run_id
    if status.run_state == "interrupted":
        owner = status.record.spec.get("orchestrator", {})
        return (f"run {run_id} is interrupted: its orchestrator (pid {owner.get('pid')} on "
                f"{owner.get('host')}) is gone without recording an end; nobody is finishing it")
    if status.run_state == "cancelled":
        return f"run {run_id} was cancelled: its running tasks were stopped"
    if status.run_state == "failed":
        return f"run {run_id} stopped on an error (its orchestrator said why where it ran)"
    return ""


def progress_counts(status: RunStatus) -> Counter[str]:
    """Counts per task state, as a live run's progress callback gets them."""
    return Counter(status.counts)


def tail_log(store: RunStore, run_id: str, task_id: str, attempt: int | None, stream: str,
             write: Callable[[bytes], None], poll_s: float = POLL_S,
             sleep: Callable[[float], None] = time.sleep) -> int:
    """Write one attempt's log (the latest by default; of a queued task, its first once it starts)
    as it grows, until the attempt has ended (its record is written after its last log) or the
    run has; returns the attempt's number.

    A gce worker uploads the logs every few seconds while the attempt runs: what is new shows
    then. Logs only grow (docs/worker-protocol.md), so each read asks for the bytes past what
    was written: a long log is not read again whole at every poll.
    """
    record = store.load_run(run_id)
    if attempt is None and any(task.id == task_id for task in record.tasks):
        # A task still queued: its first attempt is waited for (`logs` without --follow says "not started yet").
        while (not any(claimed == task_id for claimed, _ in store.claimed(run_id))
               and run_state(store, record) == "running"):
            sleep(poll_s)
    chosen, _ = read_log(store, run_id, task_id, attempt, stream)  # the checks and errors of `logs`
    written = 0
    while True:
        ended = store.read_status(run_id, task_id, chosen) is not None or run_state(store, record) != "running"
        data = store.read_log_from(run_id, task_id, chosen, stream, written) or b""
        if data:
            write(data)
            written += len(data)
        if ended:
            return chosen
        sleep(poll_s)
