"""The GCE metadata server, one loopback port per VM.

It answers what a startup script or google-auth asks under `/computeMetadata/v1/`: the VM's name,
zone, id, project, attributes, the `preempted` flag (with `wait_for_change`, and `last_etag`: at once when
the value changed since the read that returned that ETag), and a service-account
token that identifies the VM to the emulated Compute and Storage (so their call counts can tell the
VMs' calls from the orchestrator's). Like Google's, it refuses requests without
`Metadata-Flavor: Google` and requests that carry `X-Forwarded-For`.
"""

from __future__ import annotations

import hashlib
import json
import socket
import socketserver
import threading
import time
from dataclasses import dataclass, field
from typing import Any, cast

from parallel_engine.emulator.guest.portmux import PortContext, PortMux
from parallel_engine.emulator.httpbase import JsonHandler
from parallel_engine.emulator.identity import TokenRegistry

PREFIX = "/computeMetadata/v1/"
MAX_WAIT_SECONDS = 3600


@dataclass
class GuestInfo:
    """What one VM's metadata server shows; the compute engine updates it (preempted, attributes)."""

    name: str
    instance_id: str
    zone: str
    project: str
    project_number: int
    machine_type: str
    attributes: dict[str, str]
    email: str | None
    scopes: tuple[str, ...]
    tokens: TokenRegistry
    internal_ip: str = "10.128.0.2"
    preempted: bool = False
    maintenance_event: str = "NONE"
    _token: tuple[str, float] | None = None
    _changed: threading.Condition = field(default_factory=threading.Condition)
    closed: bool = False

    def update(self, **changes: Any) -> None:
        with self._changed:
            for key, value in changes.items():
                setattr(self, key, value)
            self._changed.notify_all()

    def wait_change(self, read: Any, old: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self.closed and read() == old and (left := deadline - time.monotonic()) > 0:
                self._changed.wait(left)

    def token(self) -> tuple[str, int]:
        """This VM's access token and its remaining lifetime in real seconds, minted again near expiry.

        `expires_in` is real seconds (what a client's own clock measures), so a script that refreshes
        by it keeps a valid token at any time scale.
        """
        with self._changed:
            now = time.monotonic()
            if self._token is None or self._token[1] - now <= self.tokens.refresh_margin():
                self._token = self.tokens.issue(self.name, self.email or "", frozenset(self.scopes))
            value, expires = self._token
            return value, max(0, int(expires - now))

    def tree(self) -> dict[str, Any]:
        """The metadata tree as the server serves it (directories are dicts, leaves strings)."""
        zone_path = f"projects/{self.project_number}/zones/{self.zone}"
        instance: dict[str, Any] = {
            "attributes": dict(self.attributes),
            "cpu-platform": "Intel Broadwell",
            "description": "",
            "hostname": f"{self.name}.{self.zone}.c.{self.project}.internal",
            "id": self.instance_id,
            "image": "projects/cos-cloud/global/images/cos-stable",
            "machine-type": f"projects/{self.project_number}/machineTypes/{self.machine_type}",
            "maintenance-event": self.maintenance_event,
            "name": self.name,
            "network-interfaces": {
                "0": {"ip": self.internal_ip, "network": f"projects/{self.project_number}/networks/default"}
            },
            "preempted": "TRUE" if self.preempted else "FALSE",
            "tags": "[]",
            "zone": zone_path,
        }
        if self.email:
            account = {"aliases": ["default"], "email": self.email, "scopes": list(self.scopes)}
            instance["service-accounts"] = {"default": dict(account), self.email: dict(account)}
        project = {"project-id": self.project, "numeric-project-id": str(self.project_number), "attributes": {}}
        return {"instance": instance, "project": project}


def _listing(node: dict[str, Any]) -> str:
    return "".join(f"{key}/\n" if isinstance(value, dict) else f"{key}\n" for key, value in sorted(node.items()))


def _text(leaf: Any) -> str:
    return "".join(f"{item}\n" for item in leaf) if isinstance(leaf, list) else str(leaf)


def _as_json(node: Any, raw_keys: bool = False) -> Any:
    """Recursive JSON as Google's server gives it: camelCase keys, except user-chosen attribute keys."""
    if isinstance(node, dict):
        return {(k if raw_keys else _json_key(k)): _as_json(v, raw_keys or k == "attributes") for k, v in node.items()}
    return node


def _etag(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _etags(leaf: Any, raw_keys: bool) -> set[str]:
    """The ETags a leaf's value is served with (as text, as JSON): `last_etag` names one of them while
    the value has not changed since the caller read it."""
    return {_etag(_text(leaf)), _etag(json.dumps(_as_json(leaf, raw_keys)))}


def _json_key(key: str) -> str:
    head, *rest = key.split("-")
    return head + "".join(part.title() for part in rest)


class _Handler(JsonHandler):
    """One connection to a VM's metadata server; `self.server` is the port's PortContext, whose
    `context` is the VM's GuestInfo (the PortMux passes it where socketserver passes its server)."""

    def _reply(self, status: int, text: str, content_type: str = "application/text") -> None:
        headers = {"Metadata-Flavor": "Google", "ETag": _etag(text), "Server": "Metadata Server for VM"}
        self.send_bytes(status, text.encode(), content_type, headers)

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self.read_body()
        info: GuestInfo = cast(PortContext, self.server).context
        path = self.path_only
        if "X-Forwarded-For" in self.headers:
            self._reply(403, "Request with X-Forwarded-For header is not allowed.\n")
            return
        if path in ("/", ""):
            self._reply(200, "computeMetadata/\n")
            return
        if self.headers.get("Metadata-Flavor") != "Google":
            self._reply(
                403,
                f"Your client does not have permission to get URL {path} from this server. "
                "Missing Metadata-Flavor:Google header.\n",
                "text/html; charset=UTF-8",
            )
            return
        if path == PREFIX.rstrip("/"):
            path = PREFIX
        if not path.startswith(PREFIX):
            self._reply(404, "Not Found\n", "text/html; charset=UTF-8")
            return
        parts = [p for p in path[len(PREFIX) :].split("/") if p]
        if parts[:2] == ["instance", "service-accounts"] and len(parts) == 4 and parts[3] == "token":
            self._token(info, parts)
            return
        node = self._lookup(info, parts)
        if node is None:
            self._reply(404, "Not Found\n", "text/html; charset=UTF-8")
            return
        if self.query_one("wait_for_change") == "true" and not isinstance(node, dict):
            timeout = min(float(self.query_one("timeout_sec") or MAX_WAIT_SECONDS), MAX_WAIT_SECONDS)
            last_etag = self.query_one("last_etag")
            if last_etag is None or last_etag in _etags(node, "attributes" in parts):  # else: changed already
                info.wait_change(lambda: self._lookup(info, parts), node, timeout)
            node = self._lookup(info, parts)
            if node is None:
                self._reply(404, "Not Found\n", "text/html; charset=UTF-8")
                return
        recursive = self.query_one("recursive") == "true"
        if isinstance(node, dict) and not path.endswith("/") and not recursive:
            self.send_bytes(301, b"", headers={"Location": path + "/", "Metadata-Flavor": "Google"})
            return
        if recursive or self.query_one("alt") == "json":
            if isinstance(node, dict) and not recursive:
                listing = sorted(f"{k}/" if isinstance(v, dict) else k for k, v in node.items())
                self._reply(200, json.dumps(listing), "application/json")
            else:
                self._reply(200, json.dumps(_as_json(node, raw_keys="attributes" in parts)), "application/json")
            return
        self._reply(200, _listing(node) if isinstance(node, dict) else _text(node))

    def _lookup(self, info: GuestInfo, parts: list[str]) -> Any:
        node: Any = info.tree()
        for part in parts:
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    def _token(self, info: GuestInfo, parts: list[str]) -> None:
        if info.email is None or parts[2] not in ("default", info.email):
            self._reply(404, "Not Found\n", "text/html; charset=UTF-8")
            return
        token, expires = info.token()
        self._reply(
            200, json.dumps({"access_token": token, "expires_in": expires, "token_type": "Bearer"}), "application/json"
        )


def _serve(conn: socket.socket, address: Any, where: PortContext) -> None:
    """Serve one connection to a metadata port (an HTTP/1.1 keep-alive conversation)."""
    _Handler(conn, address, cast(socketserver.BaseServer, where))


class MetadataService:
    """All VMs' metadata servers: `open(info)` gives a VM its own port, `close(port)` takes it away."""

    def __init__(self) -> None:
        self._mux = PortMux(_serve, name="emulator-metadata")

    def open(self, info: GuestInfo) -> int:
        return self._mux.open(info)

    def close(self, port: int, info: GuestInfo) -> None:
        info.update(closed=True)
        self._mux.close(port)

    def stop(self) -> None:
        self._mux.stop()
