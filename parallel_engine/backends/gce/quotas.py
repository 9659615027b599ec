"""How many VMs of a run the region's quotas leave room for: what doctor checks and what `run`
caps VM_QUOTAS at before it asks for any VM.

A VM takes its vCPUs from CPUS (a Spot VM from PREEMPTIBLE_CPUS, when the region grants that
quota: limit > 0), one INSTANCES, and one IN_USE_ADDRESSES when it has an external IP.
"""

from __future__ import annotations

from dataclasses import dataclass

from parallel_engine.backends.gce.preflight import Quota


@dataclass(frozen=True)
class Need:
    """What one VM takes of a quota, and how many VMs the free part of it leaves room for."""

    metric: str
    per_vm: float
    quota: Quota | None  # None: the region reports no such quota (no limit to respect)

    @property
    def room(self) -> int | None:
        if self.quota is None or self.per_vm <= 0:
            return None
        return max(0, int(self.quota.free // self.per_vm))


def needs(quotas: dict[str, Quota], cpus_per_vm: int, spot: bool, external_ip: bool) -> list[Need]:
    """The quotas one VM of this run takes from, each with the region's limit and usage."""
    preemptible = quotas.get("PREEMPTIBLE_CPUS")
    cpu_metric = "PREEMPTIBLE_CPUS" if spot and preemptible is not None and preemptible.limit > 0 else "CPUS"
    wanted = [(cpu_metric, float(cpus_per_vm)), ("INSTANCES", 1.0)] + ([("IN_USE_ADDRESSES", 1.0)] if external_ip else [])
    return [Need(metric, per_vm, quotas.get(metric)) for metric, per_vm in wanted]


def room_for(found: list[Need]) -> tuple[int | None, Need | None]:
    """How many VMs fit in every quota at once, and the quota that limits it (None, None: no limit)."""
    limiting = [need for need in found if need.room is not None]
    if not limiting:
        return None, None
    tightest = min(limiting, key=lambda need: need.room or 0)
    return tightest.room, tightest
