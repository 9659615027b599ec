"""The guest's Docker plumbing: with a stand-in `docker` that records its argv, and with a real engine."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from emulator_helpers import TIME_SCALE, Clients, console, make_instance, wait_for

from parallel_engine.emulator import Emulator
from parallel_engine.emulator.guest.bindir import DOCKER_WRAPPER
from parallel_engine.emulator.guest.containers import Containers

RECORDER = '#!/bin/bash\nprintf "%s\\n" "$@" > "$(dirname "$0")/argv"\n'


def _wrapper(tmp_path: Path) -> Path:
    real = tmp_path / "real-docker"
    real.write_text(RECORDER)
    real.chmod(0o755)
    curl = tmp_path / "curl"  # the wrapper asks metadata for the VM's name
    curl.write_text("#!/bin/bash\necho vm-7\n")
    curl.chmod(0o755)
    wrapper = tmp_path / "docker"
    text = DOCKER_WRAPPER.replace("__REAL_DOCKER__", str(real)).replace("__EMULATOR_ID__", "emu1")
    wrapper.write_text(text.replace("__DOCKER_HOST__", ""))
    wrapper.chmod(0o755)
    return wrapper


def _argv(tmp_path: Path, *args: str) -> list[str]:
    wrapper = _wrapper(tmp_path)
    env = {
        "PATH": f"{tmp_path}:{os.environ['PATH']}",
        "GCE_METADATA_HOST": "127.0.0.1:1",
        "GCE_METADATA_IP": "127.0.0.1:1",
    }
    subprocess.run([str(wrapper), *args], check=True, env=env)
    return (tmp_path / "argv").read_text().splitlines()


def test_docker_run_is_labelled_with_its_vm(tmp_path: Path) -> None:
    argv = _argv(tmp_path, "--config", "/tmp/cfg", "run", "--rm", "--network", "host", "img", "--x=1")
    assert argv == ["--config", "/tmp/cfg", "run", "--label", "emulator-vm=vm-7", "--label", "emulator-id=emu1",
                    "-e", "GCE_METADATA_HOST=127.0.0.1:1", "-e", "GCE_METADATA_IP=127.0.0.1:1",
                    "--rm", "--network", "host", "img", "--x=1"]  # fmt: skip


def test_docker_container_create_is_labelled_and_other_commands_are_not(tmp_path: Path) -> None:
    assert _argv(tmp_path, "container", "create", "img")[:6] == [
        "container", "create", "--label", "emulator-vm=vm-7", "--label", "emulator-id=emu1"]  # fmt: skip
    assert _argv(tmp_path, "pull", "img") == ["pull", "img"]


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
