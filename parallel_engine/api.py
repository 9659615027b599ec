"""The plain Python API (achilles-style): everything the CLI does, importable.

    import parallel_engine as pe
    run = pe.run("code/params.csv", jobs=4, retries=1)
    run.status().counts; run.collect("results")
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parallel_engine.backends.local.pool import LocalPool
from parallel_engine.config import Config, load_config
from parallel_engine.collect import collect
from parallel_engine.errors import BackendError, ConfigError, Interrupted, ParallelEngineError, StoreError
from parallel_engine.exec_limits import CONTAINER_RESERVE, check_tasks_can_start
from parallel_engine.model import AttemptStatus, Task, TaskList
from parallel_engine.names import new_run_id
from parallel_engine.processes import this_orchestrator
from parallel_engine.results import RunStatus, read_log, run_status, status_of, write_end
from parallel_engine.runtimes.base import Runtime, attempt_env
from parallel_engine.runtimes.select import select_runtime
from parallel_engine.scheduler import Outcome, Pool, ProgressFn, Scheduler
from parallel_engine.state import Budgets
from parallel_engine.store import RunRecord, RunStore, local_store
from parallel_engine.tasks import load_tasks

InfoFn = Callable[[str], None]


def open_store(config: Config) -> RunStore:
    """The run store: a local folder, or gs://BUCKET/BUCKET_PREFIX on the gce backend."""
    if config.backend == "gce":
        from parallel_engine.backends.gce.blobs import GCSBlobs
        from parallel_engine.backends.gce.clients import storage_client

        assert config.bucket is not None
        blobs = GCSBlobs(storage_client(config), config.bucket, config.bucket_prefix)
        return RunStore(blobs, f"gs://{config.bucket}/{config.bucket_prefix}")
    return local_store(Path(config.store).expanduser().resolve())


def existing_store(config: Config) -> RunStore:
    """The run store to read from: a local STORE folder that does not exist is an error (a
    mistyped --store, or a command run from another folder), never an empty store."""
    if config.backend != "gce":
        root = Path(config.store).expanduser().resolve()
        if not root.is_dir():
            what = "is a file, not a folder" if root.exists() else "does not exist"
            raise StoreError(
                f"no run store at {root} (STORE, {config.origin('STORE')}): {what}",
                hint="a store is made by `parallel-engine run` in the folder it runs from (STORE, "
                "default .parallel-engine): run this command there, or give the store with --store",
            )
    return open_store(config)


@dataclass
class Run:
    """A handle on a run in a store: read its state, logs and results at any time."""

    run_id: str
    store: RunStore
    outcome: Outcome | None = None
    record: RunRecord | None = None

    def status(self) -> RunStatus:
        if self.outcome is not None and self.record is not None and not self.outcome.cancelled:
            # The run ended here, normally: the scheduler holds every record written, so the
            # summary needs no second read of the store (seconds at 100,000 tasks). A cancelled
            # run is read back: its last records may have been written after the scheduler stopped.
            return status_of(self.record, "finished", self.outcome.attempts)
        return run_status(self.store, self.run_id)

    def logs(self, task_id: str, attempt: int | None = None, stderr: bool = False) -> str:
        _, data = read_log(self.store, self.run_id, task_id, attempt, "stderr" if stderr else "stdout")
        return data.decode("utf-8", errors="replace")

    def collect(self, dest: str | Path, *, replace: bool = False, excel_safe: bool = False,
                info: InfoFn | None = None) -> Path:
        """Outputs into dest/<task_id>/, dest/results.csv (returned) and, for what was not copied
        (links, special files, unsafe names), dest/skipped.csv; `info` hears one line per warning.
        `replace`: replace another run's collection found in dest; `excel_safe`: see README "Collect"."""
        done = collect(self.store, self.run_id, Path(dest), replace=replace, excel_safe=excel_safe)
        for line in done.warnings(Path(dest)):
            (info or (lambda message: None))(line)
        return done.results_csv

    @property
    def cancelled(self) -> bool:
        return bool(self.outcome and self.outcome.cancelled)


def cancel_handler(cancel: threading.Event) -> Callable[[int, object], None]:
    """A signal handler that sets `cancel`, safe against a second signal arriving while it runs:
    Python runs that one's handler inside the first, and Event.set() holds a plain Lock, so a
    nested set() would wait for itself forever (a run hung on a second Ctrl-C)."""
    handling = False

    def handler(signum: int, frame: object) -> None:
        nonlocal handling
        if handling or cancel.is_set():
            return  # already being set, or set: nothing to add
        handling = True
        try:
            cancel.set()
        finally:
            handling = False

    return handler


@contextmanager
def stop_on_signals(cancel: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set `cancel` instead of killing us: running attempts are cancelled cleanly."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    handler = cancel_handler(cancel)
    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _select_runtime(config: Config, info: InfoFn) -> Runtime:
    runtime, reason = select_runtime(
        config.runtime, config.image, network=config.docker_network, cpus=config.cpus,
        memory=config.memory, command=config.command_argv(), labels=config.labels,
    )
    info(f"runtime: {reason}")
    return runtime


def _sweep_containers(run_id: str) -> None:
    """A net under cancellation: no container of this run outlives it, whatever happened."""
    from parallel_engine.runtimes.docker import remove_containers

    remove_containers({"parallel-engine-run": run_id})


def run(
    source: str | Path,
    *,
    config: Config | None = None,
    config_path: str | Path | None = None,
    progress: ProgressFn | None = None,
    info: InfoFn | None = None,
    cancel: threading.Event | None = None,
    **overrides: Any,
) -> Run:
    """Run one task per parameter set and wait for the end; returns the finished `Run`.

    `overrides` are config keys in lower case (`jobs` is VM_QUOTAS), as flags are.
    """
    if config is None:
        keys = {key: "VM_QUOTAS" if key == "jobs" else key.upper() for key in overrides}
        flags = {keys[key]: value for key, value in overrides.items()}
        names = {keys[key]: f"run({key}=...)" for key in overrides}
        config = load_config(config_path, flags=flags, flag_names=names)
    elif overrides:
        raise ConfigError("pass either config= or keyword overrides, not both")
    say = info or (lambda message: None)
    task_list = load_tasks(source, args_template=config.args_template, arg_style=config.arg_style)
    cancel = cancel or threading.Event()
    store = open_store(config)
    run_id = new_run_id()
    quota = config.effective_quota()
    if config.backend == "gce":
        from parallel_engine.backends.gce.backend import gce_plan

        plan = gce_plan(config, store, run_id, quota, say)
    else:
        plan = _local_plan(config, store, run_id, quota, say)
        if plan.spec["runtime"] == "process":
            check_script(config, task_list.tasks, Path.cwd())
    check_can_start(task_list, store, run_id, plan.spec["runtime"], config.command_argv())
    budgets = Budgets(retries=config.retries, infra_retries=config.preemption_retries)
    record = RunRecord(
        run_id=run_id,
        created=time.time(),
        backend=config.backend,
        source=str(Path(source)),
        columns=task_list.columns,
        tasks=task_list.tasks,
        spec={
            **plan.spec,
            "quota": quota,
            "retries": budgets.retries,
            "preemption_retries": budgets.infra_retries,
            "task_timeout": config.task_timeout,
            "orchestrator": this_orchestrator(),
        },
    )
    # From the moment the run exists until its end is recorded, SIGINT/SIGTERM only cancel:
    # whenever one lands, end.json says how the run ended.
    with stop_on_signals(cancel):
        if cancel.is_set():  # a signal before the run was created: nothing to run or record
            plan.cleanup()
            raise Interrupted("interrupted before the run started: nothing ran")
        store.save_run(record)
        say(f"run {run_id}: {len(task_list.tasks)} tasks on {config.backend}, at most {quota} at once, "
            f"store {store.where}")
        scheduler = Scheduler(task_list.tasks, budgets, plan.make_pool, progress)
        try:
            outcome = scheduler.run(cancel)  # a pool stops all its workers on the way out
        except BaseException:
            with suppress(ParallelEngineError):  # a broken store must not hide the first error
                write_end(store, run_id, "failed", time.time())
            raise
        finally:
            plan.cleanup()
        write_end(store, run_id, "cancelled" if outcome.cancelled else "finished", time.time())
    return Run(run_id, store, outcome, record)


@dataclass
class Plan:
    """What a backend contributes to a run: its part of run.json, its pool, a last net."""

    spec: dict[str, Any]
    make_pool: Callable[[Callable[[str, AttemptStatus], None]], Pool]
    cleanup: Callable[[], None] = lambda: None


_PYTHON = re.compile(r"python[0-9.]*")


def check_script(config: Config, tasks: tuple[Task, ...], cwd: Path) -> None:
    """Refuse a run whose COMMAND is `python <script>.py` with no such script: otherwise every
    task fails alike with "can't open file" (e.g. the default code/main.py, run from elsewhere)."""
    argv = config.command_argv()
    if len(argv) < 2 or not _PYTHON.fullmatch(Path(argv[0]).name) or not argv[1].endswith(".py"):
        return
    if all(task.command is not None for task in tasks) or (cwd / argv[1]).is_file():
        return  # no task runs COMMAND, or the script is there
    where = "" if Path(argv[1]).is_absolute() else f" in the working directory {cwd}"
    raise ConfigError(
        f"COMMAND ({config.origin('COMMAND')}: {shlex.join(argv)}) runs {argv[1]}, "
        f"but there is no such file{where}",
        hint="run from the folder that holds it (the repository root for code/main.py), "
        "or set COMMAND with the script's full path (--command, or COMMAND in .config.yaml)",
    )


def check_can_start(task_list: TaskList, store: RunStore, run_id: str, runtime: str, command: list[str]) -> None:
    """Refuse a task whose command line the kernel would refuse (E2BIG), before anything runs:
    with what it gets on this machine (process runtime), or in a container (docker, gce)."""
    longest_id, last_attempt = "x" * 100, 9999
    if runtime == "process":
        outputs = store.blobs.local_path(store.attempt_prefix(run_id, longest_id, last_attempt) + "outputs")
        environ = {**os.environ, **attempt_env(run_id, longest_id, last_attempt, os.path.abspath(str(outputs)))}
        check_tasks_can_start(task_list, command, environ, per_argument=sys.platform.startswith("linux"))
    else:
        from parallel_engine.runtimes.docker import CONTAINER_OUTPUT_DIR

        environ = attempt_env(run_id, longest_id, last_attempt, CONTAINER_OUTPUT_DIR)
        check_tasks_can_start(task_list, (), environ, reserve=CONTAINER_RESERVE)


def _local_plan(config: Config, store: RunStore, run_id: str, quota: int, say: InfoFn) -> Plan:
    runtime = _select_runtime(config, say)
    spec = {
        "runtime": runtime.name,
        "command": config.command_argv() if runtime.name == "process" else None,
        "image": config.image if runtime.name == "docker" else None,
    }

    def make_pool(on_event: Callable[[str, AttemptStatus], None]) -> LocalPool:
        return LocalPool(store, run_id, runtime, quota, config.task_timeout, on_event)

    cleanup = (lambda: _sweep_containers(run_id)) if runtime.name == "docker" else (lambda: None)
    return Plan(spec, make_pool, cleanup)


def build(
    context: str | Path = "code",
    *,
    config: Config | None = None,
    on_line: Callable[[str], None] | None = None,
) -> str:
    """Build `context` (honouring .dockerignore) into IMAGE: with the local Docker engine (returns
    the image id), or on gce with Cloud Build (returns the pushed digest, recorded for `run`)."""
    config = config or load_config()
    say = on_line or (lambda line: None)
    if config.backend == "gce":
        from parallel_engine.backends.gce.cloud_build import build_gce

        cloudbuild = Path(context).resolve().parent / "cloudbuild.yaml"
        return build_gce(config, open_store(config), Path(context), cloudbuild, say)
    if not config.image:
        raise ConfigError(
            "IMAGE is not set: `build` needs the tag to build",
            hint="set IMAGE in .config.yaml (e.g. IMAGE: my-job:latest), or pass --image",
        )
    from parallel_engine.backends.local.build import build_local

    return build_local(Path(context), config.image, say)


@dataclass(frozen=True)
class LocalDown:
    """What `down` removed of a local run."""

    containers: int
    processes: int


def down_local(run_id: str, config: Config | None = None) -> LocalDown:
    """Remove what a local run left on this machine after its orchestrator died without
    cleaning up (SIGKILL, an OOM kill): its containers, by label, and its processes.

    Refused while the run's orchestrator still runs here: it would retry what `down` kills.
    """
    from parallel_engine.runtimes.docker import LABEL_RUN, ENGINE_WAIT_S, engine_available, remove_containers
    from parallel_engine.runtimes.process import kill_run_processes

    config = config or load_config()
    store = existing_store(config)
    record = store.load_run(run_id)  # raises RunNotFoundError with a hint
    owner = record.spec.get("orchestrator", {})
    if run_status(store, run_id).run_state == "running" and owner.get("host") == socket.gethostname():
        raise ParallelEngineError(
            f"run {run_id} is still running here (orchestrator pid {owner.get('pid')})",
            hint=f"stop it with Ctrl-C or `kill -TERM {owner.get('pid')}`: it removes its containers "
                 f"and processes itself; `parallel-engine down {run_id}` is for what a killed run left",
        )
    containers = 0
    if engine_available(wait_s=ENGINE_WAIT_S if record.spec.get("runtime") == "docker" else 0.0):
        containers = remove_containers({LABEL_RUN: run_id})
    elif record.spec.get("runtime") == "docker":
        raise BackendError(
            f"cannot remove the containers of run {run_id}: no Docker engine answers",
            hint="start the Docker engine the run used, then run `parallel-engine down` again",
        )
    return LocalDown(containers, kill_run_processes(run_id))


def get_run(run_id: str, config: Config | None = None) -> Run:
    config = config or load_config()
    store = existing_store(config)
    store.check_run(run_id)  # raises RunNotFoundError with a hint
    return Run(run_id, store)


def list_runs(config: Config | None = None) -> list[RunStatus]:
    """Every run in the store, newest first by creation time (ids tell only the second)."""
    config = config or load_config()
    store = existing_store(config)
    found = [run_status(store, run_id) for run_id in store.run_ids()]
    return sorted(found, key=lambda s: (s.record.created, s.record.run_id), reverse=True)
