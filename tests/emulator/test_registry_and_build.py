"""The emulated image registry and Cloud Build, driven by the real google-cloud-build and -storage clients.

The repository's own cloudbuild.yaml builds code/ from a .tgz in Storage; the image lands in the
registry on 127.0.0.1 with its real digest and pulls back by that digest. Invalid builds are refused
as Google refuses them, a failing step names itself, a running build can be cancelled.

The registry keeps its blobs in the pytest cache (.pytest_cache/d/emulator-registry), so only the
first run on a machine pays for pushing the base layers (about 15 s); later pushes send nothing new.
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.api_core import exceptions as gexc
from google.auth import credentials as gauth
from google.cloud import storage
from google.cloud.devtools import cloudbuild_v1

from parallel_engine.emulator.cloudbuild import CloudBuildServer
from parallel_engine.emulator.cloudbuild_runner import LABEL_BUILD, docker_cli_args
from parallel_engine.emulator.cloudbuild_validate import substitute, template_parameters
from parallel_engine.emulator.gcs import FakeGcs
from parallel_engine.emulator.identity import TokenRegistry
from parallel_engine.emulator.oauth import (
    CredentialsFiles,
    OAuthServer,
    write_credentials,
)
from parallel_engine.emulator.registry import (
    Registry,
    RegistryUnavailable,
    ensure_registry_binary,
)
from parallel_engine.emulator.storage_proxy import StorageProxy
from parallel_engine.emulator.traffic import Traffic
from tests.emulator.emulator_helpers import (
    bearer,
    cloudbuild_client,
    file_credentials,
    user_credentials,
)

pytestmark = [pytest.mark.emulator, pytest.mark.docker]

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "emulated-project"
BUCKET = f"{PROJECT}_cloudbuild"
BASE_IMAGE = "python:3.11-slim"  # made offline by scripts/ensure-docker.sh
Status = cloudbuild_v1.Build.Status
DONE = {Status.SUCCESS, Status.FAILURE, Status.INTERNAL_ERROR, Status.TIMEOUT, Status.CANCELLED, Status.EXPIRED}


# -- the emulated pieces, once per module ---------------------------------------------------------
@pytest.fixture(scope="module")
def tokens() -> TokenRegistry:
    """One token registry for every piece, as the Emulator shares one."""
    return TokenRegistry()


@pytest.fixture(scope="module")
def user(tokens: TokenRegistry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[gauth.Credentials]:
    """The user's credentials: the token endpoint and the authorized_user file, wired as the Emulator
    wires them (tokens come from the real OAuth refresh flow)."""
    server = OAuthServer(tokens).start()
    try:
        files: CredentialsFiles = write_credentials(tokens, server.token_uri, PROJECT, 1, tmp_path_factory.mktemp("auth"))
        yield file_credentials(str(files.user), server.token_uri)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def gcs(tokens: TokenRegistry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """fake-gcs-server behind the counting proxy, wired as the Emulator wires them: (proxy, fake-gcs-server)."""
    proxy = StorageProxy(Traffic("storage"), tokens)
    server = FakeGcs(proxy.url, tmp_path_factory.mktemp("gcs") / "fake-gcs-server.log")
    server.start()
    try:
        proxy.start(server.port)
        yield proxy.url, server.url
    finally:
        proxy.stop()
        server.stop()


@pytest.fixture(scope="module")
def storage_endpoint(gcs: tuple[str, str]) -> str:
    return gcs[0]


@pytest.fixture(scope="module")
def registry(docker_engine: Any, request: pytest.FixtureRequest, tokens: TokenRegistry) -> Iterator[Registry]:
    try:
        ensure_registry_binary()
    except RegistryUnavailable as missing:
        pytest.skip(str(missing))
    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider: then a fresh store
    store = cache.mkdir("emulator-registry") if cache is not None else None
    with Registry(storage_dir=store, tokens=tokens) as running:
        yield running


@pytest.fixture(scope="module")
def cloudbuild(gcs: tuple[str, str], registry: Registry, tokens: TokenRegistry) -> Iterator[CloudBuildServer]:
    # As in the Emulator, Cloud Build reads sources from the storage server itself, as Google's own service.
    with CloudBuildServer(gcs[1], registry.host, project=PROJECT, tokens=tokens) as server:
        yield server


@pytest.fixture(scope="module")
def builds(cloudbuild: CloudBuildServer, user: gauth.Credentials) -> cloudbuild_v1.CloudBuildClient:
    return cloudbuild_client(cloudbuild.url, user)


@pytest.fixture(scope="module")
def docker_login(user: gauth.Credentials, registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DOCKER_CONFIG holding the user's access token for the registry (what `gcloud auth
    configure-docker` arranges through docker-credential-gcloud)."""
    import base64

    folder = tmp_path_factory.mktemp("docker-config")
    secret = base64.b64encode(f"oauth2accesstoken:{bearer(user)}".encode()).decode()
    (folder / "config.json").write_text(json.dumps({"auths": {registry.host: {"auth": secret}}}))
    return folder


@pytest.fixture(scope="module")
def gcs_client(storage_endpoint: str, user: gauth.Credentials) -> storage.Client:
    client = storage.Client(
        project=PROJECT, credentials=user, client_options={"api_endpoint": storage_endpoint}
    )
    client.create_bucket(BUCKET)
    return client


@pytest.fixture(scope="module")
def source(gcs_client: storage.Client) -> dict[str, str]:
    """code/ and cloudbuild.yaml as a .tgz in the bucket, as `gcloud builds submit` uploads them.

    The Dockerfile gets a label no other build has, so the pushed image is new to the Docker engine:
    an engine that pulled the same manifest before (another test's VM pulls code/'s image by digest)
    keeps it cached, and would then "pull" it by digest without asking the registry for a token."""
    packed = io.BytesIO()
    dockerfile = (ROOT / "code" / "Dockerfile").read_bytes() + f"LABEL pe-test-build={uuid.uuid4().hex}\n".encode()
    with tarfile.open(fileobj=packed, mode="w:gz") as tar:
        tar.add(ROOT / "code", arcname="code", filter=lambda member: None if member.name == "code/Dockerfile" else member)
        entry = tarfile.TarInfo("code/Dockerfile")
        entry.size = len(dockerfile)
        tar.addfile(entry, io.BytesIO(dockerfile))
        tar.add(ROOT / "cloudbuild.yaml", arcname="cloudbuild.yaml")
    name = f"source/{uuid.uuid4().hex}.tgz"
    gcs_client.bucket(BUCKET).blob(name).upload_from_string(packed.getvalue(), content_type="application/gzip")
    return {"bucket": BUCKET, "object": name}


def repo_build(source: dict[str, str], image: str) -> cloudbuild_v1.Build:
    """The Build `gcloud builds submit --config cloudbuild.yaml --substitutions _IMAGE=...` sends."""
    config = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())
    return cloudbuild_v1.Build(
        steps=config["steps"],
        images=config["images"],
        substitutions={**config.get("substitutions", {}), "_IMAGE": image},
        source=cloudbuild_v1.Source(storage_source=cloudbuild_v1.StorageSource(**source)),
    )


def wait_done(builds: cloudbuild_v1.CloudBuildClient, build_id: str, timeout: float = 240) -> cloudbuild_v1.Build:
    """Poll get_build until the build has ended (never `.result()`, which may poll Google's host)."""
    deadline = time.monotonic() + timeout
    while True:
        build = builds.get_build(project_id=PROJECT, id=build_id)
        if build.status in DONE:
            return build
        if time.monotonic() > deadline:
            raise TimeoutError(f"build {build_id} still {build.status.name} after {timeout} s")
        time.sleep(0.2)


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def docker(*args: str, check: bool = True, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    where = ["--config", str(config)] if config is not None else []
    return subprocess.run(["docker", *where, *args], capture_output=True, text=True, timeout=300, check=check)


@pytest.fixture(scope="module")
def pushed(
    builds: cloudbuild_v1.CloudBuildClient, registry: Registry, source: dict[str, str]
) -> Iterator[tuple[Any, cloudbuild_v1.Build, str]]:
    """The repository's cloudbuild.yaml run once: (operation, finished build, image)."""
    image = f"{registry.repository(PROJECT, 'parallel-engine')}/app:{uuid.uuid4().hex[:12]}"
    operation = builds.create_build(project_id=PROJECT, build=repo_build(source, image))
    build = wait_done(builds, operation.metadata.build.id)
    yield operation, build, image
    pulled = [f"{image.rsplit(':', 1)[0]}@{i.digest}" for i in build.results.images]
    docker("rmi", image, *pulled, check=False)


# -- the happy path ------------------------------------------------------------------------------
def test_cloudbuild_yaml_builds_and_pushes_the_image_with_its_registry_digest(pushed: Any, registry: Registry) -> None:
    _, build, image = pushed
    assert build.status == Status.SUCCESS, build.status_detail
    assert [i.name for i in build.results.images] == [image]
    digest = build.results.images[0].digest
    assert digest.startswith("sha256:") and len(digest) == len("sha256:") + 64
    repository, tag = image[len(registry.host) + 1 :].rsplit(":", 1)
    assert registry.manifest_digest(repository, tag) == digest
    assert build.steps[0].args == ["build", "-t", image, "code"]  # ${_IMAGE} substituted
    assert build.steps[0].status == Status.SUCCESS and build.steps[0].exit_code == 0
    assert build.source_provenance.resolved_storage_source.bucket == BUCKET
    assert build.start_time and build.finish_time and build.create_time <= build.start_time <= build.finish_time
    assert set(build.timing) >= {"FETCHSOURCE", "BUILD", "PUSH"}


def test_the_pushed_image_pulls_by_digest_after_the_local_tag_is_gone(pushed: Any, docker_login: Path) -> None:
    _, build, image = pushed
    digest = build.results.images[0].digest
    repository = image.rsplit(":", 1)[0]
    docker("rmi", image)
    refused = docker("pull", f"{repository}@{digest}", check=False, config=docker_login.parent / "nobody")
    assert refused.returncode != 0 and "unauthorized" in refused.stderr.lower()  # no token: as Artifact Registry
    pulled = docker("pull", f"{repository}@{digest}", config=docker_login)
    assert digest in pulled.stdout
    assert (
        f"{repository}@{digest}"
        in docker("image", "inspect", "--format", "{{json .RepoDigests}}", f"{repository}@{digest}").stdout
    )


def test_the_operation_carries_the_build_and_resolves_to_it(
    pushed: Any, builds: cloudbuild_v1.CloudBuildClient
) -> None:
    operation, build, _ = pushed
    assert operation.operation.name == f"operations/build/{PROJECT}/{build.id}"
    assert operation.metadata.build.id == build.id
    # The REST transport's operations client talks to the same endpoint, so .result() works here too.
    assert operation.result(timeout=30).id == build.id
    listed = builds.list_builds(project_id=PROJECT, filter='status="SUCCESS"')
    assert build.id in [b.id for b in listed]


def test_log_url_serves_the_build_log(pushed: Any) -> None:
    _, build, _ = pushed
    log = fetch(build.log_url)
    for marker in (
        "FETCHSOURCE",
        f"gs://{BUCKET}/",
        "BUILD",
        "Starting Step #0",
        "Step #0: Successfully tagged",
        "PUSH",
        "DONE",
    ):
        assert marker in log
    assert f"digest: {build.results.images[0].digest}" in log


# -- refused as Google refuses ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"steps": []}, "invalid build: invalid .steps field: no build steps are specified"),
        ({"steps": [{"args": ["echo"]}]}, "invalid .steps field: build step 0 must specify name"),
        (
            {"steps": [{"name": "busybox", "args": ["${IMAGE}"]}], "substitutions": {"IMAGE": "x"}},
            'substitution key "IMAGE" does not respect format "^_[A-Z0-9_]+$" and is not an overridable built-in',
        ),
        (
            {"steps": [{"name": "busybox", "args": ["echo"]}], "substitutions": {"_UNUSED": "x"}},
            'key "_UNUSED" in the substitution data is not matched in the template',
        ),
        (
            {"steps": [{"name": "busybox", "args": ["${_MISSING}"]}]},
            'key in the template "_MISSING" is not matched in the substitution data',
        ),
        (
            {"steps": [{"name": "busybox", "args": ["$TAG"]}]},
            'key in the template "TAG" is not a valid built-in substitution',
        ),
        (
            {"steps": [{"name": "busybox"}], "images": ["127.0.0.1:5000/Upper/App"]},
            'invalid image name "127.0.0.1:5000/Upper/App"',
        ),
    ],
    ids=[
        "no-steps",
        "step-without-name",
        "bad-substitution-key",
        "unused-substitution",
        "undefined-substitution",
        "unknown-built-in",
        "bad-image-name",
    ],
)
def test_invalid_build_is_refused_with_400(
    builds: cloudbuild_v1.CloudBuildClient, body: dict[str, Any], message: str
) -> None:
    with pytest.raises(gexc.BadRequest) as refused:  # google-api-core maps HTTP 400 to BadRequest, as from Google
        builds.create_build(project_id=PROJECT, build=cloudbuild_v1.Build(body))
    assert refused.value.response.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert message in refused.value.message


def test_allow_loose_accepts_unused_substitutions(builds: cloudbuild_v1.CloudBuildClient, docker_engine: Any) -> None:
    build = cloudbuild_v1.Build(
        steps=[{"name": BASE_IMAGE, "entrypoint": "python", "args": ["-c", "print('loose')"]}],
        substitutions={"_UNUSED": "x"},
        options={"substitution_option": cloudbuild_v1.BuildOptions.SubstitutionOption.ALLOW_LOOSE},
    )
    operation = builds.create_build(project_id=PROJECT, build=build)
    assert wait_done(builds, operation.metadata.build.id).status == Status.SUCCESS


def test_unknown_field_is_refused_as_invalid_json(cloudbuild: CloudBuildServer, user: gauth.Credentials) -> None:
    """The client cannot send an unknown field; a raw caller can, and Google says which one."""
    request = urllib.request.Request(
        f"{cloudbuild.url}/v1/projects/{PROJECT}/builds",
        data=json.dumps({"steps": [{"name": "busybox", "argz": ["x"]}]}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {bearer(user)}"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    error = json.load(refused.value)["error"]
    assert (refused.value.code, error["status"]) == (400, "INVALID_ARGUMENT")
    assert (
        error["message"]
        == "Invalid JSON payload received. Unknown name \"argz\" at 'build.steps[0]': Cannot find field."
    )


# -- steps, failures, cancel ------------------------------------------------------------------------
def test_container_steps_share_the_workspace_and_see_substitutions(
    builds: cloudbuild_v1.CloudBuildClient, docker_engine: Any
) -> None:
    write = "import os; open('out/msg', 'w').write(os.environ['GREETING'] + ' $$HOME')"
    build = cloudbuild_v1.Build(
        steps=[
            {"name": BASE_IMAGE, "entrypoint": "bash", "args": ["-c", "mkdir -p out"]},
            {
                "name": BASE_IMAGE,
                "entrypoint": "python",
                "args": ["-c", write],
                "env": ["GREETING=${_WHO} on $PROJECT_ID"],
            },
            {"name": BASE_IMAGE, "entrypoint": "cat", "args": ["msg"], "dir": "out", "id": "show"},
        ],
        substitutions={"_WHO": "hello"},
    )
    operation = builds.create_build(project_id=PROJECT, build=build)
    done = wait_done(builds, operation.metadata.build.id)
    assert done.status == Status.SUCCESS, done.status_detail
    assert f'Step #2 - "show": hello on {PROJECT} $HOME' in fetch(done.log_url)


def test_failing_step_fails_the_build_naming_the_step(
    builds: cloudbuild_v1.CloudBuildClient, docker_engine: Any
) -> None:
    build = cloudbuild_v1.Build(
        steps=[
            {"name": BASE_IMAGE, "entrypoint": "python", "args": ["-c", "print('fine')"]},
            {
                "name": BASE_IMAGE,
                "entrypoint": "python",
                "args": ["-c", "import sys; print('about to fail'); sys.exit(3)"],
            },
            {"name": BASE_IMAGE, "entrypoint": "python", "args": ["-c", "print('never runs')"]},
        ]
    )
    operation = builds.create_build(project_id=PROJECT, build=build)
    done = wait_done(builds, operation.metadata.build.id)
    assert done.status == Status.FAILURE
    assert done.status_detail == (
        f'Build step failure: build step 1 "{BASE_IMAGE}" failed: step exited with non-zero status: 3'
    )
    assert done.failure_info.type_ == cloudbuild_v1.Build.FailureInfo.FailureType.USER_BUILD_STEP
    assert [s.status for s in done.steps][:2] == [Status.SUCCESS, Status.FAILURE]
    assert done.steps[1].exit_code == 3
    log = fetch(done.log_url)
    assert "Step #1: about to fail" in log and "never runs" not in log
    assert log.rstrip().endswith(f"ERROR: {done.status_detail}")


def test_push_outside_the_emulator_registry_fails_clearly(
    builds: cloudbuild_v1.CloudBuildClient, registry: Registry, source: dict[str, str]
) -> None:
    """The repository's default _IMAGE names Artifact Registry: the emulator says where to push instead."""
    image = "europe-west1-docker.pkg.dev/my-project/parallel-engine/app:emulator-test"
    operation = builds.create_build(project_id=PROJECT, build=repo_build(source, image))
    done = wait_done(builds, operation.metadata.build.id)
    docker("rmi", image, check=False)
    assert done.status == Status.FAILURE
    assert done.failure_info.type_ == cloudbuild_v1.Build.FailureInfo.FailureType.PUSH_FAILED
    assert registry.host in done.status_detail


def test_cancel_stops_a_running_build_and_its_container(
    builds: cloudbuild_v1.CloudBuildClient, docker_engine: Any
) -> None:
    sleeper = "import time; print('sleeping', flush=True); time.sleep(120)"
    operation = builds.create_build(
        project_id=PROJECT,
        build=cloudbuild_v1.Build(steps=[{"name": BASE_IMAGE, "entrypoint": "python", "args": ["-c", sleeper]}]),
    )
    build_id = operation.metadata.build.id
    assert operation.metadata.build.status == Status.QUEUED
    deadline = time.monotonic() + 60
    while "Step #0: sleeping" not in fetch(builds.get_build(project_id=PROJECT, id=build_id).log_url):
        assert time.monotonic() < deadline, "the step never started"
        time.sleep(0.1)
    cancelled = builds.cancel_build(project_id=PROJECT, id=build_id)
    assert cancelled.status == Status.CANCELLED
    done = wait_done(builds, build_id, timeout=30)
    assert done.status == Status.CANCELLED and done.finish_time
    deadline = time.monotonic() + 20
    while docker("ps", "-aq", "--filter", f"label={LABEL_BUILD}={build_id}").stdout.strip():
        assert time.monotonic() < deadline, "the step's container outlived the cancel"
        time.sleep(0.2)
    # Cancelling an ended build changes nothing.
    assert builds.cancel_build(project_id=PROJECT, id=build_id).status == Status.CANCELLED


def test_build_past_its_timeout_ends_as_timeout(builds: cloudbuild_v1.CloudBuildClient, docker_engine: Any) -> None:
    sleeper = "import time; time.sleep(120)"
    build = cloudbuild_v1.Build(
        steps=[{"name": BASE_IMAGE, "entrypoint": "python", "args": ["-c", sleeper]}], timeout={"seconds": 2}
    )
    started = time.monotonic()
    done = wait_done(builds, builds.create_build(project_id=PROJECT, build=build).metadata.build.id, timeout=60)
    assert done.status == Status.TIMEOUT and done.steps[0].status == Status.TIMEOUT
    assert time.monotonic() - started < 20


def test_log_is_written_to_the_logs_bucket(
    builds: cloudbuild_v1.CloudBuildClient, gcs_client: storage.Client, docker_engine: Any
) -> None:
    build = cloudbuild_v1.Build(
        steps=[{"name": BASE_IMAGE, "entrypoint": "python", "args": ["-c", "print('to the bucket')"]}],
        logs_bucket=f"gs://{BUCKET}/build-logs",
    )
    done = wait_done(builds, builds.create_build(project_id=PROJECT, build=build).metadata.build.id)
    assert done.status == Status.SUCCESS
    log = gcs_client.bucket(BUCKET).blob(f"build-logs/log-{done.id}.txt").download_as_text()
    assert "Step #0: to the bucket" in log and log == fetch(done.log_url)


def test_regional_build_lives_under_its_location(builds: cloudbuild_v1.CloudBuildClient, docker_engine: Any) -> None:
    parent = f"projects/{PROJECT}/locations/us-central1"
    build = cloudbuild_v1.Build(steps=[{"name": BASE_IMAGE, "entrypoint": "python", "args": ["-c", "print(1)"]}])
    operation = builds.create_build(request={"parent": parent, "project_id": PROJECT, "build": build})
    assert operation.metadata.build.name == f"{parent}/builds/{operation.metadata.build.id}"
    assert operation.result(timeout=60).status == Status.SUCCESS
    assert [b.id for b in builds.list_builds(request={"parent": parent, "project_id": PROJECT})] == [
        operation.metadata.build.id
    ]


def test_unknown_build_is_404(builds: cloudbuild_v1.CloudBuildClient) -> None:
    with pytest.raises(gexc.NotFound):
        builds.get_build(project_id=PROJECT, id=str(uuid.uuid4()))


# -- substitutions, without Docker ----------------------------------------------------------------
def test_substitution_follows_cloud_build_rules() -> None:
    values = {"PROJECT_ID": "p", "_IMAGE": "img", "_A": "a"}
    assert substitute("${_IMAGE}:$PROJECT_ID", values) == "img:p"
    assert substitute("$$HOME $${_IMAGE} $_A_B", values) == "$HOME ${_IMAGE} "  # $$ escapes; $_A_B is its own key
    assert substitute("${VAR:-x} $lower", values) == "${VAR:-x} $lower"  # not parameters at all
    assert [key for _, _, key in template_parameters("$$ $X ${_Y}")] == [None, "X", "_Y"]


def test_docker_builder_args_stay_on_this_machine(tmp_path: Path) -> None:
    """`docker build` gets the host network (`cloudbuild` means the host), /workspace is the local
    workspace, and pushes reach only loopback registries."""
    args = docker_cli_args(
        ["build", "-t", "x", "-f", "/workspace/code/Dockerfile", "/workspace/code"], tmp_path, "s", "b"
    )
    assert args == ["build", "--network", "host", "-t", "x", "-f", f"{tmp_path}/code/Dockerfile", f"{tmp_path}/code"]
    assert docker_cli_args(["build", "--network=cloudbuild", "."], tmp_path, "s", "b") == [
        "build",
        "--network=host",
        ".",
    ]
    assert docker_cli_args(["push", "127.0.0.1:5000/p/r/app:1"], tmp_path, "s", "b") == [
        "push",
        "127.0.0.1:5000/p/r/app:1",
    ]
    with pytest.raises(ValueError, match="only registries on 127.0.0.1"):
        docker_cli_args(["push", "europe-west1-docker.pkg.dev/p/r/app:1"], tmp_path, "s", "b")
    with pytest.raises(ValueError, match="does not take -H"):
        docker_cli_args(["-H", "tcp://10.0.0.1:2375", "ps"], tmp_path, "s", "b")


# -- `parallel-engine build` on gce: packing, a lost create, the build's timeout -----------------
def _members(archive: bytes) -> set[str]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return {m.name for m in tar.getmembers() if m.isfile()}


def test_gcloudignore_uses_gitignore_rules_and_dockerignore_docker_rules(tmp_path: Path) -> None:
    from parallel_engine.backends.gce.cloud_build import pack_source

    code = tmp_path / "code"
    for rel in ("Dockerfile", "main.py", "run.log", "keep.log", "sub/deep.log", "sub/x.tmp", "x.tmp",
                "build/out.bin", "sub/build/kept-no-slash-anchor.txt", "data/big.csv", "notes/a.md"):
        (code / rel).parent.mkdir(parents=True, exist_ok=True)
        (code / rel).write_text(rel)
    (tmp_path / "cloudbuild.yaml").write_text("steps: []\n")
    # gitignore rules: `*.log` at any depth, `!` re-includes, `/build/` only at the top, `data/` a folder.
    (code / ".gcloudignore").write_text("*.log\n!keep.log\n/build/\ndata/\n#!include:.extra-ignore\n")
    (code / ".extra-ignore").write_text("notes\n")
    # docker rules: `*.tmp` only at the top (docker needs **/*.tmp for depth); Dockerfile always sent.
    (code / ".dockerignore").write_text("*.tmp\nDockerfile\n")
    files = _members(pack_source(code, tmp_path / "cloudbuild.yaml"))
    assert files == {"cloudbuild.yaml", "code/Dockerfile", "code/.dockerignore", "code/.gcloudignore",
                     "code/.extra-ignore", "code/main.py", "code/keep.log", "code/sub/x.tmp",
                     "code/sub/build/kept-no-slash-anchor.txt"}, files


def test_a_top_level_gcloudignore_or_gitignore_applies_as_gcloud_builds_submit_reads_it(tmp_path: Path) -> None:
    from parallel_engine.backends.gce.cloud_build import pack_source

    code = tmp_path / "code"
    for rel in ("Dockerfile", "main.py", "cache/blob", "__pycache__/m.pyc"):
        (code / rel).parent.mkdir(parents=True, exist_ok=True)
        (code / rel).write_text(rel)
    (tmp_path / "cloudbuild.yaml").write_text("steps: []\n")
    (tmp_path / ".gitignore").write_text("__pycache__/\n")  # no .gcloudignore: gcloud's default includes it
    assert _members(pack_source(code, tmp_path / "cloudbuild.yaml")) == {
        "cloudbuild.yaml", "code/Dockerfile", "code/main.py", "code/cache/blob"}
    (tmp_path / ".gcloudignore").write_text("code/cache/\n")  # now only this file counts
    assert _members(pack_source(code, tmp_path / "cloudbuild.yaml")) == {
        "cloudbuild.yaml", "code/Dockerfile", "code/main.py", "code/__pycache__/m.pyc"}


def _tiny_project(folder: Path, timeout: str | None = None, sleep: bool = False) -> Path:
    code = folder / "code"
    code.mkdir(parents=True)
    (code / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\n" + ("RUN sleep 60\n" if sleep else "") + "COPY . /app\n")
    spec = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())
    if timeout:
        spec["timeout"] = timeout
    (folder / "cloudbuild.yaml").write_text(yaml.safe_dump(spec))
    return code


def _gce_config(cloud: Any, image: str) -> Any:
    from parallel_engine.config import load_config

    return load_config(None, environ={}, flags={
        "BACKEND": "gce", "PROJECT_ID": cloud.project, "ZONE": cloud.zone, "BUCKET": cloud.bucket, "IMAGE": image,
        "STORAGE_ENDPOINT": cloud.storage_endpoint, "COMPUTE_ENDPOINT": cloud.compute_endpoint,
        "CLOUDBUILD_ENDPOINT": cloud.cloudbuild_endpoint, "CREDENTIALS_FILE": str(cloud.credentials_file),
        "TOKEN_URI": cloud.token_uri})


def test_a_build_create_whose_answer_was_lost_is_not_submitted_twice(cloud: Any, tmp_path: Path) -> None:
    from parallel_engine.api import open_store
    from parallel_engine.backends.gce.cloud_build import build_gce
    from parallel_engine.backends.gce.settings import GceSettings

    assert cloud.registry_host, "the emulated cloud has no registry (apt-get install docker-registry)"
    image = f"{cloud.registry_host}/{cloud.project}/parallel-engine/tiny:{uuid.uuid4().hex[:8]}"
    code = _tiny_project(tmp_path)
    config = _gce_config(cloud, image)
    cloud.control.fail_next(1, 503, method="POST", path="/builds", service="cloudbuild", after=True)
    digest = build_gce(GceSettings.of(config), open_store(config), code, tmp_path / "cloudbuild.yaml", lambda line: None)
    assert digest.startswith("sha256:")
    assert cloud.control.calls()["cloudbuild"]["injected"]  # the first answer was lost
    client = cloudbuild_client(cloud.cloudbuild_endpoint, user_credentials(cloud))
    assert len(list(client.list_builds(project_id=cloud.project))) == 1  # one build, not two


def test_the_cloudbuild_yaml_timeout_reaches_the_build(cloud: Any, tmp_path: Path) -> None:
    from parallel_engine.api import open_store
    from parallel_engine.backends.gce.cloud_build import build_gce
    from parallel_engine.backends.gce.settings import GceSettings
    from parallel_engine.errors import BuildError

    image = f"{cloud.registry_host}/{cloud.project}/parallel-engine/slow:{uuid.uuid4().hex[:8]}"
    code = _tiny_project(tmp_path, timeout="3s", sleep=True)
    config = _gce_config(cloud, image)
    started = time.monotonic()
    with pytest.raises(BuildError, match="ended TIMEOUT"):
        build_gce(GceSettings.of(config), open_store(config), code, tmp_path / "cloudbuild.yaml", lambda line: None)
    assert time.monotonic() - started < 40


@pytest.mark.parametrize("timeout", ["soon", "-5s", ".inf", float("nan"), True])
def test_a_cloudbuild_yaml_timeout_that_is_not_a_duration_is_a_build_error_saying_what_to_write(
    tmp_path: Path, timeout: Any
) -> None:
    from parallel_engine.backends.gce.cloud_build import _build_message
    from parallel_engine.errors import BuildError

    spec = {"steps": [{"name": BASE_IMAGE}], "timeout": timeout}
    with pytest.raises(BuildError, match=r"cloudbuild.yaml: `timeout: .*` is not a duration") as raised:
        _build_message(spec, "b", "o.tgz", "img", tmp_path / "cloudbuild.yaml", "pe-tag")
    assert raised.value.hint is not None and "timeout: 1200s" in raised.value.hint
    assert _build_message({**spec, "timeout": "1200s"}, "b", "o.tgz", "img", tmp_path, "t").timeout.total_seconds() == 1200


def test_a_refused_build_create_is_a_build_error_with_what_to_check(cloud: Any, tmp_path: Path) -> None:
    from parallel_engine.api import open_store
    from parallel_engine.backends.gce.cloud_build import build_gce
    from parallel_engine.backends.gce.settings import GceSettings
    from parallel_engine.errors import BuildError

    image = f"{cloud.registry_host}/{cloud.project}/parallel-engine/refused:{uuid.uuid4().hex[:8]}"
    code = _tiny_project(tmp_path)
    config = _gce_config(cloud, image)
    cloud.control.fail_next(1, 403, method="POST", path="/builds", service="cloudbuild")  # not retried
    with pytest.raises(BuildError, match="Cloud Build refused the build: 403") as raised:
        build_gce(GceSettings.of(config), open_store(config), code, tmp_path / "cloudbuild.yaml", lambda line: None)
    assert raised.value.hint is not None
    assert "CLOUDBUILD_ENDPOINT" in raised.value.hint and "Cloud Build API is enabled" in raised.value.hint
    assert sum(cloud.control.calls()["cloudbuild"]["injected"].values()) == 1  # one create, no retry
