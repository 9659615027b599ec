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
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.console import Group
from rich.table import Table  # rich.progress is imported only when a bar is drawn
from rich.text import Text

from parallel_engine import api
from parallel_engine.config import load_config
from parallel_engine.entry import interrupt
from parallel_engine.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_TASKS_FAILED,
    Interrupted,
    ParallelEngineError,
)
from parallel_engine.model import TaskState
from parallel_engine.follow import ending, exit_code, follow, progress_counts, tail_log
from parallel_engine.processes import keep_child_statuses
from parallel_engine.progress import CountsBar
from parallel_engine.results import RunStatus, TaskView, read_log
from parallel_engine.scheduler import ProgressFn

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
        except KeyboardInterrupt:
            # A command with no Ctrl-C handling of its own (status, down, build, ...): exit 130 and
            # one line, whatever typer does (0.28: a silent 130; older ones: "Aborted!" and exit 1).
            err.print(f"interrupted: `parallel-engine {func.__name__}` "
                      "stopped before it finished", markup=False, soft_wrap=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None

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
    detach: Annotated[bool, typer.Option("--detach", help="return once the run started; its orchestrator "
                                                          "goes on in the background (see README \"Long runs\")")] = False,
    run_id: Annotated[Optional[str], typer.Option("--run-id", hidden=True)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="check and plan everything, create nothing: "
                                                             "print the plan and an estimate of time and cost")] = False,
) -> None:
    """Run one task per row (or item, or line) of SOURCE and wait for them all (--detach: in the background)."""
    flags = _flags(
        set_, VM_QUOTAS=jobs, RETRIES=retries, TASK_TIMEOUT=timeout, COMMAND=command, IMAGE=image,
        RUNTIME=runtime, BACKEND=backend, ARGS_TEMPLATE=args_template, ARG_STYLE=arg_style, STORE=store,
        SPOT=spot, TASKS_PER_VM=tasks_per_vm,
    )
    if dry_run:
        _print_dry_run(source, _config(config, flags),
                       (lambda message: err.print(message, markup=False)) if not quiet else (lambda message: None))
        return
    if detach:
        _detach(_config(config, flags))
        return

    def start(progress: ProgressFn, info: Callable[[str], None],
              cancel: threading.Event) -> api.Run:
        return api.run(source, config=_config(config, flags), progress=progress, info=info, cancel=cancel,
                       run_id=run_id)

    _orchestrate_here(quiet, start)


@app.command()
@friendly
def resume(
    run_id: Annotated[str, typer.Argument(help="the run id (see `parallel-engine runs`)")],
    force: Annotated[bool, typer.Option("--force", help="take the run over even if its orchestrator looks "
                                                        "alive (only when it surely is gone)")] = False,
    store: StoreOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="no progress bar")] = False,
) -> None:
    """Take over a run nobody orchestrates (killed, or its machine slept) and drive it to its end as `run` does."""

    def start(progress: ProgressFn, info: Callable[[str], None],
              cancel: threading.Event) -> api.Run:
        cfg = _config(config, _flags(set_, STORE=store))
        return api.resume(run_id, config=cfg, progress=progress, info=info, cancel=cancel, force=force)

    _orchestrate_here(quiet, start)


@app.command()
@friendly
def cancel(
    run_id: Annotated[str, typer.Argument(help="the run id")],
    store: StoreOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Stop a run from any machine: its workers removed, running attempts recorded cancelled, the run marked cancelled."""
    done = api.cancel(run_id, _config(config, _flags(set_, STORE=store)))
    out.print(f"run {run_id}: {done}", markup=False)


@app.command()
@friendly
def reap(
    older_than: Annotated[str, typer.Option("--older-than", help="only VMs created longer ago than this, e.g. 2h, 30m")] = "2h",
    yes: Annotated[bool, typer.Option("--yes", help="delete them (without it: only list them)")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """List every VM of the project's runs that no run needs any more (its run is over or unknown to the store, or nobody orchestrates it and its worker stopped); --yes deletes them."""
    from parallel_engine.config import parse_duration
    from parallel_engine.errors import ConfigError

    try:
        seconds = parse_duration(older_than)
    except ValueError:
        raise ConfigError(f"--older-than {older_than!r} is not a duration", hint="e.g. 2h, 30m or 90s") from None
    lines = api.reap(seconds, yes, _config(config, _flags(set_)))
    for line in lines:
        out.print(("deleted " if yes else "") + line, markup=False)
    verb = "deleted" if yes else "would delete (run again with --yes)"
    out.print(f"{len(lines)} VM(s) {verb}" if lines else "no VM to reap", markup=False)


def _detach(cfg: Any) -> None:
    """`run --detach`: this same command line again, as a background orchestrator (detach.py)."""
    from parallel_engine.detach import start_detached
    from parallel_engine.names import new_run_id

    argv = [arg for arg in sys.argv[1:] if arg != "--detach"]
    done = start_detached(argv, api.open_store(cfg), new_run_id())
    out.print(f"run {done.run_id}: started in the background (orchestrator pid {done.pid}, log {done.log})",
              markup=False)
    out.print(f"follow it with `parallel-engine status {done.run_id}`; stop it with "
              f"`parallel-engine cancel {done.run_id}`", markup=False)


def _orchestrate_here(quiet: bool, start: Callable[[ProgressFn, Callable[[str], None],
                                                    threading.Event], api.Run]) -> None:
    """Drive a run here (`run`, `resume`) to its end: progress, then the summary and exit code.

    SIGINT/SIGTERM cancel the run from here until it has ended: before the run exists nothing
    is created (exit 130). Once it ended (end.json says how) they are ignored until this command
    exits, so a late one cannot change an exit code that agrees with end.json."""
    cancel = threading.Event()
    _on_signals(api.cancel_handler(cancel))
    try:
        info = (lambda message: err.print(message, markup=False)) if not quiet else (lambda message: None)
        with _progress(quiet) as update:
            handle = start(update, info, cancel)
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


@contextmanager
def _following(run_id: str) -> Iterator[None]:
    """Ctrl-C stops only the follower (`wait`, `status --watch`, `logs --follow`): exit 130, and
    the run, which it never touched, goes on."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(f"stopped following run {run_id}: the run itself goes on, untouched") from None


def _progress(quiet: bool) -> CountsBar:
    """A live bar with counts per state, or nothing when quiet or not on a terminal."""
    return CountsBar(err if not quiet and err.is_terminal else None)


SHOWN_FAILURES = 20


def _tail(text: bytes, lines: int = 3) -> str:
    decoded = text.decode("utf-8", errors="replace").rstrip("\n").splitlines()
    return "\n".join(decoded[-lines:])


def _print_summary(status: RunStatus, handle: api.Run) -> None:
    counts = status.counts
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    out.print(f"run {status.record.run_id}: {summary}", markup=False)
    _print_failed(status, handle, SHOWN_FAILURES, summary=True)
    out.print(f"results: parallel-engine collect {status.record.run_id} --dest results", markup=False)


def _failed_table(status: RunStatus, most: int, worker: bool = True) -> Table | Text:
    failed = [v for v in status.tasks if v.state is TaskState.FAILED]
    if not failed:
        return Text(f"run {status.record.run_id} ({status.run_state}): no task failed")
    table = Table(title="failed tasks")
    for column in ("task", "state", "exit code", "attempts", *(["worker"] if worker else []), "reason"):
        table.add_column(column, overflow="fold")
    for view in failed[:most]:
        last = view.attempts[-1]
        table.add_row(view.task_id, str(last.state), str(last.exit_code), str(len(view.attempts)),
                      *([last.worker] if worker else []), last.reason)
    return table


def _print_failed(status: RunStatus, handle: api.Run, most: int, summary: bool = False) -> None:
    """The failed tasks (at most `most`) with their last attempt's reason, then the last stderr
    lines of the first SHOWN_FAILURES of them. A run's `summary` says nothing when none failed,
    and leaves the worker to `status --failed`."""
    failed = [v for v in status.tasks if v.state is TaskState.FAILED]
    if not failed and summary:
        return
    out.print(_failed_table(status, most, worker=not summary))
    for view in failed[:SHOWN_FAILURES]:
        last = view.attempts[-1]
        stderr = handle.store.read_log(status.record.run_id, view.task_id, last.attempt, "stderr") or b""
        tail = _tail(stderr)
        if tail:
            out.print(f"--- task {view.task_id}, attempt {last.attempt}: last stderr lines", markup=False)
            out.print(tail, markup=False, highlight=False, soft_wrap=True)
    run_id = status.record.run_id
    if len(failed) > most:
        out.print(f"... and {len(failed) - most} more failed: `parallel-engine status {run_id} --all` "
                  "lists every task", markup=False)
    if len(failed) > SHOWN_FAILURES:
        out.print(f"(stderr of the first {SHOWN_FAILURES} only: `parallel-engine logs {run_id} TASK --stderr` "
                  "shows any)", markup=False)


@app.command()
@friendly
def wait(
    run_id: Annotated[str, typer.Argument(help="the run id")],
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="no progress bar")] = False,
    store: StoreOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Follow a run until it ends without taking it over (read-only), then its summary and exit code.

    For scripts and CI: exit 0 every task succeeded, 1 one failed, 130 cancelled, 4 interrupted
    (its orchestrator is gone without recording an end), 3 it stopped on an error.
    """
    handle = api.get_run(run_id, _config(config, _flags(set_, STORE=store)))
    with _following(run_id), _progress(quiet) as update:
        status = follow(handle.store, run_id, lambda state: update(progress_counts(state)))
    _print_summary(status, handle)
    if ending(status):
        err.print(ending(status), markup=False)
    raise typer.Exit(exit_code(status))


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
STATUS_COLUMNS = ("task", "state", "attempts", "exit code", "duration s", "worker", "reason", "parameters")


@app.command()
@friendly
def status(
    run_id: Annotated[str, typer.Argument(help="the run id (see `parallel-engine runs`)")],
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    show_all: Annotated[bool, typer.Option("--all", help="every task, one plain line each (any run size)")] = False,
    failed: Annotated[bool, typer.Option("--failed", help="only the failed tasks, with their reason and last stderr lines")] = False,
    watch: Annotated[bool, typer.Option("--watch", help="redraw as the run goes, until it ends (read-only)")] = False,
    store: StoreOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Show every task of a run: state, attempts, exit code, duration, worker, reason, parameters.

    Over 200 tasks: the counts and the tasks that did not succeed (at most 200). --all: every task, one plain line each. --json: everything, for scripts.
    """
    if sum((as_json, show_all, failed)) > 1 or (watch and (as_json or show_all)):
        raise ParallelEngineError("--json, --all and --failed are three different views: choose one "
                                  "(--watch goes with the table or --failed)")
    handle = api.get_run(run_id, _config(config, _flags(set_, STORE=store)))
    if watch:
        with _following(run_id):
            _watch(handle, failed)
        return
    state = handle.status()
    if as_json:
        _write_out(state.iter_json())
    elif failed:
        _print_failed(state, handle, TABLE_ROWS)
        out.print(_counts_line(state), markup=False)
    elif show_all:
        width = out.width if out.is_terminal else None  # a terminal's lines are cut to fit; a pipe gets all
        _write_out(_aligned([STATUS_COLUMNS, *(_status_cells(view) for view in state.tasks)], width))
        out.print(_counts_line(state), markup=False)
    else:
        out.print(_status_view(state))


def _status_view(state: RunStatus) -> Group:
    """The table (of at most TABLE_ROWS tasks: the ones that did not succeed when there are more),
    what was left out, and the counts."""
    run_id = state.record.run_id
    parts: list[Any] = []
    shown = state.tasks
    title = f"run {run_id} ({state.run_state})"
    if len(state.tasks) > TABLE_ROWS:
        shown = tuple(view for view in state.tasks if view.state is not TaskState.SUCCEEDED)
        title += f": the {len(shown)} of {len(state.tasks)} tasks that did not succeed"
    if shown:
        rows = [_status_cells(view) for view in shown[:TABLE_ROWS]]
        table = Table(title=title)
        for column in STATUS_COLUMNS[:-1]:
            table.add_column(column, overflow="fold")
        # The parameters get what the other columns leave of the terminal's width, cut (never
        # wrapped) to it: `--json` has them all.
        others = sum(max(len(row[i]) for row in [STATUS_COLUMNS, *rows]) for i in range(len(STATUS_COLUMNS) - 1))
        room = max(out.width - others - 3 * len(STATUS_COLUMNS) - 1, len(STATUS_COLUMNS[-1]))
        table.add_column(STATUS_COLUMNS[-1], no_wrap=True, overflow="ellipsis", max_width=room)
        for row in rows:
            table.add_row(*row)
        parts.append(table)
    else:
        parts.append(Text(f"{title}: all {len(state.tasks)} tasks succeeded"))
    if len(shown) > TABLE_ROWS:
        parts.append(Text(f"... and {len(shown) - TABLE_ROWS} more that did not succeed"))
    if len(shown) < len(state.tasks):
        parts.append(Text(f"`parallel-engine status {run_id} --all` lists all {len(state.tasks)} tasks; --json for scripts"))
    parts.append(Text(_counts_line(state)))
    if state.waiting:
        parts.append(Text(state.waiting))
    if state.how_to_continue:
        parts.append(Text(state.how_to_continue))
    return Group(*parts)


def _counts_line(state: RunStatus) -> str:
    return ", ".join(f"{n} {s}" for s, n in sorted(state.counts.items()))


def _watch(handle: api.Run, failed: bool) -> None:
    """Redraw the status at each reading of the store until the run ends; only the last one off a terminal."""
    from rich.live import Live

    def view(state: RunStatus) -> Any:
        return _status_view(state) if not failed else Group(_failed_table(state, TABLE_ROWS), Text(_counts_line(state)))

    if not out.is_terminal:
        state = follow(handle.store, handle.run_id, lambda state: None)
        out.print(view(state))
        return
    with Live(console=out, auto_refresh=False, transient=False) as live:
        follow(handle.store, handle.run_id, lambda state: live.update(view(state), refresh=True))


def _status_cells(view: TaskView) -> tuple[str, ...]:
    result = view.result
    duration = view.duration_s
    worker = result.worker if result else ""
    params = " ".join(f"{name}={value}" for name, value in view.params.items() if name != "task_id")
    return (view.task_id, str(view.state), str(len(view.attempts)),
            "" if view.exit_code is None else str(view.exit_code),
            "" if duration is None else f"{duration:.2f}", worker,
            " ".join(result.reason.splitlines()) if result else "", " ".join(params.splitlines()))


def _aligned(rows: list[tuple[str, ...]], width: int | None = None) -> Iterator[str]:
    """Rows as lines of space-aligned columns (the last one ragged): a table at any size; each
    line cut to `width` characters (ending in "…") when given."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        line = "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths)), row[-1]]).rstrip()
        if width is not None and len(line) > width:
            line = line[: width - 1] + "…"
        yield line + "\n"


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
    follow_: Annotated[bool, typer.Option("--follow", "-f", help="print what the attempt writes until it ends")] = False,
    store: StoreOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Print a task's stdout (or stderr) for one attempt (the latest by default).

    --follow: go on printing what it writes until it ends (on gce, as its worker uploads the logs).
    """
    handle = api.get_run(run_id, _config(config, _flags(set_, STORE=store)))
    if follow_:
        stream = "stderr" if stderr else "stdout"

        def write(data: bytes) -> None:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()

        with _following(run_id):
            chosen = tail_log(handle.store, run_id, task_id, attempt, stream, write)
        err.print(f"# run {run_id} task {task_id} attempt {chosen}: ended", markup=False)
        return
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
    include_failed: Annotated[bool, typer.Option("--include-failed", help="also the outputs of failed tasks' last attempts (results' state tells them apart)")] = False,
    fmt: Annotated[str, typer.Option("--format", help="the results table: csv (results.csv) or parquet (results.parquet, needs pyarrow)")] = "csv",
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
            done = collect_run(handle.store, run_id, dest, replace=replace, excel_safe=excel_safe,
                               include_failed=include_failed, fmt=fmt)
            _on_signals(signal.SIG_IGN)  # collected: a late signal must not report it interrupted
        except KeyboardInterrupt:
            raise Interrupted(f"collect interrupted: {dest} holds what it held before, or all of this "
                              "collection if it was already being moved in") from None
    for line in done.warnings(dest):
        err.print(f"warning: {line}", markup=False)
    counts = done.status.counts
    failed = f" (and {counts.get('failed', 0)} failed tasks')" if include_failed else ""
    out.print(f"collected {counts.get('succeeded', 0)} task outputs{failed} into {dest}/ and {done.results_file}",
              markup=False)


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C (so `finally` cleans up) instead of ending the process on the spot."""

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is interrupt:  # not when the block ignored signals from then on
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
    if any(s.how_to_continue for s in found):
        out.print("interrupted: nobody orchestrates the run any more; `parallel-engine resume RUN` continues it",
                  markup=False)


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
    try:
        app()
    finally:
        # The command has ended and said how: a late Ctrl-C or SIGTERM must not change that. While
        # Python shuts down it puts the default handlers back, and a signal landing then killed
        # the process with no word after it had finished (a collect that said "collected": -2).
        _on_signals(signal.SIG_IGN)


if __name__ == "__main__":
    main()
