"""Small programs and files the end-to-end tests run through parallel-engine."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from parallel_engine.backends.local.pool import LocalPool
from parallel_engine.model import AttemptState, AttemptStatus, Task
from parallel_engine.runtimes.base import AttemptSpec
from parallel_engine.scheduler import Outcome as RunOutcome
from parallel_engine.scheduler import Scheduler
from parallel_engine.state import Budgets
from parallel_engine.store import RunRecord, RunStore

ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE = "python:3.11-slim"  # what code/Dockerfile's FROM names; ensure-docker.sh makes it

# Writes its argv (as JSON) and pid into $PE_OUTPUT_DIR, then behaves as its arguments say.
PROBE = r'''
import json, os, sys, time, subprocess
out = os.environ["PE_OUTPUT_DIR"]
args = sys.argv[1:]
with open(os.path.join(out, "argv.json"), "w", encoding="utf-8") as f:
    json.dump({"argv": args, "env": {k: v for k, v in os.environ.items() if k.startswith("PE_")}}, f)
print("probe ran", os.environ["PE_TASK_ID"], "attempt", os.environ["PE_ATTEMPT"])
for a in args:
    if a.startswith("--exit="):
        print("exiting with", a[7:], file=sys.stderr)
        sys.exit(int(a[7:]))
    if a.startswith("--fail-until="):  # fail while attempt < N
        if int(os.environ["PE_ATTEMPT"]) < int(a[len("--fail-until="):]):
            print("flaky failure", file=sys.stderr)
            sys.exit(3)
    if a.startswith("--sleep="):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        with open(os.path.join(out, "pids"), "w") as f:
            f.write(f"{os.getpid()} {child.pid}\n")
        time.sleep(float(a[8:]))
'''


def write_probe(folder: Path) -> Path:
    path = folder / "probe.py"
    path.write_text(PROBE)
    return path


def cli_env() -> dict[str, str]:
    """This environment without PARALLEL_ENGINE_* settings: a test's command sees only its own."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PARALLEL_ENGINE_")}


def containers_of(client: Any, run_id: str) -> list[Any]:
    """Every container (running or not) labelled with `run_id`."""
    from parallel_engine.protocol import LABEL_RUN

    # ignore_removed: one removed between the list and its inspect is gone, not an error
    return client.containers.list(all=True, filters={"label": f"{LABEL_RUN}={run_id}"}, ignore_removed=True)


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real `parallel-engine` command line in a subprocess."""
    full_env = cli_env()
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "parallel_engine", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


def build_with_user(base_image: str, user: str, context: Path, tag: str) -> str:
    """`tag`: the base image with a Dockerfile `USER user` (built in `context`, cached after once)."""
    from parallel_engine.backends.local.build import build_local

    context.mkdir(exist_ok=True)
    (context / "Dockerfile").write_text(f"FROM {base_image}\nUSER {user}\n")
    build_local(context, tag, lambda line: None)
    return tag


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def run_id_of(done: subprocess.CompletedProcess[str]) -> str:
    """The run id `parallel-engine run` printed ("run <id>: ..."): never guess it from the store,
    where another run may have started in the same second."""
    match = re.search(r"^run (\S+):", done.stdout, re.MULTILINE)
    assert match, done.stdout + done.stderr
    return match.group(1)


#: An attempt as record_run writes it: its end state, exit code and reason.
Outcome = tuple[AttemptState, int | None, str]
SUCCEEDED: Outcome = (AttemptState.SUCCEEDED, 0, "")
FAILED: Outcome = (AttemptState.FAILED, 3, "exit code 3")


def record_run(store: RunStore, run_id: str, histories: Mapping[str, Sequence[Outcome | None]],
               retries: int = 0, ended: str | None = "finished") -> RunRecord:
    """A local run written straight through the store API, as its workers would have written it:
    per task, its attempts in order (None: claimed and still running, no record yet)."""
    record = RunRecord(
        run_id=run_id, created=time.time(), backend="local", source="params.csv", columns=("x",),
        tasks=tuple(Task(task_id, (f"--x={task_id}",), {"x": task_id}, source=f"params.csv:{line}")
                    for line, task_id in enumerate(histories, start=2)),
        spec={"runtime": "process", "retries": retries, "preemption_retries": 3,
              "orchestrator": {"host": "elsewhere", "pid": 1}},
    )
    store.save_run(record)
    for task_id, history in histories.items():
        for number, outcome in enumerate(history, start=1):
            store.claim(run_id, task_id, number, f"worker-{task_id}")
            store.add_attempt_folders(run_id, task_id, number)
            if outcome is not None:
                state, exit_code, reason = outcome
                status = AttemptStatus(task_id, number, state, exit_code, 10.0, 12.5, f"worker-{task_id}", reason)
                store.write_status(run_id, status)
                store.add_event(run_id, status)
    if ended:
        store.write_end(run_id, ended, 20.0)
    return record


def alias_bomb(depth: int, use: str) -> str:
    """A "billion laughs" YAML: anchors a0..a<depth>, each nine aliases of the one before (9**depth
    values from a few hundred bytes), on lines 1..depth+1; then `use`, which may alias *a<depth>."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, depth + 1)]
    return "\n".join([*lines, use]) + "\n"


def chromium_paths() -> tuple[str, str] | None:
    """Headless Chromium and its driver (Debian's chromium and chromium-driver; PE_CHROMIUM and
    PE_CHROMEDRIVER name others), or None when either is missing."""
    browser = shutil.which(os.environ.get("PE_CHROMIUM", "chromium"))
    driver = shutil.which(os.environ.get("PE_CHROMEDRIVER", "chromedriver"))
    return (browser, driver) if browser and driver else None


# -- waiting with a deadline ----------------------------------------------------------------------
def wait_for(condition, timeout: float, what: str) -> None:
    """Poll a condition with a deadline: waiting for an event, not sleeping for luck."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# -- a scheduler over a local pool, in a thread, with a deadline ---------------------------------
DEADLINE_S = 60  # generous: a hang is what these tests catch, not slowness


class RaisingRuntime:
    """A runtime whose `start` (or the attempt's `wait`) raises what it is given."""

    name = "raising"

    def __init__(self, on_start: BaseException | None = None, on_wait: BaseException | None = None) -> None:
        self.on_start = on_start
        self.on_wait = on_wait

    def start(self, spec: AttemptSpec) -> Any:
        if self.on_start is not None:
            raise self.on_start
        runtime = self

        class Attempt:
            def wait(self, timeout: float | None) -> int | None:
                raise runtime.on_wait  # type: ignore[misc]

            def kill(self) -> None:
                pass

        return Attempt()

    def close(self) -> None:
        pass


def run_to_the_end(store: RunStore, runtime: Any, tasks: tuple[Task, ...], budgets: Budgets,
                   timeout_s: float | None = None, cancel: threading.Event | None = None) -> RunOutcome:
    """Run the scheduler over a LocalPool in a thread; fail (not hang) if it never ends."""
    store.add_run_folders("r1")
    scheduler = Scheduler(tasks, budgets, lambda on_event: LocalPool(store, "r1", runtime, 2, timeout_s, on_event))
    return run_with_deadline(scheduler, cancel or threading.Event())


def run_with_deadline(scheduler: Scheduler, cancel: threading.Event) -> RunOutcome:
    """`scheduler.run(cancel)` in a thread: its outcome, or what it raised; fails if it never ends."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["outcome"] = scheduler.run(cancel)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(DEADLINE_S)
    assert not thread.is_alive(), f"the run did not end within {DEADLINE_S} s"
    if "error" in result:
        raise result["error"]
    return result["outcome"]


def process_spec(tmp_path: Path, argv: tuple[str, ...], task_id: str = "t") -> AttemptSpec:
    """An attempt of `argv` (a full command) with its outputs and logs under tmp_path."""
    outputs = tmp_path / "outputs"
    outputs.mkdir(exist_ok=True)
    return AttemptSpec(
        run_id="r", task_id=task_id, attempt=1, argv=argv, command_override=True,
        env={"PE_TASK_ID": task_id}, output_dir=outputs,
        stdout_path=tmp_path / "stdout.log", stderr_path=tmp_path / "stderr.log", timeout_s=None,
    )


def printed_run_id(done: subprocess.CompletedProcess[str]) -> str:
    """The run id the command printed (never guessed from the store's listing)."""
    found = re.search(r"\brun (\d{8}-\d{6}-[a-z0-9]{5})", done.stdout + done.stderr)
    assert found, done.stdout + done.stderr
    return found.group(1)


# -- scripts/ensure-*.sh with fake programs on PATH ---------------------------------------------
def fake_program(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)


def script_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PE_START_DOCKER", "DOCKER_HOST")}
    env.update(
        PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}",
        PE_STATE_DIR=str(tmp_path / "state"),
        PE_POLICY_RC_D=str(tmp_path / "policy-rc.d"),
        PE_RETRY_BACKOFF_S="0",
        **extra,
    )
    return env


# -- pictures ------------------------------------------------------------------------------------
def colour_pixels(png: Path, hex_colour: str) -> int:
    from PIL import Image

    wanted = tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    counts = Image.open(png).convert("RGB").getcolors(maxcolors=1 << 24) or []
    return sum(n for n, colour in counts if colour == wanted)


# -- a scripted in-memory pool: the scheduler's decisions without processes or a store -------------
#: How a scripted attempt ends: its state, exit code and reason.
Script = Callable[[Task, int], Outcome]


class ScriptedPool:
    """A `Pool` (parallel_engine/backends/base.py) in memory: `quota` worker threads run each
    submitted attempt as `script(task, attempt)` says, after `delay()` seconds (random moments
    when the test draws them from a seeded rng). A script that raises a ParallelEngineError makes
    the pool fail (`PoolFailed`). On `cancel` every running attempt ends `cancelled`; what was
    still queued never starts."""

    def __init__(self, on_event: Any, script: Script, quota: int = 2, delay: Callable[[], float] = lambda: 0.0) -> None:
        self.on_event, self.script, self.quota, self.delay = on_event, script, quota, delay
        self.pending: queue.SimpleQueue[tuple[Task, int] | None] = queue.SimpleQueue()
        self.cancelled = threading.Event()
        self.submitted: list[tuple[str, int]] = []
        self.closed = False
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for index in range(self.quota):
            thread = threading.Thread(target=self._work, args=(f"scripted-{index}",), daemon=True)
            thread.start()
            self._threads.append(thread)

    def submit(self, task: Task, attempt: int) -> None:
        self.submitted.append((task.id, attempt))
        self.pending.put((task, attempt))

    def cancel(self) -> None:
        self.cancelled.set()

    def close(self) -> None:
        for _ in self._threads:
            self.pending.put(None)
        for thread in self._threads:
            thread.join(DEADLINE_S)
        self.closed = True

    def check(self) -> None:
        pass

    def _work(self, worker: str) -> None:
        from parallel_engine.backends.base import Finished, PoolFailed, Started
        from parallel_engine.errors import ParallelEngineError

        while (item := self.pending.get()) is not None:
            task, attempt = item
            if self.cancelled.is_set():
                continue
            status = AttemptStatus(task.id, attempt, AttemptState.RUNNING, started_at=time.time(), worker=worker)
            self.on_event(Started(status))
            stopped = self.cancelled.wait(self.delay())
            try:
                state, code, reason = (AttemptState.CANCELLED, None, "cancelled") if stopped else self.script(task, attempt)
            except ParallelEngineError as exc:
                self.on_event(PoolFailed(exc))
                continue
            ended = AttemptStatus(task.id, attempt, state, code, status.started_at, time.time(), worker, reason)
            self.on_event(Finished(ended))


def outcomes(*sequence: Outcome) -> Script:
    """A script whose attempt N of any task ends as sequence[N - 1] (the last one repeats)."""
    return lambda task, attempt: sequence[min(attempt, len(sequence)) - 1]


def no_credentials_env(home: Path) -> dict[str, str]:
    """A machine where nobody logged in: no ADC file, no GOOGLE_APPLICATION_CREDENTIALS, not a Google VM."""
    return {"HOME": str(home), "CLOUDSDK_CONFIG": str(home / "gcloud"), "NO_GCE_CHECK": "true",
            "GCE_METADATA_HOST": "127.0.0.1:9", "GCE_METADATA_IP": "127.0.0.1:9",
            "GOOGLE_APPLICATION_CREDENTIALS": "", "GOOGLE_CLOUD_PROJECT": ""}  # fmt: skip


def service_account_key(folder: Path, project: str = "key-project") -> Path:
    from parallel_engine.emulator.jwt import new_key

    key_id, pem, _ = new_key()
    path = folder / "key.json"
    path.write_text(json.dumps({
        "type": "service_account", "project_id": project, "private_key_id": key_id, "private_key": pem,
        "client_email": f"runner@{project}.iam.gserviceaccount.com", "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }))  # fmt: skip
    return path


# -- a run in its own process whose tasks wait for a file ------------------------------------------
GATE = """import os, sys, time
print("started", flush=True)
while not os.path.exists({go!r}):
    time.sleep(0.02)
print("released", flush=True)
sys.exit(int(sys.argv[1].partition("=")[2]))
"""


@contextmanager
def gated(tmp_path: Path, codes: list[int]) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    """`parallel-engine run` (process runtime, all tasks at once) of one task per exit code in
    `codes`, each printing "started", waiting for the file `go`, printing "released" and exiting
    with its code. Yields the run's process, its id and `go` once every task runs; at the end `go`
    exists (the tasks end by themselves, whatever happened to their orchestrator) and the run's
    process is gone."""
    go = tmp_path / "go"
    (tmp_path / "gate.py").write_text(GATE.format(go=str(go)))
    (tmp_path / "params.csv").write_text("code\n" + "".join(f"{code}\n" for code in codes))
    proc = subprocess.Popen(
        [sys.executable, "-m", "parallel_engine", "run", "params.csv", "-q", "-j", str(len(codes)),
         "--runtime", "process", "--command", f"{sys.executable} {tmp_path / 'gate.py'}"],
        cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    runs = tmp_path / ".parallel-engine" / "runs"
    logs = lambda: list(runs.glob("*/tasks/*/1/stdout.log")) if runs.exists() else []  # noqa: E731
    try:
        wait_for(lambda: len(logs()) == len(codes) and all(b"started" in p.read_bytes() for p in logs()), 60,
                 "every task running")
        (run_dir,) = runs.iterdir()
        yield proc, run_dir.name, go
    finally:
        go.touch()
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=60)


def racing_claims(store: RunStore, claimants: int) -> list[str]:
    """The names that won when `claimants` threads claim attempt 1 of task t1 of run r1 at once."""
    winners: list[str] = []
    barrier = threading.Barrier(claimants)

    def claim(name: str) -> None:
        barrier.wait()
        if store.claim("r1", "t1", 1, name):
            winners.append(name)

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(claimants)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return winners
