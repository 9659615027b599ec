"""The orchestrator's side of docs/worker-protocol.md and the Python worker under test, over one
emulator's Storage and the local Docker engine (tests/gce/test_worker_python.py and the worker's
fault scenarios)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.api_core.exceptions import NotFound

from parallel_engine.backends.gce.startup import WorkerSettings
from parallel_engine.model import AttemptStatus
from parallel_engine.protocol import command_key, encode_argv, open_key
from parallel_engine.worker.bucket import WorkerBucket
from parallel_engine.worker.loop import Signals, Worker
from tests.emulator.emulator_helpers import Clients

RUN = "20250101-000000-pywrk"
IMAGE = "python:3.11-slim"
WORKER_IMAGE = "parallel-engine-worker:test"  # the image this worker would run in (not used in-process)

# A task: prints to both streams, writes out.txt (and what `--write=NAME` names), sleeps, exits.
TASK = r"""
import os, sys, time
out = os.environ["PE_OUTPUT_DIR"]
print("started", os.environ["PE_TASK_ID"], os.environ["PE_ATTEMPT"], flush=True)
print("to stderr", file=sys.stderr, flush=True)
open(os.path.join(out, "out.txt"), "w").write(os.environ["PE_TASK_ID"])
for a in sys.argv[1:]:
    if a.startswith("--write="):
        open(os.path.join(out, a[len("--write="):]), "w").write("keep me")
    elif a == "--link":
        os.symlink("/etc/hostname", os.path.join(out, "host-link"))
    elif a.startswith("--sleep="):
        time.sleep(float(a[len("--sleep="):]))
    elif a.startswith("--exit="):
        sys.exit(int(a[len("--exit="):]))
print("done", flush=True)
"""


@dataclass
class Side:
    """The orchestrator's side and the worker under test, over one emulator."""

    clients: Clients
    work: Path
    lines: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    @property
    def bucket(self) -> Any:
        return self.clients.storage.bucket(self.clients.cloud.bucket)

    def publish(self, task_id: str, *args: str, attempt: int = 1, claimable: bool = True) -> None:
        command = ["python", "-c", TASK, *args]
        self.bucket.blob(command_key(RUN, task_id)).upload_from_string(encode_argv(command))
        if claimable:
            self.bucket.blob(open_key(RUN, task_id, attempt)).upload_from_string(b"")

    def worker(self, name: str = "w1", signals: Signals | None = None, **overrides: Any) -> Worker:
        values: dict[str, Any] = dict(
            run_id=RUN, bucket=self.clients.cloud.bucket, image=IMAGE, worker_image=WORKER_IMAGE, pull_policy="never",
            storage_endpoint=self.clients.cloud.storage_endpoint, heartbeat_s=0.2, log_interval_s=0.2,
            poll_s=0.1, idle_s=0.3, stop_grace_s=1, http_tries=3, retry_base_s=0.05, retry_max_s=0.4,
        )
        values.update(overrides)
        settings = WorkerSettings(**values)
        bucket = WorkerBucket(self.clients.storage, settings.bucket, settings.prefix, settings.http_tries,
                              settings.retry_base_s, settings.retry_max_s)
        return Worker(settings, bucket, name, self.work / name, signals,
                      delete_self=lambda: self.deleted.append(name), log=self.lines.append)

    def read(self, key: str) -> bytes | None:
        try:
            return bytes(self.bucket.blob(key).download_as_bytes())
        except NotFound:
            return None

    def status(self, task_id: str, attempt: int = 1) -> AttemptStatus | None:
        raw = self.read(f"runs/{RUN}/tasks/{task_id}/{attempt}/status.json")
        return None if raw is None else AttemptStatus.from_json(json.loads(raw))

    def names(self, under: str) -> list[str]:
        prefix = f"runs/{RUN}/{under}"
        return sorted(b.name[len(prefix):] for b in self.clients.storage.list_blobs(self.bucket, prefix=prefix))

    def outputs(self, task_id: str, attempt: int = 1) -> dict[str, bytes]:
        prefix = f"tasks/{task_id}/{attempt}/outputs/"
        return {name: self.read(f"runs/{RUN}/{prefix}{name}") or b"" for name in self.names(prefix)}

    def log(self, task_id: str, stream: str = "stdout") -> str:
        return (self.read(f"runs/{RUN}/tasks/{task_id}/1/{stream}.log") or b"").decode()
