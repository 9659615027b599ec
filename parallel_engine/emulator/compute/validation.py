"""Google's rules for an instance resource, checked before anything is created.

Each rule answers the way Compute Engine does (HTTP 400, `reason: invalid` or `required`, a message
naming the field), so the orchestrator meets in tests the refusals it would meet on Google. The
result of a successful check is an `InstanceSpec`: the parts the emulator acts on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from parallel_engine.emulator.compute import catalog
from parallel_engine.emulator.compute.errors import ApiError, invalid, required

NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
NAME_RULE = "Must be a match of regex '(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'"
LABEL_KEY_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE_RE = re.compile(r"^[a-z0-9_-]{0,63}$")
METADATA_KEY_RE = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
MAX_LABELS = 64
MAX_METADATA_VALUE = 262144  # 256 KiB per value
MAX_METADATA_TOTAL = 524287  # all of an instance's metadata (keys and values) must be less than 512 KiB
MIN_RUN_SECONDS = 30
MAX_RUN_SECONDS = 120 * 24 * 3600
MIN_COS_DISK_GB = 10
MAX_BULK_COUNT = 5000
TERMINATION_ACTIONS = ("STOP", "DELETE")
PROVISIONING_MODELS = ("STANDARD", "SPOT")
_KEY_RULE = (
    "The key must start with a lowercase character, can only contain lowercase letters, numeric characters, "
    "underscores and dashes. The key can be at most 63 characters long. International characters are allowed."
)
_VALUE_RULE = (
    "The value can only contain lowercase letters, numeric characters, underscores and dashes. "
    "The value can be at most 63 characters long. International characters are allowed."
)


@dataclass
class InstanceSpec:
    """What the emulator needs from a valid instance resource."""

    name: str
    machine_type: catalog.MachineType
    labels: dict[str, str]
    metadata: dict[str, str]
    provisioning_model: str
    termination_action: str | None
    max_run_seconds: float | None
    external_ips: int
    disks_gb: dict[str, int] = field(default_factory=dict)  # "DISKS_TOTAL_GB" / "SSD_TOTAL_GB" → GB
    gpus: dict[str, int] = field(default_factory=dict)  # accelerator type → count
    service_account: str | None = None
    scopes: tuple[str, ...] = ()

    @property
    def is_spot(self) -> bool:
        return self.provisioning_model == "SPOT"


def check_name(name: Any, field_name: str = "resource.name") -> str:
    if not name:
        raise required(field_name)
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise invalid(field_name, name, NAME_RULE)
    return name


def check_labels(labels: Any, field_name: str = "resource.labels") -> dict[str, str]:
    labels = labels or {}
    if not isinstance(labels, dict):
        raise invalid(field_name, labels, "Labels must be a map of strings.")
    if len(labels) > MAX_LABELS:
        raise invalid(
            field_name, "", f"Too many labels: {len(labels)}. A resource can have at most {MAX_LABELS} labels."
        )
    for key, value in labels.items():
        if not LABEL_KEY_RE.match(str(key)):
            raise invalid(field_name, "", f"Label key '{key}' violates format constraints. {_KEY_RULE}")
        if not isinstance(value, str) or not LABEL_VALUE_RE.match(value):
            raise invalid(field_name, "", f"Label value '{value}' violates format constraints. {_VALUE_RULE}")
    return {str(k): str(v) for k, v in labels.items()}


def check_metadata(metadata: Any, field_name: str = "resource.metadata") -> dict[str, str]:
    items = (metadata or {}).get("items") or []
    result: dict[str, str] = {}
    total = 0
    for index, item in enumerate(items):
        key = item.get("key", "")
        value = item.get("value", "") or ""
        if not METADATA_KEY_RE.match(key):
            raise invalid(f"{field_name}.items[{index}].key", key, "Must be a match of regex '[a-zA-Z0-9-_]{1,128}'")
        if key in result:
            raise invalid(f"{field_name}.items[{index}].key", key, "Duplicate metadata key.")
        size = len(value.encode())
        if size > MAX_METADATA_VALUE:
            raise ApiError(
                400,
                "invalid",
                f"Value for field '{field_name}.items[{index}].value' is too large: "
                f"maximum size {MAX_METADATA_VALUE} character(s); actual size {size}.",
            )
        total += size + len(key.encode())
        result[key] = value
    if total > MAX_METADATA_TOTAL:
        raise ApiError(
            400,
            "invalid",
            f"Value for field '{field_name}' is too large: maximum size {MAX_METADATA_TOTAL} character(s); "
            f"actual size {total}.",
        )
    return result


def _last_segment(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def check_machine_type(value: Any, zone: str, field_name: str) -> catalog.MachineType:
    if not value:
        raise required(field_name)
    text = str(value)
    match = re.search(r"zones/([^/]+)/machineTypes/", text)
    if match and match.group(1) != zone:
        raise invalid(field_name, text, f"Machine type must be in zone '{zone}'.")
    found = catalog.machine_type(_last_segment(text))
    if found is None:
        raise invalid(
            field_name, text, f"Machine type with name '{_last_segment(text)}' does not exist in zone '{zone}'."
        )
    return found


def check_scheduling(scheduling: Any, has_gpus: bool, prefix: str) -> tuple[str, str | None, float | None]:
    """(provisioning model, termination action, max run seconds) after Google's scheduling rules."""
    s = scheduling or {}
    field_name = f"{prefix}.scheduling"
    preemptible = bool(s.get("preemptible", False))
    model = s.get("provisioningModel") or ("SPOT" if preemptible else "STANDARD")
    if model not in PROVISIONING_MODELS:
        raise invalid(f"{field_name}.provisioningModel", model, "Must be one of STANDARD, SPOT.")
    if preemptible and model != "SPOT":
        raise invalid(
            f"{field_name}.preemptible", "true", "Preemptible instances must use the SPOT provisioning model."
        )
    spot = model == "SPOT" or preemptible
    if spot and s.get("automaticRestart") is True:
        raise invalid(
            f"{field_name}.automaticRestart", "true", "Preemptible instances cannot be automatically restarted."
        )
    maintenance = s.get("onHostMaintenance") or ("TERMINATE" if spot else "MIGRATE")
    if spot and maintenance == "MIGRATE":
        raise invalid(
            f"{field_name}.onHostMaintenance",
            "MIGRATE",
            "Preemptible instances must have onHostMaintenance set to TERMINATE.",
        )
    if has_gpus and maintenance == "MIGRATE":
        raise invalid(
            f"{field_name}.onHostMaintenance",
            "MIGRATE",
            "Instances with guest accelerators do not support live migration.",
        )
    action = s.get("instanceTerminationAction") or None
    if action is not None and action not in TERMINATION_ACTIONS:
        raise invalid(f"{field_name}.instanceTerminationAction", action, "Must be one of STOP, DELETE.")
    max_run = s.get("maxRunDuration")
    seconds: float | None = None
    if max_run is not None:
        try:
            seconds = int(max_run.get("seconds", 0)) + int(max_run.get("nanos", 0)) / 1e9
        except (TypeError, ValueError, AttributeError):
            raise invalid(f"{field_name}.maxRunDuration", max_run, "Must be a duration.") from None
        if not MIN_RUN_SECONDS <= seconds <= MAX_RUN_SECONDS:
            raise invalid(
                f"{field_name}.maxRunDuration.seconds",
                max_run.get("seconds", "0"),
                f"The max run duration must be between {MIN_RUN_SECONDS} and {MAX_RUN_SECONDS} seconds (120 days).",
            )
        if s.get("terminationTime"):
            raise invalid(
                f"{field_name}.terminationTime", s["terminationTime"], "Cannot be set together with maxRunDuration."
            )
        if action is None:
            raise invalid(
                f"{field_name}.instanceTerminationAction",
                "",
                "An instance termination action (STOP or DELETE) is required when maxRunDuration is set.",
            )
    if action is not None and model == "STANDARD" and max_run is None and not s.get("terminationTime"):
        raise invalid(
            f"{field_name}.instanceTerminationAction",
            action,
            "You cannot specify a termination action for a VM instance that has the standard provisioning model "
            "(default). To use instance termination action, the VM instance must use the Spot provisioning model "
            "or set a time limit (maxRunDuration or terminationTime).",
        )
    if spot and action is None:
        action = "STOP"
    return model, action, seconds


def _disks(disks: Any, prefix: str) -> dict[str, int]:
    if not disks:
        raise invalid(f"{prefix}.disks", "", "At least one boot disk must be specified.")
    if not any(d.get("boot") for d in disks):
        raise invalid(f"{prefix}.disks", "", "A boot disk must be specified.")
    totals: dict[str, int] = {}
    for index, disk in enumerate(disks):
        params = disk.get("initializeParams") or {}
        if not params and not disk.get("source"):
            raise invalid(f"{prefix}.disks[{index}]", "", "Either source or initializeParams must be specified.")
        size = int(params.get("diskSizeGb") or MIN_COS_DISK_GB)
        if disk.get("boot") and size < MIN_COS_DISK_GB:
            raise invalid(
                f"{prefix}.disks[{index}].initializeParams.diskSizeGb",
                size,
                f"Requested disk size cannot be smaller than the image size ({MIN_COS_DISK_GB} GB).",
            )
        metric = (
            "DISKS_TOTAL_GB"
            if _last_segment(params.get("diskType", "pd-standard")) == "pd-standard"
            else "SSD_TOTAL_GB"
        )
        totals[metric] = totals.get(metric, 0) + size
    return totals


def check_instance(resource: Any, zone: str, prefix: str = "resource", name: str | None = None) -> InstanceSpec:
    """Validate an Instance (insert) or InstanceProperties (bulkInsert, `name` given separately)."""
    if not isinstance(resource, dict):
        raise ApiError(400, "parseError", "This API does not support parsing form-encoded input.")
    bulk = name is not None
    name = check_name(name if bulk else resource.get("name"), "resource.name" if not bulk else f"{prefix}.name")
    machine = check_machine_type(resource.get("machineType"), zone, f"{prefix}.machineType")
    labels = check_labels(resource.get("labels"), f"{prefix}.labels")
    metadata = check_metadata(resource.get("metadata"), f"{prefix}.metadata")
    gpus: dict[str, int] = {}
    for index, accel in enumerate(resource.get("guestAccelerators") or []):
        kind = _last_segment(accel.get("acceleratorType", ""))
        if kind not in catalog.GPU_QUOTA_METRIC:
            raise invalid(f"{prefix}.guestAccelerators[{index}].acceleratorType", kind, "Unknown accelerator type.")
        if not machine.name.startswith("n1-") and "custom" not in machine.name:
            raise invalid(
                f"{prefix}.guestAccelerators[{index}]",
                kind,
                f"Machine type {machine.name} does not support guest accelerators.",
            )
        gpus[kind] = gpus.get(kind, 0) + int(accel.get("acceleratorCount") or 1)
    if machine.gpu_type:
        gpus[machine.gpu_type] = gpus.get(machine.gpu_type, 0) + machine.gpu_count
    model, action, max_run = check_scheduling(resource.get("scheduling"), bool(gpus), prefix)
    disks_gb = _disks(resource.get("disks"), prefix)
    external = sum(len(nic.get("accessConfigs") or []) for nic in resource.get("networkInterfaces") or [])
    accounts = resource.get("serviceAccounts") or []
    if len(accounts) > 1:
        raise invalid(f"{prefix}.serviceAccounts", "", "At most one service account can be specified.")
    email = accounts[0].get("email") if accounts else None
    scopes = tuple(accounts[0].get("scopes") or ()) if accounts else ()
    return InstanceSpec(
        name=name,
        machine_type=machine,
        labels=labels,
        metadata=metadata,
        provisioning_model=model,
        termination_action=action,
        max_run_seconds=max_run,
        external_ips=external,
        disks_gb=disks_gb,
        gpus=gpus,
        service_account=email,
        scopes=scopes,
    )


def bulk_names(body: dict[str, Any], existing: set[str]) -> tuple[list[str], int]:
    """The names a bulkInsert asks for (all `count` of them) and its minCount, after Google's rules."""
    try:
        count = int(body.get("count") or 0)
        min_count = int(body.get("minCount") or count)
    except (TypeError, ValueError):
        raise invalid("bulkInsertInstanceResource.count", body.get("count"), "Must be an integer.") from None
    per_instance = body.get("perInstanceProperties") or {}
    pattern = body.get("namePattern") or ""
    if count < 1:
        raise invalid("bulkInsertInstanceResource.count", count, "Count must be at least 1.")
    if count > MAX_BULK_COUNT:
        raise invalid("bulkInsertInstanceResource.count", count, f"Count must be at most {MAX_BULK_COUNT}.")
    if not 1 <= min_count <= count:
        raise invalid("bulkInsertInstanceResource.minCount", min_count, "minCount must be between 1 and count.")
    if not pattern and not per_instance:
        raise required("bulkInsertInstanceResource.namePattern")
    if len(per_instance) > count:
        raise invalid(
            "bulkInsertInstanceResource.perInstanceProperties",
            "",
            "The number of per-instance properties exceeds count.",
        )
    names = [check_name(n, f"bulkInsertInstanceResource.perInstanceProperties[{n}]") for n in per_instance]
    for n, props in per_instance.items():
        if set(props) - {"name", "hostname"}:
            raise invalid(
                f"bulkInsertInstanceResource.perInstanceProperties[{n}]",
                "",
                "Only name and hostname can be set per instance.",
            )
        if props.get("name") not in (None, "", n):
            raise invalid(
                f"bulkInsertInstanceResource.perInstanceProperties[{n}].name",
                props["name"],
                "The name must be the map key.",
            )
    taken = existing | set(names)  # generated names skip the per-instance ones too
    missing = count - len(names)
    if missing:
        if not pattern:
            raise invalid(
                "bulkInsertInstanceResource.namePattern",
                "",
                "namePattern is required when count exceeds the named instances.",
            )
        runs = re.findall(r"#+", pattern)
        if len(runs) != 1 or len(runs[0]) > 18:
            raise invalid(
                "bulkInsertInstanceResource.namePattern",
                pattern,
                "Must contain exactly one run of 1 to 18 '#' characters.",
            )
        width = len(runs[0])
        head, tail = pattern.split(runs[0])
        check_name(f"{head}{'0' * width}{tail}", "bulkInsertInstanceResource.namePattern")
        matcher = re.compile(rf"^{re.escape(head)}(\d{{{width}}}){re.escape(tail)}$")
        start = max((int(m.group(1)) for n in taken if (m := matcher.match(n))), default=0) + 1
        if start + missing - 1 >= 10**width:
            raise invalid(
                "bulkInsertInstanceResource.namePattern", pattern, "Not enough digits for the requested count."
            )
        generated = [f"{head}{str(i).zfill(width)}{tail}" for i in range(start, start + missing)]
        names.extend(generated)
    return names, min_count
