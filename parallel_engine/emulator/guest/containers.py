"""Remove the Docker containers an emulated VM started (they belong to dockerd, not to the VM's script)."""

from __future__ import annotations

import shutil
import subprocess

LABEL_VM = "emulator-vm"
LABEL_EMULATOR = "emulator-id"


class Containers:
    """Containers labelled by the VMs' docker wrapper; a no-op when no Docker engine answers."""

    def __init__(self, emulator_id: str, docker_host: str | None = None) -> None:
        self.emulator_id = emulator_id
        self._env = {"DOCKER_HOST": docker_host} if docker_host else {}
        self._docker = shutil.which("docker")

    def _run(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str] | None:
        if self._docker is None:
            return None
        import os

        try:
            return subprocess.run(
                [self._docker, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **self._env}
            )
        except (OSError, subprocess.TimeoutExpired):
            return None

    def remove(self, vm: str | None = None) -> list[str]:
        """Force-remove the containers of one VM (or of every VM of this emulator); their ids."""
        filters = ["--filter", f"label={LABEL_EMULATOR}={self.emulator_id}"]
        if vm is not None:
            filters += ["--filter", f"label={LABEL_VM}={vm}"]
        listed = self._run("ps", "-aq", *filters, timeout=10)
        if listed is None or listed.returncode != 0:
            return []
        ids = listed.stdout.split()
        if ids:
            self._run("rm", "-f", *ids)
        return ids
