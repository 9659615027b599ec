"""The project's IAM and enabled APIs, as far as a refusal goes: what Google answers with a 403.

Tests tell the control API which permissions the orchestrator's account lacks (`deny`) and which
APIs are not enabled (`disable`); every emulated service asks `refusal()` before it acts, and answers
with the body Google sends: Compute "Required 'compute.instances.create' permission for ...",
Storage "... does not have storage.objects.get access ...", Cloud Build "The caller does not have
permission"; a disabled API's 403 carries an ErrorInfo SERVICE_DISABLED naming the service.
Permissions are checked for the orchestrator's callers only (a VM's service account has its own
roles, which the emulator does not model); a disabled API refuses everyone.
"""

from __future__ import annotations

import threading
from typing import Any

from parallel_engine.emulator.identity import ORCHESTRATOR, Caller

#: Each service's API name and title, as its SERVICE_DISABLED error names them.
SERVICES = {
    "compute": ("compute.googleapis.com", "Compute Engine API"),
    "storage": ("storage.googleapis.com", "Cloud Storage JSON API"),
    "cloudbuild": ("cloudbuild.googleapis.com", "Cloud Build API"),
}
#: Method names whose IAM permission is spelled differently.
PERMISSIONS = {
    "compute.instances.insert": "compute.instances.create",
    "compute.instances.bulkInsert": "compute.instances.create",
    "compute.instances.aggregatedList": "compute.instances.list",
    "compute.zoneOperations.wait": "compute.zoneOperations.get",
    "cloudbuild.operations.get": "cloudbuild.builds.get",
    "cloudbuild.operations.cancel": "cloudbuild.builds.update",
    "cloudbuild.builds.cancel": "cloudbuild.builds.update",
}


def permission_of(method: str) -> str:
    return PERMISSIONS.get(method, method)


class AccessPolicy:
    """Permissions denied to the orchestrator's account and APIs disabled in the project (thread-safe)."""

    def __init__(self, project: str, project_number: int) -> None:
        self.project = project
        self.project_number = project_number
        self._lock = threading.Lock()
        self._denied: set[str] = set()
        self._disabled: set[str] = set()

    def deny(self, permissions: list[str]) -> None:
        with self._lock:
            self._denied |= set(permissions)

    def disable(self, services: list[str]) -> None:
        unknown = set(services) - set(SERVICES)
        if unknown:
            raise ValueError(f"unknown services {sorted(unknown)}: one of {sorted(SERVICES)}")
        with self._lock:
            self._disabled |= set(services)

    def reset(self) -> None:
        """Every permission granted, every API enabled again."""
        with self._lock:
            self._denied.clear()
            self._disabled.clear()

    def describe(self) -> dict[str, list[str]]:
        with self._lock:
            return {"denied": sorted(self._denied), "disabled": sorted(self._disabled)}

    def refusal(self, service: str, method: str, caller: Caller, resource: str) -> tuple[int, dict[str, Any]] | None:
        """(403, Google's body) when the project refuses this call, else None."""
        permission = permission_of(method)
        with self._lock:
            disabled = service in self._disabled
            denied = caller.kind == ORCHESTRATOR and permission in self._denied
        if disabled:
            return 403, self._disabled_body(service)
        if not denied:
            return None
        if service == "cloudbuild":
            return 403, {"error": {"code": 403, "message": "The caller does not have permission",
                                   "status": "PERMISSION_DENIED"}}  # fmt: skip
        if service == "storage":
            message = (f"{caller.email} does not have {permission} access to the Google Cloud Storage {resource}. "
                       f"Permission '{permission}' denied on resource (or it may not exist).")
        else:
            message = f"Required '{permission}' permission for '{resource}'"
        return 403, {"error": {"code": 403, "message": message,
                               "errors": [{"message": message, "domain": "global", "reason": "forbidden"}]}}

    def _disabled_body(self, service: str) -> dict[str, Any]:
        name, title = SERVICES[service]
        number = self.project_number
        url = f"https://console.developers.google.com/apis/api/{name}/overview?project={number}"
        message = (f"{title} has not been used in project {number} before or it is disabled. Enable it by visiting "
                   f"{url} then retry. If you enabled this API recently, wait a few minutes for the action to "
                   "propagate to our systems and retry.")
        error: dict[str, Any] = {"code": 403, "message": message, "status": "PERMISSION_DENIED", "details": [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "SERVICE_DISABLED",
             "domain": "googleapis.com", "metadata": {"service": name, "consumer": f"projects/{number}",
                                                      "serviceTitle": title, "activationUrl": url}},
        ]}  # fmt: skip
        if service != "cloudbuild":  # the JSON APIs list it under `errors` too
            error["errors"] = [{"message": message, "domain": "usageLimits", "reason": "accessNotConfigured",
                                "extendedHelp": "https://console.developers.google.com"}]  # fmt: skip
        return {"error": error}
