"""The local backend: a pool of worker threads on this machine, each running one attempt at a time.

A worker claims an attempt in the store, runs it through a runtime (process or container),
and writes the attempt's record; it decides nothing. Timeouts are enforced by a timer that
kills the attempt, cancellation by killing every running attempt.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from parallel_engine.backends.base import Finished, OnEvent, PoolFailed, Started
from parallel_engine.errors import BackendError, ParallelEngineError, StoreError
from parallel_engine.model import AttemptState, AttemptStatus, Task
from parallel_engine.protocol import attempt_env
from parallel_engine.runtimes.base import AttemptSpec, ExitStatusLost, RunningAttempt, Runtime
from parallel_engine.store import RunStore


@dataclass
class _Live:
    running: RunningAttempt
    timed_out: bool = False
    timer: threading.Timer | None = None


@dataclass
class LocalPool:
    """At most `quota` attempts at once; `on_event` hears of each start and end (backends/base.py)."""

    store: RunStore
    run_id: str
    runtime: Runtime
    quota: int
    timeout_s: float | None
    on_event: OnEvent
    #: resume: attempts a dead orchestrator's workers claimed and never recorded (their
    #: processes are already stopped): each is recorded `lost` when the pool starts.
    leftovers: tuple[AttemptStatus, ...] = ()
    _pending: "queue.SimpleQueue[tuple[Task, int] | None]" = field(default_factory=queue.SimpleQueue)
    _live: dict[tuple[str, int], _Live] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _cancelled: threading.Event = field(default_factory=threading.Event)
    _failed: threading.Event = field(default_factory=threading.Event)  # a worker hit a fatal error
    _threads: list[threading.Thread] = field(default_factory=list)
    _crash: BaseException | None = None
    _root: str = ""
    _run_folder: str = ""
    _run_identity: tuple[int, int] | None = None

    def start(self) -> None:
        root = self.store.local_path()
        assert root is not None, "the local backend needs a local store"
        self._root = str(root)
        self._run_folder = os.path.join(self._root, "runs", self.run_id)
        self._run_identity = self._folder_identity()
        if self._run_identity is None:
            raise StoreError(f"the run's folder {self._run_folder} does not exist",
                             hint="a run's folders are made when the run is created (RunStore.save_run)")
        for status in self.leftovers:
            self._finish(replace(status), AttemptState.LOST, None, "its orchestrator died while it ran; "
                         "the process was stopped when the run was resumed")
        host = socket.gethostname()
        for index in range(self.quota):
            worker = f"local-{host}-{os.getpid()}-{index}"
            thread = threading.Thread(target=self._work, args=(worker,), name=worker, daemon=True)
            thread.start()
            self._threads.append(thread)

    def submit(self, task: Task, attempt: int) -> None:
        self._pending.put((task, attempt))

    def cancel(self) -> None:
        """Kill every running attempt; pending ones never start."""
        self._cancelled.set()
        with self._lock:
            live = list(self._live.values())
        killers = [threading.Thread(target=item.running.kill) for item in live]
        for killer in killers:
            killer.start()
        for killer in killers:
            killer.join()

    def check(self) -> None:
        """Raise if a worker thread died (its attempt would never report, and the run never end),
        or if the run's folder is gone or cannot be written: long tasks would otherwise run on
        with nowhere to record them, and nobody would know until they end."""
        dead = [thread.name for thread in self._threads if not thread.is_alive()]
        if dead:
            why = f"{type(self._crash).__name__}: {self._crash}" if self._crash else "no reason given"
            raise BackendError(f"local worker {dead[0]} stopped unexpectedly ({why})",
                               hint="this is a bug in parallel-engine: please report it with this line")
        if self._folder_identity() != self._run_identity:  # a stat: cheap enough when idle
            raise StoreError(f"the run's folder {self._run_folder} is gone",
                             hint="the run store was deleted or moved while the run ran: the run stops here")
        if not os.access(self._run_folder, os.W_OK):
            raise StoreError(f"the run's folder {self._run_folder} cannot be written any more "
                             "(read-only, or its permissions changed)",
                             hint="the run stops here: make STORE writable and start the run again")

    def _folder_identity(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self._run_folder)
        except OSError:
            return None
        return stat.st_dev, stat.st_ino

    def close(self) -> None:
        """Stop the workers once they are idle."""
        for _ in self._threads:
            self._pending.put(None)
        for thread in self._threads:
            thread.join()
        self.runtime.close()

    # -- one worker -----------------------------------------------------------------
    def _work(self, worker: str) -> None:
        while True:
            item = self._pending.get()
            if item is None:
                return
            task, attempt = item
            if self._cancelled.is_set() or self._failed.is_set():
                continue
            try:
                if not self.store.claim(self.run_id, task.id, attempt, worker):
                    continue  # someone else runs it
                self._run_attempt(task, attempt, worker)
            except Exception as exc:  # e.g. the store cannot be written: the scheduler must hear of it
                self._failed.set()  # no worker claims anything more: the run is stopping
                self.on_event(PoolFailed(_as_error(exc, worker)))
            except BaseException as exc:  # never expected here; check() turns it into an error
                self._crash = exc
                return

    def _run_attempt(self, task: Task, attempt: int, worker: str) -> None:
        prefix = self.store.attempt_prefix(self.run_id, task.id, attempt)
        folder = os.path.join(self._root, prefix)  # strings: pathlib's parsing is a real cost per attempt
        outputs = os.path.join(folder, "outputs")
        _make_attempt_folders(folder)
        # The claim tells readers "running"; status.json is written once, when the attempt ends.
        status = AttemptStatus(task.id, attempt, AttemptState.RUNNING, started_at=time.time(), worker=worker)
        self.on_event(Started(status))
        spec = AttemptSpec(
            run_id=self.run_id,
            task_id=task.id,
            attempt=attempt,
            argv=task.command if task.command is not None else task.argv,
            command_override=task.command is not None,
            env=attempt_env(self.run_id, task.id, attempt, os.path.abspath(outputs)),
            output_dir=Path(outputs),
            stdout_path=Path(os.path.join(folder, "stdout.log")),
            stderr_path=Path(os.path.join(folder, "stderr.log")),
            timeout_s=self.timeout_s,
        )
        key = (task.id, attempt)
        try:
            running = self.runtime.start(spec)
        except ParallelEngineError as exc:
            self._finish(status, AttemptState.INFRA, None, exc.message)
            return
        except Exception as exc:  # a runtime's bug must still end the attempt, or the run waits forever
            self._finish(status, AttemptState.INFRA, None, f"cannot start: {type(exc).__name__}: {exc}")
            return
        live = _Live(running)
        with self._lock:
            self._live[key] = live
        if self._cancelled.is_set():  # cancelled between claim and start
            running.kill()
        if self.timeout_s is not None:
            live.timer = threading.Timer(self.timeout_s, self._time_out, args=(live,))
            live.timer.daemon = True
            live.timer.start()
        try:
            code = running.wait(None)
        except ExitStatusLost as exc:
            code, lost = None, str(exc)
        else:
            lost = ""
        if live.timer is not None:
            live.timer.cancel()
            live.timer.join()  # a kill under way finishes (its whole tree gone) before the record
        with self._lock:
            del self._live[key]
        if lost:  # never a guess: unknown is not success
            self._finish(status, AttemptState.LOST, None, lost)
        elif running.killed():  # we stopped it while it ran: only then is it a timeout or a cancel
            if live.timed_out:
                self._finish(status, AttemptState.TIMEOUT, code, f"timed out after {self.timeout_s:g} s")
            else:
                self._finish(status, AttemptState.CANCELLED, code, "cancelled: the run was stopped")
        elif code == 0:  # it ended by itself, even if a kill came a moment later: judged by its code
            self._finish(status, AttemptState.SUCCEEDED, 0, "")
        else:
            self._finish(status, AttemptState.FAILED, code, running.exit_reason() or f"exit code {code}")

    def _time_out(self, live: _Live) -> None:
        if self._cancelled.is_set():
            return  # the cancel kills it, and says so
        live.timed_out = True
        live.running.kill()

    def _finish(self, status: AttemptStatus, state: AttemptState, code: int | None, reason: str) -> None:
        status.state = state
        status.exit_code = code
        status.finished_at = time.time()
        status.reason = reason
        self.store.write_status(self.run_id, status)
        self.store.add_event(self.run_id, status)
        self.on_event(Finished(status))


def _as_error(exc: Exception, worker: str) -> ParallelEngineError:
    """An unexpected worker failure as one of ours: a disk error names its path."""
    if isinstance(exc, ParallelEngineError):
        return exc
    if isinstance(exc, FileNotFoundError):
        return StoreError(f"local worker {worker}: cannot write {exc.filename or 'the run store'}: its folder is gone",
                          hint="the run store was deleted or moved while the run ran: the run stops here")
    if isinstance(exc, OSError):
        return StoreError(f"local worker {worker}: cannot write {exc.filename or 'the run store'}: "
                          f"{exc.strerror or exc}", hint="check that the STORE folder is writable and has space")
    return BackendError(f"local worker {worker} failed: {type(exc).__name__}: {exc}")


def _make_attempt_folders(folder: str) -> None:
    """tasks/<id>/<attempt>/outputs: one mkdir per level, no stat walk (short tasks feel each call).
    tasks/ itself was made with the run: if it is gone, so is the store, and this fails."""
    try:
        os.mkdir(os.path.dirname(folder.rstrip("/")))
    except FileExistsError:
        pass
    for path in (folder, os.path.join(folder, "outputs")):
        try:
            os.mkdir(path)
        except FileExistsError:  # never for a fresh claim; harmless if it happens
            pass
