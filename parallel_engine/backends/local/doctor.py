"""doctor's checks for the local backend: the Docker engine, IMAGE, the COMMAND's program and script."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from parallel_engine.config import Config
from parallel_engine.doctor import CheckFn, Skip
from parallel_engine.model import Task

Verdict = tuple[bool, str, str]


@dataclass
class Local:
    """What the checks share: the config, the folder runs start from, and whether tasks will run
    in containers (decided as `run` decides it, check by check)."""

    config: Config
    cwd: Path
    engine: bool | None = None
    containers: bool = False

    @property
    def wants_containers(self) -> bool:
        """RUNTIME docker, or auto with IMAGE set: tasks run in containers if the engine and image allow."""
        return self.config.runtime == "docker" or (self.config.runtime == "auto" and bool(self.config.image))

    @property
    def insists(self) -> bool:
        """RUNTIME docker: no falling back to processes."""
        return self.config.runtime == "docker"


def docker_engine(ctx: Local) -> Verdict:
    from parallel_engine.runtimes.docker import ENGINE_HINT, ENGINE_WAIT_S, engine_available

    if not ctx.wants_containers:
        why = "RUNTIME is process" if ctx.config.runtime == "process" else "IMAGE is not set"
        return True, f"not needed: {why}, tasks run as processes", ""
    ctx.engine = engine_available(wait_s=ENGINE_WAIT_S)
    if ctx.engine:
        return True, "answers", ""
    if not ctx.insists:
        return True, "no Docker engine answers: tasks run as processes (RUNTIME auto)", ""
    return False, "no Docker engine answers (RUNTIME is docker)", ENGINE_HINT


def image(ctx: Local) -> Verdict:
    from parallel_engine.runtimes.docker import image_exists

    if not ctx.wants_containers or (not ctx.engine and not ctx.insists):
        return True, "not needed: tasks run as processes", ""
    if not ctx.config.image:
        return False, "RUNTIME is docker but IMAGE is not set", "set IMAGE (and run `parallel-engine build`)"
    if not ctx.engine:
        raise Skip("no Docker engine to ask")
    if image_exists(ctx.config.image):
        ctx.containers = True
        return True, f"{ctx.config.image} is present: tasks run in containers", ""
    if not ctx.insists:
        return True, f"{ctx.config.image} is not built yet: tasks run as processes until `parallel-engine build`", ""
    return False, f"{ctx.config.image} is not in the Docker engine (RUNTIME is docker)", (
        "run `parallel-engine build` (or set IMAGE to an image that exists)")


def command_script(ctx: Local) -> Verdict:
    from parallel_engine.backends.local.backend import check_script

    if ctx.containers:
        return True, "not needed: tasks run in containers", ""
    check_script(ctx.config, (Task("check"),), ctx.cwd)  # raises a ConfigError naming the script
    return True, shlex.join(ctx.config.command_argv()), ""


CHECKS: list[CheckFn[Local]] = [
    CheckFn("Docker engine", docker_engine),
    CheckFn("IMAGE", image),
    CheckFn("COMMAND", command_script),
]
