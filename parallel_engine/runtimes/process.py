"""Run an attempt as a local process tree, in its own session so it can be killed whole.

Spawned with `posix_spawnp` (glibc: clone(CLONE_VFORK), no page-table copy) with the GIL
released (runtimes/spawn.py), the child opening its own log files: per attempt this is a
fraction of `subprocess.Popen`'s Python-side cost, which dominated short tasks
(see bench/local_overhead.py).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import TYPE_CHECKING

from parallel_engine.errors import BackendError
from parallel_engine.processes import keep_child_statuses
from parallel_engine.protocol import ENV_RUN_ID
from parallel_engine.runtimes.base import AttemptSpec, ExitStatusLost
from parallel_engine.runtimes.spawn import env_entries, spawn

KILL_GRACE_S = 2.0
REAP_POLL_S = 0.01
LOG_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC  # no O_CLOEXEC: these become fds 1 and 2
RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)

if TYPE_CHECKING:
    import psutil


class ProcessAttempt:
    """One spawned session leader. Only `wait` reaps it; `kill` watches without reaping."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._reaped = False  # a plain flag: an Event per attempt showed in the profile
        self._killed = False
        self._kill_lock = threading.Lock()

    def wait(self, timeout: float | None) -> int | None:
        if timeout is not None and not self._exited_within(timeout):
            return None
        if self.returncode is None:
            try:
                _, status = os.waitpid(self.pid, 0)
            except ChildProcessError:  # reaped by someone else (SIGCHLD ignored?): its status is gone
                self._reaped = True
                raise ExitStatusLost(
                    f"process {self.pid} ended but its exit status could not be read (reaped elsewhere: "
                    "is SIGCHLD ignored?)") from None
            code = os.waitstatus_to_exitcode(status)
            self.returncode = 128 - code if code < 0 else code  # killed by signal N → 128+N, as a shell says
            self._reaped = True
        return self.returncode

    def exit_reason(self) -> str | None:
        return None

    def killed(self) -> bool:
        return self._killed

    def kill(self) -> None:
        import psutil  # only when killing: its import is a real part of a short command's start

        with self._kill_lock:
            if self._exited() or not self._stopped_running():
                # The leader ended by itself, but its group may not be gone: sweep it anyway.
                _signal_group(self.pid, signal.SIGKILL)
                return
            self._killed = True  # decided before any signal that ends it is sent
            try:
                tree = psutil.Process(self.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                tree = []
            for sig in (signal.SIGTERM, signal.SIGCONT):  # SIGTERM first: it acts once resumed
                _signal_group(self.pid, sig)
                for member in tree:
                    _signal_pid(member.pid, sig)
            self._exited_within(KILL_GRACE_S)
            _signal_group(self.pid, signal.SIGKILL)
            for member in tree:
                _signal_pid(member.pid, signal.SIGKILL)
            self._exited_within(None)
            _gone_within(tree, KILL_GRACE_S)

    def _stopped_running(self) -> bool:
        """Freeze the group with SIGSTOP and tell whether the leader was caught still running
        (True) or had exited by itself first (False). This is what makes a kill's verdict exact:
        a stopped process cannot exit on its own, so between this answer and our SIGTERM nothing
        can end it but us."""
        _signal_group(self.pid, signal.SIGSTOP)
        deadline = time.monotonic() + KILL_GRACE_S
        while True:
            try:
                info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WSTOPPED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:  # reaped by `wait`: it had exited
                return False
            if info is not None:
                return info.si_code in (os.CLD_STOPPED, os.CLD_TRAPPED)
            if time.monotonic() >= deadline:  # not stopped yet (e.g. in uninterruptible I/O), not exited
                return True
            time.sleep(REAP_POLL_S / 10)

    def _exited(self) -> bool:
        """Has the leader exited? Looks without reaping (WNOWAIT), so `wait` still gets its code."""
        if self._reaped:
            return True
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    def _exited_within(self, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._exited():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(REAP_POLL_S)
        return True


def _gone_within(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until each process has exited (a zombie has: not every init reaps orphans at once,
    and psutil.wait_procs would wait out its timeout on one); return those still alive."""
    import psutil

    def alive(proc: psutil.Process) -> bool:
        try:
            return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
        except psutil.Error:
            return False

    deadline = time.monotonic() + timeout
    while (procs := [proc for proc in procs if alive(proc)]) and time.monotonic() < deadline:
        time.sleep(REAP_POLL_S)
    return procs


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

    def __init__(self, command: list[str] | None = None) -> None:
        keep_child_statuses()  # each attempt's exit status is read with waitpid
        self.command = command or []
        # Read and encoded once: the per-attempt part is only PE_*.
        self._environ = dict(zip(os.environ, env_entries(os.environ)))

    def start(self, spec: AttemptSpec) -> ProcessAttempt:
        argv = list(spec.argv) if spec.command_override else [*self.command, *spec.argv]
        if not argv:
            raise BackendError(f"task {spec.task_id}: nothing to run (COMMAND is empty)")
        env = [entry for key, entry in self._environ.items() if key not in spec.env] + env_entries(spec.env)
        opens = [
            (0, os.devnull, os.O_RDONLY, 0),
            (1, str(spec.stdout_path), LOG_FLAGS, 0o644),
            (2, str(spec.stderr_path), LOG_FLAGS, 0o644),
        ]
        try:
            # SIGPIPE and SIGXFSZ back to default, as subprocess does: Python ignores them.
            pid = spawn(argv, env, opens, RESET_SIGNALS)
        except OSError as exc:
            raise BackendError(
                f"task {spec.task_id}: cannot start {argv[0]!r}: {exc.strerror or exc}",
                hint="check COMMAND (or the task's command) and that the program exists",
            ) from exc
        except ValueError as exc:  # e.g. an embedded NUL: refused by the task sources, kept as a net
            raise BackendError(f"task {spec.task_id}: cannot start {argv[0]!r}: {exc}") from exc
        return ProcessAttempt(pid)

    def close(self) -> None:
        pass


def run_processes(run_id: str) -> list[psutil.Process]:
    """Every live process on this machine that belongs to `run_id`: each attempt's process tree
    carries `PE_RUN_ID` in its environment (a program that clears its environment escapes this).
    Processes we may not inspect are skipped; this process and its ancestors never count."""
    import psutil

    spared = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    found: list[psutil.Process] = []
    for proc in psutil.process_iter():
        if proc.pid in spared:
            continue
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get(ENV_RUN_ID) == run_id:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return found


def kill_run_processes(run_id: str) -> int:
    """Kill every process on this machine that belongs to `run_id` (run_processes); return how many.

    For `down` after the orchestrator died without cleaning up (SIGKILL, OOM): its attempts'
    process trees were reparented and nothing points at them any more.
    """

    found = run_processes(run_id)
    for proc in found:
        _signal_pid(proc.pid, signal.SIGTERM)
    alive = _gone_within(found, KILL_GRACE_S)
    for proc in alive:
        _signal_pid(proc.pid, signal.SIGKILL)
    _gone_within(alive, KILL_GRACE_S)
    return len(found)
