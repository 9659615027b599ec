"""doctor's checks for the gce backend, in the order a run needs them: credentials and project,
APIs, the bucket, the registry and image, the VMs' service account and its roles, quotas."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from parallel_engine.backends.gce.preflight import Preflight, Quota
from parallel_engine.backends.gce.quotas import Need, needs
from parallel_engine.backends.gce.settings import GceSettings
from parallel_engine.doctor import CheckFn, Skip

Verdict = tuple[bool, str, str]

#: The APIs a run calls (Service Usage names).
APIS = ("compute", "storage", "cloudbuild", "artifactregistry")
#: What the orchestrator's own account does with the bucket.
BUCKET_PERMISSIONS = ["storage.objects.create", "storage.objects.get", "storage.objects.list", "storage.objects.delete"]
#: What the VMs' service account needs, the role that grants it, and on what.
VM_NEEDS = (
    ("storage.objects.create", "roles/storage.objectUser", "bucket"),
    ("storage.objects.get", "roles/storage.objectUser", "bucket"),
    ("storage.objects.list", "roles/storage.objectUser", "bucket"),
    ("storage.objects.delete", "roles/storage.objectUser", "bucket"),
    ("artifactregistry.repositories.downloadArtifacts", "roles/artifactregistry.reader", "project"),
    ("compute.instances.delete", "roles/compute.instanceAdmin.v1", "project"),
)
#: A bucket's policy names project roles' holders by these convenience values.
_CONVENIENCE = {"roles/owner": "projectOwner", "roles/editor": "projectEditor", "roles/viewer": "projectViewer"}
#: Multi-regions and the region prefixes inside them.
_MULTI = {"US": ("us-", "northamerica-"), "EU": ("europe-",), "ASIA": ("asia-",)}


@dataclass
class Gce:
    """What the checks share, found as they go (None until a check found it)."""

    settings: GceSettings
    api: Preflight | None = None
    number: str | None = None
    bucket: dict[str, Any] | None = None
    account: str | None = None
    quotas: dict[str, Quota] | None = None
    cpus: int | None = None
    failed: set[str] = field(default_factory=set)

    @property
    def config(self) -> Any:
        return self.settings.config

    @property
    def region(self) -> str:
        return self.config.region or self.settings.zone.rsplit("-", 1)[0]

    def need(self, what: str) -> Preflight:
        if self.api is None:
            raise Skip("the credentials and project check failed")
        if what in self.failed:
            raise Skip(f"the {what} check failed")
        return self.api


def credentials_and_project(ctx: Gce) -> Verdict:
    from parallel_engine.backends.gce.credentials import google_auth, google_project

    auth = google_auth(ctx.config)
    project = google_project(ctx.config)
    api = Preflight(ctx.settings, project)
    info = api.project_info()
    state = info.get("lifecycleState", "UNKNOWN")
    if state != "ACTIVE":
        return False, f"project {project} is {state}", "restore the project, or set PROJECT_ID to an active one"
    ctx.api, ctx.number = api, str(info.get("projectNumber", ""))
    return True, f"{auth.source}; project {project} ({ctx.number}) is active", ""


def apis_enabled(ctx: Gce) -> Verdict:
    api = ctx.need("project")
    disabled = [name for name in APIS if api.service_state(name) != "ENABLED"]
    if not disabled:
        return True, ", ".join(f"{name}.googleapis.com" for name in APIS) + " enabled", ""
    names = " ".join(f"{name}.googleapis.com" for name in disabled)
    return False, f"disabled: {names}", f"gcloud services enable {names} --project {api.project}"


def bucket_exists(ctx: Gce) -> Verdict:
    api = ctx.need("project")
    ctx.bucket = api.bucket()
    bucket = ctx.settings.bucket
    if ctx.bucket is None:
        ctx.failed.add("bucket")
        return False, f"gs://{bucket} does not exist", f"gcloud storage buckets create gs://{bucket} --location {ctx.region} --project {api.project}"
    return True, f"gs://{bucket} exists", ""


def bucket_writable(ctx: Gce) -> Verdict:
    api = ctx.need("bucket")
    missing = [p for p in BUCKET_PERMISSIONS if p not in api.bucket_permissions(BUCKET_PERMISSIONS)]
    if not missing:
        return True, "you may read, write and delete objects", ""
    return False, f"you lack {', '.join(missing)} on gs://{ctx.settings.bucket}", (
        f"gcloud storage buckets add-iam-policy-binding gs://{ctx.settings.bucket} --member user:YOU --role roles/storage.objectUser")


def bucket_location(ctx: Gce) -> Verdict:
    ctx.need("bucket")
    location = str((ctx.bucket or {}).get("location", "")).upper()
    region = ctx.region
    if location == region.upper() or any(region.startswith(p) for p in _MULTI.get(location, ())):
        return True, f"{location} holds ZONE's region {region}", ""
    return False, f"the bucket is in {location}, the VMs in {region}: every upload and download crosses regions (egress is billed)", (
        f"use a bucket in {region}: gcloud storage buckets create gs://NEW --location {region}, then set BUCKET")


def registry(ctx: Gce) -> Verdict:
    reg = ctx.config.registry
    image = ctx.config.image or ""
    if not reg:
        return False, "REGISTRY is not set: `build` has nowhere to push", (
            f"set REGISTRY, e.g. {ctx.region}-docker.pkg.dev/PROJECT/REPO (gcloud artifacts repositories create REPO "
            f"--repository-format docker --location {ctx.region})")
    host = reg.removeprefix("https://").split("/")[0]
    if image and not image.startswith(host + "/"):
        return False, f"IMAGE {image} is not in REGISTRY {reg}", f"set IMAGE to {reg}/NAME:TAG"
    return True, reg, ""


def image_pushed(ctx: Gce) -> Verdict:
    from parallel_engine.backends.gce.backend import pinned, resolve_image
    from parallel_engine.backends.gce.blobs import GCSBlobs
    from parallel_engine.backends.gce.clients import storage_client
    from parallel_engine.store import RunStore

    api = ctx.need("bucket")
    config = ctx.config
    store = RunStore(GCSBlobs(storage_client(config), ctx.settings.bucket, config.bucket_prefix), ctx.settings.where)
    image = resolve_image(config, store)
    if not pinned(image):
        return False, f"no build of {image} is recorded, so no digest to pin", "run `parallel-engine build`"
    status = api.manifest_status(image)
    if status == 200:
        return True, f"{image} is in the registry", ""
    return False, f"the registry answers {status} for {image}: the image `build` recorded is gone", "run `parallel-engine build` again"


def service_account(ctx: Gce) -> Verdict:
    api = ctx.need("project")
    email = ctx.config.service_account or f"{ctx.number}-compute@developer.gserviceaccount.com"
    which = "SERVICE_ACCOUNT" if ctx.config.service_account else "the project's default compute account"
    if api.service_account(email) is None:
        ctx.failed.add("service account")
        return False, f"{email} ({which}) does not exist", (
            "set SERVICE_ACCOUNT to an account that exists (gcloud iam service-accounts create NAME)"
            if ctx.config.service_account else "enable the Compute Engine API again to recreate it, or set SERVICE_ACCOUNT")
    ctx.account = email
    return True, f"{email} ({which})", ""


def account_roles(ctx: Gce) -> Verdict:
    api = ctx.need("service account")
    member = f"serviceAccount:{ctx.account}"
    project_roles = {b["role"] for b in api.project_bindings() if member in b.get("members", [])}
    convenience = {f"{_CONVENIENCE[r]}:{api.project}" for r in project_roles if r in _CONVENIENCE}
    bucket_roles = {b["role"] for b in api.bucket_bindings()
                    if member in b.get("members", []) or convenience & set(b.get("members", []))}
    on_project = set().union(*(api.role_permissions(r) for r in project_roles)) if project_roles else set()
    on_bucket = on_project | (set().union(*(api.role_permissions(r) for r in bucket_roles)) if bucket_roles else set())
    missing = [(p, role, scope) for p, role, scope in VM_NEEDS if p not in (on_bucket if scope == "bucket" else on_project)]
    if not missing:
        return True, "storage on the bucket, registry read, compute.instances.delete", ""
    fixes = []
    for role in dict.fromkeys(role for _, role, _ in missing):
        scope = next(s for _, r, s in missing if r == role)
        fixes.append(f"gcloud storage buckets add-iam-policy-binding gs://{ctx.settings.bucket} --member {member} --role {role}"
                     if scope == "bucket" else
                     f"gcloud projects add-iam-policy-binding {api.project} --member {member} --role {role}")
    return False, f"{ctx.account} lacks {', '.join(p for p, _, _ in missing)}", "; ".join(fixes)


def _quota(metric_of: str) -> CheckFn[Gce]:
    def check(ctx: Gce) -> Verdict:
        api = ctx.need("project")
        config = ctx.config
        if ctx.quotas is None:
            ctx.cpus = api.machine_type_cpus(ctx.settings.zone, config.machine_type)
            ctx.quotas = api.region_quotas(ctx.region)
        if ctx.cpus is None:
            return False, f"MACHINE_TYPE {config.machine_type} does not exist in {ctx.settings.zone}", (
                f"gcloud compute machine-types list --zones {ctx.settings.zone}")
        found = {need.metric: need for need in needs(ctx.quotas, ctx.cpus, config.spot, config.external_ip)}
        if metric_of == "CPUS":
            need = found.get("PREEMPTIBLE_CPUS") or found["CPUS"]
        elif metric_of not in found:
            return True, "not needed (EXTERNAL_IP is false)", ""
        else:
            need = found[metric_of]
        return _verdict(need, config.effective_quota(), ctx.cpus, config.machine_type, ctx.region, api.project)

    return CheckFn(f"quota {metric_of}", check)


def _verdict(need: Need, vms: int, cpus: int, machine_type: str, region: str, project: str) -> Verdict:
    wanted = vms * need.per_vm
    how = f"VM_QUOTAS {vms}" + (f" × {cpus} vCPUs ({machine_type})" if need.metric.endswith("CPUS") else "")
    if need.quota is None:
        return True, f"{need.metric}: {how} = {wanted:g}; {region} reports no such quota", ""
    quota = need.quota
    shown = f"{need.metric}: {how} = {wanted:g}, {quota.free:g} free in {region} (limit {quota.limit:g}, in use {quota.usage:g})"
    if wanted <= quota.free:
        return True, shown, ""
    return False, shown, (f"lower VM_QUOTAS to {need.room} (run caps it there anyway), or ask for more {need.metric} in {region}: "
                          f"https://console.cloud.google.com/iam-admin/quotas?project={project}")


CHECKS: list[CheckFn[Gce]] = [
    CheckFn("credentials and project", credentials_and_project),
    CheckFn("APIs enabled", apis_enabled),
    CheckFn("bucket", bucket_exists),
    CheckFn("bucket writable", bucket_writable),
    CheckFn("bucket location", bucket_location),
    CheckFn("registry", registry),
    CheckFn("image pushed", image_pushed),
    CheckFn("VMs' service account", service_account),
    CheckFn("its roles", account_roles),
    _quota("CPUS"),
    _quota("INSTANCES"),
    _quota("IN_USE_ADDRESSES"),
]
