"""The project's IAM and enabled APIs, as far as a refusal goes: what Google answers with a 403.

Every emulated service asks `refusal()` before it acts. A call is refused when its API is not
enabled (`disable`: everyone's calls), when the caller's account lacks the permission in the
project's IAM policies (iam.py: the orchestrator's account and the VMs' service account alike,
roles granted and revoked through the control API), or when the permission is denied to the
orchestrator's account (`deny`). The body is Google's: Compute "Required 'compute.instances.create'
permission for ...", Storage "... does not have storage.objects.get access ...", Cloud Build "The
caller does not have permission", IAM / Resource Manager / Service Usage "Permission '...' denied
on resource (or it may not exist)."; a disabled API's 403 carries an ErrorInfo SERVICE_DISABLED
naming the service.
"""

from __future__ import annotations

import threading
from typing import Any

from parallel_engine.emulator.iam import Iam
from parallel_engine.emulator.identity import ORCHESTRATOR, Caller

#: Each service's API name and title, as its SERVICE_DISABLED error (and Service Usage) names them.
SERVICES = {
    "compute": ("compute.googleapis.com", "Compute Engine API"),
    "storage": ("storage.googleapis.com", "Cloud Storage JSON API"),
    "cloudbuild": ("cloudbuild.googleapis.com", "Cloud Build API"),
    "artifactregistry": ("artifactregistry.googleapis.com", "Artifact Registry API"),
    "iam": ("iam.googleapis.com", "Identity and Access Management (IAM) API"),
    "cloudresourcemanager": ("cloudresourcemanager.googleapis.com", "Cloud Resource Manager API"),
    "serviceusage": ("serviceusage.googleapis.com", "Service Usage API"),
}
#: The services that answer in the older JSON API shape (`errors[]` with a reason); the others in google.rpc.Status.
JSON_APIS = frozenset({"compute", "storage"})
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


def permission_denied(permission: str, resource: str) -> dict[str, Any]:
    """The google.rpc 403 of IAM, Resource Manager and Service Usage for a permission the caller lacks."""
    message = f"Permission '{permission}' denied on resource '{resource}' (or it may not exist)."
    return {"error": {"code": 403, "message": message, "status": "PERMISSION_DENIED", "details": [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "IAM_PERMISSION_DENIED",
         "domain": "iam.googleapis.com", "metadata": {"permission": permission, "resource": resource}},
    ]}}  # fmt: skip


class AccessPolicy:
    """Permissions denied to the orchestrator's account and APIs disabled in the project (thread-safe)."""

    def __init__(self, project: str, project_number: int, iam: Iam | None = None) -> None:
        self.project = project
        self.project_number = project_number
        self.iam = iam
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

    def enabled(self, service: str) -> bool:
        with self._lock:
            return service not in self._disabled

    def denied(self, caller: Caller, permission: str) -> bool:
        """Whether the control API denied this permission to the caller (the orchestrator's account)."""
        with self._lock:
            return caller.kind == ORCHESTRATOR and permission in self._denied

    def refusal(
        self, service: str, method: str, caller: Caller, resource: str, bucket: str | None = None
    ) -> tuple[int, dict[str, Any]] | None:
        """(403, Google's body) when the project refuses this call, else None. `bucket`: the bucket a
        Storage call names (its own IAM policy counts too)."""
        permission = permission_of(method)
        if not self.enabled(service):
            return 403, self._disabled_body(service)
        allowed = self.iam is None or self.iam.allows(caller.email, permission, bucket)
        if allowed and not self.denied(caller, permission):
            return None
        if service == "cloudbuild":
            return 403, {"error": {"code": 403, "message": "The caller does not have permission",
                                   "status": "PERMISSION_DENIED"}}  # fmt: skip
        if service not in JSON_APIS:
            return 403, permission_denied(permission, resource)
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
        if service in JSON_APIS:  # the JSON APIs list it under `errors` too
            error["errors"] = [{"message": message, "domain": "usageLimits", "reason": "accessNotConfigured",
                                "extendedHelp": "https://console.developers.google.com"}]  # fmt: skip
        return {"error": error}
