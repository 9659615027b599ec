"""The JSON Compute Engine returns for instances, machine types, zones and regions.

Field names are camelCase, enums are strings and int64 values are strings, as in Google's REST
API, so the real client parses them unchanged. Links point at the emulator (never at Google).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from typing import Any

from parallel_engine.emulator.compute import catalog
from parallel_engine.emulator.compute.operations import rfc3339_now
from parallel_engine.emulator.compute.validation import InstanceSpec


def fingerprint(value: Any) -> str:
    digest = hashlib.sha256(json.dumps(value, sort_keys=True).encode()).digest()[:8]
    return base64.b64encode(digest).decode()


class Links:
    """Self links under the emulator's base URL (`http://127.0.0.1:PORT/compute/v1`)."""

    def __init__(self, base_url: str, project: str) -> None:
        self.base_url = base_url
        self.project = project

    @property
    def project_url(self) -> str:
        return f"{self.base_url}/projects/{self.project}"

    def zone(self, zone: str) -> str:
        return f"{self.project_url}/zones/{zone}"

    def region(self, region: str) -> str:
        return f"{self.project_url}/regions/{region}"

    def instance(self, zone: str, name: str) -> str:
        return f"{self.zone(zone)}/instances/{name}"

    def machine_type(self, zone: str, name: str) -> str:
        return f"{self.zone(zone)}/machineTypes/{name}"


def instance_resource(
    body: dict[str, Any], spec: InstanceSpec, zone: str, instance_id: str, links: Links, index: int, email: str | None
) -> dict[str, Any]:
    """The stored instance built from an insert body (or bulk instance properties plus a name)."""
    resource = copy.deepcopy(body)
    resource.update(
        kind="compute#instance",
        id=instance_id,
        name=spec.name,
        creationTimestamp=rfc3339_now(),
        zone=links.zone(zone),
        status="PROVISIONING",
        machineType=links.machine_type(zone, spec.machine_type.name),
        selfLink=links.instance(zone, spec.name),
        cpuPlatform="Intel Broadwell",
        startRestricted=False,
        deletionProtection=bool(body.get("deletionProtection", False)),
        labels=dict(spec.labels),
        labelFingerprint=fingerprint(spec.labels),
        fingerprint=fingerprint([spec.name, instance_id]),
    )
    items = [{"key": k, "value": v} for k, v in spec.metadata.items()]
    resource["metadata"] = {"kind": "compute#metadata", "fingerprint": fingerprint(items), "items": items}
    if not items:
        del resource["metadata"]["items"]
    resource["networkInterfaces"] = _nics(body.get("networkInterfaces") or [], links, index)
    resource["disks"] = _disks(body.get("disks") or [], spec.name, zone, links)
    if email:
        resource["serviceAccounts"] = [{"email": email, "scopes": list(spec.scopes)}]
    scheduling = dict(body.get("scheduling") or {})
    spot = spec.is_spot
    scheduling.setdefault("onHostMaintenance", "TERMINATE" if spot or spec.gpus else "MIGRATE")
    scheduling.setdefault("automaticRestart", not spot)
    scheduling.setdefault("preemptible", bool(scheduling.get("preemptible", False)))
    scheduling.setdefault("provisioningModel", spec.provisioning_model)
    if spec.termination_action:
        scheduling.setdefault("instanceTerminationAction", spec.termination_action)
    resource["scheduling"] = scheduling
    return resource


def _nics(nics: list[dict[str, Any]], links: Links, index: int) -> list[dict[str, Any]]:
    out = []
    for n, nic in enumerate(nics):
        nic = copy.deepcopy(nic)
        network = nic.get("network") or "global/networks/default"
        if network.startswith("projects/"):
            network = f"{links.base_url}/{network}"
        elif not network.startswith("http"):
            network = f"{links.project_url}/{network}"
        nic.update(kind="compute#networkInterface", name=f"nic{n}", network=network, fingerprint=fingerprint(nic))
        nic["networkIP"] = f"10.128.{(index // 250) % 250}.{index % 250 + 2}"
        nic["stackType"] = nic.get("stackType", "IPV4_ONLY")
        for a, access in enumerate(nic.get("accessConfigs") or []):
            access.setdefault("name", "External NAT")
            access.setdefault("type", "ONE_TO_ONE_NAT")
            access["kind"] = "compute#accessConfig"
            access["natIP"] = f"203.0.113.{(index + a) % 250 + 1}"  # TEST-NET-3: documentation only
            access.setdefault("networkTier", "PREMIUM")
        out.append(nic)
    return out


def _disks(disks: list[dict[str, Any]], name: str, zone: str, links: Links) -> list[dict[str, Any]]:
    out = []
    for index, disk in enumerate(disks):
        params = disk.get("initializeParams") or {}
        disk_name = params.get("diskName") or (name if index == 0 else f"{name}-{index}")
        out.append(
            {
                "kind": "compute#attachedDisk",
                "type": disk.get("type", "PERSISTENT"),
                "mode": disk.get("mode", "READ_WRITE"),
                "source": disk.get("source") or f"{links.zone(zone)}/disks/{disk_name}",
                "deviceName": disk.get("deviceName") or disk_name,
                "index": index,
                "boot": bool(disk.get("boot", False)),
                "autoDelete": bool(disk.get("autoDelete", bool(params))),
                "interface": disk.get("interface", "SCSI"),
                "diskSizeGb": str(params.get("diskSizeGb") or 10),
            }
        )
    return out


def machine_type_resource(mt: catalog.MachineType, zone: str, links: Links) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "kind": "compute#machineType",
        "id": catalog.stable_id("machineType", mt.name),
        "creationTimestamp": "2015-01-01T00:00:00.000-08:00",
        "name": mt.name,
        "description": f"{mt.cpus} vCPU{'s' if mt.cpus > 1 else ''}, {mt.memory_mb / 1024:g} GB RAM",
        "guestCpus": mt.cpus,
        "memoryMb": mt.memory_mb,
        "imageSpaceGb": 0,
        "maximumPersistentDisks": 128,
        "maximumPersistentDisksSizeGb": "263168",
        "zone": zone,
        "selfLink": links.machine_type(zone, mt.name),
        "isSharedCpu": mt.shared_cpu,
    }
    if mt.gpu_type:
        resource["accelerators"] = [{"guestAcceleratorType": mt.gpu_type, "guestAcceleratorCount": mt.gpu_count}]
    return resource


def zone_resource(zone: str, links: Links) -> dict[str, Any]:
    return {
        "kind": "compute#zone",
        "id": catalog.stable_id("zone", zone),
        "name": zone,
        "description": zone,
        "status": "UP",
        "region": links.region(catalog.region_of(zone)),
        "selfLink": links.zone(zone),
        "availableCpuPlatforms": ["Intel Broadwell", "Intel Cascade Lake", "AMD Milan"],
    }


def region_resource(region: str, quotas: list[dict[str, Any]], links: Links, zones: list[str]) -> dict[str, Any]:
    return {
        "kind": "compute#region",
        "id": catalog.stable_id("region", region),
        "name": region,
        "description": region,
        "status": "UP",
        "zones": [links.zone(z) for z in zones],
        "quotas": quotas,
        "selfLink": links.region(region),
    }
