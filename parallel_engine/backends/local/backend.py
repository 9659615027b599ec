"""The local backend: workers are threads of the orchestrator, each running an attempt at a time
as a process or a container (parallel_engine/runtimes/), recorded in a folder on this machine."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from parallel_engine.backends.base import Built, InfoFn, OnEvent, Plan
from parallel_engine.backends.local.pool import LocalPool
from parallel_engine.config import Config
from parallel_engine.doctor import Check, run_checks
from parallel_engine.errors import BackendError, ConfigError, ParallelEngineError, StoreError
from parallel_engine.model import AttemptStatus, Task
from parallel_engine.runtimes.base import Runtime
from parallel_engine.runtimes.select import select_runtime
from parallel_engine.store import RunRecord, RunStore, local_store

_PYTHON = re.compile(r"python[0-9.]*")


class LocalBackend:
    """This machine: processes, or containers when a Docker engine answers and IMAGE exists."""

    name: ClassVar[str] = "local"
    workers_outlive_orchestrator: ClassVar[bool] = False
    busy_time: ClassVar[tuple[str, str]] = (
        "slot-hours running attempts", "the sum of attempt durations: time the local slots were busy, not CPU time")

    def __init__(self, config: Config) -> None:
        self.config = config

    @classmethod
    def check_config(cls, config: Config) -> None:
        """Nothing is required: every key has a local default."""

    @classmethod
    def default_quota(cls) -> int:
        return max(1, os.cpu_count() or 1)

    def _root(self) -> Path:
        return Path(self.config.store).expanduser().resolve()

    def open_store(self) -> RunStore:
        return local_store(self._root())

    def existing_store(self) -> RunStore:
        """A STORE folder that does not exist is an error (a mistyped --store, or a command run
        from another folder), never an empty store."""
        root = self._root()
        if not root.is_dir():
            what = "is a file, not a folder" if root.exists() else "does not exist"
            raise StoreError(
                f"no run store at {root} (STORE, {self.config.origin('STORE')}): {what}",
                hint="a store is made by `parallel-engine run` in the folder it runs from (STORE, "
                "default .parallel-engine): run this command there, or give the store with --store",
            )
        return self.open_store()

    def _runtime(self, say: InfoFn) -> Runtime:
        config = self.config
        runtime, reason = select_runtime(
            config.runtime, config.image, network=config.docker_network, cpus=config.cpus,
            memory=config.memory, command=config.command_argv(), labels=config.labels,
        )
        say(f"runtime: {reason}")
        return runtime

    def doctor(self) -> Iterator[Check]:
        from parallel_engine.backends.local.doctor import CHECKS, Local

        return run_checks(Local(self.config, Path.cwd()), CHECKS)

    def debug_runtime(self, say: InfoFn) -> Runtime:
        """The runtime `run` would pick here (RUNTIME, IMAGE, the engine): debug runs the task in it."""
        return self._runtime(say)

    def plan(self, store: RunStore, run_id: str, quota: int, tasks: tuple[Task, ...], say: InfoFn) -> Plan:
        config = self.config
        runtime = self._runtime(say)
        if runtime.name == "process":
            check_script(config, tasks, Path.cwd())
        spec = {
            "runtime": runtime.name,
            "command": config.command_argv() if runtime.name == "process" else None,
            "image": config.image if runtime.name == "docker" else None,
        }
        return _plan(spec, store, run_id, runtime, quota, config.task_timeout, ())

    def resume(self, store: RunStore, record: RunRecord, running: list[AttemptStatus], say: InfoFn) -> Plan:
        """The run's own runtime, command or image, quota and timeout. What its dead orchestrator
        left running here is stopped first (containers by label, processes by PE_RUN_ID, as
        `down` does): nobody can read those attempts' exit statuses any more, so the pool records
        each as `lost` and the scheduler retries it within PREEMPTION_RETRIES."""
        from parallel_engine.runtimes.process import kill_run_processes

        config, spec = self.config, record.spec
        runtime, reason = select_runtime(
            str(spec.get("runtime", "process")), spec.get("image"), network=config.docker_network, cpus=config.cpus,
            memory=config.memory, command=spec.get("command") or config.command_argv(), labels=config.labels,
        )
        say(f"runtime: {reason}")
        if spec.get("runtime") == "docker":
            _sweep_containers(record.run_id)
        stopped = kill_run_processes(record.run_id)
        if stopped or running:
            say(f"stopped {stopped} process(es) left by the run's last orchestrator; "
                f"{len(running)} attempt(s) it ran are recorded lost")
        quota = int(spec.get("quota", self.default_quota()))
        timeout = spec.get("task_timeout")
        return _plan(spec, store, record.run_id, runtime, quota, None if timeout is None else float(timeout),
                     tuple(running))

    def build(self, context: Path, on_line: InfoFn) -> Built:
        """Build CONTEXT (honouring .dockerignore) into IMAGE with the local Docker engine."""
        from parallel_engine.backends.local.build import build_local

        image = self.config.image
        if not image:
            raise ConfigError(
                "IMAGE is not set: `build` needs the tag to build",
                hint="set IMAGE in .config.yaml (e.g. IMAGE: my-job:latest), or pass --image",
            )
        built = build_local(context, image, on_line)
        return Built(built, f"built {image} ({built}); `parallel-engine run` now runs it in containers")

    def down(self, run_id: str) -> str:
        """Remove what a local run left on this machine after its orchestrator died without
        cleaning up (SIGKILL, an OOM kill): its containers, by label, and its processes.

        Refused while the run's orchestrator still runs here: it would retry what `down` kills.
        """
        from parallel_engine.protocol import LABEL_RUN
        from parallel_engine.results import run_status
        from parallel_engine.runtimes.docker import ENGINE_WAIT_S, engine_available, remove_containers
        from parallel_engine.runtimes.process import kill_run_processes

        store = self.existing_store()
        record = store.load_run(run_id)  # raises RunNotFoundError with a hint
        owner = record.spec.get("orchestrator", {})
        if run_status(store, run_id).run_state == "running" and owner.get("host") == socket.gethostname():
            raise ParallelEngineError(
                f"run {run_id} is still running here (orchestrator pid {owner.get('pid')})",
                hint=f"stop it with Ctrl-C or `kill -TERM {owner.get('pid')}`: it removes its containers "
                     f"and processes itself; `parallel-engine down {run_id}` is for what a killed run left",
            )
        containers = 0
        if engine_available(wait_s=ENGINE_WAIT_S if record.spec.get("runtime") == "docker" else 0.0):
            containers = remove_containers({LABEL_RUN: run_id})
        elif record.spec.get("runtime") == "docker":
            raise BackendError(
                f"cannot remove the containers of run {run_id}: no Docker engine answers",
                hint="start the Docker engine the run used, then run `parallel-engine down` again",
            )
        processes = kill_run_processes(run_id)
        return f"removed {containers} container(s) and {processes} process(es)"

    def reap(self, older_than_s: float, delete: bool) -> list[str]:
        raise ParallelEngineError(
            "reap deletes leaked gce VMs, but BACKEND is local",
            hint="locally, `parallel-engine down RUN` (or `cancel RUN`) removes what a killed run left")

    def render(self, run_id: str, task: tuple[str, int] | None, vm_request: bool, say: InfoFn) -> str:
        raise ParallelEngineError(
            "render shows what a gce VM runs, but BACKEND is local",
            hint="set BACKEND: gce (with PROJECT_ID, ZONE, BUCKET, IMAGE), or pass --set BACKEND=gce ...",
        )


def _plan(spec: dict[str, Any], store: RunStore, run_id: str, runtime: Runtime, quota: int,
          timeout: float | None, leftovers: tuple[AttemptStatus, ...]) -> Plan:
    def make_pool(on_event: OnEvent) -> LocalPool:
        return LocalPool(store, run_id, runtime, quota, timeout, on_event, leftovers)

    if runtime.name != "docker":
        return Plan(spec, make_pool)
    return Plan(spec, make_pool, lambda: _sweep_containers(run_id))


def _sweep_containers(run_id: str) -> None:
    """A net under cancellation: no container of this run outlives it, whatever happened."""
    from parallel_engine.protocol import LABEL_RUN
    from parallel_engine.runtimes.docker import remove_containers

    remove_containers({LABEL_RUN: run_id})


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def check_script(config: Config, tasks: tuple[Task, ...], cwd: Path) -> None:
    """Refuse a run whose COMMAND's program does not exist, or is `python <script>.py` with no such
    script: otherwise every task fails alike ("cannot start", "can't open file": e.g. the default
    code/main.py, run from elsewhere)."""
    argv = config.command_argv()
    if not argv or all(task.command is not None for task in tasks):
        return  # no task runs COMMAND
    program = argv[0]
    if not (_executable(cwd / program) if "/" in program else shutil.which(program)):
        raise ConfigError(
            f"COMMAND ({config.origin('COMMAND')}: {shlex.join(argv)}) runs {program}, which "
            + ("is not an executable file" if "/" in program else "is not on PATH"),
            hint="install it, or set COMMAND with the program's full path (--command, or COMMAND in .config.yaml)")
    if len(argv) < 2 or not _PYTHON.fullmatch(Path(argv[0]).name) or not argv[1].endswith(".py"):
        return
    if (cwd / argv[1]).is_file():
        return  # the script is there
    where = "" if Path(argv[1]).is_absolute() else f" in the working directory {cwd}"
    raise ConfigError(
        f"COMMAND ({config.origin('COMMAND')}: {shlex.join(argv)}) runs {argv[1]}, "
        f"but there is no such file{where}",
        hint="run from the folder that holds it (the repository root for code/main.py), "
        "or set COMMAND with the script's full path (--command, or COMMAND in .config.yaml)",
    )
