"""The emulator's control API (`/emulator/v1/...` on the Compute endpoint): what no Google API offers.

Tests and the orchestrator's own test suite use it to read the time scale, preempt a VM, fail or
slow the next calls, end the next builds EXPIRED or INTERNAL_ERROR, exhaust a zone or the quota,
change quota limits, read call counts, expire or revoke credentials early, deny permissions or
disable APIs, grant or revoke IAM roles, delete service accounts, move a bucket to another
location and delete an image from the registry.
Its calls are neither counted nor faulted.
"""

from __future__ import annotations

import re
from urllib.parse import unquote
from collections.abc import Callable
from typing import Any

from parallel_engine.emulator.access import AccessPolicy
from parallel_engine.emulator.clock import Clock
from parallel_engine.emulator.compute.engine import ComputeEngine
from parallel_engine.emulator.compute.errors import ApiError
from parallel_engine.emulator.compute.exhaustion import ControlError
from parallel_engine.emulator.compute.ratelimit import RateLimiter
from parallel_engine.emulator.identity import TokenRegistry
from parallel_engine.emulator.storage_buckets import Buckets
from parallel_engine.emulator.traffic import Traffic

_BUCKET_LOCATION = re.compile(r"^/emulator/v1/buckets/([^/]+)/location$")
_VM_PATH = re.compile(r"^/emulator/v1/zones/(?P<zone>[^/]+)/instances/(?P<name>[^/]+)/(?P<verb>preempt|pids|console)$")
Reply = tuple[int, Any]


class ControlApi:
    def __init__(
        self,
        engine: ComputeEngine,
        clock: Clock,
        traffic: dict[str, Traffic],
        limiter: RateLimiter,
        info: Callable[[], dict[str, Any]],
        fail_builds: Callable[[int, str], None],
        tokens: TokenRegistry,
        access: AccessPolicy,
        buckets: Buckets,
        delete_image: Callable[[str], str],
    ) -> None:
        self.engine = engine
        self.buckets = buckets
        self.delete_image = delete_image
        self.tokens = tokens
        self.access = access
        self.fail_builds = fail_builds
        self.clock = clock
        self.traffic = traffic
        self.limiter = limiter
        self.info = info

    def __call__(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> Reply:
        try:
            return self._dispatch(method, path, query, body or {})
        except (ControlError, ValueError, KeyError) as exc:
            return 400, {"error": str(exc)}

    def _services(self, body: dict[str, Any], query: dict[str, list[str]]) -> list[Traffic]:
        service = body.get("service") or _first(query, "service")
        if service is None:
            return list(self.traffic.values())
        if service not in self.traffic:
            raise ValueError(f"unknown service {service!r}: one of {sorted(self.traffic)}")
        return [self.traffic[service]]

    def _dispatch(self, method: str, path: str, query: dict[str, list[str]], body: dict[str, Any]) -> Reply:
        route = (method, path.rstrip("/"))
        if route == ("GET", "/emulator/v1/info"):
            return 200, {**self.info(), "clock": self.clock.describe(), "exhaustion": self.engine.exhaustion.describe(),
                         "rateLimits": dict(self.limiter.limits)}  # fmt: skip
        if route in (("GET", "/emulator/v1/clock"), ("PUT", "/emulator/v1/clock")):
            if method == "PUT":
                durations = {_snake(k): float(v) for k, v in body.items() if k != "timeScale"}
                scale = body.get("timeScale")
                self.clock.configure(float(scale) if scale is not None else None, **durations)
            return 200, self.clock.describe()
        if route == ("POST", "/emulator/v1/faults"):
            for traffic in self._services(body, query):
                traffic.add_fault(
                    status=int(body["status"]),
                    count=int(body.get("count", 1)),
                    method=body.get("method", "*"),
                    path=body.get("path", ""),
                    reason=body.get("reason"),
                    message=body.get("message"),
                    caller=body.get("caller"),
                    after=bool(body.get("after", False)),
                )
            return 200, {"pending": {t.service: t.pending_faults() for t in self.traffic.values()}}
        if route == ("GET", "/emulator/v1/faults"):
            return 200, {"pending": {t.service: t.pending_faults() for t in self.traffic.values()}}
        if route == ("DELETE", "/emulator/v1/faults"):
            for traffic in self._services(body, query):
                traffic.clear_faults()
            return 200, {}
        if route == ("POST", "/emulator/v1/buildFaults"):
            self.fail_builds(int(body.get("count", 1)), str(body["status"]))
            return 200, {}
        if route == ("PUT", "/emulator/v1/latency"):
            for traffic in self._services(body, query):
                traffic.set_latency(float(body["seconds"]), body.get("method", "*"), body.get("path", ""))
            return 200, {}
        if route == ("DELETE", "/emulator/v1/latency"):
            for traffic in self._services(body, query):
                traffic.clear_latency()
            return 200, {}
        if route == ("POST", "/emulator/v1/exhaustion"):
            seconds = body.get("seconds")
            count = body.get("count")
            self.engine.exhaustion.set(
                body["kind"], float(seconds) if seconds is not None else None, int(count) if count is not None else None
            )
            return 200, self.engine.exhaustion.describe()
        if route == ("DELETE", "/emulator/v1/exhaustion"):
            self.engine.exhaustion.clear(body.get("kind") or _first(query, "kind"))
            return 200, self.engine.exhaustion.describe()
        if route == ("POST", "/emulator/v1/tokens:expire"):
            return 200, {"expired": self.tokens.expire(body.get("caller"))}
        if route == ("POST", "/emulator/v1/tokens:revoke"):
            return 200, {"revoked": self.tokens.revoke()}
        if route == ("PUT", "/emulator/v1/access"):
            self.access.deny(list(body.get("deny") or []))
            self.access.disable(list(body.get("disable") or []))
            return 200, self.access.describe()
        if route == ("DELETE", "/emulator/v1/access"):
            self.access.reset()
            return 200, self.access.describe()
        if route in (("POST", "/emulator/v1/iam:grant"), ("POST", "/emulator/v1/iam:revoke")):
            if self.access.iam is None:
                raise ControlError("IAM is not emulated here")
            change = self.access.iam.grant if path.endswith(":grant") else self.access.iam.revoke
            change(str(body["role"]), str(body["member"]), body.get("bucket"))
            return 200, {"bindings": self.access.iam.policy(body.get("bucket"))}
        if method == "DELETE" and path.startswith("/emulator/v1/serviceAccounts/") and self.access.iam is not None:
            self.access.iam.delete_account(unquote(path.rsplit("/", 1)[1]))
            return 200, {}
        if method == "PUT" and (bucket := _BUCKET_LOCATION.match(path)):
            self.buckets.set_location(unquote(bucket.group(1)), str(body["location"]))
            return 200, {}
        if route == ("POST", "/emulator/v1/images:delete"):
            return 200, {"digest": self.delete_image(str(body["image"]))}
        if route == ("PUT", "/emulator/v1/quotas"):
            self.engine.quotas.set_limit(str(body["metric"]), float(body["limit"]), body.get("region"))
            return 200, {}
        if route == ("PUT", "/emulator/v1/rateLimits"):
            self.limiter.set_limits(body.get("reads"), body.get("mutations"))
            return 200, dict(self.limiter.limits)
        if route == ("GET", "/emulator/v1/calls"):
            return 200, {name: t.counts() for name, t in self.traffic.items()}
        if route == ("DELETE", "/emulator/v1/calls"):
            for traffic in self.traffic.values():
                traffic.reset_counts()
            return 200, {}
        if route == ("GET", "/emulator/v1/vms"):
            vms = []
            for zone, name in self.engine.vm_names():
                machine = self.engine.machine(zone, name)
                vms.append(
                    {
                        "zone": zone,
                        "name": name,
                        "status": self.engine.get(self.engine.project, zone, name)["status"],
                        "metadataHost": machine.metadata_host if machine and machine.port else None,
                        "dockerHost": f"unix://{machine.docker_socket}" if machine and machine.docker_socket else None,
                        "pids": machine.pids() if machine else [],
                    }
                )
            return 200, {"vms": vms}
        match = _VM_PATH.match(path)
        if match:
            zone, name, verb = match.group("zone", "name", "verb")
            if verb == "preempt" and method == "POST":
                return 200, self.engine.preempt(zone, name)
            try:
                machine = self.engine.machine(zone, name)
            except ApiError as exc:
                return 404, {"error": exc.message}
            if verb == "pids" and method == "GET":
                return 200, {"pids": machine.pids() if machine else []}
            if verb == "console" and method == "GET":
                text = machine.console.read_text(errors="replace") if machine else ""
                return 200, {"console": text}
        return 404, {"error": f"no control route {method} {path}"}


def _first(query: dict[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    return values[0] if values else None


def _snake(name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)
