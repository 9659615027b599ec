"""Starting a real `parallel-engine run` to hurt, and what every run fault checks once it ended:
the command ended within a bound, no process of the run is left (found by PE_RUN_ID, as `down`
finds them), nothing is half-written, and each attempt's record against what really happened."""

from __future__ import annotations

import contextlib
import json
import shutil
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parallel_engine.runtimes.process import kill_run_processes, run_processes
from tests.helpers import cli_env

STORE = "store"


def start_run(folder: Path, tasks: Sequence[str], *args: str, launcher: Sequence[str] = (),
              store: str = STORE) -> subprocess.Popen[str]:
    """`parallel-engine run tasks.txt --store STORE -q ARGS` in `folder`, one task per line of `tasks`."""
    (folder / "tasks.txt").write_text("".join(f"{line}\n" for line in tasks))
    return subprocess.Popen(
        [*launcher, sys.executable, "-m", "parallel_engine", "run", "tasks.txt", "--store", store, "-q", *args],
        cwd=folder, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `condition` until it is truthy (returned) or `timeout` passes (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


@dataclass
class Ended:
    code: int
    stdout: str
    stderr: str
    seconds: float


def ended(proc: subprocess.Popen[str], bound: float, since: float) -> Ended:
    """The command's end, which must come within `bound` seconds: else it is killed and that fails."""
    try:
        stdout, stderr = proc.communicate(timeout=bound)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        raise AssertionError(f"the command did not end within {bound} s; stderr: {stderr[-2000:]}") from None
    return Ended(proc.returncode, stdout, stderr, time.monotonic() - since)


def run_folder(folder: Path) -> Path | None:
    """The one run in folder/store, or None if no run was created."""
    runs = folder / STORE / "runs"
    found = sorted(runs.iterdir()) if runs.is_dir() else []
    assert len(found) <= 1, f"more than one run: {found}"
    return found[0] if found else None


def end_state(run: Path) -> str | None:
    path = run / "end.json"
    return str(json.loads(path.read_text())["state"]) if path.exists() else None


def attempts(run: Path) -> dict[tuple[str, int], dict[str, Any] | None]:
    """Every claimed attempt with its record (None: claimed, no record)."""
    found: dict[tuple[str, int], dict[str, Any] | None] = {}
    for claim in (run / "claims").iterdir():
        task_id, _, number = claim.name.rpartition(".")
        record = run / "tasks" / task_id / number / "status.json"
        found[(task_id, int(number))] = json.loads(record.read_text()) if record.exists() else None
    return found


def check_leftovers(run_id: str) -> None:
    """No process of the run may outlive its command; any found is killed, then reported."""
    left = [f"{p.pid} {' '.join(p.cmdline())}" for p in run_processes(run_id)]
    if left:
        kill_run_processes(run_id)
        raise AssertionError(f"processes of run {run_id} outlived it: {left}")


def check_whole(store: Path) -> None:
    """No temporary left behind and every JSON file whole."""
    if not store.exists():
        return
    temporaries = [str(p) for p in store.rglob(".tmp-*")]
    assert not temporaries, f"half-written files left: {temporaries}"
    for path in store.rglob("*.json"):
        try:
            json.loads(path.read_text())
        except ValueError as exc:
            raise AssertionError(f"{path} is not whole: {exc}") from None


def describe(result: Ended) -> str:
    return f"exit {result.code} after {result.seconds:.1f} s; stdout: {result.stdout[-800:]!r}; stderr: {result.stderr[-1500:]!r}"


# Becomes the command without the capabilities that let root write where the mode bits say
# no (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH): then a read-only folder is read-only for it too.
AS_A_USER = (
    sys.executable, "-c",
    "import ctypes, os, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "for cap in (1, 2):  # PR_CAPBSET_DROP; the exec below then cannot regain them\n"
    "    if libc.prctl(24, cap, 0, 0, 0) != 0: sys.exit(f'prctl: {os.strerror(ctypes.get_errno())}')\n"
    "os.execv(sys.argv[1], sys.argv[1:])",
) if os.geteuid() == 0 else ()


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """Take the write bit off every folder in `folder` (chmod -R a-w on folders), then give it back;
    a run started with AS_A_USER can no longer create, replace or remove anything there."""
    folders = [folder, *(p for p in folder.rglob("*") if p.is_dir() and not p.is_symlink())]
    for path in folders:
        path.chmod(0o555)
    try:
        yield
    finally:
        for path in folders:
            with contextlib.suppress(OSError):
                path.chmod(0o755)


def remove(folder: Path, timeout: float = 30.0) -> None:
    """`rm -rf folder` as a user does it, again while a writer still adds to it."""
    deadline = time.monotonic() + timeout
    while folder.exists():
        shutil.rmtree(folder, ignore_errors=True)
        assert time.monotonic() < deadline, f"{folder} kept coming back"
