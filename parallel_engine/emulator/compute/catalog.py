"""What exists in the emulated zones: machine types, accelerators, regions and quota metrics.

The numbers mirror Google's public tables closely enough for what the orchestrator reads: vCPUs
(what CPUS quota counts), memory, and built-in GPUs.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

#: Google's public regions and the letters of their zones (us-east1 has b, c, d: there is no us-east1-a).
GOOGLE_ZONES: dict[str, str] = {
    "us-central1": "abcf", "us-east1": "bcd", "us-east4": "abc", "us-east5": "abc", "us-south1": "abc",
    "us-west1": "abc", "us-west2": "abc", "us-west3": "abc", "us-west4": "abc",
    "northamerica-northeast1": "abc", "northamerica-northeast2": "abc", "northamerica-south1": "abc",
    "southamerica-east1": "abc", "southamerica-west1": "abc",
    "europe-west1": "bcd", "europe-west2": "abc", "europe-west3": "abc", "europe-west4": "abc",
    "europe-west6": "abc", "europe-west8": "abc", "europe-west9": "abc", "europe-west10": "abc",
    "europe-west12": "abc", "europe-north1": "abc", "europe-north2": "abc", "europe-central2": "abc",
    "europe-southwest1": "abc",
    "asia-east1": "abc", "asia-east2": "abc", "asia-northeast1": "abc", "asia-northeast2": "abc",
    "asia-northeast3": "abc", "asia-south1": "abc", "asia-south2": "abc", "asia-southeast1": "abc",
    "asia-southeast2": "abc", "australia-southeast1": "abc", "australia-southeast2": "abc",
    "me-west1": "abc", "me-central1": "abc", "me-central2": "abc", "africa-south1": "abc",
}  # fmt: skip


@dataclass(frozen=True)
class MachineType:
    name: str
    cpus: int
    memory_mb: int
    shared_cpu: bool = False
    gpu_type: str | None = None  # built-in accelerators (a2, g2)
    gpu_count: int = 0


def _family(prefix: str, sizes: tuple[int, ...], mb_per_cpu: float) -> dict[str, MachineType]:
    return {f"{prefix}-{n}": MachineType(f"{prefix}-{n}", n, int(n * mb_per_cpu)) for n in sizes}


def _build() -> dict[str, MachineType]:
    types: dict[str, MachineType] = {}
    types.update(_family("n1-standard", (1, 2, 4, 8, 16, 32, 64, 96), 3840))
    types.update(_family("n1-highmem", (2, 4, 8, 16, 32, 64, 96), 6656))
    types.update(_family("n1-highcpu", (2, 4, 8, 16, 32, 64, 96), 921.6))
    types.update(_family("e2-standard", (2, 4, 8, 16, 32), 4096))
    types.update(_family("e2-highmem", (2, 4, 8, 16), 8192))
    types.update(_family("e2-highcpu", (2, 4, 8, 16, 32), 1024))
    for family in ("n2", "n2d"):
        types.update(_family(f"{family}-standard", (2, 4, 8, 16, 32, 48, 64, 80, 96, 128), 4096))
        types.update(_family(f"{family}-highmem", (2, 4, 8, 16, 32, 48, 64, 80, 96, 128), 8192))
        types.update(_family(f"{family}-highcpu", (2, 4, 8, 16, 32, 48, 64, 80, 96), 1024))
    types.update(_family("c2-standard", (4, 8, 16, 30, 60), 4096))
    types.update(_family("c3-standard", (4, 8, 22, 44, 88, 176), 4096))
    types["e2-micro"] = MachineType("e2-micro", 2, 1024, shared_cpu=True)
    types["e2-small"] = MachineType("e2-small", 2, 2048, shared_cpu=True)
    types["e2-medium"] = MachineType("e2-medium", 2, 4096, shared_cpu=True)
    types["f1-micro"] = MachineType("f1-micro", 1, 614, shared_cpu=True)
    types["g1-small"] = MachineType("g1-small", 1, 1741, shared_cpu=True)
    for name, cpus, gpus in (("g2-standard-4", 4, 1), ("g2-standard-8", 8, 1), ("g2-standard-12", 12, 1),
                             ("g2-standard-16", 16, 1), ("g2-standard-24", 24, 2), ("g2-standard-32", 32, 1),
                             ("g2-standard-48", 48, 4), ("g2-standard-96", 96, 8)):  # fmt: skip
        types[name] = MachineType(name, cpus, cpus * 4096, gpu_type="nvidia-l4", gpu_count=gpus)
    for gpus in (1, 2, 4, 8):
        name = f"a2-highgpu-{gpus}g"
        types[name] = MachineType(name, 12 * gpus, 12 * gpus * 7168, gpu_type="nvidia-tesla-a100", gpu_count=gpus)
    return types


MACHINE_TYPES: dict[str, MachineType] = _build()
_CUSTOM_RE = re.compile(r"^(?:(n1|n2|n2d|e2)-)?custom-(\d+)-(\d+)(-ext)?$")

#: Accelerator type name → the regional quota metric it counts against.
GPU_QUOTA_METRIC: dict[str, str] = {
    "nvidia-tesla-t4": "NVIDIA_T4_GPUS",
    "nvidia-l4": "NVIDIA_L4_GPUS",
    "nvidia-tesla-v100": "NVIDIA_V100_GPUS",
    "nvidia-tesla-p100": "NVIDIA_P100_GPUS",
    "nvidia-tesla-p4": "NVIDIA_P4_GPUS",
    "nvidia-tesla-a100": "NVIDIA_A100_GPUS",
}

#: Regional quota limits of a fresh project (close to what new projects get).
DEFAULT_QUOTAS: dict[str, float] = {
    "CPUS": 24,
    "INSTANCES": 240,
    "IN_USE_ADDRESSES": 8,
    "DISKS_TOTAL_GB": 4096,
    "SSD_TOTAL_GB": 500,
    "PREEMPTIBLE_CPUS": 0,
    "NVIDIA_T4_GPUS": 1,
    "NVIDIA_L4_GPUS": 1,
    "NVIDIA_V100_GPUS": 0,
    "NVIDIA_P100_GPUS": 0,
    "NVIDIA_P4_GPUS": 0,
    "NVIDIA_A100_GPUS": 0,
}


def machine_type(name: str) -> MachineType | None:
    """A predefined type, or a custom one (`custom-4-16384`, `e2-custom-2-8192`)."""
    if name in MACHINE_TYPES:
        return MACHINE_TYPES[name]
    match = _CUSTOM_RE.match(name)
    if match:
        return MachineType(name, int(match.group(2)), int(match.group(3)))
    return None


def region_of(zone: str) -> str:
    return zone.rsplit("-", 1)[0]


def zones_of(region: str) -> list[str]:
    """The zones of a Google region (none for a region Google does not have)."""
    return [f"{region}-{letter}" for letter in GOOGLE_ZONES.get(region, "")]


def known_zones(own_zone: str) -> list[str]:
    """Every zone the emulated project can use: Google's, plus the emulator's own if Google has no such zone."""
    zones = [zone for region in GOOGLE_ZONES for zone in zones_of(region)]
    return zones if own_zone in zones else [*zones, own_zone]


def stable_id(*parts: str) -> str:
    """A deterministic uint64-looking id for catalogue resources (zones, regions, machine types)."""
    text = "/".join(parts).encode()
    return str(1000000000000000000 + zlib.crc32(text) * 1000 + len(text))
