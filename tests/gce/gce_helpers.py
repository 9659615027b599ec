"""What the gce backend's tests share: a config pointed at an emulator, runs in a thread with a
deadline, and looks at the emulated cloud."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import parallel_engine as pe
from parallel_engine.backends.gce.compute import Compute
from parallel_engine.config import Config, load_config
from parallel_engine.emulator import Emulator
from parallel_engine.protocol import claim_key
from tests.emulator.emulator_helpers import wait_for


# The task of the resume tests (test_gce_resume.py, test_gce_signal_at_random.py). Writes
# "task <n>" three times to out.txt; "fail" fails its first attempt; "hold" makes its first
# attempt wait (up to 120 s) for a file GO in its output folder, which the test creates once
# `resume` said it adopted that running attempt: a VM still runs it when `resume` takes over.
GO = "go"
TASK = (
    "import os, sys, time\n"
    "out = os.environ['PE_OUTPUT_DIR']\n"
    "if sys.argv[2] == 'fail' and os.environ['PE_ATTEMPT'] == '1': sys.exit(3)\n"
    "if sys.argv[2] == 'hold' and os.environ['PE_ATTEMPT'] == '1':\n"
    "    deadline = time.time() + 120\n"
    f"    while not os.path.exists(os.path.join(out, {GO!r})):\n"
    "        if time.time() > deadline: sys.exit(9)\n"
    "        time.sleep(0.05)\n"
    f"    os.remove(os.path.join(out, {GO!r}))\n"
    "open(os.path.join(out, 'out.txt'), 'w').write(f'task {sys.argv[1]}\\n' * 3)\n"
)
TASK_IDS = ("t1", "t2", "t3", "t4")

WORKER_NAME = "parallel-engine-worker"


@dataclass
class PinnedWorker:
    """The worker image the gce tests' runs pin (set once per session by tests/gce/conftest.py):
    under REGISTRY `registry`, by `digest`."""

    registry: str = ""
    digest: str = ""

    def record(self) -> dict[str, str]:
        """The worker's part of the build record `parallel-engine build` leaves."""
        from parallel_engine.worker.image import tag

        return {"worker_image": f"{self.registry}/{WORKER_NAME}:{tag()}", "worker_digest": self.digest}


PINNED = PinnedWorker()


@dataclass
class ExampleRun:
    """The example's code/params.csv (12 tasks) run on 3 reuse VMs of its own emulator (the
    session fixture example_run_on_reuse_vms of tests/gce/conftest.py)."""

    cloud: Emulator
    image: str
    run: pe.Run


def save_build(cloud: Emulator, record: dict[str, Any]) -> None:
    """Record a build in the emulated bucket as `build` does: `record` plus the pinned worker."""
    from parallel_engine.api import open_store

    open_store(config_for(cloud, "x")).save_build({**PINNED.record(), **record})


def settings(cloud: Emulator, image: str, **extra: Any) -> dict[str, Any]:
    """A gce config on the emulator; REGISTRY is where the pinned worker image is (PINNED)."""
    return {
        "BACKEND": "gce", "REGISTRY": PINNED.registry, "PROJECT_ID": cloud.project, "ZONE": cloud.zone, "BUCKET": cloud.bucket,
        "COMPUTE_ENDPOINT": cloud.compute_endpoint, "STORAGE_ENDPOINT": cloud.storage_endpoint,
        "CREDENTIALS_FILE": str(cloud.credentials_file), "TOKEN_URI": cloud.token_uri,
        "IMAGE": image, "PULL_POLICY": "if-missing", "HEARTBEAT": 0.5, "POLL_INTERVAL": 0.2,
        # Generous: VMs starting worker containers at once on a loaded 2-core machine are slow to
        # report. The tests of the "never reported" path set it short themselves.
        "BOOT_TIMEOUT": 60, **extra,
    }


def config_for(cloud: Emulator, image: str, **extra: Any) -> Config:
    return load_config(None, flags=settings(cloud, image, **extra), environ={})


def run_vms(cloud: Emulator, run_id: str) -> list[str]:
    config = config_for(cloud, "x")
    return list(Compute(config).list_run(cloud.zone, run_id))


class BackgroundRun:
    """pe.run in a thread, with a deadline counted from its start: a run that would hang (until
    maxRunDuration) fails the test instead. `outcome()` raises when the deadline passes; leaving
    the `with` block cancels a run the test did not wait for (it failed before asking)."""

    def __init__(self, source: Path, config: Config, timeout: float = 120) -> None:
        self.timeout = timeout
        self._deadline = time.monotonic() + timeout
        self._box: dict[str, Any] = {}
        self._cancel = threading.Event()
        self._runner = threading.Thread(target=self._target, args=(source, config), daemon=True)
        self._runner.start()

    def _target(self, source: Path, config: Config) -> None:
        try:
            self._box["run"] = pe.run(source, config=config, cancel=self._cancel)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self._box["error"] = exc

    def outcome(self) -> tuple[Any, BaseException | None]:
        """(the run, None) or (None, what pe.run raised); AssertionError past the deadline."""
        self._runner.join(max(0.0, self._deadline - time.monotonic()))
        if self._runner.is_alive():
            self._stop()
            raise AssertionError(f"the run did not end within {self.timeout:g} s")
        return self._box.get("run"), self._box.get("error")

    def _stop(self) -> None:
        self._cancel.set()
        self._runner.join(60)

    def __enter__(self) -> BackgroundRun:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner.is_alive():
            self._stop()


def run_in_thread(source: Path, config: Config, timeout: float = 120) -> tuple[Any, BaseException | None]:
    """pe.run with a deadline (BackgroundRun), waited for at once."""
    with BackgroundRun(source, config, timeout) as started:
        return started.outcome()


def first_claim_holder(store: Any, task_id: str, timeout: float = 60) -> tuple[str, str]:
    """(run id, VM name) once attempt 1 of `task_id` is claimed."""

    def claimed() -> tuple[str, str] | None:
        for run_id in store.run_ids():
            holder = store.blobs.read(claim_key(run_id, task_id, 1))
            if holder:
                return run_id, holder.decode()
        return None

    return wait_for(claimed, timeout=timeout, what=f"{task_id}.1 to be claimed")
