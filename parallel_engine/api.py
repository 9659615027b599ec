"""The plain Python API: everything the CLI does, importable (the CLI is a thin layer over it).

    import parallel_engine as pe
    run = pe.run("code/params.csv", jobs=4, retries=1)
    run.status().counts; run.collect("results")
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parallel_engine.backends.base import Backend, Built, Plan, backend_for
from parallel_engine.collect import collect
from parallel_engine.config import Config, load_config
from parallel_engine.crash import crash_point
from parallel_engine.debug import DebugCommand
from parallel_engine.doctor import Check
from parallel_engine.dry_run import DryRun
from parallel_engine.errors import ConfigError, Interrupted
from parallel_engine.exec_limits import CONTAINER_RESERVE, check_tasks_can_start
from parallel_engine.follow import POLL_S, follow, progress_counts
from parallel_engine.lease import take as take_lease
from parallel_engine.model import TaskList
from parallel_engine.names import new_run_id
from parallel_engine.orchestrate import budgets_for, cancel_run, check_resumable, drive, running_attempts
from parallel_engine.processes import this_orchestrator
from parallel_engine.progress import CountsBar, auto_bar
from parallel_engine.protocol import CONTAINER_OUTPUT_DIR, attempt_env
from parallel_engine.results import RunStatus, read_log, result_rows, run_status, status_of
from parallel_engine.scheduler import Outcome, ProgressFn
from parallel_engine.state import Budgets
from parallel_engine.store import RunRecord, RunStore
from parallel_engine.tasks import load_source

if TYPE_CHECKING:
    from parallel_engine.report import WrittenReport  # the plotting extra: imported when a report is made

InfoFn = Callable[[str], None]


def open_store(config: Config) -> RunStore:
    """The run store `config`'s backend writes: a local folder, or gs://BUCKET/BUCKET_PREFIX."""
    return backend_for(config).open_store()


def existing_store(config: Config) -> RunStore:
    """The run store to read from: one that does not exist (a mistyped --store, a command run
    from another folder) is an error, never an empty store."""
    return backend_for(config).existing_store()


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
                include_failed: bool = False, format: str = "csv", info: InfoFn | None = None) -> Path:
        """Outputs into dest/<task_id>/, dest/results.csv (returned; results.parquet with
        `format="parquet"`) and, for what was not copied (links, special files, unsafe names),
        dest/skipped.csv; `info` hears one line per warning. `replace`: replace another run's
        collection found in dest; `excel_safe`, `include_failed`: see README "Collect"."""
        done = collect(self.store, self.run_id, Path(dest), replace=replace, excel_safe=excel_safe,
                       include_failed=include_failed, fmt=format)
        for line in done.warnings(Path(dest)):
            (info or (lambda message: None))(line)
        return done.results_file

    def results(self) -> Any:
        """One row per task: its parameters, task_id, results.csv's columns (state, exit_code,
        attempts, duration_s, worker, started_at, finished_at, reason) and `outputs` (where its
        winning, or last, attempt's outputs are in the store). A pandas DataFrame (times as UTC
        datetimes, exit codes as nullable integers) when pandas is installed (the `notebook` extra), else a list of dicts."""
        rows = result_rows(self.store, self.status())
        try:
            import pandas
        except ImportError:
            return rows
        frame = pandas.DataFrame(rows, columns=list(rows[0]) if rows else None)
        frame["exit_code"] = frame["exit_code"].astype("Int64")  # integers, with <NA> where none
        for column in ("started_at", "finished_at"):
            frame[column] = pandas.to_datetime(frame[column].replace("", None), utc=True)
        return frame

    def report(self, output: str | Path = "report.html", png: str | Path | None = None) -> WrittenReport:
        """Write the run's report (README "The report"; a snapshot while it runs) and return it:
        in Jupyter, the page shows inline; `png`: the timeline alone too. Needs the `report` extra."""
        from parallel_engine.report import WrittenReport, write_report

        data = write_report(self.store, self.run_id, Path(output), Path(png) if png is not None else None)
        return WrittenReport(Path(output), data)

    def wait(self, progress: bool = True, poll_s: float = POLL_S) -> RunStatus:
        """Follow the run until it ends and return its last status, with a live bar (in Jupyter,
        or on a terminal's stderr) unless `progress=False`. Read-only: the run may be orchestrated
        by another process or machine, which it never disturbs (`exit_code(status)` says how it ended)."""
        if self.outcome is not None:
            return self.status()  # it ended here
        with (auto_bar() if progress else CountsBar(None)) as update:
            return follow(self.store, self.run_id, lambda status: update(progress_counts(status)), poll_s)

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


def run(
    source: str | Path | Sequence[Mapping[str, Any]] | Any,
    *,
    config: Config | None = None,
    config_path: str | Path | None = None,
    progress: ProgressFn | bool | None = None,
    info: InfoFn | None = None,
    cancel: threading.Event | None = None,
    run_id: str | None = None,
    **overrides: Any,
) -> Run:
    """Run one task per parameter set and wait for the end; returns the finished `Run`.

    `source`: a task file's path (params.csv, YAML, a task list), or the rows of a params table as
    a list of dicts or a pandas DataFrame (checked as params.csv is; errors name the row).
    `progress`: a callback of the counts per state, or True for a live bar (Jupyter or terminal).
    `run_id`: the id to give the run (`run --detach` picks it before starting the orchestrator).
    `overrides` are config keys in lower case (`jobs` is VM_QUOTAS), as flags are.
    """
    if progress is True:
        with auto_bar() as update:
            return run(source, config=config, config_path=config_path, progress=update, info=info,
                       cancel=cancel, run_id=run_id, **overrides)
    if config is None:
        keys = {key: "VM_QUOTAS" if key == "jobs" else key.upper() for key in overrides}
        flags = {keys[key]: value for key, value in overrides.items()}
        names = {keys[key]: f"run({key}=...)" for key in overrides}
        config = load_config(config_path, flags=flags, flag_names=names)
    elif overrides:
        raise ConfigError("pass either config= or keyword overrides, not both")
    say = info or (lambda message: None)
    cancel = cancel or threading.Event()
    task_list, backend, store, run_id, quota, plan = prepare(source, config, say, run_id)
    budgets = Budgets(retries=config.retries, infra_retries=config.preemption_retries,
                      infra_failure_limit=config.infra_failure_limit)
    record = RunRecord(
        run_id=run_id,
        created=time.time(),
        backend=backend.name,
        source=str(Path(source)) if isinstance(source, (str, Path)) else task_list.path,
        columns=task_list.columns,
        tasks=task_list.tasks,
        spec={
            **plan.spec,
            "quota": quota,
            "retries": budgets.retries,
            "preemption_retries": budgets.infra_retries,
            "task_timeout": config.task_timeout,
            "infra_failure_limit": budgets.infra_failure_limit,
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
        lease = take_lease(store, run_id, "run")
        crash_point("run-json")
        say(f"run {run_id}: {len(task_list.tasks)} tasks on {backend.name}, at most {plan.spec.get('workers', quota)} at once, "
            f"store {store.where}")
        outcome = drive(store, run_id, task_list.tasks, budgets, plan, lease, cancel, progress or None)
    return Run(run_id, store, outcome, record)


def resume(
    run_id: str,
    *,
    config: Config | None = None,
    progress: ProgressFn | None = None,
    info: InfoFn | None = None,
    cancel: threading.Event | None = None,
    force: bool = False,
) -> Run:
    """Take over a run nobody orchestrates (its orchestrator was killed, its machine slept) and
    drive it to the end as `run` would: what its workers left is settled, due retries are
    submitted, what is left is started. `force`: take it even if its lease looks alive."""
    config = config or load_config()
    say = info or (lambda message: None)
    cancel = cancel or threading.Event()
    backend = backend_for(config)
    store = backend.existing_store()
    record = store.load_run(run_id)  # raises RunNotFoundError with a hint
    check_resumable(store, record, backend)
    with stop_on_signals(cancel):
        store.add_run_folders(run_id)  # a run recorded before leases has no leases/ folder yet
        lease = take_lease(store, run_id, "resume", force)
        try:
            history = store.attempts(run_id)
            plan = backend.resume(store, record, running_attempts(history), say)
        except BaseException:
            lease.release()
            raise
        say(f"run {run_id}: resumed on {backend.name}, {len(record.tasks)} tasks, store {store.where}")
        outcome = drive(store, run_id, record.tasks, budgets_for(record, config), plan, lease, cancel,
                        progress, history)
    return Run(run_id, store, outcome, record)


def cancel(run_id: str, config: Config | None = None) -> str:
    """Stop a run from any machine (its workers removed, running attempts recorded cancelled,
    the run marked cancelled); say what was done."""
    config = config or load_config()
    backend = backend_for(config)
    store = backend.existing_store()
    stopped = cancel_run(store, store.load_run(run_id), backend)
    return f"cancelled by {stopped.by}" + (f": {stopped.removed}" if stopped.removed else "")


def reap(older_than_s: float, delete: bool, config: Config | None = None) -> list[str]:
    """The backend's workers no run needs any more (gce: leaked VMs), one line each; deleted when `delete`."""
    config = config or load_config()
    return backend_for(config).reap(older_than_s, delete)


def prepare(source: str | Path | Sequence[Mapping[str, Any]] | Any, config: Config, say: InfoFn,
            run_id: str | None = None) -> tuple[TaskList, Backend, RunStore, str, int, Plan]:
    """Everything `run` does before it writes anything: the tasks read (a task file, a list of
    dicts or a DataFrame), the backend's plan made and checked (`run --dry-run` stops here).
    `run_id`: one picked already (`run --detach`)."""
    task_list = load_source(source, args_template=config.args_template, arg_style=config.arg_style)
    backend = backend_for(config)
    store = backend.open_store()
    run_id = run_id or new_run_id()
    quota = config.effective_quota()
    plan = backend.plan(store, run_id, quota, task_list.tasks, say)
    check_can_start(task_list, store, run_id, plan.spec["runtime"], config.command_argv())
    return task_list, backend, store, run_id, quota, plan


def dry_run(source: str | Path, *, config: Config | None = None, info: InfoFn | None = None) -> DryRun:
    """Everything `run` would do short of creating anything (no run.json, no VM): the plan and
    an estimate of VM-hours and cost."""
    from parallel_engine.dry_run import plan_run

    config = config or load_config()
    task_list, backend, store, _, quota, plan = prepare(source, config, info or (lambda message: None))
    return plan_run(source, config, task_list, backend, store, quota, plan)


def doctor(config: Config | None = None) -> Iterator[Check]:
    """The configured backend's checks of everything a run needs, each as it is made."""
    return backend_for(config or load_config()).doctor()


def debug_command(source: str | Path, task_id: str, *, config: Config | None = None, outputs: Path | None = None,
                  shell: bool = False, tty: bool = False, info: InfoFn | None = None) -> DebugCommand:
    """What `debug` runs for one task: its container's `docker run` line, or its command line
    (`debug.execute` runs it; `.printable()` is the line to paste)."""
    from parallel_engine import debug

    config = config or load_config()
    task = debug.find_task(source, task_id, config)
    runtime = backend_for(config).debug_runtime(info or (lambda message: None))
    return debug.prepare(config, runtime, task, outputs, shell, tty)


def check_can_start(task_list: TaskList, store: RunStore, run_id: str, runtime: str, command: list[str]) -> None:
    """Refuse a task whose command line the kernel would refuse (E2BIG), before anything runs:
    with what it gets on this machine (process runtime), or in a container (docker, gce)."""
    longest_id, last_attempt = "x" * 100, 9999
    if runtime == "process":
        outputs = store.local_path(store.attempt_prefix(run_id, longest_id, last_attempt) + "outputs")
        environ = {**os.environ, **attempt_env(run_id, longest_id, last_attempt, os.path.abspath(str(outputs)))}
        check_tasks_can_start(task_list, command, environ, per_argument=sys.platform.startswith("linux"))
    else:
        environ = attempt_env(run_id, longest_id, last_attempt, CONTAINER_OUTPUT_DIR)
        check_tasks_can_start(task_list, (), environ, reserve=CONTAINER_RESERVE)


def build(
    context: str | Path = "code",
    *,
    config: Config | None = None,
    on_line: Callable[[str], None] | None = None,
) -> Built:
    """Build `context` (honouring .dockerignore) into IMAGE where the backend's workers run it:
    with the local Docker engine (`ref` is the image id), or on gce with Cloud Build (`ref` is
    the pushed digest, recorded for `run`)."""
    config = config or load_config()
    return backend_for(config).build(Path(context), on_line or (lambda line: None))


def down(run_id: str, config: Config | None = None) -> str:
    """Remove what is left of a run (its VMs, by label, from any machine; or the containers and
    processes a killed local run left here), record the attempts it stopped, and say what went."""
    config = config or load_config()
    return backend_for(config).down(run_id)


def render(config: Config, run_id: str, task: tuple[str, int] | None, vm_request: bool,
           say: Callable[[str], None] = lambda line: None) -> str:
    """Exactly what the backend gives a worker of a run (gce: the startup script or VM request)."""
    return backend_for(config).render(run_id, task, vm_request, say)


def get_run(run_id: str, config: Config | None = None) -> Run:
    config = config or load_config()
    store = existing_store(config)
    store.check_run(run_id)  # raises RunNotFoundError with a hint
    return Run(run_id, store)


def attach(run_id: str, config: Config | None = None) -> Run:
    """A handle on a run started elsewhere (another process, terminal or machine with the same
    store): `.wait()` follows it to its end without taking it over."""
    return get_run(run_id, config)


def list_runs(config: Config | None = None) -> list[RunStatus]:
    """Every run in the store, newest first by creation time (ids tell only the second)."""
    config = config or load_config()
    store = existing_store(config)
    found = [run_status(store, run_id) for run_id in store.run_ids()]
    return sorted(found, key=lambda s: (s.record.created, s.record.run_id), reverse=True)
