"""`parallel-engine emulator`: run the emulated cloud in the foreground and point a config file at it.

The config file is `.config.yaml` in the working folder when there is none; an existing one is never
overwritten: the emulator then writes `.config.emulator.yaml` beside it and says so.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

from parallel_engine.emulator.cloud import DEFAULT_PROJECT, DEFAULT_ZONE, Emulator

MARKER = "# Written by `parallel-engine emulator`"
FALLBACK_NAME = ".config.emulator.yaml"


def config_values(cloud: Emulator) -> dict[str, str]:
    values = {
        "BACKEND": "gce",
        "PROJECT_ID": cloud.project,
        "ZONE": cloud.zone,
        "BUCKET": cloud.bucket,
        "COMPUTE_ENDPOINT": cloud.compute_endpoint,
        "STORAGE_ENDPOINT": cloud.storage_endpoint,
        "CLOUDBUILD_ENDPOINT": cloud.cloudbuild_endpoint,
    }
    if cloud.registry_host:  # `build` pushes here and VMs pull from here, by digest
        values["REGISTRY"] = f"{cloud.registry_host}/{cloud.project}/parallel-engine"
        values["IMAGE"] = f"{cloud.registry_host}/{cloud.project}/parallel-engine/app:latest"
    return values


def render_config(values: dict[str, str]) -> str:
    lines = [MARKER, "# Points the gce backend at the emulated cloud; valid while the emulator runs."]
    lines += [f"{key}: {json.dumps(value)}" for key, value in values.items()]  # JSON strings are YAML strings
    return "\n".join(lines) + "\n"


def choose_config_path(requested: Path | None, cwd: Path) -> Path:
    """Where to write: the requested or default file unless it exists, else our own fallback file."""
    target = requested if requested is not None else cwd / ".config.yaml"
    if not target.exists():
        return target
    fallback = target.with_name(FALLBACK_NAME)
    n = 1
    while fallback.exists() and not fallback.read_text(errors="replace").startswith(MARKER):
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
    """Start everything, write the config, print where things run, block until Ctrl-C/SIGTERM; 0."""
    out = out or sys.stdout
    stop = stop_event or threading.Event()
    cloud = Emulator(project=project, zone=zone, bucket=bucket, time_scale=time_scale, workdir=workdir,
                     storage_dir=storage_dir, **emulator_options)  # fmt: skip
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
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
        print(f"  Registry     {cloud.registry_host or 'unavailable (apt-get install docker-registry)'}", file=out)
        print("  Metadata     one server per VM on 127.0.0.1 (GCE_METADATA_HOST inside each VM)", file=out)
        print(f"  Work folder  {cloud.workdir} (VM consoles under vms/)", file=out)
        if target != requested:
            print(f"  Config       {requested} exists and was left alone; wrote {target}", file=out)
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
