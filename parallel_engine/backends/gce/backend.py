"""Running on Compute Engine: the image by digest, the worker script, the VM pool, render and down."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from parallel_engine.backends.gce.pool import Compute, GcePool, delete_run_vms
from parallel_engine.config import Config
from parallel_engine.errors import ConfigError, CredentialsError
from parallel_engine.model import AttemptStatus
from parallel_engine.store import RunStore

if TYPE_CHECKING:
    from parallel_engine.api import Plan

DEFAULT_STORAGE = "https://storage.googleapis.com"
DEFAULT_COMPUTE = "https://compute.googleapis.com"
BUILD_RECORD = "builds/latest.json"


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
    import json

    image = _image(config)
    if pinned(image):
        return image
    raw = store.blobs.read(BUILD_RECORD)
    if raw:
        built = json.loads(raw)
        if built.get("image") == image and built.get("digest"):
            return f"{without_tag(image)}@{built['digest']}"
    return image


def without_tag(image: str) -> str:
    """`host:5000/repo/app:tag` → `host:5000/repo/app` (a registry port is not a tag)."""
    head, _, last = image.rpartition("/")
    name = last.split("@", 1)[0].split(":", 1)[0]
    return f"{head}/{name}" if head else name


def script_for(
    config: Config, run_id: str, image: str, self_delete: bool = True
) -> Callable[[tuple[tuple[str, int], ...] | None], str]:
    from parallel_engine.backends.gce.startup import WorkerSettings, render_startup_script

    def render(tasks: tuple[tuple[str, int], ...] | None) -> str:
        assert config.bucket is not None
        return render_startup_script(WorkerSettings(
            run_id=run_id,
            bucket=config.bucket,
            prefix=config.bucket_prefix,
            image=image,
            registry=config.registry,
            storage_endpoint=config.storage_endpoint or DEFAULT_STORAGE,
            compute_endpoint=config.compute_endpoint or DEFAULT_COMPUTE,
            pull_policy=config.pull_policy,
            heartbeat_s=config.heartbeat,
            log_interval_s=config.heartbeat,
            task_timeout_s=config.task_timeout,
            tasks=tasks,
            poll_s=config.poll_interval,
            idle_s=3 * config.poll_interval,
            self_delete=self_delete,
        ))

    return render


def check_rendering(config: Config, render: Callable[[tuple[tuple[str, int], ...] | None], str]) -> None:
    """Render a worker's script (and its VM request) once while planning: a bad setting is one clear
    ConfigError before any VM exists or run.json is written, not a monitor failure mid-run."""
    from parallel_engine.backends.gce.vm import instance_properties

    assert config.zone is not None
    script = render((("check", 1),) if config.tasks_per_vm == 1 else None)
    instance_properties(config, config.zone, script, "check", "check")


def gce_plan(config: Config, store: RunStore, run_id: str, quota: int, say: Callable[[str], None]) -> Plan:
    """The gce part of a run: the image pinned by digest, and the VM pool (which deletes its VMs)."""
    from parallel_engine.api import Plan

    image = resolve_image(config, store)
    render_script = script_for(config, run_id, image)
    check_rendering(config, render_script)
    compute = Compute(config)
    spec = {
        "runtime": "gce",
        "image": image,
        "tasks_per_vm": config.tasks_per_vm,
        "project": compute.project,
        "zones": [config.zone, *config.fallback_zones],
    }

    def make_pool(on_event: Callable[[str, AttemptStatus], None]) -> GcePool:
        return GcePool(config, store, run_id, compute, render_script, on_event, say, quota)

    return Plan(spec, make_pool)


def render_image(config: Config, say: Callable[[str], None]) -> str:
    """The image `render` shows: as `run` would pin it, reading the bucket only when IMAGE names
    no digest. Without credentials it is IMAGE as given, and `say` tells what `run` would do."""
    from parallel_engine.api import open_store

    image = _image(config)
    if pinned(image):
        return image
    try:
        return resolve_image(config, open_store(config))
    except CredentialsError as exc:
        say(f"note: IMAGE {image} is rendered as given: `run` would pin it to the digest of the last "
            f"`parallel-engine build`, which it reads from the bucket with Google credentials ({exc.message})")
        return image


def render(config: Config, run_id: str, task: tuple[str, int] | None, vm_request: bool,
           say: Callable[[str], None] = lambda line: None) -> str:
    """Exactly what `run` would give a VM: the startup script, or the whole VM request as JSON,
    with IMAGE pinned to the digest `build` recorded (read from the bucket, as `run` does)."""
    import json

    from parallel_engine.backends.gce.vm import bulk_body, instance_body, instance_properties
    from parallel_engine.names import gce_name, label_value

    assert config.zone is not None
    image = render_image(config, say)
    script = script_for(config, run_id, image)((task,) if task else None)
    if not vm_request:
        return script
    worker = label_value(task[0]) if task else "reuse"
    properties = instance_properties(config, config.zone, script, run_id, worker)
    if task:
        body = instance_body(properties, gce_name("pe", run_id, task[0], str(task[1])), config.zone)
    else:
        body = bulk_body(properties, gce_name("pe", run_id, "b1") + "-###", config.effective_quota())
    return json.dumps(body, indent=2, ensure_ascii=False)


def down(config: Config, run_id: str) -> int:
    """Delete every VM of a run, by label, from any machine, then record `cancelled` for each
    attempt that was running on one; returns how many VMs were deleted."""
    from parallel_engine.api import open_store
    from parallel_engine.backends.gce.pool import cancel_running
    from parallel_engine.model import AttemptState

    assert config.zone is not None
    deleted = delete_run_vms(Compute(config), run_id)
    store = open_store(config)
    # attempts() read every claim and record once: what it calls running is recorded as it is.
    running = [a for attempts in store.attempts(run_id).values() for a in attempts if a.state is AttemptState.RUNNING]
    cancel_running(store, run_id, running)
    return deleted
