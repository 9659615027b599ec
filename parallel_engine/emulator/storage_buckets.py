"""What Cloud Storage says about buckets and fake-gcs-server does not: location, project, IAM.

fake-gcs-server gives every bucket location US-CENTRAL1 and project number 0, and has no IAM. The
Storage proxy (storage_proxy.py) rewrites the bucket resources it relays with the location each
bucket was created in (Google's default `US` when none was asked; the emulator's own bucket in its
zone's region; the control API can move one) and the project's number, and answers a bucket's
`iam` (getIamPolicy) and `iam/testPermissions` from the project's IAM (iam.py).
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any

from parallel_engine.emulator.iam import Iam

#: The bucket a JSON API path names (group 1), whatever the call.
BUCKET_PATH = re.compile(r"^/(?:upload/|download/)?storage/v1/b/([^/]+)")
MULTI_REGIONS = frozenset({"US", "EU", "ASIA"})
DUAL_REGIONS = frozenset({"NAM4", "EUR4", "EUR5", "EUR7", "EUR8", "ASIA1"})
DEFAULT_LOCATION = "US"  # what Google gives a bucket created without one


def bucket_of(path: str) -> str | None:
    match = BUCKET_PATH.match(path)
    return match.group(1) if match else None


def location_type(location: str) -> str:
    if location in MULTI_REGIONS:
        return "multi-region"
    return "dual-region" if location in DUAL_REGIONS else "region"


class Buckets:
    """Each bucket's location (thread-safe), and the bucket fields Google fills in."""

    def __init__(self, project_number: int) -> None:
        self.project_number = project_number
        self._lock = threading.Lock()
        self._locations: dict[str, str] = {}

    def set_location(self, bucket: str, location: str) -> None:
        with self._lock:
            self._locations[bucket] = location.upper()

    def created(self, request_body: bytes) -> None:
        """A buckets.insert went through: remember the location it asked for (Google's default if none)."""
        try:
            asked = json.loads(request_body or b"{}")
        except ValueError:
            return
        if isinstance(asked, dict) and isinstance(asked.get("name"), str):
            with self._lock:
                self._locations.setdefault(asked["name"], str(asked.get("location") or DEFAULT_LOCATION).upper())

    def rewrite(self, reply: bytes) -> bytes:
        """A bucket resource (or a list of them) as Google would send it."""
        try:
            payload = json.loads(reply)
        except ValueError:
            return reply
        if not isinstance(payload, dict):
            return reply
        for bucket in payload.get("items", []) if payload.get("kind") == "storage#buckets" else [payload]:
            self._fill(bucket)
        return json.dumps(payload).encode()

    def _fill(self, bucket: dict[str, Any]) -> None:
        with self._lock:
            location = self._locations.get(str(bucket.get("name")), DEFAULT_LOCATION)
        bucket.update(location=location, locationType=location_type(location), projectNumber=str(self.project_number))


def iam_policy(iam: Iam, bucket: str) -> dict[str, Any]:
    """`GET b/BUCKET/iam`, as Storage answers it."""
    return {"kind": "storage#policy", "resourceId": f"projects/_/buckets/{bucket}", "version": 1, "etag": "CAE=",
            "bindings": iam.policy(bucket)}  # fmt: skip


def tested_permissions(granted: list[str]) -> dict[str, Any]:
    """`GET b/BUCKET/iam/testPermissions`, as Storage answers it (no `permissions` when none is held)."""
    answer: dict[str, Any] = {"kind": "storage#testIamPermissionsResponse"}
    if granted:
        answer["permissions"] = granted
    return answer
