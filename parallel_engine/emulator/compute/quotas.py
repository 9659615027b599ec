"""Regional quotas that instance creation really counts against (vCPUs, instances, IPs, GPUs, disks)."""

from __future__ import annotations

import threading
from collections import defaultdict

from parallel_engine.emulator.compute.catalog import DEFAULT_QUOTAS, GPU_QUOTA_METRIC
from parallel_engine.emulator.compute.errors import OperationFailure, quota_failure
from parallel_engine.emulator.compute.validation import InstanceSpec

#: What a TERMINATED (stopped) VM keeps holding: its instance slot and its disks.
HELD_WHEN_STOPPED = frozenset({"INSTANCES", "DISKS_TOTAL_GB", "SSD_TOTAL_GB"})


def demand(spec: InstanceSpec) -> dict[str, float]:
    """How much of each regional quota one VM of this spec uses while it runs."""
    need: dict[str, float] = {"CPUS": spec.machine_type.cpus, "INSTANCES": 1}
    if spec.external_ips:
        need["IN_USE_ADDRESSES"] = spec.external_ips
    for metric, gb in spec.disks_gb.items():
        need[metric] = gb
    for kind, count in spec.gpus.items():
        metric = GPU_QUOTA_METRIC[kind]
        need[metric] = need.get(metric, 0) + count
    return need


def stopped_part(need: dict[str, float]) -> dict[str, float]:
    return {metric: amount for metric, amount in need.items() if metric in HELD_WHEN_STOPPED}


class QuotaLedger:
    """Limits and usage per region; `reserve` is all-or-nothing and thread-safe."""

    def __init__(self, limits: dict[str, float] | None = None) -> None:
        self._lock = threading.Lock()
        self._defaults = dict(DEFAULT_QUOTAS)
        self._defaults.update(limits or {})
        self._limits: dict[str, dict[str, float]] = defaultdict(dict)  # region → overrides
        self._usage: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))

    def set_limit(self, metric: str, limit: float, region: str | None = None) -> None:
        """Change a limit in one region, or the default of every region when `region` is None."""
        with self._lock:
            if region is None:
                self._defaults[metric] = limit
            else:
                self._limits[region][metric] = limit

    def limit(self, region: str, metric: str) -> float:
        return self._limits[region].get(metric, self._defaults.get(metric, 0.0))

    def reserve(self, region: str, need: dict[str, float]) -> OperationFailure | None:
        """Take `need` from the region's quotas, or nothing and the failure Google reports."""
        with self._lock:
            usage = self._usage[region]
            for metric, amount in need.items():
                limit = self.limit(region, metric)
                if amount > 0 and usage[metric] + amount > limit:
                    return quota_failure(metric, limit, region)
            for metric, amount in need.items():
                usage[metric] += amount
            return None

    def capacity(self, region: str, need: dict[str, float], wanted: int) -> int:
        """How many more VMs of `need` fit in the region's quotas (at most `wanted`)."""
        with self._lock:
            usage = self._usage[region]
            fits = wanted
            for metric, amount in need.items():
                if amount > 0:
                    room = self.limit(region, metric) - usage[metric]
                    fits = min(fits, max(0, int(room // amount)))
            return fits

    def first_shortfall(self, region: str, need: dict[str, float], copies: int) -> tuple[str, float] | None:
        """The first metric that cannot hold `copies` more VMs, with its limit (for bulkInsert)."""
        with self._lock:
            usage = self._usage[region]
            for metric, amount in need.items():
                limit = self.limit(region, metric)
                if amount > 0 and usage[metric] + amount * copies > limit:
                    return metric, limit
            return None

    def release(self, region: str, need: dict[str, float]) -> None:
        with self._lock:
            usage = self._usage[region]
            for metric, amount in need.items():
                usage[metric] = max(0.0, usage[metric] - amount)

    def report(self, region: str) -> list[dict[str, float | str]]:
        """`regions.get` quotas: every known metric with its limit and usage."""
        with self._lock:
            metrics = sorted(set(self._defaults) | set(self._limits[region]) | set(self._usage[region]))
            return [
                {"metric": m, "limit": float(self.limit(region, m)), "usage": float(self._usage[region][m])}
                for m in metrics
            ]
