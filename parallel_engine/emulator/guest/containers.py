"""Remove the Docker containers an emulated VM started (they belong to dockerd, not to the VM's script)."""

from __future__ import annotations

import os
import shutil

from parallel_engine.emulator.watchdog import remove_labelled

LABEL_VM = "emulator-vm"
LABEL_EMULATOR = "emulator-id"
#: `docker ps`, `docker rm -f` (seconds): short, a VM's power-off (and the emulator's stop) waits on them
TIMEOUTS = (10.0, 30.0)


class Containers:
    """Containers labelled by the VMs' docker wrapper; a no-op when no Docker engine answers."""

    def __init__(self, emulator_id: str, docker_host: str | None = None) -> None:
        self.emulator_id = emulator_id
        self._env = {"DOCKER_HOST": docker_host} if docker_host else {}
        self._docker = shutil.which("docker")

    def remove(self, vm: str | None = None) -> list[str]:
        """Force-remove the containers of one VM (or of every VM of this emulator); their ids."""
        labels = [f"{LABEL_EMULATOR}={self.emulator_id}"]
        if vm is not None:
            labels.append(f"{LABEL_VM}={vm}")  # docker ANDs label filters: this emulator's and this VM's
        if self._docker is None:
            return []
        return remove_labelled(labels, {**os.environ, **self._env}, docker=self._docker, timeouts=TIMEOUTS)
