"""What a VM worker asks its metadata server: who it is, whether it is preempted, a token (through
google-auth's compute_engine credentials), and how it deletes its own VM."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import requests

HEADERS = {"Metadata-Flavor": "Google"}
WAIT_S = 60  # one hanging `wait_for_change` request; Google answers within it


def base_url() -> str:
    return f"http://{os.environ.get('GCE_METADATA_HOST', 'metadata.google.internal')}/computeMetadata/v1/"


def get(path: str, session: requests.Session | None = None, timeout: float = 30) -> str:
    """GET a metadata value as text; raises on anything but 200."""
    answer = (session or requests).get(base_url() + path, headers=HEADERS, timeout=timeout)
    answer.raise_for_status()
    return answer.text


def credentials(log: Callable[[str], None] = lambda line: None) -> Any:
    """The VM's service account; google-auth refreshes the token itself (each refresh logged)."""
    from google.auth import compute_engine

    said = [0.0]

    class Logged(compute_engine.Credentials):
        def refresh(self, request: Any) -> None:
            super().refresh(request)  # type: ignore[no-untyped-call]  # untyped in google-auth
            if time.monotonic() - said[0] < 1.0:
                return  # at 1/100 time every call refreshes: one line a second is enough
            said[0] = time.monotonic()
            left = "" if self.expiry is None else f" (expires in {max(0, int((self.expiry - _utcnow()).total_seconds()))} s)"
            log(f"service-account token fetched{left}")

    return Logged()  # type: ignore[no-untyped-call]  # google-auth leaves __init__ untyped


def _utcnow() -> Any:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)  # google-auth's naive UTC


def watch_preemption(preempted: threading.Event, stop: threading.Event) -> None:
    """Set `preempted` when instance/preempted turns TRUE: a hanging `wait_for_change` request that
    sends the last ETag back, so no change between two requests is missed."""
    session = requests.Session()
    etag = ""
    while not stop.is_set():
        try:
            query = f"?wait_for_change=true&timeout_sec={WAIT_S}" + (f"&last_etag={etag}" if etag else "")
            answer = session.get(base_url() + "instance/preempted" + query, headers=HEADERS, timeout=WAIT_S + 10)
            answer.raise_for_status()
        except requests.RequestException:
            stop.wait(1.0)
            continue
        etag = answer.headers.get("ETag", "")
        if answer.text.strip() == "TRUE":
            preempted.set()
            return


def preempted_now() -> bool:
    try:
        return get("instance/preempted", timeout=5).strip() == "TRUE"
    except requests.RequestException:
        return False


def delete_own_vm(compute_endpoint: str, name: str, creds: Any) -> None:
    """One Compute call: DELETE this instance (its zone and project from the metadata server)."""
    from google.auth.transport.requests import AuthorizedSession

    project = get("project/project-id")
    zone = get("instance/zone").rsplit("/", 1)[-1]
    url = f"{compute_endpoint.rstrip('/')}/compute/v1/projects/{project}/zones/{zone}/instances/{name}"
    session = AuthorizedSession(creds)  # type: ignore[no-untyped-call]  # untyped in google-auth
    answer = session.delete(url, timeout=60)
    answer.raise_for_status()
