"""`python -m parallel_engine.worker SETTINGS.json`: the VM worker (docs/worker-protocol.md).

SETTINGS.json holds the fields of WorkerSettings as JSON (data, never code). The VM's identity,
token and preemption come from its metadata server; Storage through google-cloud-storage; the
task containers through the Docker engine DOCKER_HOST names (else /var/run/docker.sock).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import fields
from pathlib import Path
from typing import Any

from parallel_engine.backends.gce.startup import WorkerSettings


def load_settings(text: str) -> WorkerSettings:
    """WorkerSettings from JSON; lists become the tuples the dataclass holds; unknown keys refused."""
    data: dict[str, Any] = json.loads(text)
    known = {f.name for f in fields(WorkerSettings)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown worker settings: {', '.join(unknown)}")
    if data.get("tasks") is not None:
        data["tasks"] = tuple((str(task), int(attempt)) for task, attempt in data["tasks"])
    return WorkerSettings(**data)


def registry_auth(settings: WorkerSettings, creds: Any) -> dict[str, str] | None:
    """The VM's token as docker-credential-gcr hands it to docker, for the registries it serves."""
    from google.auth.transport.requests import Request

    from parallel_engine.backends.gce.startup import credential_hosts, registry_host

    if registry_host(settings.image) not in credential_hosts(settings.image, settings.registry):
        return None
    if not creds.valid:
        creds.refresh(Request())
    return {"username": "oauth2accesstoken", "password": str(creds.token)}


def log(message: str) -> None:
    """A line on stderr and, when PE_WORKER_LOG names a file, there too (the start-up script
    follows it onto the VM's console: it outlives the container's own log stream at shutdown)."""
    line = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} parallel-engine-worker: {message}\n"
    sys.stderr.write(line)
    sys.stderr.flush()
    copy = os.environ.get("PE_WORKER_LOG")
    if copy:
        with open(copy, "a", encoding="utf-8", errors="replace") as out:
            out.write(line)


def main(argv: list[str]) -> int:
    from parallel_engine.gcs_client import storage_client
    from parallel_engine.worker import metadata
    from parallel_engine.worker.bucket import WorkerBucket
    from parallel_engine.worker.loop import Signals, Worker

    settings = load_settings(Path(argv[0]).read_text() if argv else os.environ["PE_WORKER_SETTINGS"])
    signals = Signals(preempted_now=metadata.preempted_now)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: signals.terminating.set())
    name = metadata.get("instance/name")
    creds = metadata.credentials(log)
    stop_watch = threading.Event()
    threading.Thread(target=metadata.watch_preemption, args=(signals.preempted, stop_watch), daemon=True).start()
    client = storage_client(project="-", credentials=creds, client_options={"api_endpoint": settings.storage_endpoint})
    bucket = WorkerBucket(client, settings.bucket, settings.prefix, settings.http_tries,
                          settings.retry_base_s, settings.retry_max_s)
    base = os.environ.get("TMPDIR") or settings.work_dir or None
    if base:
        Path(base).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="worker.", dir=base))
    worker = Worker(settings, bucket, name, work, signals,
                    delete_self=lambda: metadata.delete_own_vm(settings.compute_endpoint, name, creds),
                    env=dict(os.environ), log=log, registry_auth=lambda: registry_auth(settings, creds))
    log(f"run {settings.run_id}, image {settings.image}, store gs://{settings.bucket}/{settings.prefix}, work folder {work}")
    try:
        worker.run()
        return 0
    except Exception:  # noqa: BLE001 - a worker that dies must not leave its VM idling
        log("the worker stopped unexpectedly:\n" + traceback.format_exc())
        if settings.self_delete and not signals.terminating.is_set():
            try:
                metadata.delete_own_vm(settings.compute_endpoint, name, creds)
            except Exception as exc:  # noqa: BLE001 - maxRunDuration is the net
                log(f"self-delete failed ({exc}): maxRunDuration will delete this VM")
        return 1
    finally:
        stop_watch.set()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
