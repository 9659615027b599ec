"""The gce backend's view of the config: what it cannot start without, checked once, typed as present.

Every key is declared once, in `parallel_engine.config.Config` (the gce ones grouped there);
this view adds no key. It holds the few that a local config may leave unset but the gce backend
needs (ZONE, BUCKET: non-optional here, so no gce module asserts them), and the values derived
from them; every other setting is read from `config`, whose types already fit.
"""

from __future__ import annotations

from dataclasses import dataclass

from parallel_engine.config import Config
from parallel_engine.errors import ConfigError
from parallel_engine.protocol import DEFAULT_COMPUTE, DEFAULT_STORAGE

#: What the gce backend cannot start without (a project too: PROJECT_ID, or the credentials'
#: own, asked for once they are loaded: credentials.google_project).
REQUIRED = ("ZONE", "BUCKET")


@dataclass(frozen=True)
class GceSettings:
    config: Config
    zone: str
    bucket: str

    @classmethod
    def of(cls, config: Config) -> GceSettings:
        """The settings, or one ConfigError naming every missing key and where to set it."""
        if config.zone and config.bucket:
            return cls(config, config.zone, config.bucket)
        config.require(*REQUIRED, for_what="the gce backend")
        raise ConfigError("ZONE and BUCKET are required for the gce backend")  # require() raised already

    @property
    def zones(self) -> list[str]:
        """Where VMs are asked for, in order: ZONE, then FALLBACK_ZONES."""
        return [self.zone, *self.config.fallback_zones]

    @property
    def per_task(self) -> bool:
        """One VM per task (TASKS_PER_VM 1), rather than workers that take task after task."""
        return self.config.tasks_per_vm == 1

    @property
    def storage_endpoint(self) -> str:
        return self.config.storage_endpoint or DEFAULT_STORAGE

    @property
    def compute_endpoint(self) -> str:
        return self.config.compute_endpoint or DEFAULT_COMPUTE

    @property
    def where(self) -> str:
        """The run store's address, for messages."""
        return f"gs://{self.bucket}/{self.config.bucket_prefix}"
