"""What the orchestrator and its workers agree on, defined once: the store's keys, the labels on
workers and containers, the PE_* variables of an attempt, a record's fields, the event stamp,
the task-id pattern and how argv travels as data.

The run store (store.py), the pools (backends/) and the runtimes (runtimes/) read these names
from here, and the gce startup script gets them through its rendering context
(backends/gce/startup.py), so no side retypes them. docs/worker-protocol.md is the contract they
implement; "A run in the store" in docs/architecture.md shows the layout.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from parallel_engine.errors import TaskSourceError

#: Google's endpoints, where the config names none (the emulated cloud names its own).
DEFAULT_STORAGE = "https://storage.googleapis.com"
DEFAULT_COMPUTE = "https://compute.googleapis.com"
#: A bucket's name, as Cloud Storage takes it (also what the startup script is rendered with).
BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")

# -- the store's layout (keys under the store root: a folder, or gs://BUCKET/PREFIX) ------------
RUNS = "runs/"
RUN_JSON = "run.json"  # orchestrator: spec, task list, created, backend (never secrets)
END_JSON = "end.json"  # orchestrator: how the run ended (finished, cancelled, failed)
CAPACITY_JSON = "capacity.json"  # orchestrator (gce): whether the run waits for capacity
CLAIMS = "claims/"  # worker: <task>.<attempt>, an atomic create holding the claimant's name
EVENTS = "events/"  # worker: <stamp>-<task>.<attempt>, a marker per finished attempt
TASKS = "tasks/"  # worker: <task>/<attempt>/ holds everything of one attempt
ARGV = "argv/"  # orchestrator (gce): <task>, the argv appended to the entrypoint (NUL-separated)
COMMAND = "command/"  # orchestrator (gce): <task>, a full command (item 0 = entrypoint)
OPEN = "open/"  # orchestrator (gce): <task>.<attempt>, "this attempt is claimable"
WORKERS = "workers/"  # worker (gce): <vm>, the attempt a VM claimed last, rewritten every heartbeat
BUILDS = "builds/"  # orchestrator (gce): the last build's image digest
SOURCES = "sources/"  # orchestrator (gce): the build contexts uploaded for Cloud Build
LEASES = "leases/"  # orchestrator: <generation>, who orchestrates the run (the highest one holds it)
TAILS = "tails/"  # worker (gce): <task>.<attempt>.<log>, a log's new bytes until composed onto it
#: The folders of a run that hold its keys: made when the run is created, never again.
RUN_FOLDERS = (CLAIMS, EVENTS, TASKS, LEASES)

# What one attempt's folder (tasks/<task>/<attempt>/) holds.
STATUS_JSON = "status.json"  # its record, written once when it ends
HEARTBEAT = "heartbeat"  # refreshed while it runs (gce)
STDOUT_LOG = "stdout.log"
STDERR_LOG = "stderr.log"
OUTPUTS = "outputs/"  # whatever the program wrote to $PE_OUTPUT_DIR
SKIPPED = "skipped"  # (gce) outputs a worker did not upload: kind, path, detail, NUL-separated

#: The last build's record (`build` on gce writes it, `run` pins IMAGE to its digest).
BUILD_RECORD = BUILDS + "latest.json"


def run_prefix(run_id: str) -> str:
    return f"{RUNS}{run_id}/"


def claim_name(task_id: str, attempt: int) -> str:
    """"<task>.<attempt>": how claims, open markers, events and worker records name an attempt."""
    return f"{task_id}.{attempt}"


def parse_attempt(name: str) -> tuple[str, int] | None:
    """"<task_id>.<attempt>" (a claim's or an event's name, a worker's record) as (task_id, attempt);
    None for anything else ("-": nothing claimed yet, or garbage)."""
    task_id, _, number = name.rpartition(".")
    if not task_id or not (number.isascii() and number.isdigit()):
        return None
    return task_id, int(number)


def attempt_prefix(run_id: str, task_id: str, attempt: int) -> str:
    return f"{RUNS}{run_id}/{TASKS}{task_id}/{attempt}/"


def tail_key(run_id: str, task_id: str, attempt: int, log: str) -> str:
    """A log's temporary tail (the bytes a worker composes onto it): outside tasks/, so no
    listing of a run's attempts (collect, status) sees one, even if its worker died holding it."""
    return f"{RUNS}{run_id}/{TAILS}{claim_name(task_id, attempt)}.{log}"


def claim_key(run_id: str, task_id: str, attempt: int) -> str:
    return f"{RUNS}{run_id}/{CLAIMS}{claim_name(task_id, attempt)}"


def argv_key(run_id: str, task_id: str) -> str:
    """NUL-separated argv appended to the image's entrypoint."""
    return f"{RUNS}{run_id}/{ARGV}{task_id}"


def command_key(run_id: str, task_id: str) -> str:
    """NUL-separated full command: item 0 replaces the image's entrypoint."""
    return f"{RUNS}{run_id}/{COMMAND}{task_id}"


def open_key(run_id: str, task_id: str, attempt: int) -> str:
    """Published while the attempt is claimable; deleted by the orchestrator once it finished."""
    return f"{RUNS}{run_id}/{OPEN}{claim_name(task_id, attempt)}"


def heartbeat_key(run_id: str, task_id: str, attempt: int) -> str:
    return attempt_prefix(run_id, task_id, attempt) + HEARTBEAT


def worker_key(run_id: str, worker: str) -> str:
    """A VM's record: the attempt it claimed last, rewritten every heartbeat."""
    return f"{RUNS}{run_id}/{WORKERS}{worker}"


def lease_key(run_id: str, generation: int) -> str:
    """One orchestrator's lease on the run; taking it over is creating the next generation."""
    return f"{RUNS}{run_id}/{LEASES}{generation:09d}"


def parse_lease(name: str) -> int | None:
    """A lease key's generation (the last segment of `lease_key`); None for anything else."""
    return int(name) if name.isascii() and name.isdigit() else None


# -- the event stamp ----------------------------------------------------------------------------
#: An event's name starts with the time its attempt ended, in seconds, formatted so that names
#: sort in time order: the same printf format in Python (`%`) and in the startup script.
EVENT_STAMP = "%017.6f"
EVENT_STAMP_LEN = 17


def event_name(at: float, task_id: str, attempt: int) -> str:
    return f"{EVENT_STAMP % at}-{claim_name(task_id, attempt)}"


def parse_event(name: str) -> tuple[float, str, int] | None:
    """(stamp, task_id, attempt) of an event's name; None for anything else."""
    stamp, dash, rest = name[:EVENT_STAMP_LEN], name[EVENT_STAMP_LEN:EVENT_STAMP_LEN + 1], name[EVENT_STAMP_LEN + 1:]
    parsed = parse_attempt(rest)
    if dash != "-" or parsed is None:
        return None
    try:
        return float(stamp), *parsed
    except ValueError:
        return None


# -- an attempt's record (status.json) -----------------------------------------------------------
#: status.json's fields, in the order every writer writes them (model.AttemptStatus.to_json).
STATUS_FIELDS = ("task_id", "attempt", "state", "exit_code", "started_at", "finished_at", "worker", "reason")

# -- task ids ---------------------------------------------------------------------------------
#: A task id: it names keys, folders and labels, so it is one safe path segment.
TASK_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
TASK_ID_RE = re.compile(TASK_ID_PATTERN)
#: An open marker's or a claim's name: a task id, ".", an attempt number from 1.
ATTEMPT_NAME_PATTERN = rf"{TASK_ID_PATTERN}\.[1-9][0-9]*"

# -- labels (on every gce VM and every local container) ------------------------------------------
LABEL_RUN = "parallel-engine-run"
LABEL_WORKER = "parallel-engine-worker"  # VMs: the task of a one-task VM, or "reuse"
LABEL_TASK = "parallel-engine-task"  # containers
LABEL_ATTEMPT = "parallel-engine-attempt"  # containers
#: Ours: a user's LABELS may not take these names (ours would overwrite theirs).
RESERVED_LABELS = (LABEL_RUN, LABEL_WORKER, LABEL_TASK, LABEL_ATTEMPT)
#: The labels on every VM (GCE allows 64 in all).
VM_LABELS = (LABEL_RUN, LABEL_WORKER)

# -- an attempt's environment -----------------------------------------------------------------
ENV_RUN_ID = "PE_RUN_ID"
ENV_TASK_ID = "PE_TASK_ID"
ENV_ATTEMPT = "PE_ATTEMPT"
ENV_OUTPUT_DIR = "PE_OUTPUT_DIR"
#: Where a container's outputs folder is mounted ($PE_OUTPUT_DIR inside it).
CONTAINER_OUTPUT_DIR = "/pe/output"


def attempt_env(run_id: str, task_id: str, attempt: int, output_dir: str) -> dict[str, str]:
    """The PE_* variables of an attempt (README "Configuration")."""
    return {ENV_RUN_ID: run_id, ENV_TASK_ID: task_id, ENV_ATTEMPT: str(attempt), ENV_OUTPUT_DIR: output_dir}


# -- argv as data ---------------------------------------------------------------------------------
def encode_argv(items: Sequence[str]) -> bytes:
    """Items as UTF-8, each followed by a NUL byte (read by the worker with `mapfile -d ''`).

    NUL cannot travel in argv, so an item holding one is refused; so is text that is not
    valid Unicode (a lone surrogate).
    """
    if isinstance(items, (str, bytes)):
        raise TypeError("encode_argv takes a sequence of strings, not one string")
    out = bytearray()
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(f"argv item {index} is {type(item).__name__}, not str")
        if "\x00" in item:
            raise TaskSourceError(f"argv item {index} holds a NUL byte, which cannot be passed to a program")
        try:
            out += item.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise TaskSourceError(f"argv item {index} is not valid Unicode text ({exc.reason})") from exc
        out += b"\x00"
    return bytes(out)


def decode_argv(data: bytes) -> list[str]:
    """The inverse of `encode_argv` (what `mapfile -d ''` reads)."""
    if not data:
        return []
    parts = data.split(b"\x00")
    if parts[-1] == b"":
        parts.pop()
    return [part.decode("utf-8") for part in parts]
