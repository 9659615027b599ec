"""The project's identities and who may do what: service accounts, IAM policies, predefined roles.

As far as a run and a pre-flight check need it: the project's service accounts (IAM
`serviceAccounts.get`), the project's IAM policy and each bucket's (roles bound to members:
`getIamPolicy`), the permissions of the roles that matter here (`roles.get`), and what a member
holds on the project or on a bucket (what `testIamPermissions` answers, and what every emulated
service checks a call against: access.py). A new project, as Google makes it: the user owns it;
the Compute Engine default service account (the VMs') and the orchestrator's key account are
editors; a bucket grants its legacy roles to the project's owners, editors and viewers. The
control API grants and revokes roles and deletes service accounts.
"""

from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass

_OBJECTS_READ = frozenset({"storage.objects.get", "storage.objects.list"})
_OBJECTS_WRITE = frozenset({"storage.objects.create", "storage.objects.delete", "storage.objects.update"})
_BUCKETS = frozenset(f"storage.buckets.{verb}" for verb in ("get", "list", "create", "delete", "update",
                                                             "getIamPolicy", "setIamPolicy"))  # fmt: skip
_COMPUTE_READ = frozenset(f"compute.{kind}.{verb}" for kind in ("instances", "zoneOperations", "zones", "regions",
                                                                 "machineTypes") for verb in ("get", "list"))  # fmt: skip
_COMPUTE_WRITE = frozenset({*(f"compute.instances.{verb}" for verb in ("create", "delete", "start", "stop",
                                                                      "getSerialPortOutput", "setMetadata",
                                                                      "setLabels", "setServiceAccount")),
                            "compute.zoneOperations.delete", "compute.disks.create", "compute.subnetworks.use",
                            "compute.subnetworks.useExternalIp"})  # fmt: skip
_REGISTRY_READ = frozenset({"artifactregistry.repositories.downloadArtifacts", "artifactregistry.repositories.get",
                            "artifactregistry.repositories.list", "artifactregistry.dockerimages.get",
                            "artifactregistry.dockerimages.list"})  # fmt: skip
_REGISTRY_WRITE = _REGISTRY_READ | {"artifactregistry.repositories.uploadArtifacts"}
_BUILDS = frozenset({"cloudbuild.builds.create", "cloudbuild.builds.get", "cloudbuild.builds.list",
                     "cloudbuild.builds.update"})  # fmt: skip
_ACCOUNTS = frozenset({"iam.serviceAccounts.get", "iam.serviceAccounts.list"})

#: Predefined roles and the permissions of theirs that the emulated services know.
ROLES: dict[str, frozenset[str]] = {
    "roles/storage.admin": _BUCKETS | _OBJECTS_READ | _OBJECTS_WRITE,
    "roles/storage.objectAdmin": _OBJECTS_READ | _OBJECTS_WRITE,
    "roles/storage.objectUser": _OBJECTS_READ | _OBJECTS_WRITE,
    "roles/storage.objectCreator": frozenset({"storage.objects.create"}),
    "roles/storage.objectViewer": _OBJECTS_READ,
    "roles/storage.legacyBucketOwner": frozenset({"storage.buckets.get", "storage.buckets.update",
                                                  "storage.buckets.getIamPolicy", "storage.buckets.setIamPolicy",
                                                  "storage.objects.list", "storage.objects.create",
                                                  "storage.objects.delete"}),  # fmt: skip
    "roles/storage.legacyBucketWriter": frozenset({"storage.buckets.get", "storage.objects.list",
                                                   "storage.objects.create", "storage.objects.delete"}),  # fmt: skip
    "roles/storage.legacyBucketReader": frozenset({"storage.buckets.get", "storage.objects.list"}),
    "roles/storage.legacyObjectOwner": frozenset({"storage.objects.get", "storage.objects.update"}),
    "roles/storage.legacyObjectReader": frozenset({"storage.objects.get"}),
    "roles/compute.instanceAdmin.v1": _COMPUTE_READ | _COMPUTE_WRITE,
    "roles/compute.viewer": _COMPUTE_READ,
    "roles/artifactregistry.reader": _REGISTRY_READ,
    "roles/artifactregistry.writer": _REGISTRY_WRITE,
    "roles/cloudbuild.builds.editor": _BUILDS,
    "roles/cloudbuild.builds.builder": _BUILDS | _OBJECTS_READ | _OBJECTS_WRITE | _REGISTRY_WRITE
    | {"logging.logEntries.create"},
    "roles/iam.serviceAccountUser": _ACCOUNTS | {"iam.serviceAccounts.actAs"},
    "roles/logging.logWriter": frozenset({"logging.logEntries.create"}),
    "roles/serviceusage.serviceUsageConsumer": frozenset({"serviceusage.services.get", "serviceusage.services.list",
                                                          "serviceusage.services.use"}),  # fmt: skip
}
#: Every permission the emulator knows of; one outside it is not checked (every caller has it).
PERMISSIONS: frozenset[str] = frozenset().union(*ROLES.values()) | {
    "resourcemanager.projects.get", "resourcemanager.projects.getIamPolicy", "resourcemanager.projects.setIamPolicy",
    "iam.serviceAccounts.actAs", "iam.serviceAccounts.create", "iam.serviceAccounts.delete",
    "serviceusage.services.enable", "serviceusage.services.disable",
}  # fmt: skip
BASIC_ROLES = ("roles/owner", "roles/editor", "roles/viewer")
#: A bucket's own policy, as Google gives a new one: its legacy roles for the project's basic roles.
_BUCKET_BINDINGS = {
    "roles/storage.legacyBucketOwner": ("projectEditor", "projectOwner"),
    "roles/storage.legacyBucketReader": ("projectViewer",),
    "roles/storage.legacyObjectOwner": ("projectEditor", "projectOwner"),
    "roles/storage.legacyObjectReader": ("projectViewer",),
}
_CONVENIENCE = {"projectOwner": "roles/owner", "projectEditor": "roles/editor", "projectViewer": "roles/viewer"}


def _basic_grants(role: str, permission: str) -> bool:
    """What a basic role holds: an owner everything, an editor all but IAM policy changes, a viewer
    the reads (objects' data excepted)."""
    if role == "roles/owner":
        return True
    if role == "roles/editor":
        return not permission.endswith(".setIamPolicy")
    verb = permission.rsplit(".", 1)[-1]
    return verb in ("get", "list", "getIamPolicy") and not permission.startswith("storage.objects.")


def role_permissions(role: str) -> list[str]:
    """The permissions of a role the emulator knows (KeyError otherwise), sorted."""
    if role in BASIC_ROLES:
        return sorted(p for p in PERMISSIONS if _basic_grants(role, p))
    return sorted(ROLES[role])


def compute_account(project_number: int) -> str:
    """The Compute Engine default service account's email (what a VM's `default` account is)."""
    return f"{project_number}-compute@developer.gserviceaccount.com"


def member_of(email: str) -> str:
    """The IAM member an account's email stands for."""
    return f"serviceAccount:{email}" if email.endswith(".gserviceaccount.com") else f"user:{email}"


@dataclass(frozen=True)
class ServiceAccount:
    email: str
    display_name: str
    unique_id: str


class Iam:
    """Service accounts and IAM policies of one project (thread-safe)."""

    def __init__(self, project: str, project_number: int, user: str, accounts: dict[str, str]) -> None:
        """`accounts`: email -> display name of the project's service accounts, all editors."""
        self.project = project
        self.project_number = project_number
        self._lock = threading.Lock()
        self._accounts = {email: ServiceAccount(email, name, _unique_id(email)) for email, name in accounts.items()}
        self._project: dict[str, set[str]] = {"roles/owner": {f"user:{user}"},
                                              "roles/editor": {member_of(email) for email in accounts}}  # fmt: skip
        self._buckets: dict[str, dict[str, set[str]]] = {}

    # -- what the APIs read -----------------------------------------------------------------
    def account(self, email: str) -> ServiceAccount | None:
        with self._lock:
            return self._accounts.get(email)

    def policy(self, bucket: str | None = None) -> list[dict[str, object]]:
        """The bindings of the project's policy, or of a bucket's, as `getIamPolicy` lists them."""
        with self._lock:
            bindings = self._project if bucket is None else self._bucket(bucket)
            return [{"role": role, "members": sorted(members)} for role, members in sorted(bindings.items()) if members]

    def granted(self, email: str | None, permissions: list[str], bucket: str | None = None) -> list[str]:
        """The ones of `permissions` the account holds on the project (or on a bucket, its policy included)."""
        return [p for p in permissions if self._holds(email, p, bucket)]

    def allows(self, email: str | None, permission: str, bucket: str | None = None) -> bool:
        """Whether a call needing `permission` is allowed (a permission the emulator does not know always is)."""
        return permission not in PERMISSIONS or self._holds(email, permission, bucket)

    def _holds(self, email: str | None, permission: str, bucket: str | None) -> bool:
        if not email:
            return False
        member = member_of(email)
        with self._lock:  # a deleted account's bindings name it `deleted:...`: it holds nothing
            roles = {role for role, members in self._project.items() if member in members}
            if bucket is not None:
                for role, members in self._bucket(bucket).items():
                    named = {_CONVENIENCE[m.split(":", 1)[0]] for m in members if m.split(":", 1)[0] in _CONVENIENCE}
                    if member in members or roles & named:
                        roles.add(role)
        return any(_basic_grants(r, permission) if r in BASIC_ROLES else permission in ROLES.get(r, ()) for r in roles)

    def _bucket(self, bucket: str) -> dict[str, set[str]]:
        """A bucket's bindings, made as Google makes a new bucket's on first use (under the lock)."""
        if bucket not in self._buckets:
            self._buckets[bucket] = {role: {f"{c}:{self.project}" for c in conv}
                                     for role, conv in _BUCKET_BINDINGS.items()}  # fmt: skip
        return self._buckets[bucket]

    # -- what the control API changes ---------------------------------------------------------
    def grant(self, role: str, member: str, bucket: str | None = None) -> None:
        _check_role(role)
        with self._lock:
            bindings = self._project if bucket is None else self._bucket(bucket)
            bindings.setdefault(role, set()).add(member)

    def revoke(self, role: str, member: str, bucket: str | None = None) -> None:
        _check_role(role)
        with self._lock:
            bindings = self._project if bucket is None else self._bucket(bucket)
            bindings.get(role, set()).discard(member)

    def delete_account(self, email: str) -> None:
        """Delete a service account: gone from IAM, its bindings shown `deleted:...?uid=` as Google shows them."""
        with self._lock:
            account = self._accounts.pop(email, None)
            if account is None:
                raise KeyError(f"no service account {email}")
            old, new = member_of(email), f"deleted:{member_of(email)}?uid={account.unique_id}"
            for bindings in (self._project, *self._buckets.values()):
                for members in bindings.values():
                    if old in members:
                        members.discard(old)
                        members.add(new)


def _check_role(role: str) -> None:
    if role not in ROLES and role not in BASIC_ROLES:
        raise KeyError(f"unknown role {role}: one of {', '.join(sorted([*BASIC_ROLES, *ROLES]))}")


def _unique_id(email: str) -> str:
    """A stable 21-digit unique id, the length Google's have."""
    return str(100000000000000000000 + zlib.crc32(email.encode()) * 1000)
