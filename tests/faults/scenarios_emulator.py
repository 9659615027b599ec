"""The emulated cloud under faults: a VM deleted while a container create goes through its Docker socket.

A VM's power-off closes its Docker socket (creates in flight finish first), then removes its
containers by label. Were the order otherwise, a create landing between the removal and the close
would leave a container that outlives its VM. The scenario keeps creating containers through the
socket and deletes the VM at a random moment: no container of the emulator may be left.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path

import docker

from parallel_engine.emulator import Emulator
from tests.emulator.emulator_helpers import Clients, make_instance, wait_for
from tests.faults.harness import scenario
from tests.helpers import BASE_IMAGE


def _labelled(engine: docker.DockerClient, emulator_id: str) -> list[str]:
    return [c.id for c in engine.containers.list(all=True, filters={"label": f"emulator-id={emulator_id}"})]


@scenario("vm deleted while a container is created through its socket", ci_tries=2, marks=("docker",))
def vm_deleted_mid_create(rng: random.Random, tmp: Path) -> None:
    engine = docker.from_env()
    with Emulator(time_scale=0.01, workdir=tmp / "emulator") as cloud:
        clients = Clients(cloud)
        clients.wait(clients.insert(make_instance("racer", script="sleep 300")))
        socket = wait_for(lambda: next((vm["dockerHost"] for vm in cloud.control.vms() if vm["dockerHost"]), None),
                          what="the VM's socket")  # fmt: skip
        vm = docker.DockerClient(base_url=socket, timeout=30)
        made: list[str] = []
        stop = threading.Event()

        def create() -> None:
            while not stop.is_set():
                try:
                    made.append(vm.containers.create(BASE_IMAGE, ["sleep", "300"], network_mode="none").id)
                except (docker.errors.DockerException, OSError):  # the socket is gone: the VM is going
                    return

        creator = threading.Thread(target=create, daemon=True)
        creator.start()
        wait_for(lambda: made, timeout=60, what="a first container")
        threading.Event().wait(rng.uniform(0.0, 0.3))  # a random moment within the next creates
        clients.delete("racer")
        stop.set()
        creator.join(timeout=60)
        left = _labelled(engine, cloud.emulator_id)
        assert left == [], f"{len(left)} of the {len(made)} containers the VM made outlived it"
