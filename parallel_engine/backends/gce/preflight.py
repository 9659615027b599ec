"""What a check of a Google project reads before a run (doctor, quotas before launch): reads only.

Plain REST through google-auth's AuthorizedSession (no client library exists here for IAM,
Resource Manager or Service Usage), each endpoint from the config (the emulated cloud names its
own). A refusal becomes one of our errors: 401 → CredentialsError, a disabled API → AccessError
naming the API and the command that enables it, any other 403 → PermissionDenied.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from parallel_engine.backends.gce.settings import GceSettings
from parallel_engine.errors import AccessError, BackendError, CredentialsError, PermissionDenied

DEFAULT_IAM = "https://iam.googleapis.com"
DEFAULT_RESOURCEMANAGER = "https://cloudresourcemanager.googleapis.com"
DEFAULT_SERVICEUSAGE = "https://serviceusage.googleapis.com"
TIMEOUT_S = 30.0
_DISABLED_SERVICE = re.compile(r"([a-z]+\.googleapis\.com)")


@dataclass(frozen=True)
class Quota:
    metric: str
    limit: float
    usage: float

    @property
    def free(self) -> float:
        return self.limit - self.usage


class Preflight:
    """The reads, sharing one authorized session."""

    def __init__(self, settings: GceSettings, project: str) -> None:
        from google.auth.transport.requests import AuthorizedSession

        from parallel_engine.backends.gce.credentials import credentials

        config = settings.config
        self.settings = settings
        self.project = project
        self.session = AuthorizedSession(credentials(config))  # type: ignore[no-untyped-call]  # google-auth leaves it untyped
        self.compute = f"{settings.compute_endpoint}/compute/v1/projects/{project}"
        self.storage = f"{settings.storage_endpoint}/storage/v1/b/{settings.bucket}"
        self.iam = config.iam_endpoint or DEFAULT_IAM
        self.manager = config.resourcemanager_endpoint or DEFAULT_RESOURCEMANAGER
        self.usage = config.serviceusage_endpoint or DEFAULT_SERVICEUSAGE

    # -- one call ------------------------------------------------------------------------------
    def call(self, method: str, url: str, what: str, missing_ok: bool = False, **kwargs: Any) -> dict[str, Any] | None:
        """The JSON answer; None for a 404 when `missing_ok`; else one of our errors."""
        from google.auth.exceptions import GoogleAuthError

        from parallel_engine.backends.gce.credentials import access_error

        try:
            answer = self.session.request(method, url, timeout=TIMEOUT_S, **kwargs)  # type: ignore[no-untyped-call]  # google-auth leaves it untyped
        except GoogleAuthError as exc:
            raise (access_error(exc, what) or CredentialsError(f"{what}: {exc}")) from None
        except OSError as exc:  # requests' errors are OSErrors: nobody answers there
            raise BackendError(f"{what}: no answer from {url.split('/')[2]}: {exc}") from None
        if answer.status_code == 404 and missing_ok:
            return None
        if answer.status_code < 300:
            try:
                body: dict[str, Any] = answer.json() if answer.content else {}
            except ValueError:  # a web page: a proxy's, or a *_ENDPOINT that is not the API
                raise BackendError(f"{what}: the answer of {url.split('/')[2]} is not JSON: "
                                   f"{answer.text.strip()[:100]!r}",
                                   hint="check the *_ENDPOINT keys and any proxy between you and Google") from None
            return body
        raise refusal(answer.status_code, answer.text, what, self.project)

    def get(self, url: str, what: str, missing_ok: bool = False, **kwargs: Any) -> dict[str, Any] | None:
        return self.call("GET", url, what, missing_ok, **kwargs)

    def must(self, found: dict[str, Any] | None) -> dict[str, Any]:
        assert found is not None  # only None when missing_ok
        return found

    # -- what the checks read ------------------------------------------------------------------
    def project_info(self) -> dict[str, Any]:
        return self.must(self.get(f"{self.manager}/v1/projects/{self.project}", "Resource Manager (projects.get)"))

    def service_state(self, api: str) -> str:
        url = f"{self.usage}/v1/projects/{self.project}/services/{api}.googleapis.com"
        return str(self.must(self.get(url, "Service Usage (services.get)")).get("state", "UNKNOWN"))

    def bucket(self) -> dict[str, Any] | None:
        return self.get(self.storage, "Cloud Storage (buckets.get)", missing_ok=True)

    def bucket_permissions(self, wanted: list[str]) -> set[str]:
        found = self.must(self.get(f"{self.storage}/iam/testPermissions", "Cloud Storage (buckets.testIamPermissions)",
                                   params=[("permissions", p) for p in wanted]))
        return set(found.get("permissions", []))

    def bucket_bindings(self) -> list[dict[str, Any]]:
        found = self.must(self.get(f"{self.storage}/iam", "Cloud Storage (buckets.getIamPolicy)"))
        return list(found.get("bindings", []))

    def project_bindings(self) -> list[dict[str, Any]]:
        found = self.must(self.call("POST", f"{self.manager}/v1/projects/{self.project}:getIamPolicy",
                                    "Resource Manager (projects.getIamPolicy)", json={}))
        return list(found.get("bindings", []))

    def service_account(self, email: str) -> dict[str, Any] | None:
        return self.get(f"{self.iam}/v1/projects/-/serviceAccounts/{email}", "IAM (serviceAccounts.get)", missing_ok=True)

    def role_permissions(self, role: str) -> set[str]:
        """A role's permissions (`roles/X`, or a custom `projects/P/roles/X`); none for one IAM does not know."""
        found = self.get(f"{self.iam}/v1/{role}", f"IAM (roles.get {role})", missing_ok=True)
        return set((found or {}).get("includedPermissions", []))

    def machine_type_cpus(self, zone: str, machine_type: str) -> int | None:
        found = self.get(f"{self.compute}/zones/{zone}/machineTypes/{machine_type}", "Compute (machineTypes.get)",
                         missing_ok=True)
        return None if found is None else int(found["guestCpus"])

    def zone_exists(self, zone: str) -> bool:
        """False when Compute Engine has no such zone (zones.get: 404; zonal calls answer 400)."""
        return self.get(f"{self.compute}/zones/{zone}", "Compute (zones.get)", missing_ok=True) is not None

    def region_quotas(self, region: str) -> dict[str, Quota]:
        found = self.must(self.get(f"{self.compute}/regions/{region}", "Compute (regions.get)"))
        return {q["metric"]: Quota(q["metric"], float(q.get("limit", 0)), float(q.get("usage", 0)))
                for q in found.get("quotas", [])}

    def manifest_status(self, image: str) -> int:
        """The registry's HTTP status for IMAGE's manifest (by digest when pinned): 200 when it is there."""
        host, _, rest = image.partition("/")
        if "@" in rest:
            repository, _, reference = rest.partition("@")
        else:
            repository, _, reference = rest.rpartition(":") if ":" in rest else (rest, "", "latest")
        scheme = "http" if _plain_http_registry(host) else "https"
        accept = ", ".join(("application/vnd.docker.distribution.manifest.v2+json",
                            "application/vnd.docker.distribution.manifest.list.v2+json",
                            "application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json"))
        try:
            answer = self.session.head(f"{scheme}://{host}/v2/{repository}/manifests/{reference}",
                                       headers={"Accept": accept}, timeout=TIMEOUT_S)
        except OSError as exc:
            raise BackendError(f"the registry {host} does not answer: {exc}") from None
        return int(answer.status_code)


def _plain_http_registry(host: str) -> bool:
    """Docker's own rule, so doctor asks the registry the way `docker pull` will: a registry on a
    loopback address is insecure by default (dockerd's 127.0.0.0/8), reached over plain HTTP."""
    name = host.rsplit(":", 1)[0].strip("[]") if host.count(":") <= 1 or host.startswith("[") else host
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def refusal(status: int, text: str, what: str, project: str) -> AccessError | BackendError:
    """Google's refusal as one of our errors, with the fix."""
    short = _message(text)
    if status == 401:
        return CredentialsError(f"{what} refused your credentials (401): {short}",
                                hint="run `gcloud auth application-default login` again, or check CREDENTIALS_FILE")
    if status == 403 and ("SERVICE_DISABLED" in text or "accessNotConfigured" in text):
        found = _DISABLED_SERVICE.search(short)
        api = found.group(1) if found else "the API"
        return AccessError(f"{what}: {api} is disabled in project {project}",
                           hint=f"gcloud services enable {api} --project {project}")
    if status == 403:
        return PermissionDenied(f"{what} was refused (403): {short}",
                                hint="ask the project's owner for a role that grants it")
    if status == 429 or status >= 500:
        return BackendError(f"{what} failed (HTTP {status}): {short}",
                            hint="Google failed or was busy, which passes: try again in a minute")
    if status == 400 and "Unknown zone" in short:  # how zonal calls refuse a zone Google does not have
        return BackendError(f"{what} failed (HTTP {status}): {short}", hint="choose one of `gcloud compute zones list`")
    return BackendError(f"{what} failed (HTTP {status}): {short}")


def _message(text: str) -> str:
    import json

    try:
        return str(json.loads(text)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return text.strip()[:300]
