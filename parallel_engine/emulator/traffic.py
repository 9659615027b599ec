"""Server-side call counts, injected failures and added latency for one emulated service.

The same object sits in front of Compute and of Storage, so a test can say "fail the next 3 inserts
with 429" or "every Storage call takes 200 ms" and later read how many calls the orchestrator and
the VMs made, without the orchestrator being able to tell it is not talking to Google.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from parallel_engine.emulator.identity import MISSING, Caller

_STATUS_TEXT = {401: "UNAUTHENTICATED", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 502: "UNAVAILABLE",
                503: "UNAVAILABLE"}  # fmt: skip
_DEFAULT_REASON = {429: "rateLimitExceeded", 500: "backendError", 502: "backendError", 503: "backendError"}
_DEFAULT_MESSAGE = {429: "Rate Limit Exceeded", 500: "Internal Error", 502: "Bad Gateway", 503: "Backend Error"}


def google_error(status: int, reason: str, message: str, domain: str = "global") -> dict[str, Any]:
    """The JSON error body Google's JSON APIs return (what google-api-core parses)."""
    body: dict[str, Any] = {
        "error": {
            "code": status,
            "message": message,
            "errors": [{"message": message, "domain": domain, "reason": reason}],
        }
    }
    if status in _STATUS_TEXT:
        body["error"]["status"] = _STATUS_TEXT[status]
    return body


_SEE = "See https://developers.google.com/identity/sign-in/web/devconsole-project."
#: What Google's front end answers with a 401, per service and problem (MISSING / INVALID).
AUTH_MESSAGES = {
    ("compute", True): "Request is missing required authentication credential. Expected OAuth 2 access token, "
    f"login cookie or other valid authentication credential. {_SEE}",
    ("compute", False): "Request had invalid authentication credentials. Expected OAuth 2 access token, "
    f"login cookie or other valid authentication credential. {_SEE}",
    ("storage", True): "Anonymous caller does not have {permission} access to the Google Cloud Storage object. "
    "Permission '{permission}' denied on resource (or it may not exist).",
    ("storage", False): "Invalid Credentials",
}
#: The header Google sends with every 401.
AUTHENTICATE_HEADER = {"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'}


def unauthenticated_message(service: str, caller: Caller, permission: str = "") -> str:
    """What Google's front end says with a 401 for a token missing (`caller.problem` MISSING) or invalid/expired.

    Storage has its own words; every other service (Compute, Cloud Build) the front end's generic ones.
    """
    missing = caller.problem == MISSING
    return AUTH_MESSAGES[(service if service == "storage" else "compute", missing)].format(permission=permission)


def unauthenticated_error(service: str, caller: Caller, permission: str) -> dict[str, Any]:
    """Google's 401 body (JSON API shape, with `errors`) for a call whose token is missing or invalid/expired."""
    missing = caller.problem == MISSING
    message = unauthenticated_message(service, caller, permission)
    body = google_error(401, "required" if missing else "authError", message)
    body["error"]["errors"][0].update({"locationType": "header", "location": "Authorization"})
    return body


@dataclass
class FaultRule:
    """Fail the next `remaining` calls whose method and target match."""

    method: str
    path: re.Pattern[str]
    status: int
    remaining: int
    reason: str
    message: str
    caller: str | None = None  # "orchestrator", "vm", or None for anyone
    after: bool = False  # carry the call out, then answer with the error (a lost response)

    def matches(self, method: str, target: str, caller: Caller) -> bool:
        return (
            self.remaining > 0
            and self.method in ("*", method)
            and (self.caller is None or self.caller == caller.kind)
            and self.path.search(target) is not None
        )

    def body(self) -> dict[str, Any]:
        domain = "usageLimits" if self.status == 429 else "global"
        return google_error(self.status, self.reason, self.message, domain)


@dataclass
class LatencyRule:
    method: str
    path: re.Pattern[str]
    seconds: float


@dataclass
class _Counts:
    by_caller: Counter[str] = field(default_factory=Counter)
    by_vm: Counter[str] = field(default_factory=Counter)
    by_method: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    injected: Counter[str] = field(default_factory=Counter)
    unauthenticated: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))


class Traffic:
    """Counts, faults and latency of one service; thread-safe."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._lock = threading.Lock()
        self._faults: list[FaultRule] = []
        self._latency: list[LatencyRule] = []
        self._counts = _Counts()

    # -- configuration --------------------------------------------------------------------
    def add_fault(
        self,
        status: int,
        count: int = 1,
        method: str = "*",
        path: str = "",
        reason: str | None = None,
        message: str | None = None,
        caller: str | None = None,
        after: bool = False,
    ) -> None:
        """Fail the next `count` matching calls; with `after`, only once the call was carried out."""
        rule = FaultRule(
            method=method.upper(),
            path=re.compile(path),
            status=status,
            remaining=count,
            reason=reason or _DEFAULT_REASON.get(status, "backendError"),
            message=message or _DEFAULT_MESSAGE.get(status, "Injected failure"),
            caller=caller,
            after=after,
        )
        with self._lock:
            self._faults.append(rule)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def pending_faults(self) -> int:
        with self._lock:
            return sum(rule.remaining for rule in self._faults)

    def set_latency(self, seconds: float, method: str = "*", path: str = "") -> None:
        """Add `seconds` to every matching call; 0 removes the rule for that method and path."""
        with self._lock:
            self._latency = [r for r in self._latency if (r.method, r.path.pattern) != (method.upper(), path)]
            if seconds > 0:
                self._latency.append(LatencyRule(method.upper(), re.compile(path), seconds))

    def clear_latency(self) -> None:
        with self._lock:
            self._latency.clear()

    # -- per call -------------------------------------------------------------------------
    def admit(self, method: str, target: str, caller: Caller, operation: str) -> FaultRule | None:
        """Count the call, wait the configured latency, and return the fault to answer with, if any."""
        delay = 0.0
        fault: FaultRule | None = None
        with self._lock:
            counts = self._counts
            counts.by_caller[caller.kind] += 1
            if caller.vm is not None:
                counts.by_vm[caller.vm] += 1
            counts.by_method[operation][caller.kind] += 1
            for slow in self._latency:
                if slow.method in ("*", method) and slow.path.search(target):
                    delay = max(delay, slow.seconds)
            for rule in self._faults:
                if rule.matches(method, target, caller):
                    rule.remaining -= 1
                    fault = rule
                    counts.injected[operation] += 1
                    break
            self._faults = [rule for rule in self._faults if rule.remaining > 0]
        if delay:
            time.sleep(delay)
        return fault

    def refused(self, operation: str, caller: Caller) -> None:
        """Count a call answered 401 (its token missing, expired, revoked or unknown)."""
        with self._lock:
            self._counts.unauthenticated[operation][caller.kind] += 1

    def counts(self) -> dict[str, Any]:
        with self._lock:
            c = self._counts
            return {
                "total": sum(c.by_caller.values()),
                "byCaller": dict(c.by_caller),
                "byVm": dict(c.by_vm),
                "byMethod": {name: dict(per) for name, per in sorted(c.by_method.items())},
                "injected": dict(c.injected),
                "unauthenticated": {name: dict(per) for name, per in sorted(c.unauthenticated.items())},
            }

    def reset_counts(self) -> None:
        with self._lock:
            self._counts = _Counts()
