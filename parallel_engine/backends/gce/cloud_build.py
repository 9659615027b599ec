"""`parallel-engine build` on gce: pack code/ with cloudbuild.yaml, build with Cloud Build, record the digest.

The archive has the layout `gcloud builds submit` would upload from the repository root
(`cloudbuild.yaml` + `code/...`), so the same cloudbuild.yaml serves both.
"""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from parallel_engine.backends.gce.clients import call_google, cloudbuild_client
from parallel_engine.backends.gce.credentials import google_project
from parallel_engine.backends.gce.settings import GceSettings
from parallel_engine.config import parse_duration
from parallel_engine.errors import BackendError, BuildError, ConfigError
from parallel_engine.names import new_run_id
from parallel_engine.store import RunStore

if TYPE_CHECKING:
    import pathspec

TERMINAL = {"SUCCESS", "FAILURE", "INTERNAL_ERROR", "TIMEOUT", "CANCELLED", "EXPIRED"}


GCLOUD_DEFAULT_IGNORE = [".gcloudignore", ".git", ".gitignore", "#!include:.gitignore"]


def _dockerignore(context: Path) -> list[str]:
    path = context / ".dockerignore"
    if not path.is_file():
        return []
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def _gitignore_lines(folder: Path, name: str, seen: frozenset[str] = frozenset()) -> list[str]:
    """The lines of a gitignore-style file, with gcloud's `#!include:FILE` directives expanded."""
    lines: list[str] = []
    for line in (folder / name).read_text().splitlines():
        if line.startswith("#!include:"):
            included = line[len("#!include:"):].strip()
            if included not in seen and (folder / included).is_file():
                lines += _gitignore_lines(folder, included, seen | {name})
        else:
            lines.append(line)
    return lines


def gcloudignore(folder: Path) -> pathspec.GitIgnoreSpec | None:
    """`.gcloudignore` of `folder` as `gcloud builds submit` reads it: gitignore rules (a pattern
    without a slash matches at any depth, `dir/` only folders, `!` re-includes) plus `#!include:`.
    Without one, gcloud's default applies where there is a .git or .gitignore."""
    import pathspec

    if (folder / ".gcloudignore").is_file():
        lines = _gitignore_lines(folder, ".gcloudignore")
    elif (folder / ".git").exists() or (folder / ".gitignore").is_file():
        lines = [line for line in GCLOUD_DEFAULT_IGNORE if not line.startswith("#!")]
        lines += _gitignore_lines(folder, ".gitignore") if (folder / ".gitignore").is_file() else []
    else:
        return None
    return pathspec.GitIgnoreSpec.from_lines(lines)


def pack_source(context: Path, cloudbuild: Path) -> bytes:
    """A .tgz of cloudbuild.yaml and CONTEXT under its own name, as `gcloud builds submit` of the
    folder holding both would upload it: minus what `.gcloudignore` (gitignore rules; in that
    folder or in CONTEXT) and CONTEXT's `.dockerignore` (docker's rules) leave out. The Dockerfile
    and .dockerignore always go: docker needs them."""
    from docker.utils.build import exclude_paths

    if not (context / "Dockerfile").is_file():
        raise BuildError(f"{context / 'Dockerfile'} not found", hint="build needs a folder with a Dockerfile")
    if not cloudbuild.is_file():
        raise BuildError(f"{cloudbuild} not found", hint="the gce build uses the repository's cloudbuild.yaml")
    top, inner = gcloudignore(cloudbuild.parent), gcloudignore(context)
    kept = {"Dockerfile", ".dockerignore"}

    def ignored(rel: str) -> bool:
        if rel in kept:
            return False
        as_dir = rel + "/" if (context / rel).is_dir() else rel
        return bool((inner and inner.match_file(as_dir)) or (top and top.match_file(f"{context.name}/{as_dir}")))

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(cloudbuild, arcname="cloudbuild.yaml")
        for rel in sorted(exclude_paths(str(context), [*_dockerignore(context), "!.dockerignore"])):
            if not any(ignored(part) for part in _parents_and_self(rel)):
                archive.add(context / rel, arcname=f"{context.name}/{rel}", recursive=False)
    return buffer.getvalue()


def _parents_and_self(rel: str) -> list[str]:
    """"a/b/c" → ["a", "a/b", "a/b/c"]: a file inside an ignored folder is ignored (gitignore)."""
    parts = rel.split("/")
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _build_message(spec: dict[str, Any], bucket: str, obj: str, image: str, where: Path, tag: str) -> Any:
    from google.cloud.devtools import cloudbuild_v1

    if not isinstance(spec, dict) or not spec.get("steps"):
        raise BuildError(f"{where}: no steps", hint="a cloudbuild.yaml needs a `steps:` list")
    steps = []
    for index, step in enumerate(spec["steps"], start=1):
        if not isinstance(step, dict) or "name" not in step:
            raise BuildError(f"{where}: step {index} has no name", hint="each step needs `name: <builder image>`")
        steps.append(cloudbuild_v1.BuildStep(
            name=step["name"], args=[str(a) for a in step.get("args", [])], env=step.get("env", []),
            dir_=step.get("dir", ""), entrypoint=step.get("entrypoint", ""), id=step.get("id", ""),
        ))
    substitutions = {str(k): str(v) for k, v in (spec.get("substitutions") or {}).items()}
    substitutions["_IMAGE"] = image
    extra: dict[str, Any] = {}
    if spec.get("timeout"):
        extra["timeout"] = _duration(spec["timeout"], where)
    return cloudbuild_v1.Build(
        source=cloudbuild_v1.Source(storage_source=cloudbuild_v1.StorageSource(bucket=bucket, object_=obj)),
        steps=steps,
        images=[str(i) for i in spec.get("images", [])],
        substitutions=substitutions,
        tags=[str(t) for t in spec.get("tags", [])] + [tag],
        **extra,
    )


def _duration(value: Any, where: Path) -> dict[str, int]:
    """cloudbuild.yaml's `timeout` ("1200s", or a number of seconds) as a protobuf Duration."""
    try:
        seconds = parse_duration(value)
        if seconds <= 0:
            raise ValueError(seconds)
    except ValueError:
        raise BuildError(f"{where}: `timeout: {value}` is not a duration",
                         hint='write seconds with an "s", as Cloud Build does: `timeout: 1200s`') from None
    return {"seconds": int(seconds), "nanos": int(round((seconds % 1) * 1e9))}


def _submit(client: Any, project: str, build: Any, tag: str) -> str:
    """Create the build; its id. A create is not idempotent, so a failed call is never blindly
    repeated: call_google retries it (transient errors, with backoff and jitter), and each retry
    first looks up the builds tagged with this submission's unique tag (the call may have landed
    with its answer lost), creating again only if none exists. What still fails is a BackendError."""
    tries = 0

    def create_once(project_id: str) -> str:
        nonlocal tries
        tries += 1
        if tries > 1:
            landed = list(client.list_builds(project_id=project_id, filter=f'tags="{tag}"'))
            if landed:
                return str(landed[0].id)
        return str(client.create_build(project_id=project_id, build=build).metadata.build.id)

    return call_google(create_once, project_id=project, api="cloudbuild", needs="cloudbuild.builds.create")


def poll_limit(build: Any) -> float:
    """How long `build` may take before we stop waiting: its own timeout (Google's default 600 s)
    plus its queue TTL (default 3600 s) plus a minute."""
    timeout = build.timeout.total_seconds() if build.timeout else 600.0
    queue = build.queue_ttl.total_seconds() if build.queue_ttl else 3600.0
    return timeout + queue + 60.0


def build_gce(settings: GceSettings, store: RunStore, context: Path, cloudbuild: Path,
              on_line: Callable[[str], None], image: str | None = None) -> str:
    """Build CONTEXT into IMAGE (or `image`) with Cloud Build; returns the image digest (the
    caller records it for `run`)."""
    from google.cloud.devtools.cloudbuild_v1.types import Build

    config = settings.config
    image = image or config.image
    if not image:
        raise ConfigError("IMAGE is not set: `build` needs the image name to push",
                          hint="set IMAGE, e.g. REGION-docker.pkg.dev/PROJECT/REPO/app:latest")
    archive = pack_source(context, cloudbuild)
    project = google_project(config)
    client = cloudbuild_client(config)
    key = store.save_source(f"{new_run_id()}.tgz", archive)
    root = config.bucket_prefix.strip("/")
    obj = f"{root}/{key}" if root else key  # the object's name in the bucket (the store's keys are under BUCKET_PREFIX)
    on_line(f"uploaded {len(archive)} bytes of {context}/ to gs://{settings.bucket}/{obj}")
    try:
        spec = yaml.safe_load(cloudbuild.read_text())
    except yaml.YAMLError as exc:
        raise BuildError(f"{cloudbuild}: not valid YAML ({exc})") from exc
    tag = f"pe-{new_run_id()}"  # a run id is lowercase letters, digits and "-": a valid tag
    message = _build_message(spec, settings.bucket, obj, image, cloudbuild, tag)
    try:
        build_id = _submit(client, project, message, tag)
    except BackendError as exc:
        raise BuildError(
            f"Cloud Build refused the build: {exc.__cause__ or exc}",
            hint=f"check CLOUDBUILD_ENDPOINT ({config.cloudbuild_endpoint or 'unset: Google'}), that the Cloud Build API "
                 f"is enabled in project {project}, and your credentials (gcloud auth application-default login)",
        ) from exc
    on_line(f"Cloud Build {build_id} submitted")
    seen = ""
    deadline = None
    while True:
        build = call_google(client.get_build, project_id=project, id=build_id, needs="cloudbuild.builds.get")
        status = Build.Status(build.status).name
        if status != seen:
            on_line(f"build {build_id}: {status}" + (f"  log: {build.log_url}" if build.log_url and not seen else ""))
            seen = status
        if status in TERMINAL:
            break
        if deadline is None:
            deadline = time.monotonic() + poll_limit(build)
        elif time.monotonic() > deadline:
            raise BuildError(f"Cloud Build {build_id} is still {status} after {poll_limit(build):g} s (its timeout "
                             "and queue time, and a margin): stopped waiting",
                             hint=f"it may still end: look at {build.log_url or 'the Cloud Build console'}")
        time.sleep(1.0)
    if status != "SUCCESS":
        raise BuildError(f"Cloud Build {build_id} ended {status}: {build.status_detail or 'no detail'}",
                         hint=f"read the build log: {build.log_url}" if build.log_url else None)
    digest = next((i.digest for i in build.results.images if i.name == image), "")
    if not digest:
        raise BuildError(f"Cloud Build {build_id} succeeded but reported no digest for {image}",
                         hint="check that cloudbuild.yaml's `images` lists ${_IMAGE}")
    return str(digest)
