"""Starting and stopping the whole emulated cloud: nothing may outlive it."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml

from parallel_engine.emulator import ControlClient, Emulator, serve
from parallel_engine.emulator.serve import render_config
from tests.emulator.emulator_helpers import (
    TIME_SCALE,
    Clients,
    cloudbuild_client,
    config_credentials,
    make_instance,
    wait_for,
)

ESCAPING_SCRIPT = "sleep 300 &\nsetsid sleep 300 &\nnohup sleep 300 >/dev/null 2>&1 &\nsleep 300\n"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_stop_kills_every_vm_process_and_server() -> None:
    cloud = Emulator(time_scale=TIME_SCALE).start()
    clients = Clients(cloud)
    for n in range(3):
        clients.wait(clients.insert(make_instance(f"vm-{n}", script=ESCAPING_SCRIPT)))
    pids = []
    for n in range(3):
        pids += wait_for(lambda n=n: len(p := cloud.control.pids(f"vm-{n}")) >= 4 and p, what="VM processes")
    servers = [cloud.fake_gcs_pid]
    endpoints = [cloud.compute_endpoint, cloud.storage_endpoint]
    workdir = cloud.workdir
    cloud.stop()
    assert [pid for pid in pids + servers if pid and _alive(pid)] == []
    for endpoint in endpoints:
        port = int(endpoint.rsplit(":", 1)[1])
        assert all(c.laddr.port != port for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN)
    assert workdir is not None and not workdir.exists()
    cloud.stop()  # idempotent


def _serve_in_thread(tmp_path: Path) -> tuple[threading.Thread, threading.Event, io.StringIO, list[int]]:
    stop = threading.Event()
    out = io.StringIO()
    result: list[int] = []
    thread = threading.Thread(
        target=lambda: result.append(serve(None, TIME_SCALE, cwd=tmp_path, out=out, stop_event=stop)), daemon=True
    )
    thread.start()
    return thread, stop, out, result



def test_the_packages_serve_stays_the_function_once_its_module_was_imported() -> None:
    """`from parallel_engine.emulator import serve` is what `parallel-engine emulator` calls; the
    submodule of the same name, once imported (bench/makespan.py, the CLI), must not replace it."""
    import importlib

    import parallel_engine.emulator as package

    module = importlib.import_module("parallel_engine.emulator.serve")  # the module, whatever the package holds
    assert package.serve is module.serve and callable(package.serve)


def test_serve_writes_a_config_pointing_every_client_at_the_emulator(tmp_path: Path) -> None:
    thread, stop, out, result = _serve_in_thread(tmp_path)
    config = tmp_path / ".config.yaml"
    wait_for(lambda: config.exists() and "Ctrl-C" in out.getvalue(), what="the config")
    values = yaml.safe_load(config.read_text())
    assert values["BACKEND"] == "gce"
    assert set(values) >= {"PROJECT_ID", "ZONE", "BUCKET", "COMPUTE_ENDPOINT", "STORAGE_ENDPOINT",
                           "CREDENTIALS_FILE", "TOKEN_URI"}
    assert json.loads(Path(values["CREDENTIALS_FILE"]).read_text())["type"] == "authorized_user"
    from google.auth.transport.requests import AuthorizedSession

    session, project = AuthorizedSession(config_credentials(values)), values["PROJECT_ID"]
    for key, path in (("IAM_ENDPOINT", "/v1/roles/editor"), ("RESOURCEMANAGER_ENDPOINT", f"/v1/projects/{project}"),
                      ("SERVICEUSAGE_ENDPOINT", f"/v1/projects/{project}/services/compute.googleapis.com")):
        assert session.get(values[key] + path).status_code == 200, key
    from google.api_core import exceptions as gexc
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    def client(credentials: object) -> storage.Client:
        return storage.Client(project=values["PROJECT_ID"], credentials=credentials,
                              client_options={"api_endpoint": values["STORAGE_ENDPOINT"]})  # fmt: skip

    assert client(config_credentials(values)).bucket(values["BUCKET"]).exists()
    with pytest.raises((gexc.Unauthorized, ValueError)):  # no credentials: 401, as on Google
        client(AnonymousCredentials()).bucket(values["BUCKET"]).exists()
    stop.set()
    thread.join(timeout=30)
    assert result == [0] and "stopped" in out.getvalue()


def test_serve_never_overwrites_an_existing_config(tmp_path: Path) -> None:
    (tmp_path / ".config.yaml").write_text("PROJECT_ID: mine\n")
    thread, stop, out, result = _serve_in_thread(tmp_path)
    fallback = tmp_path / ".config.emulator.yaml"
    wait_for(lambda: fallback.exists() and "Ctrl-C" in out.getvalue(), what="the fallback config")
    assert (tmp_path / ".config.yaml").read_text() == "PROJECT_ID: mine\n"
    assert ".config.emulator.yaml" in out.getvalue()
    assert f"--config {fallback}" in out.getvalue() and f"PARALLEL_ENGINE_CONFIG={fallback}" in out.getvalue()
    stop.set()
    thread.join(timeout=30)
    assert result == [0]


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_serve_rewrites_a_config_left_by_an_emulator_that_is_gone(tmp_path: Path) -> None:
    config = tmp_path / ".config.yaml"
    config.write_text(render_config({"COMPUTE_ENDPOINT": "http://127.0.0.1:9"}, pid=_dead_pid()))
    thread, stop, out, result = _serve_in_thread(tmp_path)
    wait_for(lambda: "Ctrl-C" in out.getvalue(), what="the emulator")
    try:
        assert yaml.safe_load(config.read_text())["COMPUTE_ENDPOINT"] != "http://127.0.0.1:9"  # live ports now
        assert not (tmp_path / ".config.emulator.yaml").exists()
    finally:
        stop.set()
        thread.join(timeout=30)
    assert result == [0]


def test_serve_leaves_the_config_of_an_emulator_still_running(tmp_path: Path) -> None:
    config = tmp_path / ".config.yaml"
    config.write_text(render_config({"COMPUTE_ENDPOINT": "http://127.0.0.1:9"}, pid=os.getppid()))
    thread, stop, out, result = _serve_in_thread(tmp_path)
    fallback = tmp_path / ".config.emulator.yaml"
    wait_for(lambda: fallback.exists() and "Ctrl-C" in out.getvalue(), what="the fallback config")
    try:
        assert yaml.safe_load(config.read_text())["COMPUTE_ENDPOINT"] == "http://127.0.0.1:9"
    finally:
        stop.set()
        thread.join(timeout=30)
    assert result == [0]


def _count_named(parent: psutil.Process, name: str) -> int:
    """Descendants called `name`; one that ends while we look is not counted (the VM's shell
    starts and ends short processes all the time)."""
    count = 0
    for child in parent.children(recursive=True):
        try:
            count += child.name() == name
        except psutil.NoSuchProcess:
            pass
    return count


def _start_emulator(tmp_path: Path) -> tuple[subprocess.Popen[str], dict]:
    """`python -m parallel_engine.emulator` in `tmp_path`; the process and the config it wrote."""
    process = subprocess.Popen(
        [sys.executable, "-m", "parallel_engine.emulator", "--time-scale", str(TIME_SCALE)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    config = tmp_path / ".config.yaml"
    wait_for(lambda: config.exists(), timeout=30, what="the config")
    return process, yaml.safe_load(config.read_text())


def _insert(values: dict, script: str) -> None:
    from google.cloud import compute_v1

    instances = compute_v1.InstancesClient(
        client_options={"api_endpoint": values["COMPUTE_ENDPOINT"]}, credentials=config_credentials(values)
    )
    instances.insert(project=values["PROJECT_ID"], zone=values["ZONE"],
                     instance_resource=make_instance("lingering", script=script))  # fmt: skip


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_python_m_emulator_stops_everything_on_signal(tmp_path: Path, signum: int) -> None:
    process, values = _start_emulator(tmp_path)
    try:
        _insert(values, ESCAPING_SCRIPT)
        parent = psutil.Process(process.pid)
        wait_for(lambda: _count_named(parent, "sleep") >= 2, timeout=30,
                 what="the VM's processes")  # fmt: skip
        descendants = parent.children(recursive=True)
        servers = ControlClient(values["COMPUTE_ENDPOINT"]).info()["pids"]
        time.sleep(0.1)
        process.send_signal(signum)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert "stopped" in output
    assert [p.pid for p in descendants if _alive(p.pid)] == []
    assert [pid for pid in servers.values() if pid and _alive(pid)] == []  # fake-gcs-server, registry, watchdog


CONTAINER = "docker run -d --network none python:3.11-slim sleep 300\n"
CONTAINER_SCRIPT = ESCAPING_SCRIPT.replace("sleep 300\n", CONTAINER + "sleep 300\n", 1)


def _containers(emulator_id: str) -> list[str]:
    listed = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=emulator-id={emulator_id}"],
                            capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    return listed.stdout.split()


@pytest.mark.docker
@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGKILL])
def test_nothing_outlives_the_emulator_not_even_a_sigkill(tmp_path: Path, signum: int, docker_engine: object) -> None:
    process, values = _start_emulator(tmp_path)
    try:
        control = ControlClient(values["COMPUTE_ENDPOINT"], values["ZONE"])
        info = control.info()
        _insert(values, CONTAINER_SCRIPT)
        wait_for(lambda: _containers(info["emulatorId"]), timeout=60, what="the VM's container")
        vm_pids = wait_for(lambda: len(p := control.pids("lingering")) >= 4 and p, timeout=30, what="VM processes")
        process.send_signal(signum)
        process.communicate(timeout=60)
        leftovers = [pid for pid in vm_pids + [info["pids"]["fakeGcs"], info["pids"]["registry"]] if pid]
        wait_for(lambda: not [pid for pid in leftovers if _alive(pid)], timeout=30, what="every process to end")
        wait_for(lambda: not _containers(info["emulatorId"]), timeout=60, what="the VM's containers to go")
        wait_for(lambda: not Path(info["workdir"]).exists(), timeout=30, what="its temporary folder to go")
        wait_for(lambda: not _alive(info["pids"]["watchdog"]), timeout=30, what="the watchdog to finish")
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.docker
def test_ctrl_c_stops_a_running_build_and_its_container(tmp_path: Path, docker_engine: object) -> None:
    from google.cloud.devtools import cloudbuild_v1

    process, values = _start_emulator(tmp_path)
    try:
        builds = cloudbuild_client(values["CLOUDBUILD_ENDPOINT"], config_credentials(values))
        step = cloudbuild_v1.BuildStep(name="python:3.11-slim", entrypoint="sleep", args=["300"])
        created = builds.create_build(project_id=values["PROJECT_ID"], build=cloudbuild_v1.Build(steps=[step]))
        build_id = created.metadata.build.id
        label = f"pe-emulator-cloudbuild-build={build_id}"
        running = ["docker", "ps", "-q", "--filter", f"label={label}"]
        wait_for(lambda: subprocess.run(running, capture_output=True, text=True).stdout.strip(), timeout=120,
                 what="the build's step container")  # fmt: skip
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    everything = ["docker", "ps", "-aq", "--filter", f"label={label}"]
    assert subprocess.run(everything, capture_output=True, text=True, check=True).stdout.split() == []
