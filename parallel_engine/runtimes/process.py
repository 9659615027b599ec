"""Run an attempt as a local process tree, in its own session so it can be killed whole."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

import psutil

from parallel_engine.errors import BackendError
from parallel_engine.runtimes.base import AttemptSpec

KILL_GRACE_S = 2.0


class ProcessAttempt:
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self._lock = threading.Lock()

    def wait(self, timeout: float | None) -> int | None:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return 128 - code if code < 0 else code  # killed by signal N → 128+N, as a shell says

    def exit_reason(self) -> str | None:
        return None

    def kill(self) -> None:
        with self._lock:
            if self.proc.poll() is not None:
                # The leader is gone, but its group may not be: sweep it anyway.
                _signal_group(self.proc.pid, signal.SIGKILL)
                return
            try:
                tree = [self.proc, *psutil.Process(self.proc.pid).children(recursive=True)]
            except psutil.NoSuchProcess:
                tree = [self.proc]
            _signal_group(self.proc.pid, signal.SIGTERM)
            for member in tree[1:]:
                _signal_pid(member.pid, signal.SIGTERM)
            try:
                self.proc.wait(KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
            _signal_group(self.proc.pid, signal.SIGKILL)
            for member in tree[1:]:
                _signal_pid(member.pid, signal.SIGKILL)
            self.proc.wait()
            psutil.wait_procs([m for m in tree[1:] if _exists(m)], timeout=KILL_GRACE_S)


def _exists(member: object) -> bool:
    return isinstance(member, psutil.Process) and member.is_running()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_pid(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class ProcessRuntime:
    """COMMAND + the task's argv as a list: never through a shell."""

    name = "process"

    def __init__(self, command: list[str] | None = None, cwd: Path | None = None) -> None:
        self.command = command or []
        self.cwd = cwd

    def start(self, spec: AttemptSpec) -> ProcessAttempt:
        argv = list(spec.argv) if spec.command_override else [*self.command, *spec.argv]
        if not argv:
            raise BackendError(f"task {spec.task_id}: nothing to run (COMMAND is empty)")
        env = {**os.environ, **spec.env}
        with open(spec.stdout_path, "wb") as out, open(spec.stderr_path, "wb") as err:
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    env=env,
                    cwd=self.cwd,
                    start_new_session=True,
                )
            except OSError as exc:
                raise BackendError(
                    f"task {spec.task_id}: cannot start {argv[0]!r}: {exc.strerror or exc}",
                    hint="check COMMAND (or the task's command) and that the program exists",
                ) from exc
        return ProcessAttempt(proc)

    def close(self) -> None:
        pass


def kill_run_processes(run_id: str) -> int:
    """Kill every process on this machine that belongs to `run_id`; return how many.

    For `down` after the orchestrator died without cleaning up (SIGKILL, OOM): its attempts'
    process trees were reparented and nothing points at them any more, but every one carries
    `PE_RUN_ID` in its environment (a program that clears its environment escapes this).
    Processes we may not inspect are skipped; this process and its ancestors are never touched.
    """
    spared = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    found: list[psutil.Process] = []
    for proc in psutil.process_iter():
        if proc.pid in spared:
            continue
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get("PE_RUN_ID") == run_id:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    for proc in found:
        _signal_pid(proc.pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(found, timeout=KILL_GRACE_S)
    for proc in alive:
        _signal_pid(proc.pid, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=KILL_GRACE_S)
    return len(found)
