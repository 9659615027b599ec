"""The VM worker's startup script: what a Container-Optimized OS VM boots with, and its settings.

The script (`templates/worker-start.sh.j2` beside this module) is short: it pulls the worker
image and the task image and starts the Python worker (parallel_engine/worker/) in its own
container, handing it these settings as JSON. The settings serve both worker modes: attempts
rendered into them (`--tasks-per-vm 1`: claim exactly these, run them) or claim-by-listing
(reuse: claim what `runs/<run>/open/` offers until nothing is left). The protocol between the
orchestrator and the worker is docs/worker-protocol.md.

Every value that lands in the script goes through `shlex.quote` (the `q` filter), and the
template is rendered with `StrictUndefined`, so a setting missing from the context is an error,
never an empty string in a shell script.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parallel_engine.errors import ConfigError
from parallel_engine.protocol import BUCKET_RE, DEFAULT_COMPUTE, DEFAULT_STORAGE, TASK_ID_RE

if TYPE_CHECKING:  # the worker imports this module for its settings, and never renders
    import jinja2

TEMPLATE_NAME = "worker-start.sh.j2"  # starts the Python worker in its own container
#: COS: /var is writable (noexec, which the worker never needs); HOME and / are read-only.
DEFAULT_WORK_DIR = "/var/lib/parallel-engine-worker"
PULL_POLICIES = ("always", "if-missing", "never")

_RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_HOST_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?")
# REGISTRY as users write it: a host, or a repository under it (REGION-docker.pkg.dev/PROJECT/REPO).
# A path segment starts with a letter or digit, as in docker's reference grammar: never `.` or `..`.
_REGISTRY_RE = re.compile(_HOST_RE.pattern + r"(/[A-Za-z0-9][A-Za-z0-9._-]*)*/?")
_NETWORK_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_ENDPOINT_RE = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_PREFIX_RE = re.compile(r"([A-Za-z0-9._~-]+/)+")


@dataclass(frozen=True)
class WorkerSettings:
    """Everything rendered into one worker's startup script (never a secret: the VM's token
    comes from its metadata server at run time).

    Durations are seconds (floats allowed, so the emulator can run at 1/100 time).
    `tasks` set means rendered mode (exactly these (task_id, attempt) pairs); None means the
    worker claims from `runs/<run>/open/` until nothing is claimable for `idle_s`.
    """

    run_id: str
    bucket: str
    image: str
    # The worker image (parallel_engine/worker/image.py) the VM runs the Python worker in, pinned
    # by digest (the one `parallel-engine build` recorded).
    worker_image: str
    prefix: str = ""  # store root inside the bucket: keys are <prefix>/runs/<run_id>/...
    # REGISTRY: a host or a repository under it ("us-docker.pkg.dev/p/repo"). docker-credential-gcr
    # is configured for its host and for the image's own registry host (see `credential_hosts`).
    registry: str | None = None
    pull_policy: str = "always"  # always | if-missing | never
    storage_endpoint: str = DEFAULT_STORAGE
    compute_endpoint: str = DEFAULT_COMPUTE
    heartbeat_s: float = 30.0
    log_interval_s: float = 30.0
    task_timeout_s: float | None = None
    tasks: tuple[tuple[str, int], ...] | None = None
    docker_network: str = "host"  # host: tasks reach the metadata server (the VM's service account)
    work_dir: str = DEFAULT_WORK_DIR  # base of a private folder (the VM's TMPDIR wins); "" or unwritable: `mktemp -d`
    self_delete: bool = True
    poll_s: float = 10.0  # claim mode: how often open/ is listed again while nothing is claimable
    idle_s: float = 60.0  # claim mode: how long nothing claimable is tolerated before leaving
    stop_grace_s: int = 10  # `docker stop -t` on preemption (Google gives ~30 s in all)
    pull_tries: int = 5
    http_tries: int = 8  # the worker's tries per Storage/Compute call (429, 5xx, network)
    retry_base_s: float = 1.0  # backoff: base * 2^n with 50-100 % jitter, capped at retry_max_s
    retry_max_s: float = 30.0
    list_page_size: int = 1000  # claim mode: maxResults per open/ listing page (Storage's maximum)

    def __post_init__(self) -> None:
        _check(self)

    @property
    def root(self) -> str:
        """The store root inside the bucket: "" or "<prefix>/"."""
        return store_root(self.prefix)


def store_root(prefix: str) -> str:
    """"" for no prefix, else the prefix without surrounding slashes plus one "/"."""
    cleaned = prefix.strip("/")
    return f"{cleaned}/" if cleaned else ""


def _fail(message: str, hint: str | None = None) -> None:
    raise ConfigError(f"worker settings: {message}", hint=hint)


def _check_seconds(name: str, value: float | None, minimum: float = 0.01, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < minimum:
        _fail(f"{name} must be a number of seconds >= {minimum:g}, got {value!r}")


def _check(s: WorkerSettings) -> None:
    if not _RUN_ID_RE.fullmatch(s.run_id) or s.run_id in (".", ".."):
        _fail(f"run_id {s.run_id!r} is not a valid run id")
    if not BUCKET_RE.fullmatch(s.bucket):
        _fail(f"bucket {s.bucket!r} is not a valid bucket name", hint="give the name only, without gs://")
    root = store_root(s.prefix)
    if root and (not _PREFIX_RE.fullmatch(root) or len(root) > 512):
        # Only characters that no object name, URL or JSON string escapes.
        _fail(f"prefix {s.prefix!r} must be folder names of A-Z a-z 0-9 . _ ~ - joined by '/' (at most 512)")
    if any(part in (".", "..") for part in root.split("/")[:-1]):
        _fail(f"prefix {s.prefix!r} has a '.' or '..' segment")
    if not s.image or s.image.startswith("-") or any(ch.isspace() for ch in s.image) or _CONTROL_RE.search(s.image):
        _fail(f"image {s.image!r} is not an image reference")
    if not s.worker_image or s.worker_image.startswith("-") or any(ch.isspace() for ch in s.worker_image) \
            or _CONTROL_RE.search(s.worker_image):
        _fail(f"worker_image {s.worker_image!r} is not an image reference")
    if s.registry is not None and not _REGISTRY_RE.fullmatch(s.registry):
        _fail(f"registry {s.registry!r} is not a registry host or repository "
              "(e.g. us-docker.pkg.dev or europe-west1-docker.pkg.dev/PROJECT/REPO)")
    if s.pull_policy not in PULL_POLICIES:
        _fail(f"pull_policy {s.pull_policy!r} is not one of {', '.join(PULL_POLICIES)}")
    for name, url in (("storage_endpoint", s.storage_endpoint), ("compute_endpoint", s.compute_endpoint)):
        if not _ENDPOINT_RE.fullmatch(url):
            _fail(f"{name} {url!r} must be scheme://host[:port] with no path")
    for name in ("heartbeat_s", "log_interval_s", "poll_s", "retry_base_s", "retry_max_s"):
        _check_seconds(name, getattr(s, name))
    _check_seconds("idle_s", s.idle_s, minimum=0)
    _check_seconds("task_timeout_s", s.task_timeout_s, optional=True)
    if not isinstance(s.list_page_size, int) or isinstance(s.list_page_size, bool) or not 1 <= s.list_page_size <= 1000:
        _fail(f"list_page_size must be an integer from 1 to 1000, got {s.list_page_size!r}")
    for name in ("stop_grace_s", "pull_tries", "http_tries"):
        value = getattr(s, name)
        low = 0 if name == "stop_grace_s" else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            _fail(f"{name} must be an integer >= {low}, got {value!r}")
    if s.tasks is not None:
        if not s.tasks:
            _fail("tasks is empty: give None (claim mode) or at least one (task_id, attempt)")
        for item in s.tasks:
            if not (isinstance(item, tuple) and len(item) == 2):
                _fail(f"tasks items are (task_id, attempt) pairs, got {item!r}")
            task_id, attempt = item
            if not isinstance(task_id, str) or not TASK_ID_RE.fullmatch(task_id):
                _fail(f"task id {task_id!r} is not a valid task id")
            if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
                _fail(f"attempt {attempt!r} of task {task_id!r} must be an integer >= 1")
    if not _NETWORK_RE.fullmatch(s.docker_network):
        _fail(f"docker_network {s.docker_network!r} is not a network name")
    if s.work_dir and (not s.work_dir.startswith("/") or ":" in s.work_dir or _CONTROL_RE.search(s.work_dir)):
        _fail(f"work_dir {s.work_dir!r} must be an absolute path without ':' (docker -v splits on it)")


def registry_host(image: str) -> str | None:
    """The registry host of an image reference ("us-docker.pkg.dev/p/r/i@sha256:..."), or None
    for Docker Hub names ("python:3.11-slim")."""
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


def credential_hosts(image: str, registry: str | None) -> tuple[str, ...]:
    """The registry hosts docker-credential-gcr is configured for: the image's own (so a VM can
    pull from Artifact Registry with no REGISTRY set) and REGISTRY's host, without repeats."""
    hosts = [registry_host(image), registry.split("/", 1)[0] if registry else None]
    return tuple(dict.fromkeys(host for host in hosts if host))


# -- rendering --------------------------------------------------------------------------------
def template_dir() -> Path:
    """The templates folder, beside this module (the wheel ships it as package data)."""
    here = Path(__file__).resolve().parent / "templates"
    if not (here / TEMPLATE_NAME).is_file():
        raise ConfigError(f"cannot find {TEMPLATE_NAME} in {here}",
                          hint="reinstall parallel-engine: the wheel ships it in parallel_engine/backends/gce/templates/")
    return here


def _quote(value: Any) -> str:
    return shlex.quote(str(value))


@lru_cache(maxsize=4)
def environment(folder: str | None = None) -> jinja2.Environment:
    """The Jinja2 environment for the worker's start-up template.

    Comments use `{## ##}` because bash itself writes `{#` (`${#array[@]}`).
    """
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(folder or str(template_dir())),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        comment_start_string="{##",
        comment_end_string="##}",
    )
    env.filters["q"] = _quote
    return env


def template_context(settings: WorkerSettings) -> dict[str, Any]:
    """What the template sees: the settings, the registries docker-credential-gcr serves, and the
    settings as JSON (what the worker reads)."""
    registries = ",".join(credential_hosts(settings.image, settings.registry))
    return {"s": settings, "registries": registries, "settings_json": json.dumps(asdict(settings), sort_keys=True)}


def render_template(context: dict[str, Any], name: str = TEMPLATE_NAME) -> str:
    return environment().get_template(name).render(**context)


def render_startup_script(settings: WorkerSettings) -> str:
    """The startup script for one worker VM (what `parallel-engine render` prints): it starts the
    Python worker's container with these settings."""
    script = render_template(template_context(settings))
    size = len(script.encode())
    if size > 256 * 1024:
        raise ConfigError(
            f"the rendered startup script is {size} bytes; a metadata value holds at most 262144",
            hint="render fewer tasks per VM",
        )
    return script
