"""`collect`: each task's outputs (from its winning attempt) into --dest/<task_id>/, results.csv,
and skipped.csv for what was not copied. The rules (README "Collect"):

- Only regular files (and the folders that hold them) under the winning attempt's `outputs/` are
  copied, byte-exact. A link is never followed: it is listed in skipped.csv with its target. A
  fifo, socket or device is skipped likewise. A name from the store is checked before it becomes
  a path (`paths.parts_of`): `..`, `.`, empty segments and NUL are skipped and listed, never joined.
- Anything under `runs/<run>/tasks/` that is no attempt's (a task that wrote `$PE_OUTPUT_DIR/../..`)
  is ignored and reported once.
- Nothing a task wrote fails the collect; only --dest itself can (StoreError, exit 2).
- A collected folder belongs to one run: the marker records the run and the names it wrote.
  Collecting the same run again replaces them; another run is refused unless `replace`, which
  replaces the whole previous collection. Names not written by collect are never touched.
- Everything is staged in one `.collecting-*` folder inside --dest; --dest changes only once all
  of it is there, by renames made while SIGINT/SIGTERM wait, so Ctrl-C never leaves a half-copied
  or half-removed folder. The staging folder goes on every way out (errors, Ctrl-C); one a killed
  collect left is removed by the next. Two collects into one folder: the second is refused.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import shutil
import signal
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from parallel_engine.errors import ConfigError, StoreError
from parallel_engine.model import COLLECT_FILES, RESULT_COLUMNS, TaskState
from parallel_engine.nofollow import NAME_ERRNOS
from parallel_engine.paths import parts_of, unsafe_segment
from parallel_engine.protocol import SKIPPED
from parallel_engine.results import RunStatus, result_columns, result_fields, run_status
from parallel_engine.store import RunStore, write_atomic

#: In --dest: which run was collected there and the names (task folders, files) collect wrote.
COLLECTED_MARKER = ".parallel-engine-collected"
RESULTS_CSV, SKIPPED_CSV, RESULTS_PARQUET = COLLECT_FILES
FORMATS = ("csv", "parquet")
STAGING_PREFIX = ".collecting-"
SKIPPED_COLUMNS = ("task_id", "path", "kind", "detail")
#: The VM worker's list of the outputs it did not upload, beside status.json in the attempt's folder.
WORKER_KINDS = frozenset({"link", "fifo", "socket", "device", "other", "name refused here"})
#: OWASP's list for CSV injection: a cell starting with one of these is a formula to a spreadsheet.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class SkippedOutput:
    """One entry of a task's outputs that was not copied (a row of skipped.csv)."""

    task_id: str
    path: str  # under the task's outputs; "." for the outputs folder itself
    kind: str  # link, fifo, socket, device, other, unsafe name, name clash, ... (nofollow.Skipped)
    detail: str = ""  # a link's target, or why


@dataclass(frozen=True)
class Collected:
    results_file: Path  # results.csv, or results.parquet
    status: RunStatus
    skipped: tuple[SkippedOutput, ...]  # listed in skipped.csv
    ignored: tuple[str, ...]  # store keys under tasks/ that belong to no attempt of the run

    def warnings(self, dest: Path) -> list[str]:
        """What a user should hear about: skipped outputs and ignored store entries, one line each."""
        lines = []
        if self.skipped:
            kinds = Counter(item.kind for item in self.skipped)
            what = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
            lines.append(f"{len(self.skipped)} output(s) not copied ({what}): listed in {dest / SKIPPED_CSV}")
        if self.ignored:
            lines.append(f"ignored {len(self.ignored)} store entr{'y' if len(self.ignored) == 1 else 'ies'} "
                         f"under no attempt of this run, e.g. {printable(self.ignored[0])}")
        return lines


def collect(store: RunStore, run_id: str, dest: Path, *, replace: bool = False, excel_safe: bool = False,
            include_failed: bool = False, fmt: str = "csv") -> Collected:
    """Collect run `run_id` into `dest` (created if missing); see the module's rules.

    `replace` lets it replace the collection of another run found in `dest`; `excel_safe` writes
    params values and task ids that a spreadsheet would run as a formula with a leading `'`.
    `include_failed`: failed tasks' last attempts' outputs too, into dest/<task_id>/ as the others
    (results' `state` tells them apart). `fmt`: the results table as results.csv, or results.parquet.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown results format {fmt!r}", hint=f"use one of: {', '.join(FORMATS)}")
    if fmt == "parquet":
        if excel_safe:
            raise ConfigError("--excel-safe is for results.csv (a spreadsheet's formulas): not for parquet",
                              hint="drop --excel-safe, or collect with --format csv")
        from parallel_engine.results_parquet import require_pyarrow

        require_pyarrow()
    status = run_status(store, run_id)
    _check_dest(store, dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        with _locked(dest):
            return _collect(store, status, dest, replace, excel_safe, include_failed, fmt)
    except OSError as exc:
        raise StoreError(f"cannot collect into {dest}: {exc.filename or dest}: {exc.strerror or exc}",
                         hint="check that you may write there, and free space") from None


def _check_dest(store: RunStore, dest: Path) -> None:
    if dest.exists() and not dest.is_dir():
        raise StoreError(f"{dest} is a file, not a folder: cannot collect into it",
                         hint="give --dest a folder (a missing one is created)")
    root = store.local_path()
    if root is not None and dest.resolve().is_relative_to(root.resolve()):
        raise StoreError(f"{dest} is inside the run store {store.where}: cannot collect into it",
                         hint="collect into a folder outside the store (e.g. --dest results)")


@contextmanager
def _locked(dest: Path) -> Iterator[None]:
    """One collect at a time per folder (an advisory lock on the folder itself)."""
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"another collect is writing into {dest}",
                             hint="wait for it to finish, or collect into another folder") from None
        yield
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- who owns --dest


@dataclass(frozen=True)
class _Marker:
    run_id: str | None  # None: an older collect, which did not record its run
    names: frozenset[str]


def _read_marker(dest: Path) -> _Marker | None:
    try:
        data = json.loads((dest / COLLECTED_MARKER).read_bytes())
    except FileNotFoundError:
        return None
    except (ValueError, IsADirectoryError):
        return _Marker(None, frozenset())
    run_id = None
    if isinstance(data, dict):
        run_id = data.get("run_id") if isinstance(data.get("run_id"), str) else None
        data = data.get("names")
    names = data if isinstance(data, list) else []
    # Only single safe names: the marker is a file in a folder anyone may have edited.
    return _Marker(run_id, frozenset(n for n in names if isinstance(n, str) and not unsafe_segment(n)))


def _write_marker(dest: Path, run_id: str, names: set[str]) -> None:
    write_atomic(str(dest / COLLECTED_MARKER), json.dumps({"run_id": run_id, "names": sorted(names)}).encode())


def _check_owner(dest: Path, run_id: str, names: set[str], replace: bool) -> _Marker | None:
    """Refuse a folder that holds another run's collection (unless `replace`), or anything in the
    way that collect did not write. Changes nothing; returns the earlier collection's marker."""
    marker = _read_marker(dest)
    if marker is not None and marker.run_id != run_id and not replace:
        which = f"run {marker.run_id}" if marker.run_id else "a run it does not name (an older collect)"
        raise StoreError(
            f"{dest} holds the collected outputs of {which}: collecting run {run_id} into it would mix two runs",
            hint=f"collect into another folder (e.g. --dest results-{run_id}), or pass --replace to "
            "replace the whole previous collection",
        )
    owned = marker.names if marker else frozenset()
    foreign = sorted(name for name in names if name not in owned and os.path.lexists(dest / name))
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise StoreError(
            f"{dest / foreign[0]} already exists and was not written by `parallel-engine collect`{more}: "
            "refusing to replace it",
            hint="collect into a new or empty folder (e.g. --dest results), or move it out of the way",
        )
    return marker


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def _clear_staging(dest: Path) -> None:
    """Staging folders a killed collect left (the lock says no collect is running here now)."""
    for entry in os.scandir(dest):
        if entry.name.startswith(STAGING_PREFIX):
            _remove(Path(entry.path))


@contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends, then act as usual: the few renames that
    switch --dest to the new collection, and the cleanup, are never cut in half by Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are delivered to the main thread only
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# ---------------------------------------------------------------------------- what to copy


@dataclass
class _Plan:
    copies: dict[str, list[tuple[str, tuple[str, ...]]]]  # task id -> [(key, path parts)]
    skipped: list[SkippedOutput]
    ignored: list[str]


def _attempt_number(text: str) -> bool:
    return text.isascii() and text.isdigit() and str(int(text)) == text


def _plan(store: RunStore, status: RunStatus, winners: dict[str, int], name_max: int) -> _Plan:
    run_id = status.record.run_id
    prefix = store.tasks_prefix(run_id)
    known = {view.task_id for view in status.tasks}
    files, odd = store.scan_tasks(run_id)  # one listing for the whole run
    bucket = store.local_path() is None
    plan = _Plan({task_id: [] for task_id in winners}, [], [])
    entries = [(key, None) for key in files] + [(item.key, item) for item in odd]
    for key, item in entries:
        task_id, _, tail = key[len(prefix):].partition("/")
        attempt, _, tail = tail.partition("/")
        folder, _, path = tail.partition("/")
        if task_id not in known or not _attempt_number(attempt) or not tail:
            plan.ignored.append(key)
            continue
        if winners.get(task_id) != int(attempt):
            continue  # an attempt that did not win
        if folder == SKIPPED and not path:
            if bucket and item is None:  # a local store is scanned itself, and read() follows links
                plan.skipped += _listed(task_id, store.read_attempt_file(run_id, task_id, int(attempt), SKIPPED) or b"")
            continue
        if folder != "outputs":
            continue  # the attempt's own record and logs
        if item is not None:
            plan.skipped.append(SkippedOutput(task_id, path or ".", item.kind, item.detail))
            continue
        parts = parts_of(path)
        if parts is None:
            plan.skipped.append(SkippedOutput(task_id, path, "unsafe name", "not a path beneath the outputs folder"))
            continue
        if any(len(os.fsencode(part)) > name_max for part in parts):
            plan.skipped.append(SkippedOutput(task_id, path, "name refused here", f"a name longer than {name_max} bytes"))
            continue
        plan.copies[task_id].append((key, parts))
    for task_id, copies in plan.copies.items():
        plan.copies[task_id] = _without_clashes(task_id, copies, plan.skipped)
    plan.ignored.sort()
    return plan


def _listed(task_id: str, data: bytes) -> list[SkippedOutput]:
    """What a VM worker did not upload (docs/worker-protocol.md): kind, path and a link's target,
    NUL-separated; a bucket holds no links, so this is how they reach skipped.csv."""
    fields = [field.decode("utf-8", "surrogateescape") for field in data.split(b"\0")]
    return [SkippedOutput(task_id, path or ".", kind if kind in WORKER_KINDS else "other", target)
            for kind, path, target in zip(fields[0::3], fields[1::3], fields[2::3], strict=False)]


def _without_clashes(task_id: str, copies: list[tuple[str, tuple[str, ...]]],
                     skipped: list[SkippedOutput]) -> list[tuple[str, tuple[str, ...]]]:
    """A bucket can hold `x` and `x/y`; a folder cannot: the file `x` is skipped (and listed)."""
    folders = {parts[:depth] for _, parts in copies for depth in range(1, len(parts))}
    kept = []
    for key, parts in copies:
        if parts in folders:
            skipped.append(SkippedOutput(task_id, "/".join(parts), "name clash", "a folder of that name holds files"))
        else:
            kept.append((key, parts))
    return kept


# ---------------------------------------------------------------------------- copying


def _collect(store: RunStore, status: RunStatus, dest: Path, replace: bool, excel_safe: bool,
             include_failed: bool, fmt: str) -> Collected:
    run_id = status.record.run_id
    kept = (TaskState.SUCCEEDED, TaskState.FAILED) if include_failed else (TaskState.SUCCEEDED,)
    winners = {view.task_id: view.result.attempt for view in status.tasks  # a failed task's: its last
               if view.state in kept and view.result is not None}
    _clear_staging(dest)
    marker = _check_owner(dest, run_id, {*winners, *COLLECT_FILES}, replace)
    plan = _plan(store, status, winners, os.pathconf(dest, "PC_NAME_MAX"))
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=dest))
    try:
        _stage(store, plan, staging)  # the long part: Ctrl-C here leaves --dest as it was
        results = RESULTS_PARQUET if fmt == "parquet" else RESULTS_CSV
        table = _results_table(status, excel_safe, fmt)  # before the switch: it is short, and may not fail
        with _signals_held():
            skipped = _commit(dest, staging, status, marker, plan, excel_safe, (results, table))
    finally:
        with _signals_held():
            shutil.rmtree(staging, ignore_errors=True)
    return Collected(dest / results, status, skipped, tuple(plan.ignored))


def _results_table(status: RunStatus, excel_safe: bool, fmt: str) -> bytes:
    if fmt == "parquet":
        from parallel_engine.results_parquet import parquet_bytes

        return parquet_bytes(status)
    return _csv_bytes(_results_rows(status, excel_safe))


def _commit(dest: Path, staging: Path, status: RunStatus, marker: _Marker | None, plan: _Plan,
            excel_safe: bool, results: tuple[str, bytes]) -> tuple[SkippedOutput, ...]:
    """Switch --dest to this collection: what the earlier one wrote is moved aside (into staging,
    removed with it), each task folder moved in whole, then the tables and the marker."""
    run_id = status.record.run_id
    winners = list(plan.copies)
    skipped = tuple(sorted(plan.skipped, key=lambda item: (item.task_id, item.path)))
    written = {*winners, results[0], *([SKIPPED_CSV] if skipped else [])}
    owned = set(marker.names) if marker else set()
    _write_marker(dest, run_id, owned | written)  # from here on every name is this run's to replace
    aside = staging / ".replaced"  # task ids never start with '.'
    aside.mkdir()
    if marker is not None and marker.run_id != run_id:
        for name in (RESULTS_CSV, RESULTS_PARQUET):  # never the results of one run beside folders of another
            _move_aside(dest / name, aside)
    for name in sorted(owned - written):  # e.g. the skipped.csv of an earlier collect; nothing foreign is here
        _move_aside(dest / name, aside)
    for task_id in winners:
        _move_aside(dest / task_id, aside)
        staged = staging / task_id
        if staged.is_dir():
            os.replace(staged, dest / task_id)
        else:
            (dest / task_id).mkdir()  # it succeeded and wrote nothing: an empty folder says so
    if skipped:
        _write_csv(dest / SKIPPED_CSV, [list(SKIPPED_COLUMNS)] + [
            [cell(item.task_id, excel_safe), cell(item.path, excel_safe), item.kind, cell(item.detail, excel_safe)]
            for item in skipped
        ])
    write_atomic(str(dest / results[0]), results[1])
    _write_marker(dest, run_id, written)
    return skipped


def _move_aside(path: Path, aside: Path) -> None:
    """One rename (never a half-removed folder); `aside` goes with the staging folder."""
    if os.path.lexists(path):
        os.rename(path, aside / path.name)


def _stage(store: RunStore, plan: _Plan, staging: Path) -> None:
    """Every file to copy, fetched into staging/<task_id>/<path> in one call to the store."""
    pairs: list[tuple[str, Path]] = []
    owner: dict[str, tuple[str, str]] = {}
    made: set[Path] = set()
    for task_id, copies in plan.copies.items():
        for key, parts in copies:
            target = staging.joinpath(task_id, *parts)
            refused = _make_folders(target.parent, made)
            if refused is not None:
                plan.skipped.append(SkippedOutput(task_id, "/".join(parts), "name refused here", refused))
                continue
            pairs.append((key, target))
            owner[key] = (task_id, "/".join(parts))
    for item in store.fetch(pairs):
        task_id, path = owner[item.key]
        plan.skipped.append(SkippedOutput(task_id, path, item.kind, item.detail))


def _make_folders(folder: Path, made: set[Path]) -> str | None:
    """Create `folder` (inside staging); why not, when its name is what this disk refuses."""
    if folder in made:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno in NAME_ERRNOS:
            return exc.strerror or str(exc)
        raise
    made.add(folder)
    return None


# ---------------------------------------------------------------------------- the tables


def cell(text: str, excel_safe: bool) -> str:
    """`text` as valid UTF-8 (a file name's undecodable bytes as \\xNN); with `excel_safe`, a
    leading `'` when a spreadsheet would take it for a formula (OWASP's CSV injection advice)."""
    text = printable(text)
    return "'" + text if excel_safe and text.startswith(FORMULA_STARTS) else text


def printable(text: str) -> str:
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _results_rows(status: RunStatus, excel_safe: bool) -> list[Sequence[object]]:
    columns = result_columns(status.record)
    extra = [c for c in ("task_id",) if c not in columns]
    rows: list[Sequence[object]] = [columns + extra + list(RESULT_COLUMNS)]
    for view in status.tasks:
        duration = view.duration_s
        row: list[object] = [cell(view.params.get(c, ""), excel_safe) for c in columns]
        row += [cell(view.task_id, excel_safe)] if extra else []
        fields = {**result_fields(view), "duration_s": "" if duration is None else f"{duration:.3f}"}
        row += [cell(value, excel_safe) if isinstance(value, str) else "" if value is None else value
                for value in (fields[name] for name in RESULT_COLUMNS)]
        rows.append(row)
    return rows


def _write_csv(path: Path, rows: Sequence[Sequence[object]]) -> None:
    write_atomic(str(path), _csv_bytes(rows))


def _csv_bytes(rows: Sequence[Sequence[object]]) -> bytes:
    table = io.StringIO(newline="")
    csv.writer(table).writerows(rows)
    return table.getvalue().encode("utf-8")

