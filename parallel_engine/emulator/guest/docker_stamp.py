"""What makes a container a VM's: the rewrite of a Docker API container-create body.

A VM's containers run on this machine's one Docker engine, where they belong to dockerd, not to
the VM. Every create that reaches the engine through a VM's Docker endpoint (docker_proxy.py) is
stamped here: the labels `emulator-vm` / `emulator-id` (by which the VM's power-off, the
emulator's stop and its watchdog remove them) and the VM's metadata address in
`GCE_METADATA_HOST` / `GCE_METADATA_IP` (a `--network host` container reaches it on loopback, as
a container on a real VM reaches metadata.google.internal). The VM's values replace any the
caller set. A bind mount of the engine's socket becomes a mount of the VM's own socket, as
`-v /var/run/docker.sock:...` on a VM gives that VM's Docker. Only the `none` and `host` network
modes are accepted: the engine's bridge is off here (a create asking for another is refused,
in Docker's words, rather than started cut off from the network).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from parallel_engine.emulator.guest.containers import LABEL_EMULATOR, LABEL_VM

NETWORK_MODES = ("none", "host")
#: Where a Docker engine's socket is, on COS and on this machine (the same file: /var/run -> /run).
ENGINE_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")
#: `POST /containers/create`, with or without the API version prefix.
CREATE_PATH = re.compile(r"^(?:/v[0-9.]+)?/containers/create(?:\?|$)")


@dataclass(frozen=True)
class Stamp:
    """What one VM puts on every container it creates."""

    vm: str
    emulator_id: str
    metadata_host: str  # 127.0.0.1:PORT
    socket_path: str  # the VM's Docker socket file
    engine_socket: str | None = None  # the engine's own socket file, when it is one


class Refused(ValueError):
    """A create the VM's endpoint will not pass on; the message is Docker's style."""


def stamp_create(body: Any, stamp: Stamp) -> dict[str, Any]:
    """The create body with the VM's labels, metadata address and socket; Refused for a network
    mode other than `none` or `host`."""
    if not isinstance(body, dict):
        raise Refused("invalid JSON: the container config must be an object")
    host_config = body.get("HostConfig") or {}
    mode = host_config.get("NetworkMode") or "default"
    if mode not in NETWORK_MODES:
        raise Refused(
            f'network mode "{mode}" is not allowed on this emulated VM (the Docker engine\'s bridge is off): '
            "run the container with --network host or --network none"
        )
    endpoints = (body.get("NetworkingConfig") or {}).get("EndpointsConfig") or {}
    others = sorted(set(endpoints) - {mode})
    if others:
        raise Refused(f"network {others[0]} is not allowed on this emulated VM: only the container's own "
                      f'network mode "{mode}" (host or none)')  # fmt: skip
    ours = {"GCE_METADATA_HOST": stamp.metadata_host, "GCE_METADATA_IP": stamp.metadata_host}
    env = [item for item in body.get("Env") or [] if str(item).partition("=")[0] not in ours]
    labels = {**(body.get("Labels") or {}), LABEL_VM: stamp.vm, LABEL_EMULATOR: stamp.emulator_id}
    host_config = {**host_config, "NetworkMode": mode}
    engine = {*ENGINE_SOCKETS, *([stamp.engine_socket] if stamp.engine_socket else [])}
    if host_config.get("Binds"):
        host_config["Binds"] = [_own_bind(bind, engine, stamp.socket_path) for bind in host_config["Binds"]]
    if host_config.get("Mounts"):
        host_config["Mounts"] = [
            {**mount, "Source": stamp.socket_path} if mount.get("Source") in engine else mount
            for mount in host_config["Mounts"]
        ]
    return {**body, "Env": [*env, *(f"{key}={value}" for key, value in ours.items())], "Labels": labels,
            "HostConfig": host_config}  # fmt: skip


def _own_bind(bind: str, engine: set[str], own: str) -> str:
    """`SRC:DST[:OPTS]` with the engine's socket as SRC replaced by the VM's."""
    source, colon, rest = bind.partition(":")
    return f"{own}{colon}{rest}" if source in engine else bind
