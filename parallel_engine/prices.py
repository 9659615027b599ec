"""A small table of what a VM-hour costs, for `run --dry-run`'s estimate; PRICE_PER_VM_HOUR overrides it.

On-demand list prices in us-central1 (USD per hour, vCPUs and memory included, boot disk not),
from PRICES_SOURCE on PRICES_DATE. Other regions cost up to ~40% more; Spot VMs cost 60-91%
less, but their prices change daily, so the table gives the on-demand price for them too: an
upper bound, said so in the estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

PRICES_SOURCE = "https://cloud.google.com/compute/vm-instance-pricing (us-central1, on-demand)"
PRICES_DATE = "2024-06-01"

#: machine type → USD per VM-hour.
PRICES: dict[str, float] = {
    "e2-micro": 0.008376,
    "e2-small": 0.016751,
    "e2-medium": 0.033503,
    "e2-standard-2": 0.067006,
    "e2-standard-4": 0.134012,
    "e2-standard-8": 0.268024,
    "e2-standard-16": 0.536048,
    "n1-standard-1": 0.0475,
    "n1-standard-2": 0.0950,
    "n1-standard-4": 0.1900,
    "n1-standard-8": 0.3800,
    "n1-standard-16": 0.7600,
    "n2-standard-2": 0.097118,
    "n2-standard-4": 0.194236,
    "n2-standard-8": 0.388472,
    "n2-standard-16": 0.776944,
}


@dataclass(frozen=True)
class Price:
    """USD per VM-hour (None when unknown) and where that figure comes from, in words."""

    per_hour: float | None
    basis: str


def vm_hour_price(machine_type: str, spot: bool, override: float | None) -> Price:
    """The price of one VM-hour of `machine_type`: PRICE_PER_VM_HOUR when set, else the table's."""
    if override is not None:
        return Price(override, "PRICE_PER_VM_HOUR")
    listed = PRICES.get(machine_type)
    if listed is None:
        return Price(None, f"{machine_type} is not in the built-in price table: set PRICE_PER_VM_HOUR")
    spot_note = "; Spot costs 60-91% less, so this is an upper bound" if spot else ""
    return Price(listed, f"{machine_type} list price of {PRICES_DATE}, {PRICES_SOURCE}{spot_note}")
