"""The Cloud Build v1 REST endpoint of the emulated cloud.

`CloudBuildClient(transport="rest", client_options={"api_endpoint": server.url},
credentials=...)` works against it unchanged (with credentials the emulator's token endpoint
issued: a call without a valid token gets 401). It implements what a build pipeline uses:

    POST /v1/projects/{p}/builds                      (and /v1/projects/{p}/locations/{l}/builds)
    GET  /v1/projects/{p}/builds/{id}                 GET .../builds (filter, pageSize, pageToken)
    POST /v1/projects/{p}/builds/{id}:cancel
    GET  /v1/operations/build/{p}/{id}                (and projects/{p}/locations/{l}/operations/{id})
    GET  /logs/{p}/{id}                               the build's log, where `logUrl` points

Bodies are camelCase JSON; enums are accepted as names or integers (the client sends integers)
and returned as names. A Build Google would refuse is refused with 400 INVALID_ARGUMENT in Google's
words (cloudbuild_validate.py); a valid one is queued and run by cloudbuild_runner.py: source from
Storage, steps with the local Docker engine, images pushed to the emulator's registry with their real
digests.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tempfile
import threading
import urllib.request
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from parallel_engine.emulator.access import AccessPolicy
from parallel_engine.emulator.cloudbuild_runner import (
    ACTIVE,
    CANCELLED,
    EXPIRED,
    FAILURE,
    INTERNAL_ERROR,
    LABEL_SERVER,
    QUEUED,
    REMOVAL_TIMEOUTS,
    SUCCESS,
    TIMEOUT,
    BuildRecord,
    BuildRunner,
    RunnerSettings,
    now_rfc3339,
)
from parallel_engine.emulator.cloudbuild_validate import (
    InvalidBuild,
    apply_substitutions,
    built_in_values,
    check_build,
)
from parallel_engine.emulator.httpbase import JsonHandler, LoopbackServer, Reply
from parallel_engine.emulator.identity import CLOUD_PLATFORM, Caller, TokenRegistry
from parallel_engine.emulator.rpc import ApiError, rpc_error_body
from parallel_engine.emulator.traffic import FaultRule, Traffic, unauthenticated_message
from parallel_engine.emulator.watchdog import remove_labelled

GLOBAL = "global"
BUILD_TYPE = "type.googleapis.com/google.devtools.cloudbuild.v1.Build"
METADATA_TYPE = "type.googleapis.com/google.devtools.cloudbuild.v1.BuildOperationMetadata"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
DEFAULT_PAGE_SIZE = 25
MAX_PAGE_SIZE = 1000
#: google.rpc.Code of a done operation whose build did not succeed.
_OPERATION_ERRORS = {
    FAILURE: (2, "Build failed; check build logs for details"),
    INTERNAL_ERROR: (13, "Build failed: internal error; check build logs for details"),
    TIMEOUT: (4, "Build timed out"),
    CANCELLED: (1, "Build was cancelled"),
    EXPIRED: (4, "Build expired before it could start"),
}
_FILTER_TERM = re.compile(r'^\s*(?P<key>[a-zA-Z_.]+)\s*(?P<op>=|:)\s*"?(?P<value>[^"]*?)"?\s*$')
_FILTER_KEYS = {"status", "id", "build_id", "tags", "images", "trigger_id", "build_trigger_id", "project_id"}


def _project_number(project: str) -> int:
    return 100000000000 + zlib.crc32(project.encode()) % 900000000000


class CloudBuildServer:
    """Cloud Build's REST API on 127.0.0.1, running builds with the local Docker engine."""

    def __init__(
        self,
        storage_url: str,
        registry_host: str | None = None,
        project: str | None = None,
        project_number: int | None = None,
        workdir: Path | None = None,
        docker_host: str | None = None,
        traffic: Traffic | None = None,
        tokens: TokenRegistry | None = None,
        max_concurrent_builds: int = 4,
    ) -> None:
        """`storage_url` is the Storage JSON API endpoint sources are fetched from (and logs written to);
        `registry_host` (127.0.0.1:PORT) is where users are told to push; `project`, when given, is the
        only project that exists (others answer 403, as Google does for a project you cannot see)."""
        self.storage_url = storage_url.rstrip("/")
        self.registry_host = registry_host
        self.project = project
        self._project_number = project_number
        self._workdir_arg = workdir
        self.workdir: Path | None = None
        self.traffic = traffic
        self.tokens = tokens or TokenRegistry()  # its own: only tokens minted there are accepted
        self.access: AccessPolicy | None = None  # what the project refuses (IAM, disabled APIs)
        self.server_id = secrets.token_hex(6)
        self.settings = RunnerSettings(self.storage_url, registry_host, docker_host, self.server_id,
                                       self._service_agent_token)
        self._slots = threading.Semaphore(max_concurrent_builds)
        self._lock = threading.Lock()
        self._builds: dict[str, BuildRecord] = {}
        self._order: list[str] = []
        self._threads: list[threading.Thread] = []
        self._injected: list[str] = []  # statuses the next builds end with (the control API's faults)
        self._server = LoopbackServer(_make_handler(self))
        self._running = False

    # -- life -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self._server.url

    @property
    def port(self) -> int:
        return self._server.port

    def client_options(self) -> dict[str, str]:
        return {"api_endpoint": self.url}

    def start(self) -> CloudBuildServer:
        if self._running:
            return self
        if self._workdir_arg is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="pe-cloudbuild-"))
        else:
            self.workdir = self._workdir_arg
            self.workdir.mkdir(parents=True, exist_ok=True)
        self._server.start("emulator-cloudbuild")
        self._running = True
        return self

    def stop(self) -> None:
        """Cancel every build still running (its processes and containers go), stop serving. Idempotent."""
        if not self._running:
            return
        self._running = False
        with self._lock:
            records = list(self._builds.values())
            threads = list(self._threads)
        for record in records:
            record.cancel(self._docker_env())
        for thread in threads:
            thread.join(timeout=15)
        remove_labelled([f"{LABEL_SERVER}={self.server_id}"], self._docker_env(), timeouts=REMOVAL_TIMEOUTS)
        self._server.stop()
        if self._workdir_arg is None and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> CloudBuildServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _service_agent_token(self, project: str, lifetime: float) -> str:
        """A token of the project's Cloud Build service account, for pushing its images (as on
        Google, where builds push as that account): valid as long as the build may run."""
        email = f"{self.project_number(project)}@cloudbuild.gserviceaccount.com"
        return self.tokens.issue_for(email, (CLOUD_PLATFORM,), lifetime)

    def _docker_env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.settings.docker_host:
            env["DOCKER_HOST"] = self.settings.docker_host
        return env

    # -- the API, as Python -----------------------------------------------------------------
    def project_number(self, project: str) -> int:
        if self._project_number is not None and project == self.project:
            return self._project_number
        return _project_number(project)

    def check_project(self, project: str) -> None:
        if self.project is not None and project != self.project:
            raise ApiError(403, f"The caller does not have permission (project {project!r} is not in this emulator)")

    def create(self, project: str, location: str, body: Any) -> dict[str, Any]:
        """builds.create: check, substitute, queue; the long-running operation."""
        self.check_project(project)
        if not self._running or self.workdir is None:
            raise ApiError(503, "The service is currently unavailable.")
        try:
            build = check_build(body)
            build_id = str(uuid.uuid4())
            built_ins = built_in_values(
                project, self.project_number(project), build_id, location, build.get("substitutions") or {}
            )
            build = apply_substitutions(build, built_ins)
        except InvalidBuild as invalid:
            details = (
                [{"@type": BAD_REQUEST_TYPE, "fieldViolations": invalid.violations}] if invalid.violations else None
            )
            raise ApiError(400, invalid.message, details) from None
        prefix = f"projects/{project}/locations/{location}"
        resource: dict[str, Any] = {
            "name": f"{prefix}/builds/{build_id}",
            "id": build_id,
            "projectId": project,
            "status": QUEUED,
            **build,
            "createTime": now_rfc3339(),
            "logUrl": f"{self.url}/logs/{quote(project, safe='')}/{build_id}",
        }
        resource.setdefault("options", {})
        resource["options"].setdefault("logging", "LEGACY")
        resource.setdefault("serviceAccount", built_ins["SERVICE_ACCOUNT"])
        record = BuildRecord(resource, location, self.workdir / "builds" / build_id, built_ins)
        with self._lock:
            injected = self._injected.pop(0) if self._injected else None
        runner = BuildRunner(record, self.settings, self._upload_log, injected)
        thread = threading.Thread(
            target=runner.run, args=(self._slots,), name=f"cloudbuild-{build_id[:8]}", daemon=True
        )
        with self._lock:
            self._builds[build_id] = record
            self._order.append(build_id)
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        created = self.operation(record)  # QUEUED, as Google answers, whatever the runner does next
        thread.start()
        return created

    def fail_next_builds(self, count: int, status: str) -> None:
        """The next `count` builds end with `status` (EXPIRED: never started; INTERNAL_ERROR: once started)."""
        if status not in (EXPIRED, INTERNAL_ERROR):
            raise ValueError(f"a build fault is EXPIRED or INTERNAL_ERROR, not {status!r}")
        with self._lock:
            self._injected.extend([status] * count)

    def record(self, project: str, build_id: str, location: str | None = None) -> BuildRecord:
        self.check_project(project)
        with self._lock:
            record = self._builds.get(build_id)
        if record is None or record.project != project or (location is not None and record.location != location):
            raise ApiError(404, f'Build "{build_id}" not found')
        return record

    def get(self, project: str, build_id: str, location: str | None = None) -> dict[str, Any]:
        return self.record(project, build_id, location).snapshot()

    def cancel(self, project: str, build_id: str, location: str | None = None) -> dict[str, Any]:
        """builds.cancel: the build, CANCELLED if it had not ended (an ended build is returned as it is)."""
        record = self.record(project, build_id, location)
        record.cancel(self._docker_env())
        return record.snapshot()

    def list(
        self, project: str, location: str | None, filter_text: str | None, page_size: str | None, page_token: str | None
    ) -> dict[str, Any]:
        self.check_project(project)
        match = parse_filter(filter_text)
        with self._lock:
            records = [self._builds[i] for i in reversed(self._order)]  # newest first, as Google lists
        items = [r.snapshot() for r in records if r.project == project and (location is None or r.location == location)]
        items = [b for b in items if match(b)]
        try:
            size = int(page_size) if page_size else DEFAULT_PAGE_SIZE
            start = int(page_token) if page_token else 0
        except ValueError:
            raise ApiError(400, "Invalid page_size or page_token") from None
        size = max(1, min(size, MAX_PAGE_SIZE))
        body: dict[str, Any] = {"builds": items[start : start + size]}
        if start + size < len(items):
            body["nextPageToken"] = str(start + size)
        return body

    def operation(self, record: BuildRecord) -> dict[str, Any]:
        """The long-running operation of a build (its name is derived from the build's)."""
        build = record.snapshot()
        if record.location == GLOBAL:
            name = f"operations/build/{record.project}/{record.id}"
        else:
            name = f"projects/{record.project}/locations/{record.location}/operations/{record.id}"
        op: dict[str, Any] = {"name": name, "metadata": {"@type": METADATA_TYPE, "build": build}}
        status = build["status"]
        if status not in ACTIVE:
            op["done"] = True
            if status == SUCCESS:
                op["response"] = {"@type": BUILD_TYPE, **build}
            else:
                code, message = _OPERATION_ERRORS.get(status, (2, "Build failed"))
                op["error"] = {"code": code, "message": message}
        return op

    def get_operation(self, project: str, op_id: str, location: str = GLOBAL) -> dict[str, Any]:
        return self.operation(self.record(project, op_id, location))

    def log_text(self, project: str, build_id: str) -> str:
        return self.record(project, build_id).log_text()

    def wait(self, project: str, build_id: str, timeout: float = 120) -> dict[str, Any]:
        """Block until the build has ended (for in-process tests); its resource."""
        record = self.record(project, build_id)
        if not record.done.wait(timeout):
            raise TimeoutError(f"build {build_id} still {record.status} after {timeout} s")
        return record.snapshot()

    # -- logs bucket ------------------------------------------------------------------------
    def _upload_log(self, record: BuildRecord) -> None:
        """Write `log-ID.txt` to `logsBucket` when the build names one (Google writes it there)."""
        bucket_url = record.resource.get("logsBucket") or ""
        if not bucket_url:
            return
        if not bucket_url.startswith("gs://"):
            raise ValueError(f"logsBucket {bucket_url!r} is not a gs:// URL")
        bucket, _, prefix = bucket_url[5:].partition("/")
        name = f"{prefix.strip('/')}/log-{record.id}.txt".lstrip("/")
        request = urllib.request.Request(
            f"{self.storage_url}/upload/storage/v1/b/{quote(bucket, safe='')}/o?uploadType=media&name={quote(name, safe='')}",
            data=record.log_text().encode(),
            method="POST",
            headers={"Content-Type": "text/plain; charset=utf-8"},
        )
        urllib.request.urlopen(request, timeout=60).close()


# -- list filters -----------------------------------------------------------------------------------
def parse_filter(text: str | None) -> Callable[[dict[str, Any]], bool]:
    """The subset of Cloud Build's list filter worth having here: `key="value"` terms joined by AND.

    Keys: status, id / build_id, tags, images, trigger_id, project_id. Anything else is refused
    with 400 rather than silently ignored.
    """
    if not text or not text.strip():
        return lambda build: True
    terms: list[tuple[str, str]] = []
    for part in re.split(r"\s+AND\s+", text.strip()):
        match = _FILTER_TERM.match(part)
        if not match or match.group("key") not in _FILTER_KEYS:
            raise ApiError(
                400,
                f'Invalid filter: {text!r} (the emulator supports key="value" terms joined by AND on {sorted(_FILTER_KEYS)})',
            )
        terms.append((match.group("key"), match.group("value")))

    def value_of(build: dict[str, Any], key: str) -> list[str]:
        if key == "status":
            return [str(build.get("status"))]
        if key in ("id", "build_id"):
            return [str(build.get("id"))]
        if key in ("trigger_id", "build_trigger_id"):
            return [str(build.get("buildTriggerId", ""))]
        if key == "project_id":
            return [str(build.get("projectId"))]
        if key == "tags":
            return [str(t) for t in build.get("tags") or []]
        if key == "images":
            return [str(i) for i in build.get("images") or []]
        return []

    return lambda build: all(value in value_of(build, key) for key, value in terms)


# -- HTTP ---------------------------------------------------------------------------------------------
_P = r"^/v1/projects/(?P<project>[^/]+)"
_L = _P + r"/locations/(?P<location>[^/]+)"
_ID = r"(?P<id>[^/:]+)"
Action = Callable[[re.Match[str], JsonHandler, bytes], Any]  # (route match, handler, request body) -> JSON


def _fault_body(fault: FaultRule) -> dict[str, Any]:
    return rpc_error_body(fault.status, fault.message)


def _make_handler(server: CloudBuildServer) -> type[JsonHandler]:
    def create(m: re.Match[str], h: JsonHandler, raw: bytes) -> Any:
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError as exc:
            raise ApiError(400, f"Invalid JSON payload received. {exc}") from None
        return server.create(unquote(m["project"]), _location(m, h.query_one("parent")), body)

    def get(m: re.Match[str], h: JsonHandler, raw: bytes) -> Any:
        return server.get(unquote(m["project"]), m["id"], _location_or_none(m))

    def cancel(m: re.Match[str], h: JsonHandler, raw: bytes) -> Any:
        return server.cancel(unquote(m["project"]), m["id"], _location_or_none(m))

    def list_builds(m: re.Match[str], h: JsonHandler, raw: bytes) -> Any:
        q = h.query_one
        location = _location_or_none(m) or _parent_location(q("parent"))
        return server.list(unquote(m["project"]), location, q("filter"), q("pageSize"), q("pageToken"))

    def get_operation(m: re.Match[str], h: JsonHandler, raw: bytes) -> Any:
        return server.get_operation(unquote(m["project"]), m["id"], _location(m))

    def cancel_operation(m: re.Match[str], h: JsonHandler, raw: bytes) -> Any:
        server.record(unquote(m["project"]), m["id"], _location(m)).cancel(server._docker_env())
        return {}

    routes: list[tuple[str, re.Pattern[str], str, Action]] = [
        ("POST", re.compile(_P + r"/builds$"), "cloudbuild.builds.create", create),
        ("POST", re.compile(_L + r"/builds$"), "cloudbuild.builds.create", create),
        ("GET", re.compile(_P + r"/builds$"), "cloudbuild.builds.list", list_builds),
        ("GET", re.compile(_L + r"/builds$"), "cloudbuild.builds.list", list_builds),
        ("GET", re.compile(_P + rf"/builds/{_ID}$"), "cloudbuild.builds.get", get),
        ("GET", re.compile(_L + rf"/builds/{_ID}$"), "cloudbuild.builds.get", get),
        ("POST", re.compile(_P + rf"/builds/{_ID}:cancel$"), "cloudbuild.builds.cancel", cancel),
        ("POST", re.compile(_L + rf"/builds/{_ID}:cancel$"), "cloudbuild.builds.cancel", cancel),
        (
            "GET",
            re.compile(rf"^/v1/operations/build/(?P<project>[^/]+)/{_ID}$"),
            "cloudbuild.operations.get",
            get_operation,
        ),
        ("GET", re.compile(_L + rf"/operations/{_ID}$"), "cloudbuild.operations.get", get_operation),
        (
            "POST",
            re.compile(rf"^/v1/operations/build/(?P<project>[^/]+)/{_ID}:cancel$"),
            "cloudbuild.operations.cancel",
            cancel_operation,
        ),
        ("POST", re.compile(_L + rf"/operations/{_ID}:cancel$"), "cloudbuild.operations.cancel", cancel_operation),
    ]
    log_route = re.compile(r"^/logs/(?P<project>[^/]+)/(?P<id>[^/]+?)(?:\.txt)?$")

    class Handler(JsonHandler):
        def _caller(self) -> Caller:
            return self.caller(server.tokens)

        def _dispatch(self) -> None:
            raw = self.read_body()  # first, whatever the answer: the connection is kept alive
            path = unquote(self.path_only)
            if self.command in ("GET", "HEAD") and (m := log_route.match(path)):
                try:
                    text = server.log_text(unquote(m["project"]), m["id"])
                except ApiError as refused:
                    self.send_json(refused.code, refused.body())
                    return
                self.send_text(200, text)
                return
            for method, pattern, operation, action in routes:
                m = pattern.match(path)
                if m is None or method != self.command:
                    continue
                caller = self._caller()
                self.answer_call(
                    server.traffic, caller, operation,
                    act=lambda: self._outcome(m, action, raw, operation, caller),
                    unauthenticated=lambda: rpc_error_body(401, unauthenticated_message("cloudbuild", caller)),
                    fault_body=_fault_body,
                )  # fmt: skip
                return
            known = any(pattern.match(path) for _, pattern, _, _ in routes)
            error = (
                ApiError(405, "Method not allowed")
                if known
                else ApiError(404, f"The requested URL {path} was not found on this server.")
            )
            self.send_json(error.code, error.body())

        def _outcome(self, m: re.Match[str], action: Action, raw: bytes, operation: str, caller: Caller) -> Reply:
            refused = server.access and server.access.refusal("cloudbuild", operation, caller, "")
            if refused:
                return Reply.json(*refused)
            try:
                return Reply.json(200, action(m, self, raw))
            except ApiError as error:
                return Reply.json(error.code, error.body())
            except Exception as exc:  # never a hung client: a 500 in Google's shape
                return Reply.json(500, ApiError(500, f"Internal error: {exc!r}").body())

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _dispatch

    return Handler


def _parent_location(parent: str | None) -> str | None:
    """The location of a `parent` query parameter (projects/P/locations/L), which the project paths take."""
    match = re.match(r"^projects/[^/]+/locations/([^/]+)$", parent or "")
    return match.group(1) if match else None


def _location(m: re.Match[str], parent: str | None = None) -> str:
    groups = m.groupdict()
    if groups.get("location"):
        return unquote(groups["location"])
    return _parent_location(parent) or GLOBAL


def _location_or_none(m: re.Match[str]) -> str | None:
    groups = m.groupdict()
    return unquote(groups["location"]) if groups.get("location") else None


__all__ = ["ApiError", "CloudBuildServer", "parse_filter"]
