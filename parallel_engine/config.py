"""Configuration: one table of keys, four layers, one error per mistake.

Users already keep a `.config.yaml` with the seed tool's six keys (PROJECT_ID, ZONE,
MACHINE_TYPE, VM_QUOTAS, NETWORK, SERVICE_ACCOUNT); we read it unchanged and add ours.
A value comes from, in order: a flag, the environment (`PARALLEL_ENGINE_<KEY>` only, so
an `IMAGE` or `ZONE` already in the user's shell never leaks in), the file, the default.

Everything a key is (type, default, doc, choices, flag) lives in its one declaration in `Config`;
parsing, error messages, `describe_keys()` (docs, `--help`) and `require()` all read it.
Every problem becomes a `ConfigError` that names the key and where its value came from;
`load_config` returns a complete `Config` or raises, never something half-loaded.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import re
import shlex
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from parallel_engine.backends.base import BACKEND_NAMES, backend_class
from parallel_engine.bounded_yaml import BoundedLoader, YamlRefused
from parallel_engine.errors import ConfigError, brief, shown
from parallel_engine.protocol import BUCKET_RE, RESERVED_LABELS, VM_LABELS

__all__ = [
    "CONFIG_FILE_NAME",
    "ENV_PREFIX",
    "KEYS",
    "Config",
    "Key",
    "describe_keys",
    "is_placeholder",
    "load_config",
    "placeholder",
]

ENV_PREFIX = "PARALLEL_ENGINE_"
CONFIG_FILE_NAME = ".config.yaml"
CONFIG_ENV = ENV_PREFIX + "CONFIG"
#: When VM_QUOTAS is unset on gce: a few VMs, well under any new project's CPU quota.
GCE_DEFAULT_QUOTA = 8


class _Invalid(ValueError):
    """Raised by a value type: the value is not what the key takes (the type says what is,
    unless the exception carries a more precise reason)."""


_NUL = "contains a NUL character (e.g. a \\0 escape in YAML), which no argv item or name can carry"


def _no_nul(text: str) -> str:
    if "\0" in text:
        raise _Invalid(_NUL)
    return text


# --------------------------------------------------------------------------- value types
# Each type parses a value from any layer: YAML gives typed values, the environment
# gives strings, flags give either. Each knows how to say what it expects.


class _Type:
    expected: str = "a value"
    choices: tuple[str, ...] = ()

    def __call__(self, value: Any) -> Any:
        raise NotImplementedError


class Str(_Type):
    """Free text; numbers and bools are refused (a quoted YAML value is a str)."""

    expected = "a string"

    def __call__(self, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise _Invalid
        return _no_nul(value.strip())


class Choice(_Type):
    """One of a few words; matched case-insensitively, kept lower case."""

    def __init__(self, *choices: str) -> None:
        self.choices = choices
        self.expected = "one of " + ", ".join(choices)

    def __call__(self, value: Any) -> str:
        if isinstance(value, str) and value.strip().lower() in self.choices:
            return value.strip().lower()
        raise _Invalid


class Int(_Type):
    """An integer at least `minimum`; a string of digits is accepted (env, flags)."""

    def __init__(self, minimum: int = 0) -> None:
        self.minimum = minimum
        self.expected = {0: "an integer >= 0", 1: "a positive integer"}.get(
            minimum, f"an integer >= {minimum}"
        )

    def __call__(self, value: Any) -> int:
        if isinstance(value, bool):
            raise _Invalid
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise _Invalid from None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or value < self.minimum:
            raise _Invalid
        return value


class PositiveFloat(_Type):
    """A finite number > 0 (CPUs may be fractional, as in `docker run --cpus 0.5`)."""

    expected = "a positive number"

    def __call__(self, value: Any) -> float:
        if isinstance(value, bool):
            raise _Invalid
        try:
            number = float(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            raise _Invalid from None
        if not math.isfinite(number) or number <= 0:
            raise _Invalid
        return number


_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


class Bool(_Type):
    """YAML bools, or true/false/yes/no/1/0 (any case) as the environment and flags send them."""

    expected = "true or false"

    def __call__(self, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str):
            text = value.strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
        raise _Invalid


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_duration(value: Any) -> float:
    """Seconds from 90, 90.5, "90", "90s", "10m", "2h", "1d" or "1h30m"; raises `_Invalid`."""
    if isinstance(value, bool):
        raise _Invalid
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text)
        elif text and _DURATION_PART.sub("", text) == "":
            seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))
        else:
            raise _Invalid
    else:
        raise _Invalid
    if not math.isfinite(seconds):
        raise _Invalid
    return seconds


def _format_seconds(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


class Duration(_Type):
    """Seconds as a float; bounds where the cloud has them (maxRunDuration is 30 s .. 120 days)."""

    def __init__(self, minimum: float = 0.0, maximum: float | None = None) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.expected = "a duration > 0 (seconds, or like 90s, 10m, 2h, 1d)"
        if minimum or maximum:
            low = _format_seconds(minimum) if minimum else "0"
            high = _format_seconds(maximum) if maximum else "no limit"
            self.expected = f"a duration from {low} to {high} (seconds, or like 90s, 10m, 2h, 1d)"

    def __call__(self, value: Any) -> float:
        seconds = parse_duration(value)
        if seconds <= 0 or seconds < self.minimum or (self.maximum and seconds > self.maximum):
            raise _Invalid
        return seconds


class Command(_Type):
    """A command line (shlex-split) or a YAML list of strings (kept as the argv it already is)."""

    expected = "a command line string or a list of strings"

    def __call__(self, value: Any) -> str | list[str]:
        if isinstance(value, str):
            text = _no_nul(value)
            try:
                words = shlex.split(text)
            except ValueError:  # unbalanced quotes
                words = []
            if not words:
                raise _Invalid
            return text.strip()
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
            return [_no_nul(v) for v in value]
        raise _Invalid


_ZONE = re.compile(r"[a-z][a-z0-9-]*[a-z0-9]-[a-z]")


class Zone(_Type):
    """A zone like europe-west1-b: lower case, ending in `-<letter>` so the region derives from it."""

    expected = "a zone like europe-west1-b"

    def __call__(self, value: Any) -> str:
        if isinstance(value, str) and _ZONE.fullmatch(value.strip()):
            return value.strip()
        raise _Invalid


class StrList(_Type):
    """A YAML list of strings, or one comma-separated string (how the environment sends lists)."""

    def __init__(self, item: _Type, noun: str) -> None:
        self.item = item
        self.expected = f"a list of {noun} (comma-separated in the environment)"

    def __call__(self, value: Any) -> list[str]:
        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)):
            raise _Invalid
        return [self.item(v) for v in value]


_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
# Ours on every VM (of GCE's 64) and every local container: LABELS go there too, and ours
# would overwrite a user's.
_VM_LABELS = VM_LABELS
_RESERVED_LABELS = RESERVED_LABELS


class Labels(_Type):
    """Mapping str→str following GCE label rules, so a bad label fails here, not at VM insert."""

    expected = (
        "a mapping of labels (k=v,k2=v2 in the environment; keys start with a lower-case letter, "
        "keys and values use only a-z 0-9 _ -, at most 63 characters; "
        "parallel-engine-run, -worker, -task and -attempt are ours)"
    )

    def __call__(self, value: Any) -> dict[str, str]:
        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip()]
        if isinstance(value, (list, tuple)):  # ["k=v", ...] from the environment or repeated flags
            pairs: dict[Any, Any] = {}
            for item in value:
                if not isinstance(item, str) or "=" not in item:
                    raise _Invalid
                k, _, v = item.partition("=")
                pairs[k.strip()] = v.strip()
            value = pairs
        if not isinstance(value, Mapping):
            raise _Invalid
        labels: dict[str, str] = {}
        for k, v in value.items():
            if isinstance(v, bool) or not isinstance(v, (str, int)) or not isinstance(k, str):
                raise _Invalid
            v = str(v)
            if not _LABEL_KEY.fullmatch(k) or not _LABEL_VALUE.fullmatch(v) or k in _RESERVED_LABELS:
                raise _Invalid
            labels[k] = v
        if len(labels) > 64 - len(_VM_LABELS):
            raise _Invalid
        return labels


_MEMORY = re.compile(r"(\d+(?:\.\d+)?)\s?([kmgt]?)i?b?", re.IGNORECASE)
_MEMORY_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def memory_bytes(text: str) -> int:
    """Bytes in a Docker-style size ("512m", "2g", "1.5g"); raises `_Invalid` otherwise."""
    match = _MEMORY.fullmatch(text.strip())
    if not match:
        raise _Invalid
    return int(float(match.group(1)) * _MEMORY_UNITS[match.group(2).lower()])


class Memory(_Type):
    """A Docker memory size, checked now (Docker refuses below 6 MiB, and only at `docker run`)."""

    expected = "a size like 512m or 2g (at least 6m)"

    def __call__(self, value: Any) -> str:
        if not isinstance(value, str) or memory_bytes(value) < 6 * 1024**2:
            raise _Invalid
        return value.strip().lower()


class Bucket(_Type):
    """A bucket name. `gs://name` (and a trailing /) is accepted and stripped: users paste URLs."""

    expected = "a bucket name like my-bucket (a gs:// prefix is dropped; no path inside the bucket)"

    def __call__(self, value: Any) -> str:
        if not isinstance(value, str):
            raise _Invalid
        name = value.strip().removeprefix("gs://").rstrip("/")
        if not BUCKET_RE.fullmatch(name):
            raise _Invalid
        return name


class Url(_Type):
    """An http(s) URL: the emulated cloud's endpoints are plain http on 127.0.0.1."""

    expected = "a URL like http://127.0.0.1:4443"

    def __call__(self, value: Any) -> str:
        if isinstance(value, str) and re.fullmatch(r"https?://[^\s/]+(/\S*)?", value.strip()):
            return value.strip().rstrip("/")
        raise _Invalid


class HostPort(_Type):
    """host[:port], the form GCE_METADATA_HOST takes; an http:// prefix is dropped."""

    expected = "a host[:port] like 127.0.0.1:8080"

    def __call__(self, value: Any) -> str:
        if isinstance(value, str):
            host = re.sub(r"^https?://", "", value.strip()).rstrip("/")
            if re.fullmatch(r"[A-Za-z0-9.\-\[\]:]+", host):
                return host
        raise _Invalid


# --------------------------------------------------------------------------- the key table


@dataclass(frozen=True)
class Key:
    """One config key: everything the loader, the docs and the error messages need to know."""

    name: str
    type: _Type
    default: Any
    doc: str
    flag: str | None = None  # the CLI flag, when it is not --<name-with-dashes>
    default_doc: str | None = None  # how to show the default when the value alone would mislead

    @property
    def attr(self) -> str:
        return self.name.lower()

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name

    @property
    def flag_name(self) -> str:
        return self.flag or "--" + self.name.lower().replace("_", "-")

    @property
    def choices(self) -> tuple[str, ...]:
        return self.type.choices

    def describe_default(self) -> str:
        if self.default_doc is not None:
            return self.default_doc
        if self.default is None:
            return "unset"
        if isinstance(self.default, bool):
            return str(self.default).lower()
        if isinstance(self.type, Duration):
            return _format_seconds(self.default)
        if self.default in ([], {}):
            return "none"
        return str(self.default)


#: The narrowest scopes a worker needs: the run store and image pulls (devstorage), and deleting
#: its own VM (compute). Tasks that call other Google APIs need more (e.g. cloud-platform).
DEFAULT_SCOPES = (
    "https://www.googleapis.com/auth/devstorage.read_write",
    "https://www.googleapis.com/auth/compute",
)

_POSITIVE = Int(1)
_COUNT = Int(0)

def key(type_: _Type, default: Any, doc: str, *, flag: str | None = None, default_doc: str | None = None) -> Any:
    """A key of `Config`, declared once: the attribute's name is the key in lower case, and this
    line holds everything else about it (its type, default, doc, flag). `KEYS` is read from these."""
    spec = {"type": type_, "default": default, "doc": doc, "flag": flag, "default_doc": default_doc}
    if isinstance(default, (list, dict)):  # each Config gets its own copy of a mutable default
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"key": spec})
    return field(default=default, metadata={"key": spec})


_BACKENDS = Choice(*BACKEND_NAMES)


@dataclass(frozen=True)
class Config:
    """The merged configuration: one attribute per key, each declared once here (the key table
    is this class). `origins` says where each value came from, so messages can point the user
    at the right place to change it. Keys only the gce backend reads are grouped below; the
    backend checks them (and gets ZONE and BUCKET non-optional) in backends/gce/settings.py.
    """

    # keys from the seed tool's .config.yaml
    project_id: str | None = key(Str(), None, "Google Cloud project for VMs, bucket and builds (gce backend)")
    zone: str | None = key(Zone(), None, "zone the VMs start in, e.g. europe-west1-b (gce backend)")
    machine_type: str = key(Str(), "n1-standard-1", "machine type of each worker VM")
    vm_quotas: int | None = key(_POSITIVE, None, "most workers running at once", flag="--jobs",
                                default_doc=f"CPU count (local), {GCE_DEFAULT_QUOTA} (gce)")
    network: str = key(Str(), "default", "VPC network of the worker VMs")
    service_account: str | None = key(Str(), None, "service account the VMs run as (project default when unset)")
    # every backend
    backend: str = key(_BACKENDS, "local", "where workers run: this machine, or Compute Engine VMs")
    runtime: str = key(Choice("auto", "process", "docker"), "auto",
                       "local workers: processes, containers, or auto (containers when IMAGE is set and Docker answers)")
    image: str | None = key(Str(), None, "Docker image the workers run")
    command: str | list[str] | None = key(Command(), None, "program the process runtime runs per task, before its arguments",
                                          default_doc="python code/main.py, with the Python running parallel-engine")
    store: str = key(Str(), ".parallel-engine", "local run store folder (relative to the working directory)")
    bucket: str | None = key(Bucket(), None, "Cloud Storage bucket for the run store (gce backend); a gs:// prefix is dropped")
    retries: int = key(_COUNT, 0, "retries per task after a program failure or a timeout")
    preemption_retries: int = key(_COUNT, 3, "retries per task after a preemption, a lost worker or an infra failure")
    task_timeout: float | None = key(Duration(), None, "time limit of one attempt (unset: none)", flag="--timeout")
    args_template: str | None = key(Str(), None, "argument template like '--dataset {dataset}' instead of one --col=value per column")
    arg_style: str = key(Choice("equals", "space"), "equals", "params.csv columns as --name=value (equals) or --name value (space)")
    # the gce backend
    region: str | None = key(Str(), None, "region of the bucket, registry and builds", default_doc="derived from ZONE")
    subnetwork: str | None = key(Str(), None, "subnetwork of the worker VMs (the network's default when unset)")
    external_ip: bool = key(Bool(), True, "give VMs an external IP (false needs Cloud NAT or Private Google Access)")
    boot_disk_gb: int = key(Int(10), 10, "boot disk size of each VM in GB")
    spot: bool = key(Bool(), False, "use Spot VMs (cheaper, may be preempted)")
    labels: dict[str, str] = key(Labels(), {}, "extra labels on every VM (GCE label rules)")
    tasks_per_vm: int | None = key(_POSITIVE, None, "tasks a VM runs before it goes; 1 = one VM per task",
                                   default_doc="unset: workers take task after task")
    heartbeat: float = key(Duration(), 30.0, "how often a running attempt refreshes its heartbeat in the store")
    boot_timeout: float = key(Duration(), 300.0, "how long a RUNNING VM may take until its worker first reports (boot, "
                              "worker image pull, container start); then it is deleted, its attempt `infra`")
    max_run_duration: float = key(Duration(30, 120 * 86400), 86400.0, "a VM deletes itself after this long, whatever happens")
    fallback_zones: list[str] = key(StrList(Zone(), "zones like europe-west1-b"), [], "zones to try when ZONE has no capacity")
    price_per_vm_hour: float | None = key(PositiveFloat(), None, "USD per VM-hour in `run --dry-run`'s cost estimate",
                                          default_doc="MACHINE_TYPE's price in the built-in table (parallel_engine/prices.py)")
    infra_failure_limit: int = key(_POSITIVE, 5, "infra failures (VM refused, image pull failed) before the run gives up")
    # containers of the local backend
    cpus: float | None = key(PositiveFloat(), None, "CPU limit of each task's container (unset: none)")
    memory: str | None = key(Memory(), None, "memory limit of each task's container, like 512m or 2g (unset: none)")
    docker_network: str = key(Choice("none", "host"), "none", "network of local task containers")
    # the gce backend: where Google (or the emulated cloud) answers, and the VMs' settings
    compute_endpoint: str | None = key(Url(), None, "Compute API endpoint (set by the emulator; unset: Google)")
    storage_endpoint: str | None = key(Url(), None, "Cloud Storage endpoint (set by the emulator; unset: Google)")
    cloudbuild_endpoint: str | None = key(Url(), None, "Cloud Build endpoint (set by the emulator; unset: Google)")
    iam_endpoint: str | None = key(Url(), None, "IAM API endpoint (set by the emulator; unset: Google)")
    resourcemanager_endpoint: str | None = key(Url(), None, "Resource Manager API endpoint (set by the emulator; unset: Google)")
    serviceusage_endpoint: str | None = key(Url(), None, "Service Usage API endpoint (set by the emulator; unset: Google)")
    metadata_host: str | None = key(HostPort(), None, "metadata server host:port (set by the emulator; unset: Google)")
    credentials_file: str | None = key(
        Str(), None, "Google credentials: a service-account key or an ADC file (relative to the working directory)",
        default_doc="unset: Application Default Credentials (gcloud auth application-default login)")
    token_uri: str | None = key(Url(), None, "OAuth token endpoint (set by the emulator; unset: Google's)")
    registry: str | None = key(Str(), None, "image registry, e.g. europe-west1-docker.pkg.dev/PROJECT/REPO or 127.0.0.1:5000")
    poll_interval: float = key(Duration(), 2.0,
                              "how often the orchestrator lists the VMs and the workers' records (attempt ends: every 0.5 s)")
    pull_policy: str = key(Choice("always", "if-missing", "never"), "always",
                           "when a VM pulls IMAGE: always (by digest after `build`), if-missing (images already on the host), never")
    bucket_prefix: str = key(Str(), "parallel-engine", "folder inside BUCKET that holds the run store")
    scopes: list[str] = key(StrList(Str(), "OAuth scope URLs"), list(DEFAULT_SCOPES),
                            "OAuth scopes of the VMs' service account (the default: bucket read/write and self-delete)")

    origins: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    def get(self, key: str) -> Any:
        """The value of an UPPER-case key (for code driven by the key table)."""
        return getattr(self, KEYS[key].attr)

    def origin(self, key: str) -> str:
        return self.origins.get(key, "default")

    def require(self, *keys: str, for_what: str) -> None:
        """Refuse to go on without `keys`, naming all of them at once and where to set them."""
        unknown = [k for k in keys if k not in KEYS]
        if unknown:
            raise ValueError(f"require(): not config keys: {', '.join(unknown)}")
        missing = [k for k in keys if self.get(k) in (None, "", [], {})]
        if not missing:
            return
        if len(missing) == 1:
            names, verb, pronoun = missing[0], "is", "it"
        else:
            names, verb, pronoun = ", ".join(missing[:-1]) + " and " + missing[-1], "are", "them"
        where = f"set {pronoun} in {self.path}" if self.path else (
            f"create {CONFIG_FILE_NAME} (see .config.example.yaml) and set {pronoun} there"
        )
        others = ", ".join(f"--set {k}=... / {KEYS[k].env}" for k in missing)
        raise ConfigError(f"{names} {verb} required for {for_what}: {where}, or with {others}")

    def effective_quota(self) -> int:
        """VM_QUOTAS, else what fits the backend (one worker per CPU here, a few VMs on gce)."""
        if self.vm_quotas is not None:
            return self.vm_quotas
        return backend_class(self.backend).default_quota()

    def command_argv(self) -> list[str]:
        """The process runtime's argv before the task's arguments.

        Default: python code/main.py, with the Python running parallel-engine (so the user's
        program sees the same interpreter and packages without any setting).
        """
        if self.command is None:
            return [sys.executable, "code/main.py"]
        if isinstance(self.command, str):
            return shlex.split(self.command)
        return list(self.command)

    def region_name(self) -> str | None:
        """REGION, else derived from ZONE ("europe-west1-b" → "europe-west1"); None without either."""
        if self.region:
            return self.region
        if self.zone:
            return self.zone.rsplit("-", 1)[0]
        return None

    def memory_bytes(self) -> int | None:
        """MEMORY in bytes, for runtimes that want a number."""
        return memory_bytes(self.memory) if self.memory else None


#: Every key by name, in declaration order (the seed's six first), read from `Config` itself.
KEYS: dict[str, Key] = {
    f.name.upper(): Key(f.name.upper(), **f.metadata["key"]) for f in fields(Config) if "key" in f.metadata
}


def describe_keys() -> list[tuple[str, str, str]]:
    """(key, default, doc) for every key, in table order: for the docs and `--help`."""
    return [
        (key.name, key.describe_default(), key.doc + (f" [{'|'.join(key.choices)}]" if key.choices else ""))
        for key in KEYS.values()
    ]


# --------------------------------------------------------------------------- loading


def _check_duplicates(node: yaml.Node, source: str, visited: set[int] | None = None) -> None:
    """Refuse a key set twice in any mapping: YAML would silently keep the last one. A node that
    aliases share is checked once (a walk of the expanded tree is what an alias bomb exploits)."""
    visited = set() if visited is None else visited
    if id(node) in visited:
        return
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                line = key_node.start_mark.line + 1
                if key_node.value in seen:
                    raise ConfigError(
                        f"{brief(key_node.value)} is set twice in {source} "
                        f"(lines {seen[key_node.value]} and {line}): keep one"
                    )
                seen[key_node.value] = line
            _check_duplicates(value_node, source, visited)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_duplicates(item, source, visited)


def _read_file(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """The file's top-level mapping and the line of each key; ConfigError for anything else."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    loader: BoundedLoader | None = None
    try:
        loader = BoundedLoader(text)
        node = loader.get_single_node()
        if node is None:  # empty file, or only comments: all defaults
            return {}, {}
        _check_duplicates(node, str(path))
        data = loader.construct_document(node)
    except YamlRefused as exc:
        raise ConfigError(
            f"config file {path}, line {exc.line}: {exc.problem}",
            hint=f"{exc.hint} (each line is KEY: value, e.g. ZONE: europe-west1-b)",
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and context_mark and mark and context_mark.line != mark.line:
            problem += f" ({context} at line {context_mark.line + 1})"  # where the culprit opened
        raise ConfigError(
            f"config file {path} is not valid YAML{where}: {problem}",
            hint="each line is KEY: value, e.g. ZONE: europe-west1-b",
        ) from None
    finally:
        if loader is not None:
            loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must be a mapping of KEY: value lines, not a {type(data).__name__}",
            hint="e.g. ZONE: europe-west1-b",
        )
    lines = {
        key_node.value: key_node.start_mark.line + 1
        for key_node, _ in node.value
        if isinstance(key_node, yaml.ScalarNode)
    }
    return data, lines


def _unknown_key_message(name: Any, where: str) -> str:
    text = brief(str(name)) if isinstance(name, str) else shown(name)
    if text.upper() in KEYS and text != text.upper():
        return f"{text} {where} is not a key: keys are upper case, write {text.upper()}"
    close = difflib.get_close_matches(text.upper(), list(KEYS), n=1, cutoff=0.6)
    guess = f"; did you mean {close[0]}?" if close else " (see .config.example.yaml for every key)"
    return f"unknown key {text} {where}{guess}"


def _resolve_file(path: str | Path | None, environ: Mapping[str, str], cwd: Path) -> Path | None:
    """The file to read: `path`, else $PARALLEL_ENGINE_CONFIG, else <cwd>/.config.yaml if present."""
    if path is not None and str(path) != "":
        chosen, how = Path(path).expanduser(), "given"
    elif environ.get(CONFIG_ENV, "").strip():
        chosen, how = Path(environ[CONFIG_ENV].strip()).expanduser(), f"named by {CONFIG_ENV}"
    else:
        default = cwd / CONFIG_FILE_NAME
        if default.is_file():
            return default.resolve()
        if os.path.lexists(default):  # a folder or a link to nothing: ignoring it would run on every default
            raise ConfigError(f"config file {default} is not a file (a folder, or a link to nothing)",
                              hint=f"make {CONFIG_FILE_NAME} a file of KEY: value lines, or remove it")
        return None
    chosen = (cwd / chosen).resolve()
    if not chosen.exists():
        raise ConfigError(f"config file {chosen} ({how}) does not exist", hint="check the path")
    if not chosen.is_file():
        raise ConfigError(f"config file {chosen} ({how}) is not a file")
    return chosen


def _given(raw: Any) -> bool:
    """None or a blank string means "not set here": the next layer down decides."""
    return raw is not None and not (isinstance(raw, str) and not raw.strip())


# One value as a layer offers it: (key name as written, raw value, "where" for messages, origin).
_Entry = tuple[Any, Any, str, str]


def _file_entries(file_path: Path) -> list[_Entry]:
    data, lines = _read_file(file_path)
    return [
        (name, raw, f"in {file_path} (line {lines.get(name, '?')})", f"file {file_path}")
        for name, raw in data.items()
    ]


def _env_entries(environ: Mapping[str, str]) -> list[_Entry]:
    # PARALLEL_ENGINE_<KEY> only: a bare IMAGE or ZONE in the user's shell is never read.
    return [
        (key.name, environ.get(key.env), f"from environment {key.env}", f"environment {key.env}")
        for key in KEYS.values()
    ]


def _flag_entries(flags: Mapping[str, Any], spelled: Mapping[str, str]) -> list[_Entry]:
    entries: list[_Entry] = []
    for name, raw in flags.items():
        how = spelled.get(name) or (f"flag {KEYS[name].flag_name}" if name in KEYS else "a flag")
        entries.append((name, raw, f"from {how}", how))
    return entries


def load_config(
    path: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    flag_names: Mapping[str, str] | None = None,
) -> Config:
    """Merge flags > environment (PARALLEL_ENGINE_<KEY>) > file > defaults into a checked Config.

    `flag_names` says how a flag was given, for messages and origins (e.g. RETRIES: "--set
    RETRIES"); a flag not in it is named by its key's own flag ("flag --retries").

    The file is `path`, else $PARALLEL_ENGINE_CONFIG, else <cwd>/.config.yaml when it exists,
    else none (all defaults: the local backend). Every value given anywhere is checked, even one
    a higher layer overrides, so a broken file never waits for the day a flag is dropped; all
    problems are reported in one ConfigError. Unknown PARALLEL_ENGINE_* variables are ignored
    (other tools and test harnesses share the prefix); unknown file keys and flags are errors.
    """
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else Path(cwd)
    file_path = _resolve_file(path, environ, cwd)

    values = {key.name: copy.deepcopy(key.default) for key in KEYS.values()}
    origins = {key.name: "default" for key in KEYS.values()}
    problems: list[str] = []
    layers = [  # lowest first: each later layer overrides the ones before
        _file_entries(file_path) if file_path else [],
        _env_entries(environ),
        _flag_entries(flags or {}, flag_names or {}),
    ]
    for entries in layers:
        for name, raw, where, origin in entries:
            if not isinstance(name, str) or name not in KEYS:
                problems.append(_unknown_key_message(name, where))
            elif is_placeholder(raw):
                problems.append(f"{name} {where} is still the placeholder {shown(raw)} that "
                                "`parallel-engine init` wrote: replace it with your value")
            elif _given(raw):  # `KEY:` with no value, a blank variable, a None flag: not set here
                try:
                    values[name], origins[name] = KEYS[name].type(raw), origin
                except _Invalid as exc:
                    why = str(exc) or f"must be {KEYS[name].type.expected}"
                    problems.append(f"{name} {where} {why}, got {shown(raw)}")

    if not problems:  # checks between keys only make sense once each key is right
        problems.extend(_cross_checks(values, origins))
    if problems:
        if len(problems) == 1:
            raise ConfigError(problems[0])
        raise ConfigError(f"{len(problems)} config problems:\n  " + "\n  ".join(problems))

    config = Config(**{KEYS[name].attr: value for name, value in values.items()}, origins=origins, path=file_path)
    backend_class(config.backend).check_config(config)  # e.g. ZONE and BUCKET on gce, all named at once
    return config


# ------------------------------------------------------------------ init's placeholders
# `parallel-engine init --gce` writes one where it could not find a value (PROJECT_ID, ZONE, ...);
# the loader refuses it, naming the key, so nobody launches with a placeholder by mistake.
_PLACEHOLDER = re.compile(r"<FILL IN\b[^>]*>")


def placeholder(what: str) -> str:
    """The value init writes for a key it could not fill: `<FILL IN: what>`."""
    return f"<FILL IN: {what}>"


def is_placeholder(raw: Any) -> bool:
    return isinstance(raw, str) and _PLACEHOLDER.search(raw) is not None


def _cross_checks(values: Mapping[str, Any], origins: Mapping[str, str]) -> Iterable[str]:
    """Checks between keys, each naming both keys and where they came from."""
    zone, region = values["ZONE"], values["REGION"]
    if zone and region and zone.rsplit("-", 1)[0] != region:
        yield (
            f"ZONE {zone} ({origins['ZONE']}) is not in REGION {region} ({origins['REGION']}):"
            " fix one, or leave REGION unset to derive it from ZONE"
        )


