"""`parallel-engine emulator`: run the emulated cloud in the foreground and point a config file at it.

The config file is `.config.yaml` in the working folder when there is none, or when the one there
was written by an emulator that is no longer running (it would point at dead ports). A user's file,
or the file of an emulator still running, is never overwritten: the emulator then writes
`.config.emulator.yaml` beside it and says how to use that file.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

import psutil

from parallel_engine.emulator.cloud import DEFAULT_PROJECT, DEFAULT_ZONE, Emulator

MARKER = "# Written by `parallel-engine emulator`"
FALLBACK_NAME = ".config.emulator.yaml"
CONFIG_ENV = "PARALLEL_ENGINE_CONFIG"  # the orchestrator reads the config file this names
_WRITER = re.compile(r"\(pid (\d+)\)")


def config_values(cloud: Emulator) -> dict[str, str]:
    values = {
        "BACKEND": "gce",
        "PROJECT_ID": cloud.project,
        "ZONE": cloud.zone,
        "BUCKET": cloud.bucket,
        "COMPUTE_ENDPOINT": cloud.compute_endpoint,
        "STORAGE_ENDPOINT": cloud.storage_endpoint,
        "CLOUDBUILD_ENDPOINT": cloud.cloudbuild_endpoint,
        "IAM_ENDPOINT": cloud.iam_endpoint,  # what a pre-flight check reads: service accounts, roles
        "RESOURCEMANAGER_ENDPOINT": cloud.resourcemanager_endpoint,  # the project, its IAM policy
        "SERVICEUSAGE_ENDPOINT": cloud.serviceusage_endpoint,  # which APIs are enabled
        "CREDENTIALS_FILE": str(cloud.credentials_file),  # an ADC file, as gcloud writes it
        "TOKEN_URI": cloud.token_uri,  # where it refreshes: google-auth ignores an ADC file's own token_uri
    }
    if cloud.registry_host:  # `build` pushes here and VMs pull from here, by digest
        values["REGISTRY"] = f"{cloud.registry_host}/{cloud.project}/parallel-engine"
        values["IMAGE"] = f"{cloud.registry_host}/{cloud.project}/parallel-engine/app:latest"
    return values


def render_config(values: dict[str, str], pid: int | None = None) -> str:
    first = MARKER + f" (pid {pid if pid is not None else os.getpid()})"
    lines = [first, "# Points the gce backend at the emulated cloud; valid while the emulator runs."]
    lines += [f"{key}: {json.dumps(value)}" for key, value in values.items()]  # JSON strings are YAML strings
    return "\n".join(lines) + "\n"


def _replaceable(path: Path) -> bool:
    """Whether `path` may be written: absent, or written by an emulator that is not running any more."""
    if not path.exists():
        return True
    try:
        first = path.read_text(errors="replace").split("\n", 1)[0]
    except OSError:
        return False
    if not first.startswith(MARKER):
        return False  # the user's file
    writer = _WRITER.search(first)
    if writer is None:
        return True  # ours, from before the pid was written down
    pid = int(writer.group(1))
    return pid != os.getpid() and not _emulator_alive(pid)


def _emulator_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def choose_config_path(requested: Path | None, cwd: Path) -> Path:
    """Where to write: the requested or default file if absent or stale, else our own fallback file."""
    target = requested if requested is not None else cwd / ".config.yaml"
    if _replaceable(target):
        return target
    fallback = target.with_name(FALLBACK_NAME)
    n = 1
    while not _replaceable(fallback):
        n += 1
        fallback = target.with_name(f".config.emulator-{n}.yaml")
    return fallback


def serve(
    config_path: Path | None = None,
    time_scale: float = 1.0,
    project: str = DEFAULT_PROJECT,
    zone: str = DEFAULT_ZONE,
    bucket: str | None = None,
    workdir: Path | None = None,
    storage_dir: Path | None = None,
    cwd: Path | None = None,
    out: TextIO | None = None,
    stop_event: threading.Event | None = None,
    **emulator_options: Any,
) -> int:
    """Start everything, write the config, print where things run, block until Ctrl-C/SIGTERM/SIGHUP; 0."""
    out = out or sys.stdout
    stop = stop_event or threading.Event()
    cloud = Emulator(project=project, zone=zone, bucket=bucket, time_scale=time_scale, workdir=workdir,
                     storage_dir=storage_dir, **emulator_options)  # fmt: skip
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: its terminal was closed
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        cloud.start()
        target = choose_config_path(config_path, cwd or Path.cwd())
        target.write_text(render_config(config_values(cloud)))
        requested = config_path if config_path is not None else (cwd or Path.cwd()) / ".config.yaml"
        print(f"parallel-engine emulated cloud (time scale {cloud.time_scale:g})", file=out)
        print(
            f"  Compute      {cloud.compute_endpoint}/compute/v1   control API: {cloud.compute_endpoint}/emulator/v1/",
            file=out,
        )
        print(f"  Storage      {cloud.storage_endpoint}   (fake-gcs-server behind a counting proxy)", file=out)
        print(
            f"  Project      {cloud.project} (number {cloud.project_number}), zone {cloud.zone}, bucket {cloud.bucket}",
            file=out,
        )
        print(f"  Cloud Build  {cloud.cloudbuild_endpoint}/v1", file=out)
        print(f"  IAM          {cloud.iam_endpoint}/v1   Resource Manager {cloud.resourcemanager_endpoint}/v1 (v3)   "
              f"Service Usage {cloud.serviceusage_endpoint}/v1", file=out)  # fmt: skip
        print(f"  Registry     {cloud.registry_host or 'unavailable (apt-get install docker-registry)'}", file=out)
        print(f"  OAuth        {cloud.token_uri}   credentials: {cloud.credentials_file}", file=out)
        print("  Metadata     one server per VM on 127.0.0.1 (GCE_METADATA_HOST inside each VM)", file=out)
        print(f"  Work folder  {cloud.workdir} (VM consoles under vms/)", file=out)
        if target != requested:
            print(f"  Config       {requested} exists and was left alone; wrote {target}", file=out)
            print(f"               use it: parallel-engine run --config {target}   (or export {CONFIG_ENV}={target})",
                  file=out)  # fmt: skip
        else:
            print(f"  Config       wrote {target}", file=out)
        print("Press Ctrl-C to stop (VMs, containers and servers are stopped with it).", file=out, flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        cloud.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print("Emulated cloud stopped.", file=out, flush=True)
    return 0
