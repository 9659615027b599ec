"""Everything the emulated VMs share: the COS-like bin folder, the metadata servers, the VMs' Docker
sockets, container cleanup."""

from __future__ import annotations

from pathlib import Path

from parallel_engine.emulator.guest.bindir import build_bin_dir
from parallel_engine.emulator.guest.containers import Containers
from parallel_engine.emulator.guest.docker_proxy import DockerEndpoints
from parallel_engine.emulator.guest.machine import Machine
from parallel_engine.emulator.guest.metadata import GuestInfo, MetadataService


class Hypervisor:
    def __init__(self, workdir: Path, emulator_id: str, docker_host: str | None = None) -> None:
        self.workdir = workdir
        self.bin_dir = build_bin_dir(workdir / "bin")
        self.metadata = MetadataService()
        self.docker = DockerEndpoints(workdir / "docker", emulator_id, docker_host)
        self.containers = Containers(emulator_id, docker_host)

    def machine(self, info: GuestInfo) -> Machine:
        folder = self.workdir / "vms" / f"{info.name}-{info.instance_id}"
        return Machine(info, folder, self.bin_dir, self.metadata, self.docker, self.containers)

    def stop(self) -> None:
        self.metadata.stop()
        self.docker.stop()  # no create in flight after this: the removal below sees every container
        self.containers.remove()
