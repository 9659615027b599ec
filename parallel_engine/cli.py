"""The command line: parses, calls the API, prints. No decisions live here."""

from __future__ import annotations

import functools
import gc
import json
import os
import signal
import sys
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table  # rich.progress is imported only when a bar is drawn

from parallel_engine import api
from parallel_engine.config import load_config
from parallel_engine.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_TASKS_FAILED,
    Interrupted,
    ParallelEngineError,
)
from parallel_engine.model import TaskState
from parallel_engine.processes import keep_child_statuses
from parallel_engine.results import RunStatus, TaskView, read_log

app = typer.Typer(
    help="Fan a batch job out: one task per parameter set, on local processes, containers or VMs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="config file (default: ./.config.yaml)")]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="any config key, KEY=VALUE (repeatable); beats environment and file"),
]
StoreOpt = Annotated[Optional[str], typer.Option("--store", help="run store folder (STORE)")]


def friendly(func: F) -> F:
    """One clear line and a hint instead of a traceback; the error's documented exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ParallelEngineError as exc:
            # escape: a message quotes files, argv and build logs, whose "[...]" is not markup
            err.print(f"[bold red]error:[/] {escape(exc.message)}", markup=True, highlight=False, soft_wrap=True)
            if exc.hint:
                err.print(f"hint: {exc.hint}", markup=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]  # functools.wraps keeps the signature; mypy sees a plain callable


Flags = tuple[dict[str, Any], dict[str, str]]  # values by key, and how each was given


def _flags(sets: list[str] | None, **named: Any) -> Flags:
    flags: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for item in sets or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ParallelEngineError(f"--set {item!r}: expected KEY=VALUE", hint="e.g. --set RETRIES=2")
        flags[key], spelled[key] = value, f"--set {key}"
    for key, value in named.items():
        if value is not None:
            flags[key] = value
            spelled.pop(key, None)  # named by its own flag
    return flags, spelled


def _config(config: Path | None, flags: Flags) -> Any:
    values, spelled = flags
    return load_config(config, flags=values, flag_names=spelled)


@app.command()
@friendly
def init(
    folder: Annotated[Path, typer.Argument(metavar="DIR", help="the project folder (made if missing)")] = Path("."),
    gce: Annotated[bool, typer.Option("--gce", help="a config for Compute Engine, filled from your credentials "
                                                    "and gcloud's configuration (placeholders for the rest)")] = False,
) -> None:
    """Write a project that runs as it is: .config.yaml, code/ (Dockerfile, main.py, params.csv), cloudbuild.yaml.

    Never overwrites a file: one that exists is kept, and listed as kept. Needs no credentials.
    """
    from parallel_engine.init import init_project

    for line in init_project(folder, gce=gce).lines():
        out.print(line, markup=False, highlight=False)


@app.command()
@friendly
def run(
    source: Annotated[Path, typer.Argument(help="params.csv, a YAML task file, or a task list")],
    jobs: Annotated[Optional[int], typer.Option("-j", "--jobs", help="tasks at once (VM_QUOTAS)")] = None,
    retries: Annotated[Optional[int], typer.Option(help="retries of failed tasks (RETRIES)")] = None,
    timeout: Annotated[Optional[str], typer.Option(help="per-task timeout, e.g. 90s, 10m (TASK_TIMEOUT)")] = None,
    command: Annotated[Optional[str], typer.Option(help="program to run per task (COMMAND)")] = None,
    image: Annotated[Optional[str], typer.Option(help="image to run per task (IMAGE)")] = None,
    runtime: Annotated[Optional[str], typer.Option(help="auto, process or docker (RUNTIME)")] = None,
    backend: Annotated[Optional[str], typer.Option(help="local or gce (BACKEND)")] = None,
    args_template: Annotated[Optional[str], typer.Option(help="e.g. '--dataset {dataset}' (ARGS_TEMPLATE)")] = None,
    arg_style: Annotated[Optional[str], typer.Option(help="equals (--k=v) or space (--k v) (ARG_STYLE)")] = None,
    spot: Annotated[Optional[bool], typer.Option("--spot/--no-spot", help="gce: Spot VMs (SPOT)")] = None,
    tasks_per_vm: Annotated[Optional[int], typer.Option(help="gce: tasks a VM runs; 1 = one VM per task (TASKS_PER_VM)")] = None,
    store: StoreOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="no progress bar")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="check and plan everything, create nothing: "
                                                             "print the plan and an estimate of time and cost")] = False,
) -> None:
    """Run one task per row (or item, or line) of SOURCE and wait for them all."""
    # SIGINT/SIGTERM cancel the run from here until it has ended: before the run exists nothing
    # is created (exit 130). Once it ended (end.json says how) they are ignored until this command
    # exits, so a late one cannot change an exit code that agrees with end.json.
    cancel = threading.Event()
    _on_signals(api.cancel_handler(cancel))
    try:
        flags = _flags(
            set_, VM_QUOTAS=jobs, RETRIES=retries, TASK_TIMEOUT=timeout, COMMAND=command, IMAGE=image,
            RUNTIME=runtime, BACKEND=backend, ARGS_TEMPLATE=args_template, ARG_STYLE=arg_style, STORE=store,
            SPOT=spot, TASKS_PER_VM=tasks_per_vm,
        )
        cfg = _config(config, flags)
        info = (lambda message: err.print(message, markup=False)) if not quiet else (lambda message: None)
        if dry_run:
            _print_dry_run(source, cfg, info)
            return
        with _progress(quiet) as update:
            handle = api.run(source, config=cfg, progress=update, info=info, cancel=cancel)
    finally:
        _on_signals(signal.SIG_IGN)
    status = handle.status()
    _print_summary(status, handle)
    if handle.cancelled:
        err.print(f"interrupted: running tasks were cancelled; `parallel-engine status {handle.run_id}`")
        raise typer.Exit(EXIT_INTERRUPTED)
    if any(view.state is not TaskState.SUCCEEDED for view in status.tasks):
        raise typer.Exit(EXIT_TASKS_FAILED)


def _print_dry_run(source: Path, cfg: Any, info: Callable[[str], None]) -> None:
    for line in api.dry_run(source, config=cfg, info=info).lines():
        out.print(line, markup=False, highlight=False, soft_wrap=True)


def _on_signals(handler: Any) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


class _progress:
    """A live bar with counts per state, or nothing when quiet or not on a terminal."""

    def __init__(self, quiet: bool) -> None:
        self.enabled = not quiet and err.is_terminal
        self.bar: Any = None
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("[bold]tasks"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[counts]}"),
                TimeElapsedColumn(), console=err, transient=False,
            )
        self.task_id: Any = None

    def __enter__(self) -> Callable[[Counter[str]], None]:
        if self.enabled:
            self.bar.start()
        return self.update

    def update(self, counts: Counter[str]) -> None:
        if not self.enabled:
            return
        total = sum(counts.values())
        done = sum(counts[s] for s in ("succeeded", "failed", "cancelled"))
        text = "  ".join(f"{state} {counts[state]}" for state in ("queued", "running", "succeeded", "failed", "cancelled") if counts[state])
        if self.task_id is None:
            self.task_id = self.bar.add_task("tasks", total=total, counts=text)
        self.bar.update(self.task_id, completed=done, total=total, counts=text)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.bar.stop()


SHOWN_FAILURES = 20


def _tail(text: bytes, lines: int = 3) -> str:
    decoded = text.decode("utf-8", errors="replace").rstrip("\n").splitlines()
    return "\n".join(decoded[-lines:])


def _print_summary(status: RunStatus, handle: api.Run) -> None:
    counts = status.counts
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    out.print(f"run {status.record.run_id}: {summary}", markup=False)
    failed = [v for v in status.tasks if v.state is TaskState.FAILED]
    if failed:
        table = Table(title="failed tasks")
        for column in ("task", "state", "exit code", "attempts", "reason"):
            table.add_column(column, overflow="fold")
        for view in failed[:SHOWN_FAILURES]:
            last = view.attempts[-1]
            table.add_row(view.task_id, str(last.state), str(last.exit_code), str(len(view.attempts)), last.reason)
        out.print(table)
        for view in failed[:SHOWN_FAILURES]:
            last = view.attempts[-1]
            stderr = handle.store.read_log(status.record.run_id, view.task_id, last.attempt, "stderr") or b""
            tail = _tail(stderr)
            if tail:
                out.print(f"--- task {view.task_id}, attempt {last.attempt}: last stderr lines", markup=False)
                out.print(tail, markup=False, highlight=False, soft_wrap=True)
        if len(failed) > SHOWN_FAILURES:
            out.print(f"... and {len(failed) - SHOWN_FAILURES} more: `parallel-engine status {status.record.run_id}`",
                      markup=False)
    out.print(f"results: parallel-engine collect {status.record.run_id} --dest results", markup=False)


@app.command()
@friendly
def debug(
    source: Annotated[Path, typer.Argument(help="params.csv, a YAML task file, or a task list")],
    task: Annotated[str, typer.Option("--task", help="the id of the task to run")],
    outputs: Annotated[Optional[Path], typer.Option(help="its outputs folder (default: ./debug/<task>/)")] = None,
    shell: Annotated[bool, typer.Option("--shell", help="open a shell in that container (or with its environment) instead")] = False,
    print_only: Annotated[bool, typer.Option("--print", help="print the equivalent command line, quoted to paste, and run nothing")] = False,
    image: Annotated[Optional[str], typer.Option(help="image to run (IMAGE)")] = None,
    runtime: Annotated[Optional[str], typer.Option(help="auto, process or docker (RUNTIME)")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Run one task in the foreground exactly as a worker would (same container, argv, PE_* variables,
    limits); its output on this terminal, its exit code as this command's. The container is removed afterwards."""
    from parallel_engine.debug import execute

    cfg = _config(config, _flags(set_, IMAGE=image, RUNTIME=runtime))
    say = (lambda line: err.print(line, markup=False, soft_wrap=True))
    tty = sys.stdin.isatty() and sys.stdout.isatty()
    with _terminate_as_interrupt():
        try:
            command = api.debug_command(source, task, config=cfg, outputs=outputs, shell=shell, tty=tty, info=say)
        except KeyboardInterrupt:  # reading the tasks, asking the engine, pulling: nothing runs yet
            raise Interrupted(f"debug of task {task} interrupted before it started: nothing ran") from None
    if print_only:
        out.print(command.printable(), markup=False, highlight=False, soft_wrap=True)
        return
    err.print(f"# task {task} ({command.runtime}); outputs in {command.outputs}", markup=False, soft_wrap=True)
    with _terminate_as_interrupt():
        try:
            code = execute(command)
        except KeyboardInterrupt:
            raise Interrupted(f"debug of task {task} interrupted" +
                              ("; its container was removed" if command.runtime == "docker" else "")) from None
    raise typer.Exit(code)


@app.command()
@friendly
def doctor(
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Check everything a run needs on the configured backend: one line per check, ✓ or ✗ and the fix.

    Exit 0 when every check passes, 2 otherwise.
    """
    from parallel_engine.doctor import exit_code

    cfg = _config(config, _flags(set_))
    out.print(f"doctor: backend {cfg.backend}", markup=False)
    checks = []
    for check in api.doctor(cfg):  # each line as soon as its check is made
        checks.append(check)
        out.print(f"{'✓' if check.ok else '✗'} {check.name:<{DOCTOR_NAMES}} {check.detail}", markup=False, highlight=False)
        if check.fix:
            out.print(f"  {'':<{DOCTOR_NAMES}} fix: {check.fix}", markup=False, highlight=False)
    failures = sum(not check.ok for check in checks)
    out.print("all checks passed" if not failures else f"{failures} of {len(checks)} checks failed", markup=False)
    raise typer.Exit(exit_code(checks))


#: The width of doctor's check names (the longest: "quota IN_USE_ADDRESSES").
DOCTOR_NAMES = 23


@app.command()
@friendly
def build(
    context: Annotated[Path, typer.Argument(help="folder with the Dockerfile")] = Path("code"),
    image: Annotated[Optional[str], typer.Option(help="tag to build (IMAGE)")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="no build log")] = False,
) -> None:
    """Build CONTEXT (default code/) into IMAGE with the local Docker engine, streaming the log."""
    cfg = _config(config, _flags(set_, IMAGE=image))
    show = (lambda line: None) if quiet else (lambda line: err.print(line, markup=False, highlight=False))
    built = api.build(context, config=cfg, on_line=show)
    out.print(built.summary, markup=False)


#: `status` draws a table of at most this many tasks: rich needs ~0.35 ms a row (17 s at 50,000).
TABLE_ROWS = 200
STATUS_COLUMNS = ("task", "state", "attempts", "exit code", "duration s", "reason")


@app.command()
@friendly
def status(
    run_id: Annotated[str, typer.Argument(help="the run id (see `parallel-engine runs`)")],
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    show_all: Annotated[bool, typer.Option("--all", help="every task, one plain line each (any run size)")] = False,
    store: StoreOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Show every task of a run: state, attempts, exit code, duration.

    Over 200 tasks: the counts and the tasks that did not succeed (at most 200). --all: every task, one plain line each. --json: everything, for scripts.
    """
    handle = api.get_run(run_id, _config(config, _flags(set_, STORE=store)))
    state = handle.status()
    if as_json:
        _write_out(state.iter_json())
        return
    if show_all:
        _write_out(_aligned([STATUS_COLUMNS, *(_status_cells(view) for view in state.tasks)]))
    else:
        shown = state.tasks
        title = f"run {run_id} ({state.run_state})"
        if len(state.tasks) > TABLE_ROWS:
            shown = tuple(view for view in state.tasks if view.state is not TaskState.SUCCEEDED)
            title += f": the {len(shown)} of {len(state.tasks)} tasks that did not succeed"
        if shown:
            table = Table(title=title)
            for column in STATUS_COLUMNS:
                table.add_column(column, overflow="fold")
            for view in shown[:TABLE_ROWS]:
                table.add_row(*_status_cells(view))
            out.print(table)
        else:
            out.print(f"{title}: all {len(state.tasks)} tasks succeeded", markup=False)
        if len(shown) > TABLE_ROWS:
            out.print(f"... and {len(shown) - TABLE_ROWS} more that did not succeed", markup=False)
        if len(shown) < len(state.tasks):
            out.print(f"`parallel-engine status {run_id} --all` lists all {len(state.tasks)} tasks; "
                      "--json for scripts", markup=False)
    out.print(", ".join(f"{n} {s}" for s, n in sorted(state.counts.items())), markup=False)
    if state.waiting:
        out.print(state.waiting, markup=False)


def _status_cells(view: TaskView) -> tuple[str, ...]:
    result = view.result
    duration = view.duration_s
    return (view.task_id, str(view.state), str(len(view.attempts)),
            "" if view.exit_code is None else str(view.exit_code),
            "" if duration is None else f"{duration:.2f}",
            " ".join(result.reason.splitlines()) if result else "")


def _aligned(rows: list[tuple[str, ...]]) -> Iterator[str]:
    """Rows as lines of space-aligned columns (the last one ragged): a table at any size."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        yield "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths)), row[-1]]).rstrip() + "\n"


def _write_out(pieces: Iterable[str]) -> None:
    """Text to stdout as UTF-8, a batch at a time. A reader that stops early (`| head`) ends the
    command quietly with 141, as a tool killed by SIGPIPE would, instead of a traceback."""
    stream = sys.stdout.buffer
    batch: list[str] = []
    try:
        for piece in pieces:
            batch.append(piece)
            if len(batch) >= 1000:
                stream.write("".join(batch).encode("utf-8"))
                batch.clear()
        stream.write("".join(batch).encode("utf-8"))
        stream.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so exit's own flush is quiet
        raise typer.Exit(EXIT_BROKEN_PIPE) from None


@app.command()
@friendly
def logs(
    run_id: Annotated[str, typer.Argument(help="the run id")],
    task_id: Annotated[str, typer.Argument(help="the task id")],
    attempt: Annotated[Optional[int], typer.Option(help="attempt number (default: the latest)")] = None,
    stderr: Annotated[bool, typer.Option("--stderr", help="show stderr instead of stdout")] = False,
    store: StoreOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Print a task's stdout (or stderr) for one attempt."""
    handle = api.get_run(run_id, _config(config, _flags(set_, STORE=store)))
    chosen, data = read_log(handle.store, run_id, task_id, attempt, "stderr" if stderr else "stdout")
    err.print(f"# run {run_id} task {task_id} attempt {chosen} {'stderr' if stderr else 'stdout'}", markup=False)
    sys.stdout.buffer.write(data)
    sys.stdout.flush()


@app.command()
@friendly
def collect(
    run_id: Annotated[str, typer.Argument(help="the run id")],
    dest: Annotated[Path, typer.Option("--dest", help="folder for outputs and results.csv")] = Path("results"),
    replace: Annotated[bool, typer.Option("--replace", help="replace the collection of another run found in --dest")] = False,
    excel_safe: Annotated[bool, typer.Option("--excel-safe", help="prefix cells a spreadsheet would run as a formula (=, +, -, @) with '")] = False,
    store: StoreOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Copy each task's outputs (from its winning attempt) and write results.csv.

    Only regular files are copied; links (never followed), special files and unsafe names are
    listed in skipped.csv. --dest holds one run's collection: the same run again replaces it.
    """
    from parallel_engine.collect import collect as collect_run

    handle = api.get_run(run_id, _config(config, _flags(set_, STORE=store)))
    with _terminate_as_interrupt():
        try:
            done = collect_run(handle.store, run_id, dest, replace=replace, excel_safe=excel_safe)
        except KeyboardInterrupt:
            raise Interrupted(f"collect interrupted: {dest} holds what it held before, or all of this "
                              "collection if it was already being moved in") from None
    for line in done.warnings(dest):
        err.print(f"warning: {line}", markup=False)
    counts = done.status.counts
    out.print(f"collected {counts.get('succeeded', 0)} task outputs into {dest}/ and {done.results_csv}", markup=False)


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C (so `finally` cleans up) instead of ending the process on the spot."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@app.command()
@friendly
def report(
    run_id: Annotated[str, typer.Argument(help="the run id")],
    output: Annotated[Path, typer.Option("--output", "-o", help="the HTML file to write")] = Path("report.html"),
    png: Annotated[Optional[Path], typer.Option("--png", help="also write the timeline alone as a PNG")] = None,
    store: StoreOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Write a self-contained HTML report (timeline per worker, durations, summary) that opens offline."""
    from parallel_engine.report import require_extra, write_report  # the plotting extra, only here

    require_extra(png=png is not None)
    handle = api.get_run(run_id, _config(config, _flags(set_, STORE=store)))
    data = write_report(handle.store, run_id, output, png)
    snapshot = " (a snapshot: the run is still going)" if data.running else ""
    out.print(f"report of run {run_id}: {output}{snapshot}" + (f"; timeline: {png}" if png else ""), markup=False)


@app.command()
@friendly
def runs(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    store: StoreOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """List the runs in the store, newest first."""
    import datetime as dt

    found = api.list_runs(_config(config, _flags(set_, STORE=store)))
    if as_json:
        _write_out([json.dumps([
            {"run_id": s.record.run_id, "state": s.run_state, "created": s.record.created,
             "source": s.record.source, "counts": s.counts} for s in found
        ], indent=2, ensure_ascii=False) + "\n"])
        return
    table = Table()
    table.add_column("run", no_wrap=True, min_width=len("20260101-120000-abcde"))  # ids are for copying: whole
    table.add_column("state")
    table.add_column("created")
    table.add_column("source", overflow="fold")
    table.add_column("tasks")
    for s in found:
        created = dt.datetime.fromtimestamp(s.record.created).strftime("%Y-%m-%d %H:%M:%S")
        counts = ", ".join(f"{n} {state}" for state, n in sorted(s.counts.items()))
        table.add_row(s.record.run_id, s.run_state, created, s.record.source, counts)
    out.print(table)


@app.command()
@friendly
def down(
    run_id: Annotated[str, typer.Argument(help="the run id")],
    store: StoreOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Delete every VM of a run (by its label), from any machine, and check none is left; on the
    local backend, remove the containers (by label) and processes a killed run left behind."""
    removed = api.down(run_id, _config(config, _flags(set_, STORE=store)))
    out.print(f"run {run_id}: {removed}", markup=False)


@app.command()
@friendly
def render(
    source: Annotated[Optional[Path], typer.Argument(help="task file, to check --task exists")] = None,
    task: Annotated[Optional[str], typer.Option(help="render the one-VM-per-task script for this task")] = None,
    worker: Annotated[bool, typer.Option("--worker", help="render the reuse worker's script (the default)")] = False,
    vm_request: Annotated[bool, typer.Option("--vm-request", help="print the whole VM request as JSON")] = False,
    run_id: Annotated[Optional[str], typer.Option(help="run id to render for (default: a new one)")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Print the exact startup script (or VM request) a gce run gives its VMs: the backend's own rendering."""
    from parallel_engine.names import new_run_id
    from parallel_engine.tasks import load_tasks

    cfg = _config(config, _flags(set_))
    if task is not None and worker:
        raise ParallelEngineError("--task and --worker are two different scripts: choose one")
    if task is not None and source is not None:
        known = {t.id for t in load_tasks(source, args_template=cfg.args_template, arg_style=cfg.arg_style).tasks}
        if task not in known:
            raise ParallelEngineError(f"{source} has no task '{task}'", hint=f"ids look like: {', '.join(sorted(known)[:10])}")
    chosen = run_id or new_run_id()
    if run_id is None:
        err.print(f"# rendered for a new run id {chosen}", markup=False)
    say = (lambda line: err.print(line, markup=False, soft_wrap=True))
    sys.stdout.write(api.render(cfg, chosen, (task, 1) if task is not None else None, vm_request, say) + "\n")


@app.command()
@friendly
def emulator(
    time_scale: Annotated[float, typer.Option(help="emulated seconds x scale = real seconds (boots, heartbeats)")] = 1.0,
    config_out: Annotated[Optional[Path], typer.Option("--config", help="config file to write (a file of yours is never overwritten; one a stopped emulator wrote is)")] = None,
    project: Annotated[str, typer.Option(help="emulated project id")] = "emulated-project",
    zone: Annotated[str, typer.Option(help="emulated zone")] = "us-central1-a",
    bucket: Annotated[Optional[str], typer.Option(help="bucket to create (default: PROJECT-bucket)")] = None,
    workdir: Annotated[Optional[Path], typer.Option(help="keep VM consoles and scripts here")] = None,
) -> None:
    """Run the emulated Google cloud here until Ctrl-C: Compute, Storage, metadata, Cloud Build and an image registry.

    Writes .config.yaml (or .config.emulator.yaml beside a file it must not touch) pointing every client at it.
    Keys: BACKEND, PROJECT_ID, ZONE, BUCKET, COMPUTE_ENDPOINT, STORAGE_ENDPOINT, CLOUDBUILD_ENDPOINT,
    CREDENTIALS_FILE and TOKEN_URI (credentials it hands out, as gcloud writes them), REGISTRY, IMAGE.
    Not enforced: COS's read-only / and HOME, noexec mounts (see parallel_engine/emulator/README.md).
    """
    from parallel_engine.emulator import serve

    raise typer.Exit(serve(config_out, time_scale, project=project, zone=zone, bucket=bucket, workdir=workdir))


def _show_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """A warning (PROJECT_ID against the credentials' project, google-auth's about a login) as one
    `warning:` line, not Python's file:line and source."""
    first = str(message).strip().splitlines()[0] if str(message).strip() else category.__name__
    err.print(f"warning: {first}", markup=False, soft_wrap=True)


def main() -> None:
    # Everything imported so far lives as long as the process: out of the collector's sight, a
    # run's full collections no longer walk the ~100k objects of typer, rich and yaml.
    gc.freeze()
    warnings.showwarning = _show_warning
    keep_child_statuses()  # an ignored SIGCHLD (inherited) would hide every child's exit status
    app()


if __name__ == "__main__":
    main()
