"""Quotas read before launch: `run` on gce asks the region once how many of its VMs fit in the
quotas left (backends/gce/quotas.py) and caps VM_QUOTAS there, saying so, instead of finding out
from refusals. A region it cannot read leaves VM_QUOTAS as it is: the pool still waits out refusals.
A ZONE or MACHINE_TYPE Google does not have is an error here, before anything is created."""

from __future__ import annotations

from parallel_engine.backends.base import InfoFn
from parallel_engine.backends.gce.preflight import Preflight
from parallel_engine.backends.gce.quotas import needs, room_for
from parallel_engine.backends.gce.settings import GceSettings
from parallel_engine.errors import BackendError, ConfigError, ParallelEngineError


def vms_that_fit(settings: GceSettings, project: str, wanted: int, say: InfoFn) -> int:
    """`wanted` VMs at once, or fewer when the region's quotas leave room for fewer (at least 1:
    with no room now, the run waits for capacity as it does on a refusal)."""
    config = settings.config
    region = config.region or settings.zone.rsplit("-", 1)[0]
    api: Preflight | None = None
    try:
        api = Preflight(settings, project)
        cpus = api.machine_type_cpus(settings.zone, config.machine_type)
        quotas = api.region_quotas(region)
    except ParallelEngineError as exc:
        if isinstance(exc, BackendError) and api is not None and _no_such_zone(api, settings.zone):
            raise ConfigError(f"ZONE {settings.zone} ({config.origin('ZONE')}) is not a zone of Compute Engine",
                              hint="choose one of `gcloud compute zones list`") from None
        say(f"note: could not read the quotas of {region} ({exc.message}): VM_QUOTAS {wanted} as set")
        return wanted
    if cpus is None:  # the zone answered that it has no such type: every VM request would be refused
        raise ConfigError(f"MACHINE_TYPE {config.machine_type} ({config.origin('MACHINE_TYPE')}) does not exist in "
                          f"{settings.zone}", hint=f"choose one of `gcloud compute machine-types list --zones {settings.zone}`")
    room, limiting = room_for(needs(quotas, cpus, config.spot, config.external_ip))
    if room is None or limiting is None or room >= wanted:
        return wanted
    unit = f"{config.machine_type}" + (f" ({cpus} vCPUs)" if limiting.metric.endswith("CPUS") else "")
    if room == 0:
        say(f"VM_QUOTAS {wanted}, but the {limiting.metric} quota of {region} has no room for one more {unit} now: "
            "starting 1 at a time, waiting for capacity")
        return 1
    say(f"VM_QUOTAS {wanted}, but the {limiting.metric} quota of {region} leaves room for {room} {unit}: "
        f"running {room} at once")
    return room


def _no_such_zone(api: Preflight, zone: str) -> bool:
    """True only when Compute Engine says it has no such zone (a zonal call failed: was it the zone?)."""
    try:
        return not api.zone_exists(zone)
    except ParallelEngineError:
        return False  # cannot tell: the caller's note stands
