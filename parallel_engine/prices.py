"""A small table of what a VM-hour costs, for `run --dry-run`'s estimate; PRICE_PER_VM_HOUR overrides it.

Prices in us-central1 (USD per hour, vCPUs and memory included, boot disk not), on demand and
Spot, as Google's Cloud Billing Catalog gave them on PRICES_DATE (read from the mirror named in
PRICES_SOURCE, which regenerates them from the catalog; the on-demand figures are also the ones
on Google's VM instance pricing page). Other regions cost up to ~40% more. Spot prices move over
time (Google quotes 60-91% below on demand): the estimate calls them approximate.
"""

from __future__ import annotations

from dataclasses import dataclass

PRICES_SOURCE = ("Cloud Billing Catalog, us-central1, via github.com/Cyclenerd/google-cloud-pricing-cost-calculator "
                 "(pricing.yml); cf. https://cloud.google.com/compute/vm-instance-pricing")
PRICES_DATE = "2026-07-30"

#: machine type → (on-demand, Spot) USD per VM-hour.
PRICES: dict[str, tuple[float, float]] = {
    "e2-micro": (0.008376, 0.005027),
    "e2-small": (0.016753, 0.010053),
    "e2-medium": (0.033506, 0.020106),
    "e2-standard-2": (0.067011, 0.040212),
    "e2-standard-4": (0.134023, 0.080424),
    "e2-standard-8": (0.268046, 0.160848),
    "e2-standard-16": (0.536091, 0.321696),
    "n1-standard-1": (0.0475, 0.016753),
    "n1-standard-2": (0.0950, 0.033505),
    "n1-standard-4": (0.1900, 0.06701),
    "n1-standard-8": (0.3800, 0.13402),
    "n1-standard-16": (0.7600, 0.26804),
    "n2-standard-2": (0.097118, 0.04606),
    "n2-standard-4": (0.194236, 0.09212),
    "n2-standard-8": (0.388472, 0.18424),
    "n2-standard-16": (0.776944, 0.36848),
}


@dataclass(frozen=True)
class Price:
    """USD per VM-hour (None when unknown) and where that figure comes from, in words."""

    per_hour: float | None
    basis: str


def vm_hour_price(machine_type: str, spot: bool, override: float | None) -> Price:
    """The price of one VM-hour of `machine_type`: PRICE_PER_VM_HOUR when set, else the table's
    (its Spot column for Spot VMs)."""
    if override is not None:
        return Price(override, "PRICE_PER_VM_HOUR")
    listed = PRICES.get(machine_type)
    if listed is None:
        return Price(None, f"{machine_type} is not in the built-in price table: set PRICE_PER_VM_HOUR")
    on_demand, spot_price = listed
    if spot:
        return Price(spot_price, f"{machine_type} Spot price, approximate (Spot prices move), as of {PRICES_DATE}, "
                                 f"{PRICES_SOURCE}")
    return Price(on_demand, f"{machine_type} on-demand price as of {PRICES_DATE}, {PRICES_SOURCE}")
