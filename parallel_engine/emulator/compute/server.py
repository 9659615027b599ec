"""The Compute Engine v1 REST endpoint: routes Google's paths to the engine, counts and faults calls.

Paths outside `/compute/v1/` under `/emulator/v1/` are the control API (not counted, never faulted).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from parallel_engine.emulator.access import AccessPolicy
from parallel_engine.emulator.compute import filters
from parallel_engine.emulator.compute.engine import ComputeEngine
from parallel_engine.emulator.compute.errors import ApiError, insufficient_scopes, not_found, rate_limit_exceeded
from parallel_engine.emulator.compute.idempotency import RequestIds
from parallel_engine.emulator.compute.ratelimit import MUTATION, READ, RateLimiter
from parallel_engine.emulator.httpbase import JsonHandler, LoopbackServer, Reply
from parallel_engine.emulator.identity import COMPUTE_READ_SCOPES, COMPUTE_SCOPES, Caller, TokenRegistry
from parallel_engine.emulator.traffic import FaultRule, Traffic, google_error, unauthenticated_error

log = logging.getLogger(__name__)
ORCHESTRATOR_USER = "user@example.com"
_P = r"^/compute/v1/projects/(?P<project>[^/]+)"
_Z = _P + r"/zones/(?P<zone>[^/]+)"
Action = Callable[["Call"], Any]


@dataclass
class Call:
    """One routed request, as the actions see it."""

    params: dict[str, str]
    query: dict[str, list[str]]
    body: Any
    caller: Caller
    user: str

    def q(self, key: str) -> str | None:
        values = self.query.get(key)
        return values[0] if values else None


def _routes(engine: ComputeEngine, wait_timeout: Callable[[], float]) -> list[tuple[str, re.Pattern[str], str, Action]]:
    e = engine
    ops = engine.operations

    def op_zone(c: Call) -> str:
        e.check_zone(c.params["project"], c.params["zone"])
        return c.params["zone"]

    def list_ops(c: Call) -> dict[str, Any]:
        zone = op_zone(c)
        match = filters.parse(c.q("filter"))
        items = [op for op in ops.in_zone(zone) if match(op)]
        chunk, token = filters.page(items, c.q("maxResults"), c.q("pageToken"))
        body: dict[str, Any] = {"kind": "compute#operationList", "items": chunk}
        if token:
            body["nextPageToken"] = token
        return body

    def delete_op(c: Call) -> dict[str, Any]:
        ops.delete(op_zone(c), c.params["op"])
        return {}

    table: list[tuple[str, str, str, Action]] = [
        ("POST", _Z + r"/instances/bulkInsert$", "compute.instances.bulkInsert",
         lambda c: e.bulk_insert(c.params["project"], c.params["zone"], c.body, c.user)),
        ("GET", _Z + r"/instances$", "compute.instances.list",
         lambda c: e.list_instances(c.params["project"], c.params["zone"], c.q("filter"), c.q("maxResults"), c.q("pageToken"))),
        ("POST", _Z + r"/instances$", "compute.instances.insert",
         lambda c: e.insert(c.params["project"], c.params["zone"], c.body, c.user)),
        ("GET", _Z + r"/instances/(?P<name>[^/]+)$", "compute.instances.get",
         lambda c: e.get(c.params["project"], c.params["zone"], c.params["name"])),
        ("DELETE", _Z + r"/instances/(?P<name>[^/]+)$", "compute.instances.delete",
         lambda c: e.delete(c.params["project"], c.params["zone"], c.params["name"], c.user)),
        ("POST", _Z + r"/instances/(?P<name>[^/]+)/stop$", "compute.instances.stop",
         lambda c: e.stop(c.params["project"], c.params["zone"], c.params["name"], c.user)),
        ("POST", _Z + r"/instances/(?P<name>[^/]+)/start$", "compute.instances.start",
         lambda c: e.start(c.params["project"], c.params["zone"], c.params["name"], c.user)),
        ("GET", _Z + r"/instances/(?P<name>[^/]+)/serialPort$", "compute.instances.getSerialPortOutput",
         lambda c: e.serial_port_output(c.params["project"], c.params["zone"], c.params["name"], c.q("start"))),
        ("GET", _P + r"/aggregated/instances$", "compute.instances.aggregatedList",
         lambda c: e.aggregated_list(c.params["project"], c.q("filter"), c.q("maxResults"), c.q("pageToken"))),
        ("GET", _Z + r"/operations$", "compute.zoneOperations.list", list_ops),
        ("GET", _Z + r"/operations/(?P<op>[^/]+)$", "compute.zoneOperations.get",
         lambda c: ops.get(op_zone(c), c.params["op"])),
        ("POST", _Z + r"/operations/(?P<op>[^/]+)/wait$", "compute.zoneOperations.wait",
         lambda c: ops.wait(op_zone(c), c.params["op"], wait_timeout())),
        ("DELETE", _Z + r"/operations/(?P<op>[^/]+)$", "compute.zoneOperations.delete", delete_op),
        ("GET", _Z + r"/machineTypes$", "compute.machineTypes.list",
         lambda c: e.machine_types(c.params["project"], c.params["zone"], c.q("filter"), c.q("maxResults"),
                                   c.q("pageToken"))),
        ("GET", _Z + r"/machineTypes/(?P<name>[^/]+)$", "compute.machineTypes.get",
         lambda c: e.machine_type(c.params["project"], c.params["zone"], c.params["name"])),
        ("GET", _Z + r"$", "compute.zones.get", lambda c: e.zone(c.params["project"], c.params["zone"])),
        ("GET", _P + r"/zones$", "compute.zones.list", lambda c: e.zones(c.params["project"])),
        ("GET", _P + r"/regions/(?P<region>[^/]+)$", "compute.regions.get",
         lambda c: e.region(c.params["project"], c.params["region"])),
    ]  # fmt: skip
    return [(method, re.compile(pattern), name, action) for method, pattern, name, action in table]


class DuplicateKey(Exception):
    """A JSON object names the same key twice (Google's parser refuses it)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DuplicateKey(key)
        result[key] = value
    return result


ControlHandler = Callable[[str, str, dict[str, list[str]], Any], tuple[int, Any]]


class ComputeServer:
    """The HTTP server; `control` answers `/emulator/v1/...`."""

    def __init__(
        self,
        engine_factory: Callable[[str], ComputeEngine],
        traffic: Traffic,
        tokens: TokenRegistry,
        limiter: RateLimiter,
    ) -> None:
        self.traffic = traffic
        self.tokens = tokens
        self.limiter = limiter
        self.control: ControlHandler | None = None
        self.access: AccessPolicy | None = None  # what the project refuses (IAM, disabled APIs)
        self._server = LoopbackServer(_make_handler(self))
        self.engine = engine_factory(f"{self._server.url}/compute/v1")
        clock = self.engine.clock
        self.request_ids = RequestIds(clock, self.engine.operations.get)
        self.routes = _routes(
            self.engine, lambda: min(120.0, max(0.5, clock.real(clock.durations.operation_wait_seconds)))
        )

    @property
    def url(self) -> str:
        return self._server.url

    def start(self) -> None:
        self._server.start("emulator-compute")

    def stop(self) -> None:
        self._server.stop()

    def route(self, method: str, path: str) -> tuple[str, Action, dict[str, str]] | None:
        for route_method, pattern, name, action in self.routes:
            if route_method == method and (match := pattern.match(path)):
                return name, action, match.groupdict()
        return None


def _resource(params: dict[str, str]) -> str:
    """The resource a call names, as Google's permission errors spell it."""
    parts = [f"projects/{params.get('project', '')}"]
    if "zone" in params:
        parts.append(f"zones/{params['zone']}")
    if "name" in params:
        parts.append(f"instances/{params['name']}")
    return "/".join(parts)


def _make_handler(server: ComputeServer) -> type[JsonHandler]:
    class Handler(JsonHandler):
        def _handle(self) -> None:
            raw = self.read_body()
            path = self.path_only
            if path.startswith("/emulator/v1/"):
                self._control(path, raw)
                return
            if not path.startswith("/compute/v1/"):
                self.send_json(404, not_found(path).body())
                return
            routed = server.route(self.command, path)
            if routed is None:
                self.send_json(404, google_error(404, "notFound", f"No such method: {self.command} {path}"))
                return
            name, action, params = routed
            caller = self.caller(server.tokens)
            self.answer_call(
                server.traffic, caller, name,
                act=lambda: self._outcome(name, action, params, caller, raw),
                unauthenticated=lambda: unauthenticated_error("compute", caller, name),
                fault_body=FaultRule.body,
            )  # fmt: skip

        def _outcome(self, name: str, action: Action, params: dict[str, str], caller: Caller, raw: bytes) -> Reply:
            """What Google answers a caller with valid credentials: rate limit, scopes, parse error, the outcome."""
            read_only = self.command == "GET" or name == "compute.zoneOperations.wait"
            if not server.limiter.take(READ if read_only else MUTATION):
                error = rate_limit_exceeded(server.engine.project_number, "Read" if read_only else "Write")
                return Reply.json(error.status, error.body())
            if not caller.scopes & (COMPUTE_READ_SCOPES if read_only else COMPUTE_SCOPES):
                error = insufficient_scopes()
                return Reply.json(error.status, error.body())
            refused = server.access and server.access.refusal("compute", name, caller, _resource(params))
            if refused:
                return Reply.json(*refused)
            try:
                body = json.loads(raw, object_pairs_hook=_unique_keys) if raw.strip() else {}
            except DuplicateKey as duplicate:  # json.loads would keep the last: a bulkInsert name made twice
                message = f"Invalid JSON payload received. Duplicate key: {duplicate}"
                return Reply.json(400, google_error(400, "invalid", message))
            except ValueError:
                return Reply.json(400, google_error(400, "parseError", "Parse Error"))
            user = caller.email or ORCHESTRATOR_USER
            request_id = None if read_only else self.query_one("requestId")
            call = Call(params, self.query, body, caller, user)
            try:
                return Reply.json(200, server.request_ids.once(name, request_id, lambda: action(call)))
            except ApiError as error:
                return Reply.json(error.status, error.body())
            except Exception:  # a bug here must look like a Google 500, not a hung client
                log.exception("emulated compute failed on %s %s", self.command, self.path)
                return Reply.json(500, google_error(500, "backendError", "Internal Error"))

        def _control(self, path: str, raw: bytes) -> None:
            if server.control is None:
                self.send_json(404, {"error": "no control API"})
                return
            try:
                body = json.loads(raw) if raw.strip() else {}
                status, payload = server.control(self.command, path, self.query, body)
            except Exception as exc:  # noqa: BLE001 - reported to the test as a 400
                status, payload = 400, {"error": f"{type(exc).__name__}: {exc}"}
            self.send_json(status, payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    return Handler
