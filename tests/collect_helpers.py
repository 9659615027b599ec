"""A finished run written straight into a store (no task runs), and what collect tests check."""

from __future__ import annotations

import os
import time
from pathlib import Path

from parallel_engine.model import AttemptState, AttemptStatus, Task
from parallel_engine.nofollow import NAME_ERRNOS, Skipped
from parallel_engine.store import Blobs, RunRecord, RunStore

RUN_ID = "20260101-000000-aaaaa"


def finished_run(store: RunStore, states: dict[str, AttemptState], run_id: str = RUN_ID,
                 params: dict[str, dict[str, str]] | None = None) -> str:
    """A run whose tasks ended in `states` (attempt 1 each), as a store holds it once it ended."""
    params = params or {task_id: {"x": task_id} for task_id in states}
    tasks = tuple(Task(task_id, (), params[task_id]) for task_id in states)
    columns = tuple(dict.fromkeys(name for values in params.values() for name in values))
    store.save_run(RunRecord(run_id, time.time(), "local", "params.csv", columns, tasks, {"retries": 0}))
    for task_id, state in states.items():
        assert store.claim(run_id, task_id, 1, "worker-1")
        store.add_attempt_folders(run_id, task_id, 1)
        code = 0 if state is AttemptState.SUCCEEDED else 1
        store.write_status(run_id, AttemptStatus(task_id, 1, state, code, 1.0, 2.5, "worker-1"))
    store.write_end(run_id, "finished", time.time())
    return run_id


def outputs_key(run_id: str, task_id: str, attempt: int = 1) -> str:
    return RunStore.attempt_prefix(run_id, task_id, attempt) + "outputs/"


def outputs_dir(root: Path, run_id: str, task_id: str, attempt: int = 1) -> Path:
    folder = root / outputs_key(run_id, task_id, attempt)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def tree(folder: Path) -> dict[str, bytes | str]:
    """Every entry under `folder`, never following a link: file -> bytes, link -> 'link:TARGET',
    folder -> 'folder', anything else -> 'special'."""
    found: dict[str, bytes | str] = {}
    for dirpath, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(dirpath, name)
            rel = str(path.relative_to(folder))
            if path.is_symlink():
                found[rel] = "link:" + os.readlink(path)
            elif path.is_dir():
                found[rel] = "folder"
            elif path.is_file():
                found[rel] = path.read_bytes()
            else:
                found[rel] = "special"
    return found


def staging_left(dest: Path) -> list[str]:
    return [p.name for p in dest.iterdir() if p.name.startswith(".collecting-")] if dest.is_dir() else []


class MemoryBlobs:
    """A bucket in a dict, for unit tests: any object name at all, as Cloud Storage allows."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def write(self, key: str, data: bytes) -> None:
        self.objects[key] = data

    def create(self, key: str, data: bytes) -> bool:
        if key in self.objects:
            return False
        self.objects[key] = data
        return True

    def read(self, key: str) -> bytes | None:
        return self.objects.get(key)

    def read_many(self, keys: list[str]) -> list[bytes | None]:
        return [self.objects.get(key) for key in keys]

    def add_folders(self, prefixes: list[str]) -> None:
        pass  # a bucket has no folders

    def delete(self, key: str) -> None:
        self.objects.pop(key, None)

    def list(self, prefix: str, start_after: str = "") -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix) and k > start_after)

    def versions(self, prefix: str) -> dict[str, tuple[int, str]]:
        return {k: (1, str(hash(self.objects[k]))) for k in self.list(prefix)}

    def children(self, prefix: str) -> list[str]:
        return sorted({k[len(prefix):].split("/", 1)[0] for k in self.list(prefix)})

    def scan(self, prefix: str) -> tuple[list[str], list[object]]:
        return self.list(prefix), []

    def fetch(self, pairs: list[tuple[str, Path]]) -> list[Skipped]:
        skipped = []
        for key, target in pairs:
            try:
                with open(target, "xb") as handle:
                    handle.write(self.objects[key])
            except OSError as exc:
                if exc.errno not in NAME_ERRNOS:
                    raise
                skipped.append(Skipped(key, "name refused here", exc.strerror or ""))
        return skipped

    def local_path(self, key: str) -> Path | None:
        return None

    def link(self, source: str, target: str) -> bool:
        return False


def memory_store() -> RunStore:
    blobs: Blobs = MemoryBlobs()  # type: ignore[assignment]
    return RunStore(blobs, "memory://bucket")
