"""Pick the runtime for a local run: a container when an engine answers and the image exists,
a process otherwise (RUNTIME: auto), or exactly what the user asked for."""

from __future__ import annotations

from parallel_engine.errors import BackendError, ConfigError
from parallel_engine.runtimes.base import Runtime

RUNTIMES = ("auto", "process", "docker")


def _process(command: list[str] | None) -> Runtime:
    from parallel_engine.runtimes.process import ProcessRuntime

    return ProcessRuntime(command)


def select_runtime(
    runtime: str,
    image: str | None,
    network: str = "none",
    cpus: float | None = None,
    memory: str | None = None,
    command: list[str] | None = None,
    labels: dict[str, str] | None = None,
) -> tuple[Runtime, str]:
    """The runtime to use and a one-line reason to show the user; `labels` (the user's LABELS)
    go on every container beside parallel-engine's own."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"RUNTIME {runtime!r} is unknown", hint=f"use one of: {', '.join(RUNTIMES)}")
    if runtime == "process":
        return _process(command), "process: RUNTIME is process"

    from parallel_engine.runtimes.docker import (
        ENGINE_HINT,
        ENGINE_WAIT_S,
        DockerRuntime,
        engine_available,
        image_exists,
    )

    def docker_runtime(image: str) -> tuple[Runtime, str]:
        return (DockerRuntime(image, network=network, cpus=cpus, memory=memory, labels=labels),
                f"docker: engine answers and image {image} exists")

    if runtime == "docker":
        if not image:
            raise ConfigError("RUNTIME is docker but IMAGE is not set", hint="set IMAGE (and run `parallel-engine build`), or set RUNTIME: process")
        if not engine_available(wait_s=ENGINE_WAIT_S):  # asked for: worth waiting for a busy engine
            raise BackendError("RUNTIME is docker but no Docker engine answers", hint=ENGINE_HINT)
        if not image_exists(image):
            raise BackendError(f"image {image} not found in the Docker engine", hint="run `parallel-engine build` or set IMAGE")
        return docker_runtime(image)

    # auto: one quick probe; a machine without a running engine falls back at once
    if not image:
        return _process(command), "process: IMAGE is not set"
    if not engine_available():
        return _process(command), "process: no Docker engine answers"
    try:
        present = image_exists(image)
    except BackendError:
        return _process(command), "process: the Docker engine answers a ping but not an image query"
    if not present:
        return _process(command), f"process: image {image} not built yet"
    return docker_runtime(image)
