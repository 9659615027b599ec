"""The emulator's Storage endpoint: a reverse proxy in front of fake-gcs-server.

It exists so that Storage calls can be counted per caller (orchestrator or VM), slowed down and
failed on demand, and so that what fake-gcs-server lets through is refused as Google refuses it:
calls without a valid token, tokens without Storage scopes, permissions the project denies
(access.py), invalid object names (storage_names.py), preconditions on media uploads and deletes.
What fake-gcs-server lacks it adds (storage_buckets.py): buckets' locations and project number,
and their IAM (`b/BUCKET/iam`, `b/BUCKET/iam/testPermissions`).
"""

from __future__ import annotations

import http.client
import json
import re
import threading
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from parallel_engine.emulator.access import AccessPolicy
from parallel_engine.emulator.httpbase import JsonHandler, LoopbackServer, Reply
from parallel_engine.emulator.identity import STORAGE_READ_SCOPES, STORAGE_WRITE_SCOPES, Caller, TokenRegistry
from parallel_engine.emulator.netutil import LOOPBACK
from parallel_engine.emulator.storage_buckets import Buckets, bucket_of, iam_policy, tested_permissions
from parallel_engine.emulator.storage_names import UPLOAD_PATH, BadName, check_name, names_of
from parallel_engine.emulator.traffic import FaultRule, Traffic, google_error, unauthenticated_error

_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade", "content-length",
}  # fmt: skip

_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("GET", re.compile(r"^/storage/v1/b/?$"), "storage.buckets.list"),
    ("POST", re.compile(r"^/storage/v1/b/?$"), "storage.buckets.insert"),
    ("GET", re.compile(r"^/storage/v1/b/[^/]+/?$"), "storage.buckets.get"),
    ("GET", re.compile(r"^/storage/v1/b/[^/]+/iam/?$"), "storage.buckets.getIamPolicy"),
    ("GET", re.compile(r"^/storage/v1/b/[^/]+/iam/testPermissions/?$"), "storage.buckets.testIamPermissions"),
    ("DELETE", re.compile(r"^/storage/v1/b/[^/]+/?$"), "storage.buckets.delete"),
    ("PATCH", re.compile(r"^/storage/v1/b/[^/]+/?$"), "storage.buckets.patch"),
    ("GET", re.compile(r"^/storage/v1/b/[^/]+/o/?$"), "storage.objects.list"),
    ("POST", re.compile(r"^/storage/v1/b/[^/]+/o/.+/compose$"), "storage.objects.compose"),
    ("POST", re.compile(r"^/storage/v1/b/[^/]+/o/.+/(copyTo|rewriteTo)/"), "storage.objects.rewrite"),
    ("GET", re.compile(r"^/storage/v1/b/[^/]+/o/.+"), "storage.objects.get"),
    ("DELETE", re.compile(r"^/storage/v1/b/[^/]+/o/.+"), "storage.objects.delete"),
    ("PATCH", re.compile(r"^/storage/v1/b/[^/]+/o/.+"), "storage.objects.patch"),
    ("*", re.compile(r"^/upload/storage/v1/b/[^/]+/o"), "storage.objects.insert"),
    ("GET", re.compile(r"^/download/storage/v1/b/[^/]+/o/.+"), "storage.objects.get"),
    ("POST", re.compile(r"^/batch/storage/v1"), "storage.batch"),
]
_WRITES = {"POST", "PUT", "PATCH", "DELETE"}
#: Calls whose answer carries bucket resources (their location and project number are filled in).
_BUCKET_ANSWERS = {"storage.buckets.list", "storage.buckets.insert", "storage.buckets.get", "storage.buckets.patch"}
#: The IAM permission a method needs, where its name differs (what a 401 names).
_PERMISSIONS = {
    "storage.objects.insert": "storage.objects.create", "storage.objects.compose": "storage.objects.create",
    "storage.objects.rewrite": "storage.objects.create", "storage.buckets.insert": "storage.buckets.create",
    "storage.objects.patch": "storage.objects.update", "storage.buckets.patch": "storage.buckets.update",
}  # fmt: skip
_OBJECT_PATH = re.compile(r"^/storage/v1/b/([^/]+)/o/([^/]+)$")
_COMPOSE_PATH = re.compile(r"^/storage/v1/b/([^/]+)/o/([^/]+)/compose$")

#: fake-gcs-server puts the HTTP status text where Google puts a reason code.
_REASONS = {400: "invalid", 401: "required", 403: "forbidden", 404: "notFound", 409: "conflict",
            412: "conditionNotMet", 429: "rateLimitExceeded", 503: "backendError"}  # fmt: skip
LIST_PAGE = 1000
_PRECONDITION_MESSAGE = "At least one of the pre-conditions you specified did not hold."


def google_shaped(status: int, body: bytes) -> bytes:
    """Rewrite fake-gcs-server's error body so `errors[0].reason` is Google's code (e.g. conditionNotMet)."""
    try:
        payload = json.loads(body)
        error = payload["error"]
    except (ValueError, KeyError, TypeError):
        reason = _REASONS.get(status, "backendError")
        return json.dumps(google_error(status, reason, body.decode(errors="replace").strip() or reason)).encode()
    known = _REASONS.get(status)
    if known is None:
        return body
    reason = known
    if status == 412:
        error["message"] = _PRECONDITION_MESSAGE
    for item in error.get("errors") or [{}]:
        if " " in str(item.get("reason", " ")):
            item["reason"] = reason
            if status == 412:
                item["message"] = _PRECONDITION_MESSAGE
    error.setdefault("errors", [{"message": error.get("message", reason), "domain": "global", "reason": reason}])
    return json.dumps(payload).encode()


def capped_list(target: str, page_size: int = LIST_PAGE) -> str:
    """An objects.list target with `maxResults` at most 1,000, as Google pages (fake-gcs-server does not)."""
    parts = urlsplit(target)
    query = parse_qs(parts.query, keep_blank_values=True)
    try:
        asked = int(query.get("maxResults", [page_size])[0])
    except ValueError:
        asked = page_size
    query["maxResults"] = [str(min(max(asked, 1), page_size))]
    return parts._replace(query=urlencode(query, doseq=True)).geturl()


def precondition_target(method: str, target: str) -> tuple[str, str, str] | None:
    """(bucket, object, ifGenerationMatch) for the calls whose precondition fake-gcs-server ignores.

    fake-gcs-server honours `ifGenerationMatch` on multipart uploads but not on media uploads,
    deletes or composes (of the destination); Google honours it everywhere, so the proxy checks
    those three itself. (A compose there also keeps the destination's generation where Google
    mints a new one: not emulated.)
    """
    parts = urlsplit(target)
    query = parse_qs(parts.query)
    wanted = query.get("ifGenerationMatch", [None])[0]
    if wanted is None:
        return None
    if (method == "DELETE" and (m := _OBJECT_PATH.match(parts.path))) or (
            method == "POST" and (m := _COMPOSE_PATH.match(parts.path))):
        return m.group(1), unquote(m.group(2)), wanted
    if method == "POST" and (m := UPLOAD_PATH.match(parts.path)) and query.get("uploadType") == ["media"]:
        name = query.get("name", [None])[0]
        if name is not None:
            return m.group(1), name, wanted
    return None


def classify(method: str, path: str) -> str:
    """Google's method name for a Storage JSON API call (for call counts)."""
    for route_method, pattern, name in _ROUTES:
        if route_method in ("*", method) and pattern.search(path):
            return name
    return f"storage.other.{method.lower()}"


class StorageProxy:
    """Counting, fault-injecting reverse proxy on 127.0.0.1 in front of one upstream Storage server."""

    def __init__(self, traffic: Traffic, tokens: TokenRegistry, buckets: Buckets | None = None) -> None:
        self.traffic = traffic
        self.tokens = tokens
        self.buckets = buckets or Buckets(0)
        self.access: AccessPolicy | None = None  # what the project refuses (IAM, disabled APIs)
        self.upstream_port = 0
        self._server = LoopbackServer(_make_handler(self))

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def port(self) -> int:
        return self._server.port

    def start(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._server.start("emulator-storage-proxy")

    def stop(self) -> None:
        self._server.stop()


def _make_handler(proxy: StorageProxy) -> type[JsonHandler]:
    local = threading.local()
    object_locks: dict[tuple[str, str], threading.Lock] = {}
    locks_guard = threading.Lock()

    def object_lock(bucket: str, name: str) -> threading.Lock:
        with locks_guard:
            return object_locks.setdefault((bucket, name), threading.Lock())

    def upstream() -> http.client.HTTPConnection:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(LOOPBACK, proxy.upstream_port, timeout=300)
            local.conn = conn
        return conn

    class Handler(JsonHandler):
        def _forward(self) -> None:
            body = self.read_body()
            caller = self.caller(proxy.tokens)
            parts = urlsplit(self.path)
            operation = classify(self.command, parts.path)
            permission = _PERMISSIONS.get(operation, operation)
            query = parse_qs(parts.query, keep_blank_values=True)
            self.answer_call(
                proxy.traffic, caller, operation,
                act=lambda: self._outcome(caller, operation, parts.path, query, body),
                unauthenticated=lambda: unauthenticated_error("storage", caller, permission),
                fault_body=FaultRule.body,
            )  # fmt: skip

        def _outcome(
            self, caller: Caller, operation: str, path: str, query: dict[str, list[str]], body: bytes
        ) -> Reply:
            """What Google answers a caller with valid credentials: scopes, names, preconditions, upstream's answer."""
            needed = STORAGE_WRITE_SCOPES if self.command in _WRITES else STORAGE_READ_SCOPES
            if not caller.scopes & needed:
                return Reply.json(403, google_error(403, "forbidden", "Provided scope(s) are not authorized"))
            resource = "object" if "/o/" in path or path.startswith("/upload/") else "bucket"
            bucket = bucket_of(path)
            refused = proxy.access and proxy.access.refusal(
                "storage", _PERMISSIONS.get(operation, operation), caller, resource, bucket
            )
            if refused:
                return Reply.json(*refused)
            if operation in ("storage.buckets.getIamPolicy", "storage.buckets.testIamPermissions") and bucket:
                return self._bucket_iam(caller, operation, bucket, query)
            try:
                for name in names_of(self.command, path, query, self.headers.get("Content-Type", ""), body):
                    check_name(name)
            except BadName as bad:  # fake-gcs-server would store it; Google refuses it
                return Reply.json(bad.status, google_error(bad.status, bad.reason, bad.message))
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            headers["Content-Length"] = str(len(body))
            try:
                checked = precondition_target(self.command, self.path)
                target = capped_list(self.path) if operation == "storage.objects.list" else self.path
                if checked is None:
                    status, reply_headers, reply = self._relay(self.command, target, body, headers)
                else:
                    bucket, name, wanted = checked
                    with object_lock(bucket, name):
                        if self._generation(bucket, name, headers) != wanted:
                            return Reply.json(412, google_error(412, "conditionNotMet", _PRECONDITION_MESSAGE))
                        status, reply_headers, reply = self._relay(self.command, self.path, body, headers)
            except (http.client.HTTPException, OSError):
                return Reply.json(503, google_error(503, "backendError", "Backend Error"))
            if status == 200 and operation in _BUCKET_ANSWERS:
                if operation == "storage.buckets.insert":
                    proxy.buckets.created(body)
                reply = proxy.buckets.rewrite(reply)
            if status >= 400:
                reply = google_shaped(status, reply)
                reply_headers = [(k, v) for k, v in reply_headers if k.lower() != "content-type"]
                reply_headers.append(("Content-Type", "application/json; charset=UTF-8"))
            out: dict[str, str] = {}
            for key, value in reply_headers:
                if key.lower() in _HOP_BY_HOP or key.lower() == "content-type":
                    continue
                if key.lower() == "location":
                    value = value.replace(f"http://{LOOPBACK}:{proxy.upstream_port}", proxy.url)
                out[key] = value
            content_type = dict((k.lower(), v) for k, v in reply_headers).get("content-type", "")
            return Reply(status, reply, content_type or "application/octet-stream", out)

        def _bucket_iam(self, caller: Caller, operation: str, bucket: str, query: dict[str, list[str]]) -> Reply:
            """A bucket's IAM policy, or which of the asked permissions the caller holds on it."""
            probe = {k: v for k, v in self.headers.items() if k.lower() in ("host", "authorization")}
            try:
                status, _, reply = self._relay("GET", f"/storage/v1/b/{quote(bucket, safe='')}", b"", probe)
            except (http.client.HTTPException, OSError):
                return Reply.json(503, google_error(503, "backendError", "Backend Error"))
            if status != 200:
                return Reply(status, google_shaped(status, reply))
            iam = proxy.access.iam if proxy.access else None
            if iam is None:
                return Reply.json(501, google_error(501, "notImplemented", "IAM is not emulated here"))
            if operation == "storage.buckets.getIamPolicy":
                return Reply.json(200, iam_policy(iam, bucket))
            asked = query.get("permissions", [])
            access = proxy.access
            granted = [p for p in iam.granted(caller.email, asked, bucket) if not (access and access.denied(caller, p))]
            return Reply.json(200, tested_permissions(granted))

        def _generation(self, bucket: str, name: str, headers: dict[str, str]) -> str:
            """The live generation of an object as a string, "0" when it does not exist."""
            path = f"/storage/v1/b/{bucket}/o/{quote(name, safe='')}"
            probe = {k: v for k, v in headers.items() if k.lower() in ("host", "authorization")}
            status, _, reply = self._relay("GET", path, b"", probe)
            if status == 404:
                return "0"
            return str(json.loads(reply).get("generation", "0"))

        def _relay(
            self, method: str, target: str, body: bytes, headers: dict[str, str]
        ) -> tuple[int, list[tuple[str, str]], Any]:
            for attempt in (0, 1):  # a kept-alive upstream connection may have been closed meanwhile
                conn = upstream()
                try:
                    conn.request(method, target, body=body, headers=headers)
                    response = conn.getresponse()
                    return response.status, response.getheaders(), response.read()
                except (http.client.HTTPException, ConnectionError, OSError):
                    conn.close()
                    local.conn = None
                    if attempt:
                        raise
            raise AssertionError("unreachable")

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward

    return Handler
