"""Each VM's own Docker socket: containers made through it, however, are the VM's (labels, metadata
address), stream and hijack as on any engine, and go with the VM."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any

import docker
import pytest

from parallel_engine.emulator.guest.docker_proxy import DockerEndpoints
from parallel_engine.emulator.guest.docker_stamp import Refused, Stamp, stamp_create
from parallel_engine.emulator.httpbase import JsonHandler, LoopbackServer
from tests.emulator.emulator_helpers import Clients, make_instance, wait_for

STAMP = Stamp("vm-7", "emu1", "127.0.0.1:4242", "/w/docker/7.sock", "/srv/engine.sock")


def test_a_create_is_stamped_as_its_vms_whatever_the_caller_set() -> None:
    body = {
        "Image": "img", "Cmd": ["run", "--x=1"],
        "Env": ["A=1", "GCE_METADATA_HOST=10.0.0.1:80", "GCE_METADATA_IP"],
        "Labels": {"mine": "yes", "emulator-vm": "another-vm"},
        "HostConfig": {"NetworkMode": "host", "Binds": ["/var/run/docker.sock:/var/run/docker.sock",
                                                        "/srv/engine.sock:/e.sock:ro", "/data:/data"],
                       "Mounts": [{"Type": "bind", "Source": "/run/docker.sock", "Target": "/d.sock"}]},
    }  # fmt: skip
    stamped = stamp_create(body, STAMP)
    assert stamped["Image"] == "img" and stamped["Cmd"] == ["run", "--x=1"]
    assert stamped["Env"] == ["A=1", "GCE_METADATA_HOST=127.0.0.1:4242", "GCE_METADATA_IP=127.0.0.1:4242"]
    assert stamped["Labels"] == {"mine": "yes", "emulator-vm": "vm-7", "emulator-id": "emu1"}
    assert stamped["HostConfig"]["Binds"] == ["/w/docker/7.sock:/var/run/docker.sock", "/w/docker/7.sock:/e.sock:ro",
                                              "/data:/data"]  # fmt: skip
    assert stamped["HostConfig"]["Mounts"][0]["Source"] == "/w/docker/7.sock"
    none = stamp_create({"Image": "img", "HostConfig": {"NetworkMode": "none"}}, STAMP)
    assert none["HostConfig"]["NetworkMode"] == "none" and none["Labels"]["emulator-vm"] == "vm-7"


@pytest.mark.parametrize("body", [
    {"Image": "img"},  # docker-py's default: the engine's default network (the bridge, which is off here)
    {"Image": "img", "HostConfig": {"NetworkMode": "default"}},  # the docker CLI's
    {"Image": "img", "HostConfig": {"NetworkMode": "bridge"}},
    {"Image": "img", "HostConfig": {"NetworkMode": "container:other"}},
    {"Image": "img", "HostConfig": {"NetworkMode": "host"}, "NetworkingConfig": {"EndpointsConfig": {"mynet": {}}}},
])  # fmt: skip
def test_a_create_asking_for_a_network_other_than_none_or_host_is_refused(body: dict[str, Any]) -> None:
    with pytest.raises(Refused, match="not allowed on this emulated VM"):
        stamp_create(body, STAMP)


class _Engine(JsonHandler):
    """A stand-in engine that records what reaches it (bodies de-chunked) and answers as dockerd does."""

    seen: list[tuple[str, str, bytes]] = []

    def _answer(self) -> None:
        body = self.read_body()
        self.seen.append((self.command, self.path, body))
        if self.path_only.endswith("/containers/create"):
            self.send_json(201, {"Id": "c1", "Warnings": []})
        else:
            self.send_json(200, {"ok": True})

    do_GET = do_POST = do_PUT = _answer


class _OverUnix(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def test_the_vm_socket_passes_requests_through_and_stamps_creates_on_one_kept_alive_connection(tmp_path: Path) -> None:
    engine = LoopbackServer(_Engine)
    engine.start("fake-engine")
    _Engine.seen = []
    endpoints = DockerEndpoints(tmp_path / "docker", "emu1", docker_host=f"tcp://127.0.0.1:{engine.port}")
    try:
        path = endpoints.open("7", "vm-7", "127.0.0.1:4242")
        client = _OverUnix(path)
        client.request("PUT", "/v1.41/containers/c0/archive?path=/x", body=iter([b"hello ", b"world"]),
                       encode_chunked=True)  # fmt: skip  # what `docker cp` streams
        assert client.getresponse().read() == b'{"ok": true}'
        create = {"Image": "img", "HostConfig": {"NetworkMode": "host"}}
        client.request("POST", "/v1.41/containers/create?name=t", body=json.dumps(create))
        created = client.getresponse()
        assert (created.status, json.loads(created.read())) == (201, {"Id": "c1", "Warnings": []})
        client.request("POST", "/v1.41/containers/create", body=json.dumps({"Image": "img"}))
        refused = client.getresponse()
        assert refused.status == 400 and "not allowed on this emulated VM" in json.loads(refused.read())["message"]
        client.request("GET", "/_ping")
        assert client.getresponse().status == 200
        assert [(method, target) for method, target, _ in _Engine.seen] == [
            ("PUT", "/v1.41/containers/c0/archive?path=/x"), ("POST", "/v1.41/containers/create?name=t"),
            ("GET", "/_ping")]  # fmt: skip  # the refused create never reached the engine
        assert _Engine.seen[0][2] == b"hello world"
        stamped = json.loads(_Engine.seen[1][2])
        assert stamped["Labels"] == {"emulator-vm": "vm-7", "emulator-id": "emu1"}
        assert "GCE_METADATA_HOST=127.0.0.1:4242" in stamped["Env"]
        endpoints.close(path)
        assert not Path(path).exists()
        with pytest.raises(OSError):
            _OverUnix(path).connect()
    finally:
        endpoints.stop()
        engine.stop()


READ_NAME_THEN_STDIN = """
import os, sys, urllib.request
url = "http://" + os.environ["GCE_METADATA_HOST"] + "/computeMetadata/v1/instance/name"
request = urllib.request.Request(url, headers={"Metadata-Flavor": "Google"})
print(urllib.request.urlopen(request).read().decode(), flush=True)
print("stdin:", sys.stdin.read().strip(), flush=True)
"""


def _vm_docker_host(clients: Clients, name: str) -> str:
    def socket() -> str | None:
        return next((vm["dockerHost"] for vm in clients.cloud.control.vms() if vm["name"] == name and vm["dockerHost"]),
                    None)  # fmt: skip

    return str(wait_for(socket, what="the VM's socket"))


def _containers_of(engine: docker.DockerClient, clients: Clients) -> list[str]:
    labelled = engine.containers.list(all=True, filters={"label": f"emulator-id={clients.cloud.emulator_id}"})
    return sorted(container.id for container in labelled)


@pytest.mark.docker
def test_the_docker_sdk_on_a_vms_socket_makes_the_vms_containers(
    clients: Clients, docker_engine: docker.DockerClient, base_image: str
) -> None:
    clients.wait(clients.insert(make_instance("boxed", script="sleep 300")))
    vm = docker.DockerClient(base_url=_vm_docker_host(clients, "boxed"))
    container = vm.containers.create(base_image, ["python", "-c", READ_NAME_THEN_STDIN], network_mode="host",
                                     stdin_open=True, labels={"task": "t-1"})  # fmt: skip
    stdin = vm.api.attach_socket(container.id, params={"stdin": 1, "stream": 1})  # hijacked: Upgrade: tcp
    container.start()
    assert container.labels == {"task": "t-1", "emulator-vm": "boxed", "emulator-id": clients.cloud.emulator_id}
    metadata = next(v["metadataHost"] for v in clients.cloud.control.vms())
    assert f"GCE_METADATA_HOST={metadata}" in container.attrs["Config"]["Env"]
    probe = container.exec_run(["python", "-c", "import os; print(os.environ['GCE_METADATA_IP'])"])  # hijacked too
    assert (probe.exit_code, probe.output) == (0, f"{metadata}\n".encode())
    stdin._sock.sendall(b"bye\n")  # noqa: SLF001 - docker-py hands out the socket wrapped
    stdin._sock.shutdown(socket.SHUT_WR)  # noqa: SLF001 - the half-close ends the container's stdin
    lines = [line.decode().strip() for line in container.logs(stream=True, follow=True)]
    assert lines == ["boxed", "stdin: bye"]  # the metadata server answered a --network host container
    assert container.wait()["StatusCode"] == 0
    with pytest.raises(docker.errors.APIError) as refused:
        vm.containers.create(base_image, ["true"], network_mode="bridge")
    assert refused.value.status_code == 400 and "--network host or --network none" in str(refused.value.explanation)
    assert _containers_of(docker_engine, clients) == [container.id]
    clients.delete("boxed")
    assert _containers_of(docker_engine, clients) == []


WORKER = r"""
import http.client, json, socket, sys

class Engine(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect("/var/run/docker.sock")

def call(method, path, body=None):
    engine = Engine("localhost")
    engine.request(method, path, json.dumps(body) if body is not None else None, {"Content-Type": "application/json"})
    reply = engine.getresponse()
    return reply.status, reply.read()

status, body = call("POST", "/containers/create", {"Image": sys.argv[1], "Cmd": ["sleep", "300"],
                                                   "HostConfig": {"NetworkMode": "none"}})
assert status == 201, (status, body)
task = json.loads(body)["Id"]
status, body = call("POST", f"/containers/{task}/start")
assert status == 204, (status, body)
print(task)
"""


@pytest.mark.docker
def test_containers_a_container_starts_through_the_mounted_socket_are_the_vms_and_go_when_it_is_preempted(
    clients: Clients, docker_engine: docker.DockerClient, base_image: str
) -> None:
    clients.wait(clients.insert(make_instance("spot-w", script="sleep 300", spot=True, action="DELETE")))
    docker_host = _vm_docker_host(clients, "spot-w")
    vm = docker.DockerClient(base_url=docker_host)
    mount = {docker_host.removeprefix("unix://"): {"bind": "/var/run/docker.sock"}}  # -v SOCKET:/var/run/docker.sock
    worker = vm.containers.run(base_image, ["python", "-c", WORKER, base_image], network_mode="none", detach=True,
                               volumes=mount)  # fmt: skip
    assert worker.wait()["StatusCode"] == 0, worker.logs().decode()
    task = docker_engine.containers.get(worker.logs().decode().strip())
    assert task.status == "running"
    assert task.labels == {"emulator-vm": "spot-w", "emulator-id": clients.cloud.emulator_id}
    assert _containers_of(docker_engine, clients) == sorted([worker.id, task.id])
    clients.cloud.control.preempt("spot-w")
    clients.wait_gone("spot-w")
    assert _containers_of(docker_engine, clients) == []
