"""One Cloud Build build, run on this machine: fetch the source, run the steps with Docker, push.

What Cloud Build does on its workers, in the same order and with the same log lines:
FETCHSOURCE (the .tgz or .zip from Storage, unpacked into /workspace), BUILD (each step in order:
`gcr.io/cloud-builders/docker` runs the local `docker` CLI in the workspace, any other image runs
in a container with the workspace mounted at /workspace), PUSH (every entry of `images`, to the
emulator's registry, with the digest the registry reports), DONE.

Everything stays on loopback: `docker build` and step containers use the host network (the bridge
is off here, `--network cloudbuild` means the host), step images are never pulled from a remote
registry, and images are pushed only to a registry on 127.0.0.1.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from parallel_engine.emulator.cloudbuild_validate import parse_duration, registry_of
from parallel_engine.emulator.watchdog import remove_labelled

LABEL_SERVER = "pe-emulator-cloudbuild"
#: how long removing a build's containers may take: `docker ps`, then `docker rm -f` (seconds)
REMOVAL_TIMEOUTS = (30.0, 60.0)
LABEL_BUILD = "pe-emulator-cloudbuild-build"
WORKSPACE = "/workspace"
BUILDER_HOME = "/builder/home"
DOCKER_SOCKET = "/var/run/docker.sock"
QUEUED, PENDING, WORKING = "QUEUED", "PENDING", "WORKING"
SUCCESS, FAILURE, INTERNAL_ERROR, TIMEOUT, CANCELLED, EXPIRED = (
    "SUCCESS", "FAILURE", "INTERNAL_ERROR", "TIMEOUT", "CANCELLED", "EXPIRED",
)  # fmt: skip
ACTIVE = frozenset({QUEUED, PENDING, WORKING})
#: The builder images whose steps run the local docker CLI instead of a container.
DOCKER_BUILDER = re.compile(
    r"^(?:(?:[a-z0-9-]+\.)?gcr\.io/cloud-builders/docker|docker)(?::[\w][\w.-]*)?(?:@sha256:[0-9a-f]{64})?$"
)
_PUSH_DIGEST = re.compile(r"digest: (sha256:[0-9a-f]{64})")
_WORKSPACE_ARG = re.compile(r"(^|=)/workspace(?=/|$)")
_REFUSED_GLOBAL_FLAGS = ("-H", "--host", "-c", "--context", "--config")
_SUBCOMMANDS = {
    ("build",): "build", ("image", "build"): "build", ("buildx", "build"): "build",
    ("run",): "run", ("container", "run"): "run", ("create",): "run", ("container", "create"): "run",
    ("push",): "push", ("image", "push"): "push", ("pull",): "pull", ("image", "pull"): "pull",
}  # fmt: skip


def now_rfc3339() -> str:
    """A protobuf Timestamp in JSON: RFC 3339, UTC, microseconds."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def is_loopback_registry(host: str | None) -> bool:
    if not host:
        return False
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name == "localhost" or name.startswith("127.")


class BuildEnded(Exception):
    """Ends a build with a terminal status (raised inside the runner)."""

    def __init__(self, status: str, detail: str, failure_type: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.failure_type = failure_type


@dataclass
class RunnerSettings:
    """What every build of one server shares."""

    storage_url: str
    registry_host: str | None
    docker_host: str | None
    server_id: str
    #: (project, lifetime in seconds) -> a token of the project's Cloud Build service account
    service_token: Callable[[str, float], str] | None = None


class BuildRecord:
    """One build: its resource (what the API returns), its log, and the handles that cancel it."""

    def __init__(self, resource: dict[str, Any], location: str, build_dir: Path, built_ins: dict[str, str]) -> None:
        self.resource = resource
        self.location = location
        self.build_dir = build_dir
        self.built_ins = built_ins
        self.lock = threading.RLock()
        self.cancel_requested = threading.Event()
        self.done = threading.Event()
        self.created_monotonic = time.monotonic()
        self._log_lines: list[str] = []
        self._log_file = build_dir / "log.txt"
        self._proc: subprocess.Popen[bytes] | None = None
        self._container: str | None = None
        build_dir.mkdir(parents=True, exist_ok=True)

    @property
    def id(self) -> str:
        return str(self.resource["id"])

    @property
    def project(self) -> str:
        return str(self.resource["projectId"])

    @property
    def status(self) -> str:
        with self.lock:
            return str(self.resource["status"])

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self.resource)

    # -- log ------------------------------------------------------------------------------
    def log(self, line: str) -> None:
        with self.lock:
            self._log_lines.append(line)
            with self._log_file.open("a", encoding="utf-8") as out:
                out.write(line + "\n")

    def log_text(self) -> str:
        with self.lock:
            return "".join(line + "\n" for line in self._log_lines)

    # -- state ----------------------------------------------------------------------------
    def finish(self, status: str, detail: str = "", failure_type: str | None = None) -> bool:
        """Move to a terminal status unless the build already has one (a cancel wins a race)."""
        with self.lock:
            if self.resource["status"] not in ACTIVE:
                return False
            self.resource["status"] = status
            self.resource["finishTime"] = now_rfc3339()
            if detail:
                self.resource["statusDetail"] = detail
            if failure_type:
                self.resource["failureInfo"] = {"type": failure_type, "detail": detail}
            for step in self.resource.get("steps") or []:
                if step.get("status") in (QUEUED, WORKING, None) and status == CANCELLED:
                    step["status"] = CANCELLED
                elif step.get("status") == WORKING:
                    step["status"] = status
            return True

    def cancel(self, docker_env: dict[str, str]) -> bool:
        """Mark the build CANCELLED and stop what runs for it; False when it had already ended."""
        with self.lock:
            cancelled = self.finish(CANCELLED, "Build was cancelled")
            self.cancel_requested.set()
            proc, container = self._proc, self._container
        if not cancelled:
            return False
        # The container first: a step's PID 1 may ignore the SIGTERM the CLI forwards to it.
        also = [container] if container else []
        remove_labelled([f"{LABEL_BUILD}={self.id}"], docker_env, also=also, timeouts=REMOVAL_TIMEOUTS)
        _kill_group(proc)
        return True

    def set_running(self, proc: subprocess.Popen[bytes] | None, container: str | None = None) -> None:
        with self.lock:
            self._proc, self._container = proc, container


def _kill_group(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


# -- the runner ---------------------------------------------------------------------------------
class BuildRunner:
    """Runs one BuildRecord to its end (in the server's worker thread)."""

    def __init__(
        self,
        record: BuildRecord,
        settings: RunnerSettings,
        upload_log: Callable[[BuildRecord], None],
        injected: str | None = None,
    ) -> None:
        self.record = record
        self.injected = injected  # EXPIRED or INTERNAL_ERROR from the control API: end so, run nothing
        self.settings = settings
        self.upload_log = upload_log
        self.workspace = record.build_dir / "workspace"
        self.home = record.build_dir / "home"
        self.scripts = record.build_dir / "scripts"
        self.deadline = 0.0
        self.docker_env = dict(os.environ)
        if settings.docker_host:
            self.docker_env["DOCKER_HOST"] = settings.docker_host

    def run(self, slots: threading.Semaphore) -> None:
        """Run the build; its terminal status is set only once its log is in the logs bucket, as
        a client that sees SUCCESS on Google can read the whole log there."""
        record = self.record
        end: tuple[str, str, str | None] | None = None  # (status, detail, failure type)
        try:
            with slots:
                if record.cancel_requested.is_set() or record.status not in ACTIVE:
                    return
                queue_ttl = parse_duration("build.queue_ttl", record.resource.get("queueTtl", "3600s"))
                if self.injected == EXPIRED or (queue_ttl and time.monotonic() - record.created_monotonic > queue_ttl):
                    end = (EXPIRED, "Build expired before it could start", None)
                    return
                with record.lock:
                    if record.resource["status"] not in ACTIVE:
                        return
                    record.resource["status"] = WORKING
                    record.resource["startTime"] = now_rfc3339()
                    timeout = parse_duration("build.timeout", record.resource["timeout"])
                self.deadline = time.monotonic() + timeout
                self._registry_credentials(timeout)
                if self.injected == INTERNAL_ERROR:
                    raise BuildEnded(INTERNAL_ERROR, "internal error (injected by the emulator's control API)")
                self._run()
                end = (SUCCESS, "", None)
        except BuildEnded as ended:
            record.log("ERROR")
            record.log(f"ERROR: {ended.detail}")
            end = (ended.status, ended.detail, ended.failure_type)
        except Exception as exc:  # a bug or a broken machine: INTERNAL_ERROR, never a hung build
            record.log(f"ERROR: internal error: {exc!r}")
            end = (INTERNAL_ERROR, f"internal error: {exc}", None)
        finally:
            remove_labelled([f"{LABEL_BUILD}={record.id}"], self.docker_env, timeouts=REMOVAL_TIMEOUTS)
            shutil.rmtree(self.workspace, ignore_errors=True)
            shutil.rmtree(self.home, ignore_errors=True)
            shutil.rmtree(self.scripts, ignore_errors=True)
            try:
                self.upload_log(record)
            except Exception as exc:  # the log bucket is best effort, as on Google
                record.log(f"WARNING: could not write the log to the logs bucket: {exc}")
            if end is not None:
                record.finish(*end)
            record.done.set()

    def _run(self) -> None:
        record = self.record
        record.log(f'starting build "{record.id}"')
        record.log("")
        self.workspace.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        self._phase("FETCHSOURCE", self._fetch_source)
        if shutil.which("docker") is None:
            raise BuildEnded(INTERNAL_ERROR, "the emulated Cloud Build needs the docker CLI and a Docker engine")
        self._phase("BUILD", self._run_steps)
        if record.resource.get("images"):
            self._phase("PUSH", self._push_images)
        self._check_cancel()
        record.log("DONE")

    def _registry_credentials(self, lifetime: float) -> None:
        """Docker's credentials for the emulator's registry, as the build's service account (a
        DOCKER_CONFIG of this build's own): its pushes, pulls and `docker` steps authenticate."""
        host, mint = self.settings.registry_host, self.settings.service_token
        if not host or mint is None:
            return
        secret = base64.b64encode(f"oauth2accesstoken:{mint(self.record.project, lifetime)}".encode()).decode()
        folder = self.record.build_dir / "docker-config"
        folder.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(folder / "config.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as out:
            json.dump({"auths": {host: {"auth": secret}}}, out)
        self.docker_env["DOCKER_CONFIG"] = str(folder)

    def _phase(self, name: str, action: Callable[[], None]) -> None:
        self._check_cancel()
        self.record.log(name)
        started = now_rfc3339()
        try:
            action()
        finally:
            with self.record.lock:
                self.record.resource.setdefault("timing", {})[name] = {"startTime": started, "endTime": now_rfc3339()}

    def _check_cancel(self) -> None:
        if self.record.cancel_requested.is_set():
            raise BuildEnded(CANCELLED, "Build was cancelled")
        if time.monotonic() > self.deadline:
            raise BuildEnded(TIMEOUT, f"Build timeout ({self.record.resource['timeout']})")

    # -- FETCHSOURCE ----------------------------------------------------------------------
    def _fetch_source(self) -> None:
        source = self.record.resource.get("source") or {}
        if not source:
            self.record.log("Skipping source fetch: the build has no source")
            return
        storage = source.get("storageSource")
        if not storage:
            kind = next(iter(source), "unknown")
            raise BuildEnded(
                FAILURE,
                f"failed to fetch source: the emulated Cloud Build fetches only storageSource, not {kind}",
                "FETCH_SOURCE_FAILED",
            )
        bucket, name = storage.get("bucket") or "", storage.get("object") or ""
        generation = str(storage.get("generation") or "")
        url = f"{self.settings.storage_url}/storage/v1/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}"
        where = f"gs://{bucket}/{name}"
        try:
            with urllib.request.urlopen(url + (f"?generation={generation}" if generation else ""), timeout=60) as r:
                metadata = json.load(r)
            generation = str(metadata.get("generation") or generation)
            shown = f"{where}#{generation}" if generation else where
            self.record.log(f"Fetching storage object: {shown}")
            self.record.log(f"Copying {shown}...")
            media = f"{self.settings.storage_url}/download/storage/v1/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}?alt=media"
            if generation:
                media += f"&generation={generation}"
            with urllib.request.urlopen(media, timeout=300) as r:
                data = r.read()
        except urllib.error.HTTPError as exc:
            reason = "the object does not exist" if exc.code == 404 else f"HTTP {exc.code}"
            raise BuildEnded(FAILURE, f"failed to fetch source {where}: {reason}", "FETCH_SOURCE_FAILED") from exc
        except (OSError, ValueError) as exc:
            raise BuildEnded(FAILURE, f"failed to fetch source {where}: {exc}", "FETCH_SOURCE_FAILED") from exc
        self.record.log(f"/ [1 files][{len(data)} B/{len(data)} B]")
        self.record.log(f"Operation completed over 1 objects/{len(data)} B.")
        try:
            _unpack(data, self.workspace)
        except (tarfile.TarError, zipfile.BadZipFile, OSError, ValueError) as exc:
            raise BuildEnded(FAILURE, f"failed to unpack source {where}: {exc}", "FETCH_SOURCE_FAILED") from exc
        with self.record.lock:
            resolved: dict[str, Any] = {"bucket": bucket, "object": name}
            if generation:
                resolved["generation"] = generation
            self.record.resource["sourceProvenance"] = {"resolvedStorageSource": resolved}

    # -- BUILD ----------------------------------------------------------------------------
    def _run_steps(self) -> None:
        record = self.record
        steps = record.resource.get("steps") or []
        with record.lock:
            for step in steps:
                step["status"] = QUEUED
        for index, step in enumerate(steps):
            self._check_cancel()
            label = f'Step #{index} - "{step["id"]}"' if step.get("id") else f"Step #{index}"
            started = now_rfc3339()
            with record.lock:
                step["status"] = WORKING
                step["timing"] = {"startTime": started}
            record.log(f"Starting {label}")
            outcome = self._run_step(index, step, f"{label}: ")
            record.log(f"Finished {label}")
            with record.lock:
                step["timing"]["endTime"] = now_rfc3339()
                if isinstance(outcome, int):
                    step["exitCode"] = outcome
                allowed = outcome == 0 or (
                    isinstance(outcome, int)
                    and (step.get("allowFailure") or outcome in [int(c) for c in step.get("allowExitCodes") or []])
                )
                if outcome == CANCELLED:
                    step["status"] = CANCELLED
                elif outcome == TIMEOUT:
                    step["status"] = TIMEOUT
                else:
                    step["status"] = SUCCESS if outcome == 0 else FAILURE
            if outcome == CANCELLED:
                raise BuildEnded(CANCELLED, "Build was cancelled")
            if outcome == TIMEOUT:
                if time.monotonic() > self.deadline:
                    raise BuildEnded(TIMEOUT, f"Build timeout ({record.resource['timeout']})")
                raise BuildEnded(
                    FAILURE,
                    f'Build step failure: build step {index} "{step["name"]}" failed: step timed out after {step.get("timeout")}',
                    "USER_BUILD_STEP",
                )
            if isinstance(outcome, str):  # refused before it ran
                raise BuildEnded(
                    FAILURE,
                    f'Build step failure: build step {index} "{step["name"]}" failed: {outcome}',
                    "USER_BUILD_STEP",
                )
            if not allowed:
                raise BuildEnded(
                    FAILURE,
                    f'Build step failure: build step {index} "{step["name"]}" failed: step exited with non-zero status: {outcome}',
                    "USER_BUILD_STEP",
                )
        with record.lock:
            record.resource.setdefault("results", {})["buildStepImages"] = ["" for _ in steps]

    def _step_env(self, step: dict[str, Any]) -> list[str]:
        env = [
            f"{k}={v}"
            for k, v in self.record.built_ins.items()
            if k in ("PROJECT_ID", "PROJECT_NUMBER", "BUILD_ID", "LOCATION")
        ]
        env += list((self.record.resource.get("options") or {}).get("env") or [])
        env += list(step.get("env") or [])
        return env

    def _step_dir(self, step: dict[str, Any]) -> str:
        """The step's working directory inside the container (Cloud Build's `dir` rules)."""
        folder = step.get("dir") or ""
        if folder.startswith("/"):
            return folder
        return f"{WORKSPACE}/{folder}".rstrip("/") if folder else WORKSPACE

    def _run_step(self, index: int, step: dict[str, Any], prefix: str) -> int | str:
        name = step["name"]
        timeout = parse_duration(f"build.steps[{index}].timeout", step["timeout"]) if step.get("timeout") else None
        entrypoint = step.get("entrypoint") or ""
        if DOCKER_BUILDER.match(name) and entrypoint in ("", "docker") and not step.get("script"):
            return self._run_docker_cli(step, prefix, timeout)
        return self._run_container(index, step, prefix, timeout)

    def _run_docker_cli(self, step: dict[str, Any], prefix: str, timeout: float | None) -> int | str:
        """A `gcr.io/cloud-builders/docker` step: the local docker CLI, in the workspace."""
        folder = self._step_dir(step)
        if not (folder == WORKSPACE or folder.startswith(WORKSPACE + "/")):
            return f"dir {folder!r} is outside {WORKSPACE}: the emulated docker builder runs in the workspace"
        cwd = self.workspace / folder[len(WORKSPACE) :].lstrip("/")
        if not cwd.is_dir():
            return f"dir {step.get('dir')!r} does not exist in the workspace"
        try:
            argv = docker_cli_args(
                list(step.get("args") or []), self.workspace, self.settings.server_id, self.record.id
            )
        except ValueError as refused:
            self.record.log(prefix + str(refused))
            return str(refused)
        env = dict(self.docker_env)
        for item in self._step_env(step):
            key, _, value = item.partition("=")
            env[key] = value
        return self._execute(["docker", *argv], prefix, timeout, cwd=cwd, env=env)

    def _run_container(self, index: int, step: dict[str, Any], prefix: str, timeout: float | None) -> int | str:
        """Any other builder: `docker run` it with the workspace at /workspace, as Cloud Build does."""
        image = step["name"]
        container = f"pe-cloudbuild-{self.record.id[:8]}-{index}-{secrets.token_hex(3)}"
        pull = "missing" if is_loopback_registry(registry_of(image)) else "never"
        argv = [
            "docker", "run", "--rm", "--name", container,
            "--label", f"{LABEL_SERVER}={self.settings.server_id}", "--label", f"{LABEL_BUILD}={self.record.id}",
            "--network", "host", "--pull", pull,
            "-v", f"{self.workspace}:{WORKSPACE}", "-v", f"{self.home}:{BUILDER_HOME}",
            "-w", self._step_dir(step), "-e", f"HOME={BUILDER_HOME}", "-e", "BUILDER_OUTPUT=/builder/outputs",
        ]  # fmt: skip
        if not self.settings.docker_host and Path(DOCKER_SOCKET).exists():
            argv += ["-v", f"{DOCKER_SOCKET}:{DOCKER_SOCKET}"]
        for item in self._step_env(step):
            argv += ["-e", item]
        if step.get("script"):
            self.scripts.mkdir(parents=True, exist_ok=True)
            script = step["script"] if step["script"].startswith("#!") else "#!/bin/sh\n" + step["script"]
            path = self.scripts / f"step-{index}"
            path.write_text(script)
            path.chmod(0o755)
            argv += ["-v", f"{self.scripts}:/builder/scripts:ro", "--entrypoint", f"/builder/scripts/step-{index}"]
        elif step.get("entrypoint"):
            argv += ["--entrypoint", step["entrypoint"]]
        argv += [image, *(step.get("args") or [])]
        if pull == "never":
            self.record.log(
                prefix + f"Using local image {image} (the emulated Cloud Build pulls only from loopback registries)"
            )
        return self._execute(argv, prefix, timeout, cwd=self.workspace, env=self.docker_env, container=container)

    def _execute(
        self,
        argv: list[str],
        prefix: str,
        timeout: float | None,
        cwd: Path,
        env: dict[str, str],
        container: str | None = None,
    ) -> int | str:
        """Run `argv`, stream its output into the log; its exit code, or TIMEOUT / CANCELLED."""
        record = self.record
        try:
            proc = subprocess.Popen(
                argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        except OSError as exc:
            record.log(prefix + f"cannot start {argv[0]}: {exc}")
            return f"cannot start {argv[0]}: {exc}"
        record.set_running(proc, container)

        def pump() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                for line in raw.decode("utf-8", errors="replace").rstrip("\r\n").split("\r"):
                    record.log(prefix + line)

        reader = threading.Thread(target=pump, name=f"cloudbuild-log-{record.id[:8]}", daemon=True)
        reader.start()
        limit = self.deadline if timeout is None else min(self.deadline, time.monotonic() + timeout)
        outcome: int | str
        while True:
            code = proc.poll()
            if code is not None:
                outcome = code
                break
            if record.cancel_requested.is_set():
                outcome = CANCELLED
                break
            if time.monotonic() > limit:
                outcome = TIMEOUT
                break
            time.sleep(0.05)
        if not isinstance(outcome, int):
            if container:
                label = f"{LABEL_BUILD}={record.id}"
                remove_labelled([label], self.docker_env, also=[container], timeouts=REMOVAL_TIMEOUTS)
            _kill_group(proc)
        reader.join(timeout=10)
        record.set_running(None)
        return outcome

    # -- PUSH -----------------------------------------------------------------------------
    def _push_images(self) -> None:
        record = self.record
        images: list[str] = list(record.resource.get("images") or [])
        missing = [image for image in images if not self._image_exists(image)]
        if missing:
            raise BuildEnded(
                FAILURE,
                "failed to find one or more images after execution of build steps: " + json.dumps(missing),
                "PUSH_IMAGE_NOT_FOUND",
            )
        results: list[dict[str, Any]] = []
        for image in images:
            self._check_cancel()
            host = registry_of(image)
            if not is_loopback_registry(host):
                where = (
                    f"{self.settings.registry_host}/PROJECT/REPO/NAME:TAG"
                    if self.settings.registry_host
                    else "127.0.0.1:PORT/..."
                )
                raise BuildEnded(
                    FAILURE,
                    f'failed to push "{image}": the emulated Cloud Build pushes only to the emulator\'s registry '
                    f"on 127.0.0.1 (name the image {where})",
                    "PUSH_FAILED",
                )
            record.log(f"Pushing {image}")
            started = now_rfc3339()
            lines: list[str] = []
            outcome = self._execute_capture(["docker", "push", image], lines)
            if outcome != 0:
                raise BuildEnded(FAILURE, f'failed to push "{image}": docker push exited with {outcome}', "PUSH_FAILED")
            digest = next((m.group(1) for line in reversed(lines) if (m := _PUSH_DIGEST.search(line))), None)
            digest = digest or self._repo_digest(image)
            if not digest:
                raise BuildEnded(FAILURE, f'failed to push "{image}": no digest reported', "PUSH_FAILED")
            results.append(
                {"name": image, "digest": digest, "pushTiming": {"startTime": started, "endTime": now_rfc3339()}}
            )
        with record.lock:
            record.resource.setdefault("results", {})["images"] = results
            record.resource.setdefault("artifacts", {})["images"] = images

    def _execute_capture(self, argv: list[str], lines: list[str]) -> int | str:
        before = len(self.record.log_text().splitlines())
        outcome = self._execute(argv, "", None, cwd=self.record.build_dir, env=self.docker_env)
        lines.extend(self.record.log_text().splitlines()[before:])
        return outcome

    def _image_exists(self, image: str) -> bool:
        result = subprocess.run(
            ["docker", "image", "inspect", image], check=False, env=self.docker_env, capture_output=True, timeout=60
        )
        return result.returncode == 0

    def _repo_digest(self, image: str) -> str | None:
        result = subprocess.run(
            ["docker", "image", "inspect", "--format", "{{json .RepoDigests}}", image],
            check=False, env=self.docker_env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        repository = image.split("@", 1)[0]
        if repository.rfind(":") > repository.rfind("/"):
            repository = repository[: repository.rfind(":")]
        try:
            for entry in json.loads(result.stdout or "[]") or []:
                if entry.startswith(repository + "@"):
                    return str(entry.split("@", 1)[1])
        except ValueError:
            return None
        return None


def docker_cli_args(args: list[str], workspace: Path, server_id: str, build_id: str) -> list[str]:
    """A docker builder step's args as the local CLI must run them; ValueError when refused.

    /workspace paths point into the local workspace; `build` and `run` get the host network unless
    they name one (`cloudbuild`, Cloud Build's network, means the host here); containers are
    labelled so a cancel removes them; pushes and pulls only reach loopback registries.
    """
    args = [_WORKSPACE_ARG.sub(lambda m: m.group(1) + str(workspace), arg) for arg in args]
    first = next((i for i, arg in enumerate(args) if not arg.startswith("-")), None)
    if first is None:
        return args
    for flag in args[:first]:
        if flag.split("=", 1)[0] in _REFUSED_GLOBAL_FLAGS:
            raise ValueError(
                f"the emulated docker builder does not take {flag.split('=', 1)[0]}: it uses this machine's engine"
            )
    kind, width = None, 1
    for words, name in _SUBCOMMANDS.items():
        if tuple(args[first : first + len(words)]) == words and len(words) >= width:
            kind, width = name, len(words)
    if kind is None:
        return args
    head, rest = args[: first + width], args[first + width :]
    rest = _host_network(rest)
    if kind == "build" and not _has_flag(rest, "--network"):
        rest = ["--network", "host", *rest]
    if kind == "run":
        if not _has_flag(rest, "--network") and not _has_flag(rest, "--net"):
            rest = ["--network", "host", *rest]
        if not _has_flag(rest, "--pull"):
            rest = ["--pull", "never", *rest]
        rest = ["--label", f"{LABEL_SERVER}={server_id}", "--label", f"{LABEL_BUILD}={build_id}", *rest]
    if kind in ("push", "pull"):
        targets = [arg for arg in rest if not arg.startswith("-")]
        for target in targets:
            if not is_loopback_registry(registry_of(target)):
                raise ValueError(
                    f'docker {kind} "{target}": the emulated Cloud Build reaches only registries on 127.0.0.1'
                )
    return head + rest


def _has_flag(args: list[str], flag: str) -> bool:
    return any(arg == flag or arg.startswith(flag + "=") for arg in args)


def _host_network(args: list[str]) -> list[str]:
    out: list[str] = []
    for i, arg in enumerate(args):
        if arg in ("--network=cloudbuild", "--net=cloudbuild"):
            out.append(arg.split("=", 1)[0] + "=host")
        elif arg == "cloudbuild" and i > 0 and args[i - 1] in ("--network", "--net"):
            out.append("host")
        else:
            out.append(arg)
    return out


def _unpack(data: bytes, target: Path) -> None:
    """Unpack a gzipped tarball, a plain tarball or a zip archive into `target`, safely."""
    if data[:4] == b"PK\x03\x04" or data[:4] == b"PK\x05\x06":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            root = target.resolve()
            for member in archive.infolist():
                destination = (target / member.filename).resolve()
                if root != destination and root not in destination.parents:
                    raise ValueError(f"archive member {member.filename!r} points outside the workspace")
            archive.extractall(target)
        return
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
        if hasattr(tarfile, "data_filter"):
            archive.extractall(target, filter="data")
        else:  # Python before 3.11.4 (Debian 12's 3.11.2) has no extraction filters
            _refuse_unsafe_members(archive, target)
            archive.extractall(target)


def _refuse_unsafe_members(archive: tarfile.TarFile, target: Path) -> None:
    """What the "data" filter refuses, for a Python without it: members or links that leave
    `target`, and anything but files, folders and links."""
    root = target.resolve()

    def inside(path: Path) -> bool:
        return path == root or root in path.parents

    for member in archive.getmembers():
        destination = (target / member.name).resolve()
        if not inside(destination) or not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            raise ValueError(f"archive member {member.name!r} is not a file or folder inside the workspace")
        if member.issym() and not inside((destination.parent / member.linkname).resolve()):
            raise ValueError(f"archive member {member.name!r} links outside the workspace")
        if member.islnk() and not inside((target / member.linkname).resolve()):
            raise ValueError(f"archive member {member.name!r} links outside the workspace")
