"""`parallel-engine debug SOURCE --task ID`: one task, in the foreground, exactly as a worker runs it.

In a container, the container is the one the docker runtime would create for the task (its
`container_kwargs`, the runtimes' own spec), turned into a `docker run` line: the same image,
entrypoint, argv (as data: a list, never a shell string), PE_* variables, limits, network and
labels, with the outputs mounted from ./debug/<task>/ (or --outputs). `--print` shows that line
quoted to paste; running it is running that line, on the terminal (a TTY when there is one), so
the program's exit code is debug's own. With the process runtime it is the command line a local
worker would start. The container is removed afterwards, and on Ctrl-C, by its label.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parallel_engine.config import Config
from parallel_engine.errors import BackendError, ParallelEngineError, TaskSourceError
from parallel_engine.model import Task
from parallel_engine.protocol import LABEL_RUN, attempt_env
from parallel_engine.runtimes.base import AttemptSpec, Runtime
from parallel_engine.tasks import load_tasks

#: How many ids an unknown --task error lists.
SHOWN_IDS = 10
#: What `--shell` opens in a container (every image with a shell has /bin/sh).
CONTAINER_SHELL = "/bin/sh"
#: How long a stopped debug waits for its program before killing it.
STOP_GRACE_S = 5.0
#: How often a stopped debug removes its container again while `docker run` has not ended.
REMOVE_EVERY_S = 0.2


@dataclass(frozen=True)
class DebugCommand:
    """What debug runs: `argv` (the `docker run` line, or the program's own), the environment it
    adds (process runtime: the PE_* variables), and the run label that finds its container."""

    runtime: str
    argv: list[str]
    env: dict[str, str]
    outputs: Path
    run_id: str
    image_user: str = ""  # the image's USER: as root, the outputs folder is opened to it as a worker's is

    def printable(self) -> str:
        """The command as one line a shell runs unchanged (environment first, as `env` takes it)."""
        prefix = ["env", *(f"{key}={value}" for key, value in self.env.items())] if self.env else []
        return " ".join(shell_quote(item) for item in [*prefix, *self.argv])


def shell_quote(item: str) -> str:
    """`item` as one word of bash (or zsh): single-quoted, or $'...' when it holds a control
    character (a newline, a CR), which a terminal would act on when the line is pasted."""
    if not any(ord(char) < 32 or char == "\x7f" for char in item):
        return shlex.quote(item)
    named = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    return "$'" + "".join(named.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 32 or char == "\x7f" else char)
                          for char in item) + "'"


def find_task(source: str | Path, task_id: str, config: Config) -> Task:
    """The task `task_id` of SOURCE; one that does not exist is an error naming the file and a few ids."""
    tasks = load_tasks(source, args_template=config.args_template, arg_style=config.arg_style).tasks
    for task in tasks:
        if task.id == task_id:
            return task
    shown = ", ".join(task.id for task in tasks[:SHOWN_IDS]) + (", ..." if len(tasks) > SHOWN_IDS else "")
    raise TaskSourceError(f"{source} has no task {task_id!r} ({len(tasks)} tasks)",
                          hint=f"its ids are: {shown}" if tasks else "the file has no tasks")


def debug_spec(run_id: str, task: Task, outputs: Path) -> AttemptSpec:
    """The attempt a worker would start for `task` (attempt 1), its outputs in `outputs`."""
    return AttemptSpec(
        run_id=run_id,
        task_id=task.id,
        attempt=1,
        argv=task.command if task.command is not None else task.argv,
        command_override=task.command is not None,
        env=attempt_env(run_id, task.id, 1, str(outputs)),
        output_dir=outputs,
        stdout_path=outputs / "stdout.log",  # unused: the program's streams go to the terminal
        stderr_path=outputs / "stderr.log",
        timeout_s=None,
    )


def prepare(config: Config, runtime: Runtime, task: Task, outputs: Path | None,
            shell: bool = False, tty: bool = False) -> DebugCommand:
    """The command that runs `task` as `runtime` would, in the foreground (`shell`: a shell there instead)."""
    folder = (outputs if outputs is not None else Path("debug") / task.id).expanduser().absolute()
    run_id = f"debug-{secrets.token_hex(4)}"
    spec = debug_spec(run_id, task, folder)
    if runtime.name == "docker":
        from parallel_engine.runtimes.docker import DockerRuntime

        assert isinstance(runtime, DockerRuntime)
        kwargs = runtime.container_kwargs(spec)  # the one spec the docker runtime creates
        return DebugCommand("docker", docker_run_argv(kwargs, tty=tty, shell=shell), {}, folder, run_id,
                            runtime.image_user())
    argv = [os.environ.get("SHELL") or "/bin/sh"] if shell else process_argv(config, spec)
    return DebugCommand("process", argv, dict(spec.env), folder, run_id)


def process_argv(config: Config, spec: AttemptSpec) -> list[str]:
    """What the process runtime starts: the task's own command, or COMMAND followed by its argv."""
    argv = list(spec.argv) if spec.command_override else [*config.command_argv(), *spec.argv]
    if not argv:
        raise ParallelEngineError(f"task {spec.task_id}: nothing to run (COMMAND is empty)",
                                  hint="set COMMAND, or give the task a command")
    return argv


#: docker-py's create arguments and the `docker run` option that says the same.
_VALUE_OPTIONS = {"name": "--name", "network_mode": "--network", "mem_limit": "--memory",
                  "memswap_limit": "--memory-swap", "user": "--user"}
#: Arguments debug sets itself: it runs in the foreground, on the terminal, and removes the container.
_OWN = {"detach", "stdin_open", "tty", "auto_remove"}


def docker_run_argv(kwargs: dict[str, Any], tty: bool = False, shell: bool = False) -> list[str]:
    """`docker run` saying exactly what `containers.create(**kwargs)` says, in the foreground.

    An argument this does not know is an error, never dropped: debug would no longer be the
    container a worker runs."""
    unknown = set(kwargs) - {*_VALUE_OPTIONS, *_OWN, "image", "environment", "volumes", "labels",
                             "log_config", "nano_cpus", "entrypoint", "command"}
    if unknown:
        raise BackendError(f"debug cannot say {sorted(unknown)} as `docker run` options",
                           hint="this is a bug in parallel-engine: please report it with this line")
    # --interactive for a shell (it reads the terminal, or a pipe); --tty only on a terminal.
    argv = ["docker", "run", "--rm"] + (["--interactive"] if tty or shell else []) + (["--tty"] if tty else [])
    for key, option in _VALUE_OPTIONS.items():
        if key in kwargs:
            argv += [option, str(kwargs[key])]
    if "nano_cpus" in kwargs:
        argv += ["--cpus", f"{kwargs['nano_cpus'] / 1e9:g}"]
    if "log_config" in kwargs:
        argv += ["--log-driver", kwargs["log_config"]["type"]]
    for key, value in kwargs.get("labels", {}).items():
        argv += ["--label", f"{key}={value}"]
    for key, value in kwargs.get("environment", {}).items():
        argv += ["--env", f"{key}={value}"]
    for host, bind in kwargs.get("volumes", {}).items():
        if ":" in host or "," in host:
            raise ParallelEngineError(f"the outputs folder {host} has ':' or ',' in its path, which `docker run -v` cannot say",
                                      hint="choose another folder with --outputs")
        argv += ["--volume", f"{host}:{bind['bind']}:{bind.get('mode', 'rw')}"]
    entrypoint = [CONTAINER_SHELL] if shell else kwargs.get("entrypoint")
    if entrypoint:
        argv += ["--entrypoint", entrypoint[0]]
    argv.append(str(kwargs["image"]))
    if not shell:
        argv += list(kwargs.get("command") or [])
    return argv


def execute(command: DebugCommand) -> int:
    """Run it on this terminal and return its exit code (128+N for a signal, as a shell says).
    Ctrl-C stops it; a container of this debug run is removed whatever happened."""
    if command.runtime == "docker" and shutil.which("docker") is None:
        raise BackendError("debug runs the container with the `docker` command, which is not on PATH",
                           hint="install the Docker CLI, or run the line `parallel-engine debug --print` shows elsewhere")
    made = _first_missing(command.outputs)  # removed again when the program cannot start
    try:
        command.outputs.mkdir(parents=True, exist_ok=True)
        if command.runtime == "docker":
            from parallel_engine.runtimes.docker import open_outputs_to

            open_outputs_to(command.outputs, command.image_user)  # as the docker runtime does for a worker
    except OSError as exc:
        raise ParallelEngineError(f"cannot make the outputs folder {command.outputs}: {exc.strerror or exc}",
                                  hint="choose another folder with --outputs") from None
    env = {**os.environ, **command.env}
    try:
        child = subprocess.Popen(command.argv, env=env)
    except OSError as exc:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)  # only folders made just now, which nothing wrote to
        raise BackendError(f"cannot start {command.argv[0]!r}: {exc.strerror or exc}",
                           hint="check COMMAND (or the task's command) and that the program exists") from exc
    try:
        code = child.wait()
    except KeyboardInterrupt:
        with _no_more_interrupts():  # a second Ctrl-C must not cut the clean-up short
            _stop(command, child)
        raise
    finally:
        if command.runtime == "docker":
            with _no_more_interrupts():
                _remove_container(command.run_id)
    return 128 - code if code < 0 else code


def _first_missing(folder: Path) -> Path | None:
    """The outermost of `folder` and its parents that does not exist yet (None: it exists)."""
    missing = None
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing = path
    return missing


@contextmanager
def _no_more_interrupts() -> Iterator[None]:
    """SIGINT and SIGTERM ignored for the block (the clean-up), then as they were. Only the main
    thread can set handlers: elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop(command: DebugCommand, child: subprocess.Popen[bytes]) -> None:
    """Ctrl-C (or SIGTERM) reached us: a process gets SIGTERM and a moment before SIGKILL; the
    container is removed, which ends `docker run` -- again until it ends, as `docker run` may
    not have created it yet. Past the grace the client is killed (the caller removes once more)."""
    deadline = time.monotonic() + STOP_GRACE_S
    if command.runtime != "docker":
        child.terminate()
    while True:
        if command.runtime == "docker":
            _remove_container(command.run_id)
        try:
            child.wait(timeout=max(0.0, min(REMOVE_EVERY_S, deadline - time.monotonic())))
            return
        except subprocess.TimeoutExpired:
            if time.monotonic() >= deadline:
                child.kill()
                child.wait()
                return


def _remove_container(run_id: str) -> None:
    from parallel_engine.runtimes.docker import remove_containers

    try:
        remove_containers({LABEL_RUN: run_id})
    except BackendError as exc:
        print(f"warning: could not check that the debug container is gone: {exc.message}", file=sys.stderr)
