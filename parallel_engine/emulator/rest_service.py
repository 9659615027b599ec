"""A small Google REST API on 127.0.0.1: routes, and the front end every such API shares.

IAM, Resource Manager and Service Usage (project_apis.py) are a few read-mostly methods each; this
gives each its own loopback endpoint that answers as Google's front end does: the call is counted
(traffic.py: faults, latency, counts per method and caller), a missing or invalid token gets 401,
a token without the `cloud-platform` scope 403, a disabled API or a missing permission 403
(access.py), a body that is not JSON 400, then the route's answer, in google.rpc.Status JSON when
it fails.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from parallel_engine.emulator.access import AccessPolicy
from parallel_engine.emulator.httpbase import JsonHandler, LoopbackServer, Reply
from parallel_engine.emulator.identity import CLOUD_PLATFORM, Caller, TokenRegistry
from parallel_engine.emulator.rpc import ApiError, rpc_error_body
from parallel_engine.emulator.traffic import FaultRule, Traffic, unauthenticated_message

log = logging.getLogger(__name__)
READ_ONLY = "https://www.googleapis.com/auth/cloud-platform.read-only"


@dataclass(frozen=True)
class Call:
    """One routed request, as a route's action sees it."""

    params: dict[str, str]  # the path's named groups, percent-decoded
    query: dict[str, list[str]]
    body: Any
    caller: Caller


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    operation: str  # Google's method name: what call counts say, and the permission checked (access.py)
    act: Callable[[Call], Any]
    resource: Callable[[Call], str]  # what a permission error names
    permission: str | None = None  # when it differs from `operation`; "" for none (anyone may call it)
    writes: bool = False  # needs `cloud-platform`, not only `cloud-platform.read-only`


class RestService:
    """One API (`service`: its name in access.py and in call counts) on its own loopback port."""

    def __init__(self, service: str, routes: list[Route], traffic: Traffic, tokens: TokenRegistry,
                 access: AccessPolicy) -> None:  # fmt: skip
        self.service = service
        self.routes = routes
        self.traffic = traffic
        self.tokens = tokens
        self.access = access
        self._server = LoopbackServer(_make_handler(self))

    @property
    def url(self) -> str:
        return self._server.url

    def start(self) -> RestService:
        self._server.start(f"emulator-{self.service}")
        return self

    def stop(self) -> None:
        self._server.stop()

    def outcome(self, route: Route, call: Call) -> Reply:
        """What Google answers a caller with valid credentials."""
        if not call.caller.scopes & ({CLOUD_PLATFORM} if route.writes else {CLOUD_PLATFORM, READ_ONLY}):
            return Reply.json(403, ApiError(403, "Request had insufficient authentication scopes.").body())
        permission = route.operation if route.permission is None else route.permission  # "": only "is it enabled?"
        refused = self.access.refusal(self.service, permission, call.caller, route.resource(call))
        if refused:
            return Reply.json(*refused)
        try:
            return Reply.json(200, route.act(call))
        except ApiError as error:
            return Reply.json(error.code, error.body())
        except Exception:  # a bug here must look like a Google 500, not a hung client
            log.exception("emulated %s failed on %s", self.service, route.operation)
            return Reply.json(500, ApiError(500, "Internal error encountered.").body())


def _fault_body(fault: FaultRule) -> dict[str, Any]:
    return rpc_error_body(fault.status, fault.message)


def _make_handler(service: RestService) -> type[JsonHandler]:
    class Handler(JsonHandler):
        def _dispatch(self) -> None:
            raw = self.read_body()
            path = self.path_only
            for route in service.routes:
                match = route.pattern.match(path)
                if match is None or route.method != self.command:
                    continue
                caller = self.caller(service.tokens)
                try:
                    body = json.loads(raw) if raw.strip() else {}
                except ValueError:
                    body = None
                params = {key: unquote(value) for key, value in match.groupdict().items()}
                call = Call(params, self.query, body, caller)
                self.answer_call(
                    service.traffic, caller, route.operation,
                    act=lambda: service.outcome(route, call) if call.body is not None else Reply.json(
                        400, ApiError(400, "Invalid JSON payload received.").body()),
                    unauthenticated=lambda: rpc_error_body(401, unauthenticated_message(service.service, caller)),
                    fault_body=_fault_body,
                )  # fmt: skip
                return
            known = any(route.pattern.match(path) for route in service.routes)
            missing = f"The requested URL {path} was not found on this server."
            error = ApiError(405, "Method not allowed") if known else ApiError(404, missing)
            self.send_json(error.code, error.body())

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

    return Handler
