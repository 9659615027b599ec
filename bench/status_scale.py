"""Benchmark (not a test): what reading a big run costs. `status` and `status --json` of a
50,000-task local run, time and peak RSS of the command, this code and a baseline side by side.

    python bench/status_scale.py [--tasks 50000] [--baseline REF | --no-baseline] [--store DIR]

The run is written straight through the store API (no task runs): most tasks succeed at once,
some succeed on a retry (after a failure, a timeout or an infra failure), some fail for good, a
few were cancelled; each attempt has its claim, status.json, event, two logs and an output
file, as a real attempt does. `--store DIR` keeps it there and reuses it on the next call.

Each command runs in a child process: its wall time, its CPU time (user + system, which a busy
machine changes least) and its own peak RSS (os.wait4's rusage).
The baseline is the package as it was at REF (default: BASELINE, main before the status work),
taken with `git archive` into a temporary folder and put first on PYTHONPATH. Targets
(README "Benchmarks"): each command <= 5 s and <= 300 MB at 50,000 tasks; exit 1 if this
code misses one.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from parallel_engine.model import AttemptState, AttemptStatus, Task  # noqa: E402
from parallel_engine.store import RunRecord, RunStore, local_store  # noqa: E402

#: main before reading a run was made cheap (the "before" column).
BASELINE = "1333089"
RUN_ID = "20260101-120000-bench"
TARGET_S = 5.0
TARGET_MB = 300.0


def _outcomes(rng: random.Random) -> list[tuple[AttemptState, int | None, str]]:
    """The attempts of one task: (state, exit code, reason), in order."""
    roll = rng.random()
    ok = (AttemptState.SUCCEEDED, 0, "")
    failed = (AttemptState.FAILED, 3, "exit code 3")
    if roll < 0.90:
        return [ok]
    if roll < 0.95:
        return [failed, ok]
    if roll < 0.96:
        return [(AttemptState.TIMEOUT, None, "timed out after 60s"), ok]
    if roll < 0.97:
        return [(AttemptState.INFRA, None, "cannot start 'python': Resource temporarily unavailable"), ok]
    if roll < 0.995:
        return [failed, failed, failed]
    return [(AttemptState.CANCELLED, None, "cancelled")]


def build_run(store: RunStore, tasks: int, seed: int = 1) -> None:
    """A finished run of `tasks` tasks, every record written as the local backend writes it."""
    rng = random.Random(seed)
    task_list = tuple(
        Task(id=f"t{i:06d}", argv=(f"--dataset=d{i % 97}", f"--var={i % 13}", "--project=bench"),
             params={"task_id": f"t{i:06d}", "dataset": f"d{i % 97}", "var": str(i % 13), "project": "bench"},
             source=f"params.csv:{i + 2}")
        for i in range(tasks)
    )
    created = time.time()
    store.save_run(RunRecord(
        run_id=RUN_ID, created=created, backend="local", source="params.csv",
        columns=("task_id", "dataset", "var", "project"), tasks=task_list,
        spec={"runtime": "process", "command": ["python3", "main.py"], "image": None, "quota": 2,
              "retries": 2, "preemption_retries": 3, "task_timeout": 60.0,
              "orchestrator": {"host": "bench-host", "pid": 1}},
    ))
    clock = created
    for task in task_list:
        for number, (state, exit_code, reason) in enumerate(_outcomes(rng), start=1):
            worker = f"w{rng.randrange(2)}"
            store.claim(RUN_ID, task.id, number, worker)
            store.add_attempt_folders(RUN_ID, task.id, number)
            prefix = store.attempt_prefix(RUN_ID, task.id, number)
            store.blobs.write(prefix + "stdout.log", f"task {task.id} attempt {number}\n".encode())
            store.blobs.write(prefix + "stderr.log", b"" if state is AttemptState.SUCCEEDED else b"boom\n")
            if state is AttemptState.SUCCEEDED:
                store.blobs.write(prefix + "outputs/result.txt", b"42\n")
            started, clock = clock, clock + rng.uniform(0.5, 3.0)
            status = AttemptStatus(task.id, number, state, exit_code, started, clock, worker, reason)
            store.write_status(RUN_ID, status)
            store.add_event(RUN_ID, status)
    store.write_end(RUN_ID, "finished", clock)


@dataclass(frozen=True)
class Measure:
    seconds: float
    cpu_seconds: float  # user + system: what a busy machine changes least
    peak_mb: float
    exit_code: int
    output_bytes: int


def measure(args: list[str], pythonpath: str | None, cwd: Path, out: Path) -> Measure:
    """One `parallel-engine` command in a child: its wall time and its own peak RSS."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARALLEL_ENGINE_")}
    env["COLUMNS"] = "120"
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    with open(out, "wb") as sink:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "parallel_engine", *args], cwd=cwd, env=env,
                                stdout=sink, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    return Measure(seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, proc.returncode,
                   out.stat().st_size)


@contextmanager
def baseline_package(ref: str) -> Iterator[str]:
    """The package as it was at `ref`, in a temporary folder to put on PYTHONPATH."""
    folder = Path(tempfile.mkdtemp(prefix="pe-baseline-"))
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "parallel_engine"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(folder)], check=True)
        yield str(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _check_json(path: Path, tasks: int) -> str:
    """Whether the --json output is one document holding every task (a fast wrong answer is no answer)."""
    try:
        document = json.loads(path.read_bytes())
    except ValueError as exc:
        return f"NOT JSON ({exc})"
    return "" if len(document.get("tasks", ())) == tasks else f"WRONG: {len(document.get('tasks', ()))} tasks"


def _line(label: str, m: Measure, note: str = "") -> str:
    if m.exit_code:
        verdict = f"FAILED: exit {m.exit_code}"
    elif m.seconds <= TARGET_S and m.peak_mb <= TARGET_MB:
        verdict = f"meets <= {TARGET_S:g} s, <= {TARGET_MB:g} MB"
    else:
        verdict = f"MISSES <= {TARGET_S:g} s, <= {TARGET_MB:g} MB"
    text = f"{label:<16} {m.seconds:7.2f} s (cpu {m.cpu_seconds:6.2f} s) {m.peak_mb:7.0f} MB  ({verdict})"
    return text + (f"  {note}" if note else "")


def _sides(ref: str | None, stack: ExitStack) -> list[tuple[str, str | None]]:
    """(label, PYTHONPATH) of each side measured: the baseline first when there is one."""
    sides: list[tuple[str, str | None]] = [("after (this code)", None)]
    if ref is not None:
        try:
            sides.insert(0, (f"before ({ref})", stack.enter_context(baseline_package(ref))))
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"(no baseline: cannot take {ref} from git: {exc})")
    return sides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=50_000)
    parser.add_argument("--baseline", default=BASELINE, help=f"git ref of the 'before' code (default {BASELINE})")
    parser.add_argument("--no-baseline", action="store_true", help="measure this code only")
    parser.add_argument("--store", type=Path, help="keep the run store here, and reuse it when it holds the run")
    args = parser.parse_args(argv)

    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "parallel_engine")], check=True)
    with ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="pe-status-scale-"))
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        root = args.store.resolve() if args.store else work / "store"
        store = local_store(root)
        existing = store.blobs.read(f"runs/{RUN_ID}/run.json")
        if existing is None or len(json.loads(existing)["tasks"]) != args.tasks:
            shutil.rmtree(root / "runs" / RUN_ID, ignore_errors=True)
            started = time.perf_counter()
            build_run(store, args.tasks)
            print(f"built a {args.tasks}-task run in {time.perf_counter() - started:.1f} s ({root})", flush=True)
        print(f"status of {args.tasks} tasks ({len(store.claimed(RUN_ID))} attempts): wall time, CPU time and "
              "peak RSS of the command, each a fresh process", flush=True)
        commands = [("status", ["status", RUN_ID]), ("status --all", ["status", RUN_ID, "--all"]),
                    ("status --json", ["status", RUN_ID, "--json"])]
        missed = False
        for side, pythonpath in _sides(None if args.no_baseline else args.baseline, stack):
            print(f"  {side}:")
            for label, command in commands:
                if pythonpath is not None and "--all" in command:
                    continue  # no --all before: its `status` printed every task
                out = work / "out"
                result = measure([*command, "--store", str(root)], pythonpath, work, out)
                note = _check_json(out, args.tasks) if "--json" in command and not result.exit_code else ""
                print("    " + _line(label, result, note), flush=True)
                if pythonpath is None:
                    missed |= bool(result.exit_code or note) or result.seconds > TARGET_S or result.peak_mb > TARGET_MB
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
