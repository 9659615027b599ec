"""The guest's Docker plumbing: with a stand-in `docker` that records its argv, and with a real engine."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from parallel_engine.emulator import Emulator
from parallel_engine.emulator.guest.bindir import DOCKER_WRAPPER
from parallel_engine.emulator.guest.containers import Containers
from tests.emulator.emulator_helpers import (
    TIME_SCALE,
    Clients,
    console,
    make_instance,
    wait_for,
)

RECORDER = '#!/bin/bash\nprintf "%s\\n" "DOCKER_HOST=$DOCKER_HOST" "$@" > "$(dirname "$0")/argv"\n'


def _run_wrapper(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    real = tmp_path / "real-docker"
    real.write_text(RECORDER)
    real.chmod(0o755)
    wrapper = tmp_path / "docker"
    wrapper.write_text(DOCKER_WRAPPER.replace("__REAL_DOCKER__", str(real)))
    wrapper.chmod(0o755)
    return subprocess.run([str(wrapper), *args], env=env, capture_output=True, text=True)


def test_the_vms_docker_is_the_real_client_on_the_vms_socket(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "DOCKER_HOST": "unix:///w/docker/7.sock"}
    args = ("--config", "/tmp/cfg", "run", "--rm", "--network", "host", "img", "--x=1")
    assert _run_wrapper(tmp_path, env, *args).returncode == 0
    assert (tmp_path / "argv").read_text().splitlines() == ["DOCKER_HOST=unix:///w/docker/7.sock", *args]


def test_the_vms_docker_refuses_to_run_without_the_vms_socket(tmp_path: Path) -> None:
    """Without DOCKER_HOST the client would reach the machine's engine, and its containers outlive the VM."""
    done = _run_wrapper(tmp_path, {"PATH": os.environ["PATH"]}, "run", "img")
    assert done.returncode == 125 and "DOCKER_HOST is unset" in done.stderr
    assert not (tmp_path / "argv").exists()


def test_containers_of_a_vm_are_removed_by_label(tmp_path: Path) -> None:
    log = tmp_path / "calls"
    fake = tmp_path / "docker"
    fake.write_text(f'#!/bin/bash\necho "$*" >> {log}\n[ "$1" = ps ] && echo c1 && echo c2\nexit 0\n')
    fake.chmod(0o755)
    containers = Containers("emu1")
    containers._docker = str(fake)  # noqa: SLF001 - the engine is replaced by a recorder
    assert containers.remove("vm-7") == ["c1", "c2"]
    calls = log.read_text().splitlines()
    assert calls == ["ps -aq --filter label=emulator-id=emu1 --filter label=emulator-vm=vm-7", "rm -f c1 c2"]


def test_no_docker_engine_means_nothing_to_remove(tmp_path: Path) -> None:
    containers = Containers("emu1")
    containers._docker = str(tmp_path / "missing-docker")  # noqa: SLF001
    assert containers.remove("vm-7") == []


def _docker_answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=15).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


BASE_IMAGE = os.environ.get("PE_BASE_IMAGE", "python:3.11-slim")
CONTAINER_SCRIPT = r"""
docker run -d --network none __IMAGE__ sleep 300 >/dev/null && echo detached-started
docker run --rm --network host __IMAGE__ python -c '
import os, urllib.request
url = "http://" + os.environ["GCE_METADATA_HOST"] + "/computeMetadata/v1/instance/name"
request = urllib.request.Request(url, headers={"Metadata-Flavor": "Google"})
print("container sees", urllib.request.urlopen(request).read().decode())
'
echo containers-done
sleep 300
"""


@pytest.mark.docker
def test_deleting_a_vm_removes_its_containers(tmp_path: Path) -> None:
    if not _docker_answers():
        pytest.skip("DOCKER TESTS SKIPPED: no Docker engine answers")
    with Emulator(time_scale=TIME_SCALE) as cloud:
        clients = Clients(cloud)
        clients.wait(clients.insert(make_instance("boxed", script=CONTAINER_SCRIPT.replace("__IMAGE__", BASE_IMAGE))))
        text = wait_for(lambda: (t := console(clients, "boxed")) and "containers-done" in t and t, timeout=120,
                        what="the containers")  # fmt: skip
        assert "detached-started" in text and "container sees boxed" in text
        label = ["--filter", "label=emulator-vm=boxed", "--filter", f"label=emulator-id={cloud.emulator_id}"]
        listed = subprocess.run(["docker", "ps", "-q", *label], capture_output=True, text=True, check=True)
        assert listed.stdout.split(), "the detached container should be running"
        clients.delete("boxed")
        listed = subprocess.run(["docker", "ps", "-aq", *label], capture_output=True, text=True, check=True)
        assert listed.stdout.split() == []
