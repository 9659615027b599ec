"""The run store: the single source of truth for a run (layout: parallel_engine/protocol.py).

The same layout serves a local folder and a bucket; `RunStore` speaks in runs, tasks
and attempts and leaves bytes to a `Blobs` implementation. Everything the orchestrator writes
to a store goes through a `RunStore` method (docs/architecture.md says who writes what). Every
write is atomic (readers never see half-written JSON), and an attempt writes only under its own
folder. A claimed attempt with no status.json yet is running: the record is written once, at the end.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from parallel_engine.errors import RunNotFoundError, StoreError
from parallel_engine.model import AttemptState, AttemptStatus, Task
from parallel_engine.nofollow import (
    Beneath,
    DestError,
    Listing,
    Pairs,
    Skipped,
    Skips,
    copy_to_new,
    walk,
)
from parallel_engine.paths import unsafe_segment
from parallel_engine.protocol import (
    BUILD_RECORD,
    CAPACITY_JSON,
    CLAIMS,
    END_JSON,
    EVENTS,
    LEASES,
    OPEN,
    RUN_FOLDERS,
    RUN_JSON,
    SOURCES,
    STATUS_JSON,
    TAILS,
    TASKS,
    WORKERS,
    argv_key,
    attempt_prefix,
    claim_key,
    command_key,
    encode_argv,
    event_name,
    lease_key,
    open_key,
    parse_attempt,
    parse_lease,
    run_prefix,
    worker_key,
)


class Blobs(Protocol):
    """Bytes under keys ('runs/<id>/run.json'), as in a bucket."""

    def write(self, key: str, data: bytes) -> None:
        """Replace `key` whole: readers see the old or the new bytes, never a mix."""

    def create(self, key: str, data: bytes) -> bool:
        """Create `key` only if it does not exist; False if it did (the atomic claim)."""

    def read(self, key: str) -> bytes | None: ...

    def read_from(self, key: str, start: int) -> bytes | None:
        """The bytes from offset `start` on (b"" when the object holds no more); None if missing:
        what a follower of a growing log reads each time."""

    def read_many(self, keys: list[str]) -> list[bytes | None]:
        """Each key's bytes (None where missing), in `keys`' order, as fast as the medium allows:
        what reading a whole run costs (`RunStore.attempts`)."""

    def delete(self, key: str) -> None:
        """Remove `key`; no error if it is already gone."""

    def list(self, prefix: str, start_after: str = "") -> list[str]:
        """Keys under `prefix`, sorted, strictly after `start_after` when given."""

    def versions(self, prefix: str) -> dict[str, tuple[int, str]]:
        """{key: (generation, content hash)} under `prefix`, without reading any object where the
        medium allows: a rewrite shows as a new generation, new bytes as a new hash."""

    def children(self, prefix: str) -> builtins.list[str]:  # `list` is a method here
        """Names directly under `prefix` (like a bucket listing with delimiter '/')."""

    def scan(self, prefix: str) -> Listing:
        """The keys of the regular objects under `prefix`, sorted, and every other entry there
        (a link, fifo, socket or device on local disk; a bucket has none), from one listing that
        follows no link."""

    def fetch(self, pairs: Pairs) -> Skips:
        """Copy each key's bytes to its local path, a new file in a folder that exists, as fast
        as the medium allows, never through a link. What is not (or no longer) a regular object,
        or whose name the local disk refuses, is not copied and is returned with why; a copy
        that cannot be written (no space, no permission) raises StoreError. Nothing half-written
        is left at a path."""

    def local_path(self, key: str) -> Path | None:
        """Where `key` lives on this machine, if it does (a local runtime writes logs there)."""

    def link(self, source: str, target: str) -> bool:
        """Create `target` holding `source`'s bytes without copying them (a hard link), if this
        medium can; False otherwise, and the caller writes it itself."""

    def add_folders(self, prefixes: Sequence[str]) -> None:
        """Make the folders these prefixes name, parents included (a new run's); a bucket has none.
        On disk the only call that makes a folder: a key whose folder has vanished cannot be
        written, so a run store deleted under a run stops it instead of being quietly rebuilt."""


class LocalBlobs:
    """A folder as a bucket: atomic writes by rename, atomic create by O_CREAT|O_EXCL.

    Disk errors (not a folder, no space, no permission) become a StoreError naming the path,
    here at the boundary, so no caller sees a bare OSError. Writes are atomic, not durable:
    no fsync before the rename (it would cost a disk flush per attempt record); a crash of
    this process never leaves half a file, a power cut may leave an empty one.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._root = str(root)

    def _path(self, key: str) -> str:
        # Strings, not pathlib: every attempt makes several of these, and Path parsing showed
        # as the orchestrator's biggest CPU cost per attempt (yappi on bench/local_overhead.py).
        return os.path.join(self._root, key)

    def write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            write_atomic(path, data)
        except OSError as exc:
            raise _disk_error("write", Path(path), exc) from None

    def create(self, key: str, data: bytes) -> bool:
        # O_CREAT|O_EXCL is the atomic part; the few bytes after it only say who holds the key.
        path = self._path(key)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise _disk_error("write", Path(path), exc) from None
        try:
            try:
                _write_all(fd, data)
            finally:
                os.close(fd)
        except OSError as exc:  # e.g. a full disk: a key without its bytes must not stay created
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise _disk_error("write", Path(path), exc) from None
        return True

    def read(self, key: str) -> bytes | None:
        return self.read_from(key, 0)

    def read_from(self, key: str, start: int) -> bytes | None:
        path = self._path(key)
        try:
            return _read_file(path, start)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        except OSError as exc:
            raise _disk_error("read", Path(path), exc) from None

    def read_many(self, keys: list[str]) -> list[bytes | None]:
        return [self.read(key) for key in keys]

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _disk_error("delete", Path(path), exc) from None

    def list(self, prefix: str, start_after: str = "") -> list[str]:
        keys, _ = self.scan(prefix)
        return [key for key in keys if key > start_after and not key.rpartition("/")[2].startswith(".tmp-")]

    def scan(self, prefix: str) -> Listing:
        # Unlike list(), a `.tmp-` name is kept: in a task's outputs it is the task's file.
        folder_key = prefix[: prefix.rfind("/") + 1]  # the folder that holds every key under prefix
        folder = self._path(folder_key)
        try:
            return walk(folder, folder_key, prefix)
        except OSError as exc:
            raise _disk_error("list", Path(folder), exc) from None

    def versions(self, prefix: str) -> dict[str, tuple[int, str]]:
        # A write replaces the file (rename), so its mtime is the generation (two writes within the
        # filesystem's timestamp granularity look like one); the hash reads the bytes, small here.
        found: dict[str, tuple[int, str]] = {}
        for key in self.list(prefix):
            path = self._path(key)
            try:
                with open(path, "rb") as handle:
                    stamp = os.fstat(handle.fileno()).st_mtime_ns
                    digest = hashlib.md5(handle.read(), usedforsecurity=False).hexdigest()
            except FileNotFoundError:
                continue  # deleted since the listing
            except OSError as exc:
                raise _disk_error("read", Path(path), exc) from None
            found[key] = (stamp, digest)
        return found

    def children(self, prefix: str) -> builtins.list[str]:  # `list` is a method here
        folder = self._path(prefix)
        if not os.path.isdir(folder):
            return []
        try:
            return sorted(entry.name for entry in os.scandir(folder) if not entry.name.startswith("."))
        except OSError as exc:
            raise _disk_error("list", Path(folder), exc) from None

    def fetch(self, pairs: Pairs) -> Skips:
        skipped: list[Skipped] = []
        with Beneath(self._root) as tree:
            for key, target in pairs:
                opened = tree.open_regular(key)
                if isinstance(opened, Skipped):
                    skipped.append(opened)
                    continue
                try:
                    refused = copy_to_new(*opened, str(target), key)
                except DestError as exc:
                    raise _disk_error(f"copy {self._path(key)} to", target, exc) from None
                if refused is not None:
                    skipped.append(refused)
        return skipped

    def local_path(self, key: str) -> Path | None:
        return Path(self._path(key))

    def link(self, source: str, target: str) -> bool:
        source_path, target_path = self._path(source), self._path(target)
        try:
            os.link(source_path, target_path)
        except FileExistsError:
            return True
        except FileNotFoundError as exc:
            if not os.path.exists(source_path):
                return False  # the caller writes `target` itself, and meets the same trouble
            raise _disk_error("write", Path(target_path), exc) from None
        except OSError:  # no hard links here (another filesystem, a link limit): write a copy
            return False
        return True

    def add_folders(self, prefixes: Sequence[str]) -> None:
        for prefix in prefixes:
            path = self._path(prefix)
            try:
                os.makedirs(path, exist_ok=True)
            except OSError as exc:
                raise _disk_error("write", Path(path), exc) from None


def _read_file(path: str, start: int = 0) -> bytes:
    """A whole file (from `start` on) with bare os calls: half the cost of open().read() for a
    small record, which counts when `status` reads 50,000 of them."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if start:
            os.lseek(fd, start, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes) -> None:
    """`path` whole or not at all: a temporary file in its folder, renamed over it. Raises
    OSError (FileNotFoundError if the folder is missing); never leaves the temporary behind."""
    folder, name = os.path.split(path)
    # pid and thread: unique among writers of this folder, even across processes (a forked
    # child keeps its parent's thread id).
    tmp = os.path.join(folder, f".tmp-{name}-{os.getpid()}-{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _write_all(fd: int, data: bytes) -> None:
    """All of `data`: a short write (a disk at its limit) is followed by one that says why."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _disk_error(doing: str, path: Path, exc: OSError) -> StoreError:
    if isinstance(exc, FileNotFoundError):  # only a run's creation makes folders (add_folders)
        return StoreError(
            f"cannot {doing} {path}: its folder is gone",
            hint="the run store was deleted or moved while in use: the run stops here; "
            "check STORE and start the run again",
        )
    return StoreError(
        f"cannot {doing} {path}: {exc.strerror or exc}",
        hint="check that the folders on that path exist (or can be made), that you may write there, "
        "and free space",
    )


@dataclass(frozen=True)
class RunRecord:
    """run.json: what is needed to show, resume or collect a run (never secrets)."""

    run_id: str
    created: float
    backend: str
    source: str
    columns: tuple[str, ...]
    tasks: tuple[Task, ...]
    spec: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "created": self.created,
            "backend": self.backend,
            "source": self.source,
            "columns": list(self.columns),
            "tasks": [task.to_json() for task in self.tasks],
            "spec": self.spec,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        return cls(
            run_id=data["run_id"],
            created=float(data["created"]),
            backend=data["backend"],
            source=data.get("source", ""),
            columns=tuple(data.get("columns", ())),
            tasks=tuple(Task.from_json(t) for t in data["tasks"]),
            spec=dict(data.get("spec", {})),
        )


def _attempt_status(raw: bytes | None) -> AttemptStatus | None:
    """A status.json's record; None when there is none (yet) or it cannot be read."""
    if raw is None:
        return None
    try:
        return AttemptStatus.from_json(json.loads(raw))
    except (ValueError, KeyError, TypeError):
        return None


def _dumps(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False).encode()


class RunStore:
    """Runs, claims, attempt records and events on top of `Blobs`: every key it writes is
    named in parallel_engine/protocol.py."""

    def __init__(self, blobs: Blobs, where: str) -> None:
        self.blobs = blobs
        self.where = where  # shown in messages: a folder or gs://bucket/prefix

    @staticmethod
    def attempt_prefix(run_id: str, task_id: str, attempt: int) -> str:
        return attempt_prefix(run_id, task_id, attempt)

    @staticmethod
    def claim_key(run_id: str, task_id: str, attempt: int) -> str:
        return claim_key(run_id, task_id, attempt)

    def local_path(self, key: str = "") -> Path | None:
        """Where `key` (default: the store's root) lives on this machine; None in a bucket."""
        return self.blobs.local_path(key)

    def location(self, key: str) -> str:
        """Where `key` is, for a person: a path on this machine, or its gs:// address."""
        path = self.blobs.local_path(key)
        return str(path) if path is not None else f"{self.where.rstrip('/')}/{key}"

    # -- runs -------------------------------------------------------------------------
    def save_run(self, record: RunRecord) -> None:
        """Create the run: its folders (the only place they are made), then run.json."""
        self.add_run_folders(record.run_id)
        self.blobs.write(run_prefix(record.run_id) + RUN_JSON, _dumps(record.to_json()))

    def add_run_folders(self, run_id: str) -> None:
        self.blobs.add_folders([run_prefix(run_id) + folder for folder in RUN_FOLDERS])

    def add_attempt_folders(self, run_id: str, task_id: str, attempt: int) -> None:
        """tasks/<id>/<attempt>/outputs/, before anything of the attempt is written (a local
        worker makes them itself, with bare mkdirs: see backends/local/pool.py)."""
        self.blobs.add_folders([self.attempt_prefix(run_id, task_id, attempt) + "outputs/"])

    def _run_json(self, run_id: str) -> bytes:
        raw = self.blobs.read(run_prefix(run_id) + RUN_JSON) if not unsafe_segment(run_id) else None
        if raw is None:
            raise RunNotFoundError(
                f"no run '{run_id}' in {self.where}",
                hint="`parallel-engine runs` lists the runs this store holds",
            )
        return raw

    def check_run(self, run_id: str) -> None:
        """RunNotFoundError unless the store holds `run_id`; its record is not parsed (that is
        most of what a 50,000-task run.json costs, and `load_run` does it when needed)."""
        self._run_json(run_id)

    def load_run(self, run_id: str) -> RunRecord:
        raw = self._run_json(run_id)
        try:
            record = RunRecord.from_json(json.loads(raw))
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{self.where}: runs/{run_id}/run.json is unreadable ({exc})") from exc
        # Task ids become keys and folders (collect): one that is no single safe name is refused.
        bad = next((task.id for task in record.tasks if not isinstance(task.id, str) or unsafe_segment(task.id)), None)
        if bad is not None:
            raise StoreError(f"{self.where}: runs/{run_id}/run.json holds a task id that cannot name a folder: {bad!r}",
                             hint="that run.json was not written by parallel-engine: do not use this run")
        return record

    def run_ids(self) -> list[str]:
        """Every run in the store, by id descending: newest second first, but runs started in the
        same second in random order (`api.list_runs` sorts by `created`)."""
        names = self.blobs.children("runs/")
        ids = [name for name in names if self.blobs.read(run_prefix(name) + RUN_JSON) is not None]
        return sorted(ids, reverse=True)

    def write_end(self, run_id: str, state: str, at: float) -> None:
        """end.json: how the run ended (finished, cancelled, failed)."""
        self.blobs.write(run_prefix(run_id) + END_JSON, json.dumps({"state": state, "at": at}).encode())

    def read_end(self, run_id: str) -> str | None:
        """How the run ended, or None while it has not (or its orchestrator died first)."""
        raw = self.blobs.read(run_prefix(run_id) + END_JSON)
        return None if raw is None else str(json.loads(raw).get("state", "finished"))

    # -- the lease: who orchestrates the run (parallel_engine/lease.py decides what it means) ----
    def take_lease(self, run_id: str, generation: int, holder: dict[str, Any]) -> bool:
        """Create lease `generation` (atomic): False if someone else took that generation first."""
        return self.blobs.create(lease_key(run_id, generation), _dumps(holder))

    def refresh_lease(self, run_id: str, generation: int, holder: dict[str, Any]) -> None:
        """Rewrite our own lease (its `at`): only its holder calls this."""
        self.blobs.write(lease_key(run_id, generation), _dumps(holder))

    def read_lease(self, run_id: str) -> tuple[int, dict[str, Any]] | None:
        """The newest lease (generation, holder), or None if no orchestrator ever took one."""
        prefix = run_prefix(run_id) + LEASES
        generations = [g for key in self.blobs.list(prefix) if (g := parse_lease(key[len(prefix):])) is not None]
        for generation in sorted(generations, reverse=True):
            raw = self.blobs.read(lease_key(run_id, generation))
            if raw is None:
                continue
            try:
                return generation, dict(json.loads(raw))
            except (ValueError, TypeError):
                return generation, {}  # unreadable: a holder we cannot name, judged stale
        return None

    def write_capacity(self, run_id: str, waiting: str | None, at: float) -> None:
        """capacity.json: that the run waits for capacity (`waiting` says why) or, with None, that it does not."""
        record = {"waiting": waiting is not None, "reason": waiting or "", "at": at}
        self.blobs.write(run_prefix(run_id) + CAPACITY_JSON, json.dumps(record).encode())

    def read_capacity(self, run_id: str) -> str:
        """Why the run waits for capacity, or "" when it does not (or nobody said)."""
        raw = self.blobs.read(run_prefix(run_id) + CAPACITY_JSON)
        try:
            return str(json.loads(raw).get("reason", "")) if raw else ""
        except ValueError:
            return ""

    # -- what a gce orchestrator offers its workers (docs/worker-protocol.md) -------------
    def publish_task(self, run_id: str, task: Task) -> None:
        """The task's argv (appended to the entrypoint), or its full command, as NUL-separated data."""
        if task.command is not None:
            self.blobs.write(command_key(run_id, task.id), encode_argv(task.command))
        else:
            self.blobs.write(argv_key(run_id, task.id), encode_argv(task.argv))

    def open_attempt(self, run_id: str, task_id: str, attempt: int) -> None:
        """Make the attempt claimable (its open marker)."""
        self.blobs.create(open_key(run_id, task_id, attempt), b"")

    def opened(self, run_id: str) -> list[tuple[str, int]]:
        """(task_id, attempt) of every open marker: published, not ended (one listing)."""
        prefix = run_prefix(run_id) + OPEN
        return [parsed for key in self.blobs.list(prefix) if (parsed := parse_attempt(key[len(prefix):]))]

    def close_attempt(self, run_id: str, task_id: str, attempt: int) -> None:
        """The attempt ended: no worker looks at it again."""
        self.blobs.delete(open_key(run_id, task_id, attempt))

    def worker_records(self, run_id: str) -> dict[str, tuple[int, str]]:
        """{vm: (generation, content hash)} of the VMs' records (`runs/<run>/workers/<vm>`), from
        one listing: what a gce monitor reads for liveness (docs/worker-protocol.md)."""
        prefix = run_prefix(run_id) + WORKERS
        return {key[len(prefix):]: version for key, version in self.blobs.versions(prefix).items()}

    def worker_attempt(self, run_id: str, worker: str) -> tuple[str, int] | None:
        """The attempt a worker's record names (the one it claimed last), if any."""
        raw = self.blobs.read(worker_key(run_id, worker)) or b""
        return parse_attempt(raw.decode(errors="replace").strip())

    def forget_worker(self, run_id: str, worker: str) -> None:
        """Delete a worker's record once the worker is gone and settled."""
        self.blobs.delete(worker_key(run_id, worker))

    # -- builds (gce) -------------------------------------------------------------------
    def save_source(self, name: str, data: bytes) -> str:
        """A build context (a .tgz) for Cloud Build; returns its key under the store root."""
        key = SOURCES + name
        self.blobs.write(key, data)
        return key

    def save_build(self, record: dict[str, Any]) -> None:
        """The last build: which image, its digest (`run` pins IMAGE to it)."""
        self.blobs.write(BUILD_RECORD, json.dumps(record).encode())

    def last_build(self) -> dict[str, Any] | None:
        raw = self.blobs.read(BUILD_RECORD)
        return dict(json.loads(raw)) if raw else None

    # -- attempts ---------------------------------------------------------------------
    def claim(self, run_id: str, task_id: str, attempt: int, worker: str) -> bool:
        """Atomically take an attempt; a second claimant (a duplicated worker) gets False."""
        return self.blobs.create(self.claim_key(run_id, task_id, attempt), worker.encode())

    def write_status(self, run_id: str, status: AttemptStatus) -> None:
        key = self.attempt_prefix(run_id, status.task_id, status.attempt) + STATUS_JSON
        self.blobs.write(key, _dumps(status.to_json()))

    def add_event(self, run_id: str, status: AttemptStatus) -> None:
        """A tiny marker per finished attempt, named so a listing returns them in time order.

        Call it after `write_status`. On local disk the marker is a hard link to the record just
        written: no new inode, which is most of what an attempt costs on ext4 (bench/local_overhead.py).
        Readers use an event's name, never its bytes.
        """
        key = run_prefix(run_id) + EVENTS + event_name(time.time(), status.task_id, status.attempt)
        if self.blobs.link(self.attempt_prefix(run_id, status.task_id, status.attempt) + STATUS_JSON, key):
            return
        self.blobs.create(key, str(status.state).encode())

    def record_end(self, run_id: str, status: AttemptStatus) -> None:
        """An attempt's record and then its event: how every attempt's end is written."""
        self.write_status(run_id, status)
        self.add_event(run_id, status)

    def read_status(self, run_id: str, task_id: str, attempt: int) -> AttemptStatus | None:
        return _attempt_status(self.blobs.read(self.attempt_prefix(run_id, task_id, attempt) + STATUS_JSON))

    def claimed(self, run_id: str) -> list[tuple[str, int]]:
        """(task_id, attempt) of every claim, from one listing of `claims/`."""
        prefix = run_prefix(run_id) + CLAIMS
        return [parsed for key in self.blobs.list(prefix) if (parsed := parse_attempt(key[len(prefix):]))]

    def holder(self, run_id: str, task_id: str, attempt: int) -> str | None:
        """Who claimed the attempt (a VM's or worker's name), or None if nobody did."""
        raw = self.blobs.read(self.claim_key(run_id, task_id, attempt))
        return None if raw is None else raw.decode(errors="replace")

    def attempts(self, run_id: str) -> dict[str, list[AttemptStatus]]:
        """Every attempt, by task, in attempt order: a claim without a record is running.

        One listing of the claims, then the records read together (`read_many`: concurrent in a
        bucket), and a claim's bytes (its holder) only for the attempts still running.
        """
        claimed = self.claimed(run_id)
        raws = self.blobs.read_many([self.attempt_prefix(run_id, t, n) + STATUS_JSON for t, n in claimed])
        statuses = [_attempt_status(raw) for raw in raws]
        running = [pair for pair, status in zip(claimed, statuses) if status is None]
        holders = iter(self.blobs.read_many([self.claim_key(run_id, t, n) for t, n in running]))
        found: dict[str, list[AttemptStatus]] = {}
        for (task_id, number), status in zip(claimed, statuses):
            if status is None:
                raw = next(holders)
                holder = "" if raw is None else raw.decode(errors="replace")
                status = AttemptStatus(task_id, number, AttemptState.RUNNING, worker=holder)
            found.setdefault(task_id, []).append(status)
        for history in found.values():
            history.sort(key=lambda s: s.attempt)
        return found

    def events_after(self, run_id: str, after: str = "") -> list[str]:
        """The run's event keys, sorted, strictly after the key `after`."""
        return self.blobs.list(run_prefix(run_id) + EVENTS, start_after=after)

    def events_prefix(self, run_id: str) -> str:
        return run_prefix(run_id) + EVENTS

    def delete_tails(self, run_id: str) -> None:
        """Delete the log tails a worker left behind (it died between an append's upload and its
        final sync); only once no worker of the run is left."""
        for key in self.blobs.list(run_prefix(run_id) + TAILS):
            self.blobs.delete(key)

    def read_log(self, run_id: str, task_id: str, attempt: int, stream: str) -> bytes | None:
        return self.blobs.read(self.attempt_prefix(run_id, task_id, attempt) + f"{stream}.log")

    def read_log_from(self, run_id: str, task_id: str, attempt: int, stream: str, start: int) -> bytes | None:
        """A log's bytes from offset `start` on (logs only grow: a follower reads what is new)."""
        return self.blobs.read_from(self.attempt_prefix(run_id, task_id, attempt) + f"{stream}.log", start)

    def read_attempt_file(self, run_id: str, task_id: str, attempt: int, name: str) -> bytes | None:
        """A file of an attempt's folder (its record, a log, the worker's list of skipped outputs)."""
        return self.blobs.read(self.attempt_prefix(run_id, task_id, attempt) + name)

    # -- collecting -----------------------------------------------------------------------
    def tasks_prefix(self, run_id: str) -> str:
        return run_prefix(run_id) + TASKS

    def scan_tasks(self, run_id: str) -> Listing:
        """Every regular object of every attempt of the run, and what else is there (links,
        special files), from one listing that follows no link."""
        return self.blobs.scan(self.tasks_prefix(run_id))

    def fetch(self, pairs: Pairs) -> Skips:
        """Copy objects to new local files (Blobs.fetch): what `collect` moves."""
        return self.blobs.fetch(pairs)


def local_store(root: Path) -> RunStore:
    return RunStore(LocalBlobs(root), str(root))
