"""IAM, Cloud Resource Manager and Service Usage: what a pre-flight check of a project asks.

Each is a RestService (rest_service.py) of its own, as each is a host of its own on Google
(iam.googleapis.com, cloudresourcemanager.googleapis.com, serviceusage.googleapis.com), answering
from the project's IAM (iam.py) and its enabled APIs (access.py):

    IAM               GET  /v1/projects/P/serviceAccounts/EMAIL   (P: id, number or -)
                      GET  /v1/roles/ROLE                          (a predefined role's permissions)
    Resource Manager  GET  /v1/projects/P                          (and /v3/projects/P)
                      POST /v1/projects/P:getIamPolicy             (and v3)
                      POST /v1/projects/P:testIamPermissions       (and v3)
    Service Usage     GET  /v1/projects/P/services/SERVICE         (state ENABLED or DISABLED)
                      GET  /v1/projects/P/services:batchGet?names=projects/P/services/SERVICE&...
"""

from __future__ import annotations

import re
from typing import Any

from parallel_engine.emulator.access import SERVICES, AccessPolicy
from parallel_engine.emulator.iam import Iam, role_permissions
from parallel_engine.emulator.identity import TokenRegistry
from parallel_engine.emulator.rest_service import Call, RestService, Route
from parallel_engine.emulator.rpc import ApiError
from parallel_engine.emulator.traffic import Traffic

_P = r"^/v1/projects/(?P<project>[^/:]+)"
_API_KEYS = {name: key for key, (name, _) in SERVICES.items()}  # compute.googleapis.com -> "compute"
CREATED = "2024-01-01T00:00:00.000Z"
#: The services' names (in access.py, in call counts, in `Emulator.client_options`).
PROJECT_APIS = ("iam", "cloudresourcemanager", "serviceusage")


class ProjectApis:
    """The three services of one project, each on its own port."""

    def __init__(self, project: str, project_number: int, iam: Iam, access: AccessPolicy, tokens: TokenRegistry,
                 traffic: dict[str, Traffic]) -> None:  # fmt: skip
        self.project = project
        self.number = project_number
        self.iam = iam
        self.access = access
        routes = {"iam": self._iam_routes(), "cloudresourcemanager": self._manager_routes(),
                  "serviceusage": self._usage_routes()}  # fmt: skip
        self.services = {name: RestService(name, routes[name], traffic[name], tokens, access) for name in PROJECT_APIS}

    def start(self) -> ProjectApis:
        for service in self.services.values():
            service.start()
        return self

    def stop(self) -> None:
        for service in self.services.values():
            service.stop()

    def url(self, service: str) -> str:
        return self.services[service].url

    def _project(self, given: str, wildcard: bool = False) -> str:
        """The project a path names (its id or its number), as Google refuses any other one."""
        if given not in (self.project, str(self.number)) and not (wildcard and given == "-"):
            raise ApiError(403, f"Permission denied on resource project {given}.")
        return self.project

    # -- IAM ----------------------------------------------------------------------------------
    def _iam_routes(self) -> list[Route]:
        def account(call: Call) -> dict[str, Any]:
            self._project(call.params["project"], wildcard=True)
            found = self.iam.account(call.params["account"])
            if found is None:
                raise ApiError(404, f"Unknown service account: {call.params['account']}")
            return {"name": f"projects/{self.project}/serviceAccounts/{found.email}", "projectId": self.project,
                    "uniqueId": found.unique_id, "email": found.email, "displayName": found.display_name,
                    "etag": "MDEwMjE5MjA=", "oauth2ClientId": found.unique_id}  # fmt: skip

        def role(call: Call) -> dict[str, Any]:
            name = f"roles/{call.params['role']}"
            try:
                permissions = role_permissions(name)
            except KeyError:
                raise ApiError(404, f"The role named {name} was not found.") from None
            return {"name": name, "title": call.params["role"], "includedPermissions": permissions, "stage": "GA",
                    "etag": "AA=="}  # fmt: skip

        return [
            Route("GET", re.compile(_P + r"/serviceAccounts/(?P<account>[^/]+)$"), "iam.serviceAccounts.get", account,
                  lambda c: f"projects/{c.params['project']}/serviceAccounts/{c.params['account']}"),
            Route("GET", re.compile(r"^/v1/roles/(?P<role>[^/]+)$"), "iam.roles.get", role,
                  lambda c: f"roles/{c.params['role']}", permission=""),
        ]  # fmt: skip

    # -- Resource Manager ----------------------------------------------------------------------
    def _manager_routes(self) -> list[Route]:
        def get(call: Call) -> dict[str, Any]:
            self._project(call.params["project"])
            if call.params["version"] == "v3":
                return {"name": f"projects/{self.number}", "projectId": self.project, "state": "ACTIVE",
                        "displayName": self.project, "createTime": CREATED, "etag": "W/\"emulated\""}  # fmt: skip
            return {"projectNumber": str(self.number), "projectId": self.project, "lifecycleState": "ACTIVE",
                    "name": self.project, "createTime": CREATED}  # fmt: skip

        def policy(call: Call) -> dict[str, Any]:
            self._project(call.params["project"])
            return {"version": 1, "etag": "BwYAAAAAAAA=", "bindings": self.iam.policy()}

        def test(call: Call) -> dict[str, Any]:
            self._project(call.params["project"])
            asked = [str(p) for p in (call.body.get("permissions") or [])] if isinstance(call.body, dict) else []
            granted = [p for p in self.iam.granted(call.caller.email, asked) if not self.access.denied(call.caller, p)]
            return {"permissions": granted} if granted else {}

        project = r"^/(?P<version>v1|v3)/projects/(?P<project>[^/:]+)"

        def resource(call: Call) -> str:
            return f"projects/{call.params['project']}"

        return [
            Route("GET", re.compile(project + "$"), "cloudresourcemanager.projects.get", get, resource,
                  permission="resourcemanager.projects.get"),
            Route("POST", re.compile(project + ":getIamPolicy$"), "cloudresourcemanager.projects.getIamPolicy", policy,
                  resource, permission="resourcemanager.projects.getIamPolicy"),
            Route("POST", re.compile(project + ":testIamPermissions$"),
                  "cloudresourcemanager.projects.testIamPermissions", test, resource, permission=""),
        ]  # fmt: skip

    # -- Service Usage -------------------------------------------------------------------------
    def _service(self, name: str) -> dict[str, Any]:
        key = _API_KEYS.get(name)
        if key is None:
            raise ApiError(403, f"Not found or permission denied for service(s): {name}.")
        return {"name": f"projects/{self.number}/services/{name}", "parent": f"projects/{self.number}",
                "config": {"name": name, "title": SERVICES[key][1]},
                "state": "ENABLED" if self.access.enabled(key) else "DISABLED"}  # fmt: skip

    def _usage_routes(self) -> list[Route]:
        def get(call: Call) -> dict[str, Any]:
            self._project(call.params["project"])
            return self._service(call.params["service"])

        def batch(call: Call) -> dict[str, Any]:
            self._project(call.params["project"])
            names = call.query.get("names", [])
            if not names:
                raise ApiError(400, "names: must specify at least one service name.")
            return {"services": [self._service(name.rsplit("/", 1)[-1]) for name in names]}

        def resource(call: Call) -> str:
            return f"projects/{call.params['project']}"

        return [
            Route("GET", re.compile(_P + r"/services:batchGet$"), "serviceusage.services.batchGet", batch, resource,
                  permission="serviceusage.services.get"),
            Route("GET", re.compile(_P + r"/services/(?P<service>[^/]+)$"), "serviceusage.services.get", get,
                  resource),
        ]  # fmt: skip
