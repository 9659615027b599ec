"""Helpers for the emulated cloud's tests: the real Google clients pointed at an emulator, instance builders."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

import google.oauth2.credentials
import requests
from google.auth import credentials as gauth
from google.cloud import compute_v1, storage
from google.cloud.devtools import cloudbuild_v1

from parallel_engine.emulator import Emulator

TIME_SCALE = 0.01
SPOT = "SPOT"
COS_IMAGE = "projects/cos-cloud/global/images/family/cos-stable"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"


def file_credentials(path: str, token_uri: str) -> gauth.Credentials:
    """An `authorized_user` file (as `gcloud auth application-default login` writes it) loaded as
    google-auth loads it, refreshing at `token_uri`: tokens come from the emulator's token
    endpoint (the real OAuth flow, no shortcut)."""
    credentials = google.oauth2.credentials.Credentials.from_authorized_user_file(path, scopes=[CLOUD_PLATFORM])
    return credentials.with_token_uri(token_uri)


def user_credentials(cloud: Emulator) -> gauth.Credentials:
    """The emulator's `authorized_user` file (what CREDENTIALS_FILE names in the config it writes)."""
    return file_credentials(str(cloud.credentials_file), cloud.token_uri)


def bearer(credentials: gauth.Credentials) -> str:
    """A live access token of `credentials`, for a raw HTTP call (fetched at the token endpoint)."""
    from google.auth.transport.requests import Request

    if not credentials.valid:
        credentials.refresh(Request())
    return str(credentials.token)


def config_credentials(values: dict[str, Any]) -> gauth.Credentials:
    """The credentials a config `parallel-engine emulator` wrote names (CREDENTIALS_FILE, TOKEN_URI)."""
    return file_credentials(values["CREDENTIALS_FILE"], values["TOKEN_URI"])


class Clients:
    """The real google-cloud clients pointed at one emulator, and the helpers every test needs."""

    def __init__(self, cloud: Emulator) -> None:
        self.cloud = cloud
        options = {"api_endpoint": cloud.compute_endpoint}
        credentials = self.credentials = user_credentials(cloud)
        self.instances = compute_v1.InstancesClient(client_options=options, credentials=credentials)
        self.operations = compute_v1.ZoneOperationsClient(client_options=options, credentials=credentials)
        self.regions = compute_v1.RegionsClient(client_options=options, credentials=credentials)
        self.machine_types = compute_v1.MachineTypesClient(client_options=options, credentials=credentials)
        self.storage = storage.Client(
            project=cloud.project, credentials=credentials, client_options={"api_endpoint": cloud.storage_endpoint}
        )
        self.project = cloud.project
        self.zone = cloud.zone

    def auth(self) -> str:
        """`Authorization: Bearer <token>` of the user's credentials, for curl or urllib."""
        return f"Authorization: Bearer {bearer(self.credentials)}"

    def wait(self, operation: Any, timeout: float = 30, zone: str | None = None) -> compute_v1.Operation:
        """Wait on a zone operation (of the emulator's zone unless told) until DONE (never `.result()`)."""
        deadline = time.monotonic() + timeout
        while True:
            done = self.operations.wait(project=self.project, zone=zone or self.zone, operation=operation.name)
            if done.status == compute_v1.Operation.Status.DONE:
                return done
            if time.monotonic() > deadline:
                raise TimeoutError(f"operation {operation.name} not done after {timeout} s")

    def insert(self, instance: compute_v1.Instance) -> compute_v1.Operation:
        return self.instances.insert(project=self.project, zone=self.zone, instance_resource=instance)

    def get(self, name: str) -> compute_v1.Instance:
        return self.instances.get(project=self.project, zone=self.zone, instance=name)

    def delete(self, name: str) -> compute_v1.Operation:
        return self.wait(self.instances.delete(project=self.project, zone=self.zone, instance=name))

    def wait_status(self, name: str, status: str, timeout: float = 20) -> compute_v1.Instance:
        deadline = time.monotonic() + timeout
        while True:
            instance = self.get(name)
            if instance.status == status:
                return instance
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} is {instance.status}, not {status}, after {timeout} s")
            time.sleep(0.02)

    def wait_gone(self, name: str, timeout: float = 20) -> None:
        from google.api_core.exceptions import NotFound

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.get(name)
            except NotFound:
                return
            time.sleep(0.02)
        raise TimeoutError(f"{name} still exists after {timeout} s")


def make_instance(
    name: str,
    zone: str = "us-central1-a",
    machine_type: str = "e2-standard-2",
    script: str | None = None,
    labels: dict[str, str] | None = None,
    metadata: dict[str, str] | None = None,
    spot: bool = False,
    external_ip: bool = False,
    scopes: tuple[str, ...] = (CLOUD_PLATFORM,),
    max_run_seconds: int | None = None,
    action: str | None = None,
) -> compute_v1.Instance:
    """An instance as the orchestrator would build it (COS boot disk, default SA, startup script)."""
    items = dict(metadata or {})
    if script is not None:
        items["startup-script"] = script
    scheduling = compute_v1.Scheduling()
    if spot:
        scheduling = compute_v1.Scheduling(
            provisioning_model=SPOT, automatic_restart=False, on_host_maintenance="TERMINATE"
        )
    if action:
        scheduling.instance_termination_action = action
    if max_run_seconds is not None:
        scheduling.max_run_duration = compute_v1.Duration(seconds=max_run_seconds)
    nic = compute_v1.NetworkInterface(network="global/networks/default")
    if external_ip:
        nic.access_configs = [compute_v1.AccessConfig(name="External NAT", type_="ONE_TO_ONE_NAT")]
    return compute_v1.Instance(
        name=name,
        machine_type=f"zones/{zone}/machineTypes/{machine_type}",
        labels=labels or {},
        metadata=compute_v1.Metadata(items=[compute_v1.Items(key=k, value=v) for k, v in items.items()]),
        scheduling=scheduling,
        disks=[
            compute_v1.AttachedDisk(
                boot=True,
                auto_delete=True,
                initialize_params=compute_v1.AttachedDiskInitializeParams(source_image=COS_IMAGE, disk_size_gb=10),
            )
        ],
        network_interfaces=[nic],
        service_accounts=[compute_v1.ServiceAccount(email="default", scopes=list(scopes))],
    )


CLAIM_SCRIPT = r"""#!/bin/bash
set -euo pipefail
MD="http://${GCE_METADATA_HOST}/computeMetadata/v1"
H='Metadata-Flavor: Google'
STORAGE=__STORAGE__
BUCKET=__BUCKET__
name=$(curl -sf -H "$H" "$MD/instance/name")
json=$(curl -sf -H "$H" "$MD/instance/service-accounts/default/token")
[[ $json =~ \"access_token\":\ *\"([^\"]+)\" ]]
token=${BASH_REMATCH[1]}
body=$(mktemp)
{
  printf -- '--B\r\nContent-Type: application/json\r\n\r\n{"name":"claims/%s"}\r\n' "$name"
  printf -- '--B\r\nContent-Type: text/plain\r\n\r\n%s\r\n--B--\r\n' "$name"
} > "$body"
for attempt in 1 2; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer $token" \
    -H 'Content-Type: multipart/related; boundary=B' --data-binary @"$body" \
    "$STORAGE/upload/storage/v1/b/$BUCKET/o?uploadType=multipart&ifGenerationMatch=0")
  echo "upload $attempt: $code"
done
"""


def claim_script(clients: Clients) -> str:
    return CLAIM_SCRIPT.replace("__STORAGE__", clients.cloud.storage_endpoint).replace(
        "__BUCKET__", clients.cloud.bucket
    )


def cloudbuild_client(endpoint: str, credentials: gauth.Credentials) -> cloudbuild_v1.CloudBuildClient:
    """The real Cloud Build client (REST) at a Cloud Build endpoint."""
    return cloudbuild_v1.CloudBuildClient(
        transport="rest", client_options={"api_endpoint": endpoint}, credentials=credentials
    )


def wait_for(predicate: Callable[[], Any], timeout: float = 20, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError(f"timed out waiting for {what}")


def console(clients: Clients, name: str) -> str:
    output = clients.instances.get_serial_port_output(project=clients.project, zone=clients.zone, instance=name)
    return output.contents


class FixedToken(gauth.Credentials):
    """A bearer token used as it is, never refreshed (what a script holding one old token does)."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token

    def refresh(self, request: object) -> None:
        """Nothing to refresh: keep sending the same token."""


def push_tiny_image(registry: str, repository: str, token: str) -> str:
    """A one-blob image pushed with the registry API (no Docker): its manifest digest."""
    auth = {"Authorization": f"Bearer {token}"}
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    started = requests.post(f"http://{registry}/v2/{repository}/blobs/uploads/", headers=auth, timeout=30)
    location = started.headers["Location"]
    location = location if location.startswith("http") else f"http://{registry}{location}"
    sep = "&" if "?" in location else "?"
    requests.put(f"{location}{sep}digest={config_digest}", data=config, headers=auth, timeout=30).raise_for_status()
    blob = {"mediaType": "application/vnd.docker.container.image.v1+json", "size": len(config), "digest": config_digest}
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                           "config": blob, "layers": []}).encode()  # fmt: skip
    headers = {**auth, "Content-Type": "application/vnd.docker.distribution.manifest.v2+json"}
    put = requests.put(f"http://{registry}/v2/{repository}/manifests/v1", data=manifest, headers=headers, timeout=30)
    put.raise_for_status()
    return str(put.headers["Docker-Content-Digest"])
