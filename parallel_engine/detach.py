"""`run --detach`: the run's orchestrator as a background process of its own (a new session, no
terminal, so closing the terminal does not stop it), its output in a log file. The command
returns once the orchestrator holds the run's lease (the run exists, its workers start); from
then on `status` follows it and `resume` (refused while it lives) and `cancel` find it through
the lease like any orchestrator."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from parallel_engine.errors import ParallelEngineError
from parallel_engine.store import RunStore

#: How long `run --detach` waits for its orchestrator to take the run's lease.
DETACH_WAIT_S = 120.0
#: Where a detached orchestrator's log goes, under a local store's root.
LOGS = "orchestrators/"


@dataclass(frozen=True)
class Detached:
    run_id: str
    pid: int
    log: Path


def log_path(store: RunStore, run_id: str) -> Path:
    """In a local store, beside its runs; a bucket store is not a file: the temporary folder here."""
    local = store.local_path(f"{LOGS}{run_id}.log")
    return local if local is not None else Path(tempfile.gettempdir()) / f"parallel-engine-{run_id}.log"


def start_detached(argv: list[str], store: RunStore, run_id: str) -> Detached:
    """Start `parallel-engine <argv> --run-id RUN` in the background and wait until it holds the
    run's lease; if it stops first, its log says why (its exit code and last lines)."""
    log = log_path(store, run_id)
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        out = open(log, "ab")
    except OSError as exc:
        raise ParallelEngineError(f"cannot write the detached run's log {log}: {exc.strerror or exc}",
                                  hint="check that the STORE folder can be written") from None
    with out:
        proc = subprocess.Popen([sys.executable, "-m", "parallel_engine", *argv, "--run-id", run_id],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + DETACH_WAIT_S
    while True:
        lease = store.read_lease(run_id)
        if lease is not None and lease[1].get("pid") == proc.pid:
            return Detached(run_id, proc.pid, log)
        code = proc.poll()
        if code is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise ParallelEngineError(f"the detached run stopped before it started (exit {code}): " + " / ".join(tail),
                                      hint=f"its log: {log}")
        if time.monotonic() > deadline:
            raise ParallelEngineError(f"the detached run did not start within {DETACH_WAIT_S:.0f} s "
                                      f"(orchestrator pid {proc.pid})", hint=f"its log: {log}")
        time.sleep(0.05)
