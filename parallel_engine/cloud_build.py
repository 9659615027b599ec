"""`parallel-engine build` on gce: pack code/ with cloudbuild.yaml, build with Cloud Build, record the digest.

The archive has the layout `gcloud builds submit` would upload from the repository root
(`cloudbuild.yaml` + `code/...`), so the same cloudbuild.yaml serves both.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from parallel_engine.config import Config
from parallel_engine.errors import BuildError, ConfigError
from parallel_engine.google_clients import _credentials, _options, call_google
from parallel_engine.names import new_run_id
from parallel_engine.store import RunStore

TERMINAL = {"SUCCESS", "FAILURE", "INTERNAL_ERROR", "TIMEOUT", "CANCELLED", "EXPIRED"}
BUILD_RECORD = "builds/latest.json"


def _ignore_patterns(context: Path) -> list[str]:
    patterns: list[str] = []
    for name in (".dockerignore", ".gcloudignore"):
        path = context / name
        if path.is_file():
            patterns += [line.strip() for line in path.read_text().splitlines()
                         if line.strip() and not line.startswith("#")]
    return patterns


def pack_source(context: Path, cloudbuild: Path) -> bytes:
    """A .tgz of cloudbuild.yaml and CONTEXT under its own name, minus .dockerignore/.gcloudignore."""
    from docker.utils.build import exclude_paths

    if not (context / "Dockerfile").is_file():
        raise BuildError(f"{context / 'Dockerfile'} not found", hint="build needs a folder with a Dockerfile")
    if not cloudbuild.is_file():
        raise BuildError(f"{cloudbuild} not found", hint="the gce build uses the repository's cloudbuild.yaml")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(cloudbuild, arcname="cloudbuild.yaml")
        for rel in sorted(exclude_paths(str(context), _ignore_patterns(context))):
            archive.add(context / rel, arcname=f"{context.name}/{rel}", recursive=False)
    return buffer.getvalue()


def _build_message(spec: dict[str, Any], bucket: str, obj: str, image: str, where: Path) -> Any:
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
    return cloudbuild_v1.Build(
        source=cloudbuild_v1.Source(storage_source=cloudbuild_v1.StorageSource(bucket=bucket, object_=obj)),
        steps=steps,
        images=[str(i) for i in spec.get("images", [])],
        substitutions=substitutions,
    )


def build_gce(config: Config, store: RunStore, context: Path, cloudbuild: Path,
              on_line: Callable[[str], None]) -> str:
    """Build CONTEXT into IMAGE with Cloud Build; returns the image digest and records it for `run`."""
    from google.cloud.devtools import cloudbuild_v1
    from google.cloud.devtools.cloudbuild_v1.types import Build

    if not config.image:
        raise ConfigError("IMAGE is not set: `build` needs the image name to push",
                          hint="set IMAGE, e.g. REGION-docker.pkg.dev/PROJECT/REPO/app:latest")
    assert config.bucket is not None and config.project_id is not None
    archive = pack_source(context, cloudbuild)
    obj = f"{config.bucket_prefix}/sources/{new_run_id()}.tgz".lstrip("/")
    store.blobs.write(obj[len(config.bucket_prefix) + 1:] if config.bucket_prefix else obj, archive)
    on_line(f"uploaded {len(archive)} bytes of {context}/ to gs://{config.bucket}/{obj}")
    try:
        spec = yaml.safe_load(cloudbuild.read_text())
    except yaml.YAMLError as exc:
        raise BuildError(f"{cloudbuild}: not valid YAML ({exc})") from exc
    client = cloudbuild_v1.CloudBuildClient(
        transport="rest", credentials=_credentials(config.cloudbuild_endpoint),
        client_options=_options(config.cloudbuild_endpoint),
    )
    message = _build_message(spec, config.bucket, obj, config.image, cloudbuild)
    operation = call_google(client.create_build, project_id=config.project_id, build=message)
    build_id = operation.metadata.build.id
    on_line(f"Cloud Build {build_id} submitted")
    seen = ""
    while True:
        build = call_google(client.get_build, project_id=config.project_id, id=build_id)
        status = Build.Status(build.status).name
        if status != seen:
            on_line(f"build {build_id}: {status}" + (f"  log: {build.log_url}" if build.log_url and not seen else ""))
            seen = status
        if status in TERMINAL:
            break
        time.sleep(1.0)
    if status != "SUCCESS":
        raise BuildError(f"Cloud Build {build_id} ended {status}: {build.status_detail or 'no detail'}",
                         hint=f"read the build log: {build.log_url}" if build.log_url else None)
    digest = next((i.digest for i in build.results.images if i.name == config.image), "")
    if not digest:
        raise BuildError(f"Cloud Build {build_id} succeeded but reported no digest for {config.image}",
                         hint="check that cloudbuild.yaml's `images` lists ${_IMAGE}")
    record = {"image": config.image, "digest": digest, "build_id": build_id, "at": time.time()}
    store.blobs.write(BUILD_RECORD, json.dumps(record).encode())
    return digest
