"""The VM worker: pick attempts, run each in a container, write what docs/worker-protocol.md says.

The container's lifecycle (labels, argv as data, PE_* env, outputs mount, log following, exit
code, OOM reason, "did our kill stop it?") is the local docker runtime's own (runtimes/docker.py):
this module only adds what a VM needs around it (claims, heartbeat, preemption, the bucket).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from parallel_engine.backends.gce.startup import WorkerSettings
from parallel_engine.errors import BackendError
from parallel_engine.model import AttemptState, AttemptStatus
from parallel_engine.nofollow import walk
from parallel_engine.protocol import (
    ARGV,
    COMMAND,
    CONTAINER_OUTPUT_DIR,
    EVENTS,
    HEARTBEAT,
    OUTPUTS,
    SKIPPED,
    STATUS_JSON,
    STDERR_LOG,
    STDOUT_LOG,
    WORKERS,
    attempt_env,
    attempt_prefix,
    decode_argv,
    event_name,
    parse_attempt,
    run_prefix,
    tail_key,
)
from parallel_engine.runtimes.base import AttemptSpec
from parallel_engine.runtimes.docker import DockerAttempt, DockerRuntime, image_exists
from parallel_engine.worker.bucket import WorkerBucket
from parallel_engine.worker.logs import LiveLog

SPREAD = 8  # after a refused claim, the next try is drawn from this many free names
TICK_S = 0.05  # how often a running attempt's deadline, preemption and logs are looked at
REASON_MAX = 2000
REMOVAL_WAIT_S = 30.0  # at exit, for the last attempt's container removal
FORWARDED_ENV = ("GCE_METADATA_HOST", "GCE_METADATA_IP")  # tasks call Google as the VM's account


def shown(name: str) -> str:
    """A file name as one printable token (bash's `%q` style for names with control characters)."""
    if name.isprintable() and "'" not in name and " " not in name:
        return name
    if name.isprintable():
        return "'" + name.replace("'", "'\\''") + "'"
    escaped = "".join(ch if ch.isprintable() and ch not in "'\\" else
                      {"\n": "\\n", "\r": "\\r", "\t": "\\t", "'": "\\'", "\\": "\\\\"}.get(ch, f"\\x{ord(ch):02x}")
                      for ch in name)
    return f"$'{escaped}'"


@dataclass
class Signals:
    """What the outside world tells the worker: the VM is being preempted, or shut down."""

    preempted: threading.Event = field(default_factory=threading.Event)
    terminating: threading.Event = field(default_factory=threading.Event)
    preempted_now: Callable[[], bool] = lambda: False


class Worker:
    """One VM's worker for one run. `delete_self` is called when the work is over (self_delete)."""

    def __init__(self, settings: WorkerSettings, bucket: WorkerBucket, name: str, work: Path,
                 signals: Signals | None = None, delete_self: Callable[[], None] | None = None,
                 env: dict[str, str] | None = None, log: Callable[[str], None] = print,
                 registry_auth: Callable[[], dict[str, str] | None] = lambda: None) -> None:
        self.s = settings
        self.bucket = bucket
        self.name = name
        self.work = work
        self.signals = signals or Signals()
        self.delete_self = delete_self
        self.env = dict(env or {})
        self.log = log
        self.registry_auth = registry_auth  # what docker-credential-gcr would hand docker
        # The container is removed while the attempt's end is written (its logs are final first).
        self.runtime = DockerRuntime(settings.image, network=settings.docker_network, remove_after_exit_code=True)
        self.record = "-"
        self.running: tuple[str, int] | None = None
        self.stop_all = False
        self.image_error: str | None = None
        self.image_ready = settings.pull_policy == "never"
        self.won = self.taken = 0
        self._record_lock = threading.Lock()
        self._done = threading.Event()
        self._aside = ThreadPoolExecutor(max_workers=2, thread_name_prefix="aside")  # calls beside the main loop
        self.logs_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="logs")  # an attempt's two logs at once
        self._last: DockerAttempt | None = None  # its container may still be being removed
        self._next: _Listing | None = None  # the next sweep's listings, asked for as an attempt ends
        self._resume = ""  # where the next sweep starts
        self.rng = random.Random()

    # -- the whole life of the worker ---------------------------------------------------------
    def run(self) -> None:
        if self.s.tasks is None:
            self._next = self.listing("")  # the first sweep's listings, asked beside the first record
        self.write_record("-")
        beater = threading.Thread(target=self._beat, name="beater", daemon=True)
        beater.start()
        try:
            if self.s.tasks is not None:
                self._run_rendered(self.s.tasks)
            else:
                self._run_claiming()
        finally:
            self._done.set()
            self._aside.shutdown(wait=False, cancel_futures=True)
            self.logs_pool.shutdown(wait=False, cancel_futures=True)
            beater.join(5)
            if self._last is not None:
                self._last.join(REMOVAL_WAIT_S)  # no container of ours left behind on a VM that stays
            self.runtime.close()
        self.log(f"claimed {self.won} attempt(s); {self.taken} were taken by other workers first")
        if self.signals.terminating.is_set():
            self.log("the VM is shutting down: exiting")
        elif self.s.self_delete and self.delete_self is not None:
            self.log(f"work done: deleting this VM ({self.name})")
            self.delete_self()

    def _over(self) -> bool:
        return self.stop_all or self.signals.terminating.is_set() or self.signals.preempted.is_set()

    def _run_rendered(self, tasks: tuple[tuple[str, int], ...]) -> None:
        for task_id, attempt in tasks:
            if self._over():
                return
            if self.bucket.claim(self.s.run_id, task_id, attempt, self.name):
                self.won += 1
                self.run_attempt(task_id, attempt)
            else:
                self.taken += 1
                self.log(f"{task_id}.{attempt}: claimed by another worker")

    def _run_claiming(self) -> None:
        taken: set[str] = set()
        cursor = ""
        idle_since: float | None = None
        while not self._over():
            picked = self._sweep(cursor, taken)
            if picked is not None:
                cursor = picked
                idle_since = None
                continue
            if cursor:
                cursor = ""  # wrap around once before calling it idle
                continue
            now = time.monotonic()
            idle_since = idle_since if idle_since is not None else now
            if now - idle_since >= self.s.idle_s:
                return
            self.signals.terminating.wait(self.s.poll_s)

    def _sweep(self, start: str, taken: set[str]) -> str | None:
        """Claim and run the first claimable attempt from `start` on; its name, or None.

        Names already in claims/ are skipped without a try: both listings come sorted, so one
        walk beside the other finds them, and a worker behind the others does not pay a record
        write and a refused claim for each attempt they hold."""
        listing, self._next = self._next, None
        if listing is None or listing.start != start:
            listing = self.listing(start)
        free = self._free(listing, taken)
        window: list[tuple[str, tuple[str, int]]] = []
        first: str | None = None
        refused = False
        while True:
            window += itertools.islice(free, SPREAD - len(window))
            if not window:
                return None
            # In listing order; after a refused claim (workers that ended together are all after
            # the same next name), one of the next free names drawn at random.
            name, parsed = window.pop(self.rng.randrange(len(window)) if refused else 0)
            first = first or name
            command = self._aside.submit(self.command, parsed[0])  # a read: asked beside the record and claim
            self.write_record(name)  # before the claim: the orchestrator reads one claim per VM
            taken.add(name)
            if self.bucket.claim(self.s.run_id, *parsed, self.name):
                self.won += 1
                self._resume = first  # the next sweep starts at the first name this one tried
                self.run_attempt(*parsed, command)
                return first
            self.taken += 1
            refused = True
            if self._over():
                return None

    def _free(self, listing: _Listing, taken: set[str]) -> Iterator[tuple[str, tuple[str, int]]]:
        """The listing's attempts (name, (task, attempt)) not tried yet by this worker nor in claims/."""
        claimed = _Ahead(listing.claimed())
        for name in listing.open():
            parsed = parse_attempt(name)
            if parsed is None or name in taken:
                continue
            if claimed.holds(name):
                taken.add(name)
                self.taken += 1
                continue
            yield name, parsed

    def listing(self, start: str) -> _Listing:
        return _Listing(self._aside, self.bucket, self.s.run_id, start, self.s.list_page_size)

    def list_ahead(self) -> None:
        """Ask for the listings the next sweep reads, while this attempt's end is written: reads
        only, so the record, claim, status and event keep their order."""
        if self.s.tasks is None and not self._over():
            self._next = self.listing(self._resume)

    # -- record and heartbeat -----------------------------------------------------------------
    def write_record(self, text: str) -> None:
        with self._record_lock:
            self.record = text
            self.bucket.put(run_prefix(self.s.run_id) + WORKERS + self.name, text.encode(), "text/plain")

    def _beat(self) -> None:
        while not self._done.wait(self.s.heartbeat_s):
            try:
                with self._record_lock:
                    self.bucket.put(run_prefix(self.s.run_id) + WORKERS + self.name, self.record.encode(), "text/plain")
                running = self.running
                if running is not None:
                    self._heartbeat(*running)
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried at the next one
                self.log(f"heartbeat failed: {exc}")

    def _first_beat(self, task_id: str, attempt: int) -> None:
        try:
            self._heartbeat(task_id, attempt)
        except Exception as exc:  # noqa: BLE001 - the beater writes it again at the next beat
            self.log(f"heartbeat failed: {exc}")

    def _heartbeat(self, task_id: str, attempt: int) -> None:
        key = attempt_prefix(self.s.run_id, task_id, attempt) + HEARTBEAT
        self.bucket.put(key, f"{time.time():.6f}".encode(), "text/plain")

    # -- one attempt --------------------------------------------------------------------------
    def ensure_image(self) -> bool:
        if self.image_ready:
            return True
        if self.image_error is not None:
            return False
        client = self.runtime.client
        # A digest names one content: a copy already here (the start-up script pulled it by that
        # digest a moment ago) is what a pull would bring, so `always` does not ask the registry again.
        pinned = "@sha256:" in self.s.image
        if (self.s.pull_policy == "if-missing" or pinned) and image_exists(self.s.image, client):
            self.image_ready = True
            return True
        for tried in range(1, self.s.pull_tries + 1):
            self.log(f"pulling {self.s.image} (try {tried} of {self.s.pull_tries})")
            try:
                client.images.pull(self.s.image, auth_config=self.registry_auth())
                self.image_ready = True
                return True
            except Exception as exc:  # noqa: BLE001 - the registry's words go into the record
                self.image_error = str(getattr(exc, "explanation", None) or exc)
                self.log(f"pull failed: {self.image_error}")
            if tried < self.s.pull_tries and not self.signals.terminating.is_set():
                self.bucket.backoff(tried)
        return False

    def run_attempt(self, task_id: str, attempt: int, command: Future[tuple[bytes | None, bool]] | None = None) -> None:
        """`command`: the task's command, when it was asked for beside the claim."""
        self.running = (task_id, attempt)
        try:
            self._attempt(task_id, attempt, command)
        finally:
            self.running = None

    def command(self, task_id: str) -> tuple[bytes | None, bool]:
        """The task's command/ (full command, True) or argv/ (False); None when neither exists."""
        prefix = run_prefix(self.s.run_id)
        raw = self.bucket.get(prefix + COMMAND + task_id)
        return (raw, True) if raw is not None else (self.bucket.get(prefix + ARGV + task_id), False)

    def _attempt(self, task_id: str, attempt: int, command: Future[tuple[bytes | None, bool]] | None) -> None:
        started = time.time()
        folder = self.work / "attempts" / f"{task_id}.{attempt}"
        outputs = folder / "outputs"
        outputs.mkdir(parents=True, exist_ok=True)
        outputs.chmod(0o777)  # the image's user may not be root
        self.log(f"{task_id}.{attempt}: claimed")
        self._aside.submit(self._first_beat, task_id, attempt)  # beside the container's start
        end = _End(self, task_id, attempt, started, folder)
        if not self.ensure_image():
            if self.signals.terminating.is_set():
                self.stop_all = True
                if self.signals.preempted.is_set() or self.signals.preempted_now():
                    end.finish(AttemptState.PREEMPTED, None, "the VM was preempted before the image was pulled")
                return
            (folder / STDERR_LOG).write_text(self.image_error or "")
            end.finish(AttemptState.INFRA, None, f"image pull failed: {self.image_error}")
            self.stop_all = True  # an image this VM cannot pull fails every attempt
            return
        raw, full = command.result() if command is not None else self.command(task_id)
        if raw is None:
            end.finish(AttemptState.INFRA, None, "cannot read the task's argv from the bucket")
            return
        spec = AttemptSpec(
            run_id=self.s.run_id, task_id=task_id, attempt=attempt, argv=tuple(decode_argv(raw)),
            command_override=full,
            env={**{k: v for k, v in self.env.items() if k in FORWARDED_ENV},
                 **attempt_env(self.s.run_id, task_id, attempt, CONTAINER_OUTPUT_DIR)},
            output_dir=outputs, stdout_path=folder / STDOUT_LOG, stderr_path=folder / STDERR_LOG,
            timeout_s=self.s.task_timeout_s,
        )
        try:
            running = self.runtime.start(spec)
        except BackendError as exc:
            state = AttemptState.FAILED if "did not start" in str(exc) or "command is empty" in str(exc) else AttemptState.INFRA
            end.finish(state, None, str(exc))
            return
        self._last = running
        self._follow(running, end)
        shutil.rmtree(folder, ignore_errors=True)

    def _follow(self, running: DockerAttempt, end: _End) -> None:
        """Wait for the container: deadline (monotonic), preemption, shutdown, live logs."""
        deadline = None if self.s.task_timeout_s is None else time.monotonic() + self.s.task_timeout_s
        next_logs = time.monotonic() + self.s.log_interval_s
        stopping = timed_out = preempted = False
        code = running.wait(0)
        while code is None:
            now = time.monotonic()
            if not stopping:
                if self.signals.preempted.is_set() or self.signals.terminating.is_set():
                    preempted = self.signals.preempted.is_set()
                    stopping = True
                    threading.Thread(target=_stop, args=(running, self.s.stop_grace_s), daemon=True).start()
                elif deadline is not None and now >= deadline:
                    timed_out = stopping = True
                    self.log(f"{end.task_id}.{end.attempt}: timed out after {self.s.task_timeout_s:g} s: killing the container")
                    threading.Thread(target=running.kill, daemon=True).start()
            if now >= next_logs:
                end.upload_logs()
                next_logs = now + self.s.log_interval_s
            code = running.wait(TICK_S)
        terminating = self.signals.terminating.is_set()
        if not preempted and terminating and code != 0:
            preempted = self.signals.preempted.is_set() or self.signals.preempted_now()
        if code == 0:
            end.finish(AttemptState.SUCCEEDED, 0, "")
        elif timed_out and running.killed():
            end.finish(AttemptState.TIMEOUT, code, f"timed out after {self.s.task_timeout_s:g} s")
        elif preempted:
            end.finish(AttemptState.PREEMPTED, code, "the VM was preempted")
        elif terminating:
            end.upload_logs(final=True)  # deleted or stopped: the orchestrator says lost or cancelled
            self.log(f"{end.task_id}.{end.attempt}: the VM is shutting down: no status written")
        else:
            end.finish(AttemptState.FAILED, code, running.exit_reason() or f"exit code {code}")
        if terminating or preempted:
            self.stop_all = True


class _Listing:
    """open/ and claims/ from `start` on, their first pages fetched at once in two threads; the
    later pages (a run of thousands) are fetched lazily by whoever walks them."""

    def __init__(self, pool: ThreadPoolExecutor, bucket: WorkerBucket, run_id: str, start: str, page_size: int) -> None:
        self.start = start
        self._open = pool.submit(_fetched, lambda: bucket.open_attempts(run_id, start, page_size))
        self._claimed = pool.submit(_fetched, lambda: bucket.claimed_attempts(run_id, start, page_size))

    def open(self) -> Iterator[str]:
        return self._open.result()

    def claimed(self) -> Iterator[str]:
        return self._claimed.result()


def _fetched(names: Callable[[], Iterator[str]]) -> Iterator[str]:
    """The listing with its first page already fetched (a failure raises here, in the caller's
    future, and again where the result is read)."""
    listed = names()
    first = next(listed, None)
    return iter(()) if first is None else itertools.chain((first,), listed)


class _Ahead:
    """A sorted stream of names, asked about names in increasing order (a merge walk)."""

    def __init__(self, names: Iterator[str]) -> None:
        self._names = names
        self._head: str | None = next(names, None)

    def holds(self, name: str) -> bool:
        while self._head is not None and self._head < name:
            self._head = next(self._names, None)
        return self._head == name


def _stop(running: DockerAttempt, grace: int) -> None:
    """`docker stop`: SIGTERM, then SIGKILL after `grace` seconds (the VM is going away)."""
    with contextlib.suppress(Exception):  # gone already: the waiter reports the exit
        running.container.stop(timeout=grace)


class _End:
    """Writing one attempt's end: logs, outputs, status.json, then the event (in that order)."""

    def __init__(self, worker: Worker, task_id: str, attempt: int, started: float, folder: Path) -> None:
        self.w = worker
        self.task_id = task_id
        self.attempt = attempt
        self.started = started
        self.folder = folder
        self.key = attempt_prefix(worker.s.run_id, task_id, attempt)
        run_id = worker.s.run_id
        self.logs = [LiveLog(worker.bucket, self.key + name, tail_key(run_id, task_id, attempt, name.split(".")[0]),
                             folder / name, worker.log) for name in (STDOUT_LOG, STDERR_LOG)]

    def upload_logs(self, final: bool = False) -> None:
        """What both logs gained since the last upload (parallel_engine/worker/logs.py); when
        `final`, each object is left equal to its file."""
        for sending in self._send_logs(final):
            sending.result()

    def _send_logs(self, final: bool) -> list[Future[None]]:
        """Both logs' uploads, started at once (neither raises: logs.py logs its failures)."""
        return [self.w.logs_pool.submit(log.final if final else log.sync) for log in self.logs]

    def upload_outputs(self) -> str:
        """Every regular file; links and special files listed in `skipped`. Returns "" or why an
        output could not be stored (the first such file, named)."""
        outputs = self.folder / "outputs"
        files, odd = walk(str(outputs), "", "")
        results = self.w.bucket.put_files([(self.key + OUTPUTS + rel, outputs / rel) for rel in files])
        lost = ""
        for rel, failure in zip(files, results, strict=True):
            if failure is not None:
                self.w.log(f"upload of output {shown(rel)} failed: {failure}")
                lost = lost or f"output {shown(rel)} could not be stored {_message(failure)}"
        if odd:
            listed = b"".join(f"{s.kind}\0{s.key}\0{s.detail}\0".encode("utf-8", "surrogateescape") for s in odd)
            try:
                self.w.bucket.put(self.key + SKIPPED, listed)
            except Exception as exc:  # noqa: BLE001 - judged below like an output
                lost = lost or f"the list of skipped outputs could not be stored {_message(exc)}"
        return lost

    def finish(self, state: AttemptState, code: int | None, reason: str) -> None:
        self.w.list_ahead()
        logs = self._send_logs(final=True)  # beside the outputs: the status waits for both
        lost = self.upload_outputs()
        for sending in logs:
            sending.result()
        if lost and state == AttemptState.SUCCEEDED:
            state, reason = AttemptState.FAILED, lost
        if len(reason) > REASON_MAX:
            reason = reason[:REASON_MAX] + "..."
        status = AttemptStatus(self.task_id, self.attempt, state, code, self.started, time.time(), self.w.name, reason)
        bucket, run_id = self.w.bucket, self.w.s.run_id
        try:
            bucket.put(self.key + STATUS_JSON, json.dumps(status.to_json()).encode(), "application/json")
            bucket.put(run_prefix(run_id) + EVENTS + event_name(time.time(), self.task_id, self.attempt),
                       str(state).encode(), "text/plain")
        except Exception as exc:  # noqa: BLE001 - no record: the orchestrator calls the attempt lost
            self.w.log(f"could not write the record of {self.task_id}.{self.attempt}: {exc}")
        self.w.log(f"{self.task_id}.{self.attempt}: {state}" + (f" (exit code {code})" if code is not None else "")
                   + (f": {reason}" if reason else ""))


def _message(exc: BaseException) -> str:
    """A Storage failure as docs/worker-protocol.md words it: `(HTTP CODE): Storage's message`."""
    code = getattr(exc, "code", None)
    text = str(getattr(exc, "message", None) or exc or type(exc).__name__)
    found = _STORAGE_MESSAGE.search(text)
    message = found.group(1) if found else text
    return f"(HTTP {code}): {message}" if isinstance(code, int) else f": {message}"


_STORAGE_MESSAGE = re.compile(r'"message": *"((?:[^"\\]|\\.)*)"')
