"""The gce backend: workers are Compute Engine VMs, the run store is a bucket, images are built
with Cloud Build. This module is what the registry (backends/base.py) finds: it pins the image,
renders the worker's script, and makes the pool (pool.py); render and down reach the VMs from
any machine."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from parallel_engine.backends.base import Built, InfoFn, OnEvent, Plan
from parallel_engine.backends.gce.capacity import vms_that_fit
from parallel_engine.backends.gce.compute import Compute, delete_run_vms
from parallel_engine.backends.gce.pool import GcePool, ScriptFor, cancel_running
from parallel_engine.backends.gce.settings import GceSettings
from parallel_engine.backends.gce.startup import WorkerSettings, render_startup_script
from parallel_engine.backends.gce.vm import (
    batch_name_pattern,
    bulk_body,
    instance_body,
    instance_properties,
    task_vm_name,
)
from parallel_engine.backends.gce.worker_image import expected_name, pinned_worker
from parallel_engine.config import GCE_DEFAULT_QUOTA, Config
from parallel_engine.doctor import Check, run_checks
from parallel_engine.errors import ConfigError, CredentialsError
from parallel_engine.model import AttemptState, AttemptStatus, Task
from parallel_engine.runtimes.base import Runtime
from parallel_engine.names import label_value
from parallel_engine.store import RunRecord, RunStore


class GceBackend:
    """Compute Engine VMs booted from Container-Optimized OS, results in gs://BUCKET/BUCKET_PREFIX."""

    name: ClassVar[str] = "gce"
    workers_outlive_orchestrator: ClassVar[bool] = True
    busy_time: ClassVar[tuple[str, str]] = (
        "VM-hours running attempts",
        "the sum of attempt durations; VM boot, image pulls and idle VMs are billed but not counted")

    def __init__(self, config: Config) -> None:
        self.settings = GceSettings.of(config)
        self.config = config

    @classmethod
    def check_config(cls, config: Config) -> None:
        GceSettings.of(config)

    @classmethod
    def default_quota(cls) -> int:
        return GCE_DEFAULT_QUOTA

    def open_store(self) -> RunStore:
        from parallel_engine.backends.gce.blobs import GCSBlobs
        from parallel_engine.backends.gce.clients import storage_client

        blobs = GCSBlobs(storage_client(self.config), self.settings.bucket, self.config.bucket_prefix)
        return RunStore(blobs, self.settings.where)

    def existing_store(self) -> RunStore:
        return self.open_store()  # a bucket that does not exist answers so on the first read

    def plan(self, store: RunStore, run_id: str, quota: int, tasks: tuple[Task, ...], say: InfoFn) -> Plan:
        """The images pinned by digest (no worker image recorded by `build` is one clear error
        now), the worker's script rendered once (a bad setting too), and the VM pool (which
        deletes its VMs when it closes)."""
        settings = self.settings
        image = resolve_image(self.config, store)
        # A bad setting first (with the worker image by its tag), then the pinned worker image.
        check_rendering(settings, script_for(settings, run_id, image, expected_name(_image(self.config), self.config.registry)))
        worker = pinned_worker(settings, store, _image(self.config))
        render_script = script_for(settings, run_id, image, worker_image=worker)
        compute = Compute(self.config)
        quota = vms_that_fit(settings, compute.project, quota, say)
        spec = {
            "runtime": "gce",
            "workers": quota,
            "image": image,
            "worker_image": worker,
            "tasks_per_vm": self.config.tasks_per_vm,
            "project": compute.project,
            "zones": settings.zones,
            "machine_type": self.config.machine_type,
            "spot": self.config.spot,
        }

        def make_pool(on_event: OnEvent) -> GcePool:
            return GcePool(settings, store, run_id, compute, render_script, on_event, say, quota)

        return Plan(spec, make_pool)

    def resume(self, store: RunStore, record: RunRecord, running: list[AttemptStatus], say: InfoFn) -> Plan:
        """The run's own images (the digests it pinned), quota and TASKS_PER_VM; the pool adopts the
        run's live VMs by label and settles each attempt whose VM is gone (`GcePool.adopted`)."""
        settings, spec = self.settings, record.spec
        if spec.get("tasks_per_vm", self.config.tasks_per_vm) != self.config.tasks_per_vm:
            raise ConfigError(
                f"run {record.run_id} ran with TASKS_PER_VM={spec.get('tasks_per_vm')}, "
                f"but TASKS_PER_VM is {self.config.tasks_per_vm} ({self.config.origin('TASKS_PER_VM')})",
                hint=f"resume it with --set TASKS_PER_VM={spec.get('tasks_per_vm')}")
        image = str(spec.get("image") or resolve_image(self.config, store))
        # The worker image the run pinned; a run from before the Python worker pinned none: its
        # new VMs get the one `build` recorded (the protocol is the same).
        worker = str(spec.get("worker_image") or pinned_worker(settings, store, _image(self.config)))
        render_script = script_for(settings, record.run_id, image, worker_image=worker)
        compute = Compute(self.config)
        quota = int(spec.get("workers", spec.get("quota", self.config.effective_quota())))  # what fit the quotas
        tasks = {task.id: task for task in record.tasks}
        adopted = tuple((tasks[status.task_id], status) for status in running if status.task_id in tasks)

        def make_pool(on_event: OnEvent) -> GcePool:
            return GcePool(settings, store, record.run_id, compute, render_script, on_event, say, quota,
                           adopted=adopted)

        return Plan(spec, make_pool)

    def reap(self, older_than_s: float, delete: bool) -> list[str]:
        """One line per VM of the project that no run needs any more (backends/gce/reap.py),
        each deleted when `delete`."""
        from concurrent.futures import ThreadPoolExecutor

        from parallel_engine.backends.gce.reap import doomed_vms

        compute = Compute(self.config)
        doomed = doomed_vms(compute, self.open_store(), older_than_s, 3 * self.config.heartbeat)
        if delete:
            with ThreadPoolExecutor(max_workers=16) as pool:
                list(pool.map(lambda vm: compute.delete(vm.zone, vm.name), doomed))
        return [f"{vm.zone}/{vm.name} (run {vm.run_id}): {vm.why}" for vm in doomed]

    def build(self, context: Path, on_line: InfoFn) -> Built:
        """Cloud Build from CONTEXT and the cloudbuild.yaml beside it; the digest is recorded for `run`."""
        import time

        from parallel_engine.backends.gce.cloud_build import build_gce
        from parallel_engine.backends.gce.worker_image import ensure_built

        cloudbuild = context.resolve().parent / "cloudbuild.yaml"
        expected_name(_image(self.config), self.config.registry)  # a worker image with nowhere to go: before any build
        store = self.open_store()
        digest = build_gce(self.settings, store, context, cloudbuild, on_line)
        worker = ensure_built(self.settings, store, _image(self.config), on_line)
        store.save_build({"image": self.config.image, "digest": digest, "at": time.time(), **worker})
        return Built(digest, f"built and pushed {self.config.image}@{digest}; worker "
                             f"{worker['worker_image']}@{worker['worker_digest']}; `parallel-engine run` uses both digests")

    def down(self, run_id: str) -> str:
        """Delete every VM of a run, by label, from any machine, then record `cancelled` for each
        attempt that was running on one."""
        deleted = delete_run_vms(Compute(self.config), run_id)
        store = self.open_store()
        # attempts() read every claim and record once: what it calls running is recorded as it is.
        running = [a for attempts in store.attempts(run_id).values() for a in attempts if a.state is AttemptState.RUNNING]
        cancel_running(store, run_id, running)
        store.delete_tails(run_id)  # no VM is left to append to a log
        return f"deleted {deleted} VM(s); none left"

    def render(self, run_id: str, task: tuple[str, int] | None, vm_request: bool, say: InfoFn) -> str:
        """Exactly what `run` would give a VM: the startup script, or the whole VM request as JSON,
        with IMAGE pinned to the digest `build` recorded (read from the bucket, as `run` does)."""
        settings = self.settings
        image = self._render_image(say)
        script = script_for(settings, run_id, image, worker_image=self._render_worker(say))((task,) if task else None)
        if not vm_request:
            return script
        worker = label_value(task[0]) if task else "reuse"
        properties = instance_properties(self.config, settings.zone, script, run_id, worker)
        if task:
            body = instance_body(properties, task_vm_name(run_id, *task), settings.zone)
        else:
            body = bulk_body(properties, batch_name_pattern(run_id, 1), self.config.effective_quota())
        return json.dumps(body, indent=2, ensure_ascii=False)

    def doctor(self) -> Iterator[Check]:
        from parallel_engine.backends.gce.doctor import CHECKS, Gce

        return run_checks(Gce(self.settings), CHECKS)

    def debug_runtime(self, say: InfoFn) -> Runtime:
        """A container of the image a VM would run (pinned to the digest `build` recorded), pulled
        here with the user's credentials, on the network a VM's container has (the host's: a
        task on a VM reaches its metadata server)."""
        from parallel_engine.backends.gce.registry import pull_image
        from parallel_engine.runtimes.docker import DockerRuntime

        config = self.config
        image = resolve_image(config, self.open_store())
        pull_image(config, image, say)
        return DockerRuntime(image, network=WorkerSettings.docker_network, cpus=config.cpus, memory=config.memory,
                             labels=config.labels)

    def _render_image(self, say: InfoFn) -> str:
        """The image `render` shows: as `run` would pin it, reading the bucket only when IMAGE names
        no digest. Without credentials it is IMAGE as given, and `say` tells what `run` would do."""
        image = _image(self.config)
        if pinned(image):
            return image
        try:
            return resolve_image(self.config, self.open_store())
        except CredentialsError as exc:
            say(f"note: IMAGE {image} is rendered as given: `run` would pin it to the digest of the last "
                f"`parallel-engine build`, which it reads from the bucket with Google credentials ({exc.message})")
            return image


    def _render_worker(self, say: InfoFn) -> str:
        """The worker image `run` would pin (none recorded is `run`'s own error); without
        credentials, this version's worker image by its tag, and `say` tells what `run` would do."""
        try:
            return pinned_worker(self.settings, self.open_store(), _image(self.config))
        except CredentialsError as exc:
            name = expected_name(_image(self.config), self.config.registry)
            say(f"note: the worker image is rendered as {name}: `run` pins the digest `parallel-engine build` "
                f"recorded, which it reads from the bucket with Google credentials ({exc.message})")
            return name


def _image(config: Config) -> str:
    if not config.image:
        raise ConfigError("IMAGE is not set: the VMs need an image to run",
                          hint="set IMAGE (e.g. REGION-docker.pkg.dev/PROJECT/REPO/app:latest) and run `parallel-engine build`")
    return config.image


def pinned(image: str) -> bool:
    """Whether an image reference names a digest (`...@sha256:...`): nothing to look up."""
    return "@" in image.rsplit("/", 1)[-1]


def resolve_image(config: Config, store: RunStore) -> str:
    """IMAGE pinned to the digest `parallel-engine build` recorded for it, else IMAGE as given."""
    image = _image(config)
    if pinned(image):
        return image
    built = store.last_build()
    if built and built.get("image") == image and built.get("digest"):
        return f"{without_tag(image)}@{built['digest']}"
    return image


def without_tag(image: str) -> str:
    """`host:5000/repo/app:tag` → `host:5000/repo/app` (a registry port is not a tag)."""
    head, _, last = image.rpartition("/")
    name = last.split("@", 1)[0].split(":", 1)[0]
    return f"{head}/{name}" if head else name


def script_for(settings: GceSettings, run_id: str, image: str, worker_image: str,
               self_delete: bool = True) -> ScriptFor:
    """A renderer of the startup script of this run's VMs: all its attempts' (reuse), or one's;
    it runs the Python worker in `worker_image`."""
    config = settings.config

    def render(tasks: tuple[tuple[str, int], ...] | None) -> str:
        return render_startup_script(WorkerSettings(
            run_id=run_id,
            bucket=settings.bucket,
            prefix=config.bucket_prefix,
            image=image,
            registry=config.registry,
            storage_endpoint=settings.storage_endpoint,
            compute_endpoint=settings.compute_endpoint,
            pull_policy=config.pull_policy,
            heartbeat_s=config.heartbeat,
            log_interval_s=config.heartbeat,
            task_timeout_s=config.task_timeout,
            tasks=tasks,
            poll_s=config.poll_interval,
            idle_s=3 * config.poll_interval,
            self_delete=self_delete,
            worker_image=worker_image,
        ))

    return render


def check_rendering(settings: GceSettings, render: ScriptFor) -> None:
    """Render a worker's script (and its VM request) once while planning: a bad setting is one clear
    ConfigError before any VM exists or run.json is written, not a monitor failure mid-run."""
    script = render((("check", 1),) if settings.per_task else None)
    instance_properties(settings.config, settings.zone, script, "check", "check")
