"""The worker image on gce: built with Cloud Build next to the user's image, pushed beside it,
rebuilt only when its content changes (its tag is a hash of it: parallel_engine/worker/image.py),
its digest recorded in the build record beside the user image's and pinned by `run`."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from parallel_engine.backends.base import InfoFn
from parallel_engine.backends.gce.settings import GceSettings
from parallel_engine.backends.gce.startup import registry_host
from parallel_engine.errors import ConfigError
from parallel_engine.store import RunStore
from parallel_engine.worker import image as worker_image

NAME = "parallel-engine-worker"
CLOUDBUILD = """steps:
  - name: gcr.io/cloud-builders/docker
    args: ["build", "-t", "${_IMAGE}", "worker"]
images:
  - "${_IMAGE}"
"""


def worker_repository(user_image: str, registry: str | None) -> str:
    """Where the worker image goes: REGISTRY when it names a repository (host/...), else the
    user image's own repository, else REGISTRY's host. A Docker Hub IMAGE with no REGISTRY has
    none the VMs could pull a pushed worker image from: a ConfigError naming REGISTRY."""
    if registry and "/" in registry.strip("/"):
        return registry.strip("/")
    head, _, _ = user_image.rpartition("/")
    if registry_host(user_image) is not None:
        return head
    if registry and registry.strip("/"):
        return registry.strip("/")
    raise ConfigError(
        f"IMAGE {user_image} is a Docker Hub image, and REGISTRY is not set: the worker image the VMs "
        "run has nowhere to go beside it",
        hint="set REGISTRY to a repository the VMs can pull from (e.g. europe-west1-docker.pkg.dev/PROJECT/REPO), "
             "then run `parallel-engine build`")


def expected_name(user_image: str, registry: str | None) -> str:
    """The worker image of this version: `<repository>/parallel-engine-worker:worker-<hash>`."""
    return f"{worker_repository(user_image, registry)}/{NAME}:{worker_image.tag()}"


def ensure_built(settings: GceSettings, store: RunStore, user_image: str, say: InfoFn) -> dict[str, str]:
    """{"worker_image": name, "worker_digest": digest}: the recorded build when its content is this
    version's (nothing is built), else a new Cloud Build of it."""
    from parallel_engine.backends.gce.cloud_build import build_gce

    name = expected_name(user_image, settings.config.registry)
    recorded = store.last_build() or {}
    if recorded.get("worker_image") == name and recorded.get("worker_digest"):
        say(f"worker image {name} is up to date ({recorded['worker_digest']})")
        return {"worker_image": name, "worker_digest": str(recorded["worker_digest"])}
    with tempfile.TemporaryDirectory(prefix="pe-worker-image-") as folder:
        context = worker_image.make_context(Path(folder) / "worker")
        cloudbuild = Path(folder) / "cloudbuild.yaml"
        cloudbuild.write_text(CLOUDBUILD)
        say(f"building the worker image {name}")
        digest = build_gce(settings, store, context, cloudbuild, say, image=name)
    return {"worker_image": name, "worker_digest": digest}


def pinned_worker(settings: GceSettings, store: RunStore, user_image: str) -> str:
    """The worker image `run` gives its VMs, pinned by digest: the one `build` recorded for this
    version. None recorded (a build from before the Python worker, or none at all) is a
    ConfigError: the VMs have no other worker to run."""
    recorded: dict[str, Any] = store.last_build() or {}
    name = expected_name(user_image, settings.config.registry)
    if recorded.get("worker_image") != name or not recorded.get("worker_digest"):
        found = f"it names {recorded['worker_image']}" if recorded.get("worker_image") else "it names no worker image"
        raise ConfigError(
            f"no worker image {name} is recorded by `parallel-engine build` in {settings.where} ({found})",
            hint="run `parallel-engine build`: it builds and pushes the worker image the VMs run, beside IMAGE")
    return f"{name.rsplit(':', 1)[0]}@{recorded['worker_digest']}"
