"""A Python client for the emulator's control API (for tests, and for the orchestrator's tests).

It speaks plain HTTP to `/emulator/v1/...` on the Compute endpoint, so it works against an
emulator started in this process or by `parallel-engine emulator` in another.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

from parallel_engine.emulator.netutil import LOOPBACK


class ControlError(RuntimeError):
    """The control API refused a request."""


class ControlClient:
    def __init__(self, compute_endpoint: str, zone: str | None = None) -> None:
        if not compute_endpoint.startswith(f"http://{LOOPBACK}:"):
            raise ValueError(f"the emulator's endpoint must be on loopback, got {compute_endpoint}")
        self.base = compute_endpoint.rstrip("/") + "/emulator/v1"
        self.zone = zone

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """The control API's JSON answer (always an object)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                answer: dict[str, Any] = json.loads(response.read() or b"{}")
                return answer
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise ControlError(f"{method} {path}: {exc.code} {detail}") from None

    def _zone(self, zone: str | None) -> str:
        zone = zone or self.zone
        if not zone:
            raise ValueError("no zone given and no default zone")
        return zone

    # -- time -----------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        return self._call("GET", "/info")

    def clock(self) -> dict[str, float]:
        """{timeScale, insertSeconds, bootSeconds, stopSeconds, preemptionNoticeSeconds, ...}."""
        return _floats(self._call("GET", "/clock"))

    @property
    def time_scale(self) -> float:
        return float(self.clock()["timeScale"])

    def set_clock(self, time_scale: float | None = None, **durations: float) -> dict[str, float]:
        """Change the scale and/or Google-second durations (boot_seconds=..., preemption_notice_seconds=...)."""
        body: dict[str, Any] = {_camel(k): v for k, v in durations.items()}
        if time_scale is not None:
            body["timeScale"] = time_scale
        return _floats(self._call("PUT", "/clock", body))

    # -- faults ---------------------------------------------------------------------------
    def fail_next(
        self,
        count: int,
        status: int = 503,
        method: str = "*",
        path: str = "",
        service: str = "compute",
        reason: str | None = None,
        caller: str | None = None,
        after: bool = False,
    ) -> None:
        """Answer the next `count` calls matching `method` and the `path` regex (searched in path?query) with `status`.

        `caller` limits it to "orchestrator" or "vm" calls; `after` carries the call out first and
        then answers with the error, as when a response is lost on the way back.
        """
        body: dict[str, Any] = {"service": service, "status": status, "count": count, "method": method,
                                "path": path, "after": after}  # fmt: skip
        if reason:
            body["reason"] = reason
        if caller:
            body["caller"] = caller
        self._call("POST", "/faults", body)

    def fail_next_builds(self, count: int = 1, status: str = "INTERNAL_ERROR") -> None:
        """The next `count` Cloud Builds end with `status`: "INTERNAL_ERROR" (once started) or "EXPIRED" (never)."""
        self._call("POST", "/buildFaults", {"count": count, "status": status})

    def clear_faults(self, service: str | None = None) -> None:
        self._call("DELETE", "/faults" + (f"?service={service}" if service else ""))

    def pending_faults(self) -> dict[str, int]:
        return {service: int(count) for service, count in self._call("GET", "/faults")["pending"].items()}

    def set_latency(self, seconds: float, service: str = "compute", method: str = "*", path: str = "") -> None:
        """Every matching call waits `seconds` (real) before it is answered; 0 removes the rule."""
        self._call("PUT", "/latency", {"service": service, "seconds": seconds, "method": method, "path": path})

    def clear_latency(self, service: str | None = None) -> None:
        self._call("DELETE", "/latency" + (f"?service={service}" if service else ""))

    def exhaust(self, kind: str = "zone", seconds: float | None = None, count: int | None = None) -> None:
        """Refuse creations: kind "zone" (ZONE_RESOURCE_POOL_EXHAUSTED) or "quota" (QUOTA_EXCEEDED).

        For `seconds` (real), for `count` creations, or until `clear_exhaustion`.
        """
        self._call("POST", "/exhaustion", {"kind": kind, "seconds": seconds, "count": count})

    def clear_exhaustion(self, kind: str | None = None) -> None:
        self._call("DELETE", "/exhaustion" + (f"?kind={kind}" if kind else ""))

    def set_quota(self, metric: str, limit: float, region: str | None = None) -> None:
        self._call("PUT", "/quotas", {"metric": metric, "limit": limit, "region": region})

    def set_rate_limits(self, reads: int | None = None, mutations: int | None = None) -> None:
        self._call("PUT", "/rateLimits", {"reads": reads, "mutations": mutations})

    def preempt(self, name: str, zone: str | None = None) -> dict[str, Any]:
        """Preempt a Spot VM; returns the `compute.instances.preempted` operation."""
        return self._call("POST", f"/zones/{self._zone(zone)}/instances/{quote(name)}/preempt")

    # -- credentials and access -------------------------------------------------------------
    def expire_tokens(self, caller: str | None = None) -> int:
        """End every live access token now (of "orchestrator" or "vm" callers only, if told), as if
        its lifetime were over: the next call with one gets 401, a refresh gets a new one."""
        return int(self._call("POST", "/tokens:expire", {"caller": caller})["expired"])

    def revoke_credentials(self) -> int:
        """Revoke every refresh token and service-account key the emulator handed out (as `gcloud
        auth application-default revoke` or deleting a key does): their tokens stop working and a
        refresh fails with `invalid_grant`."""
        return int(self._call("POST", "/tokens:revoke", {})["revoked"])

    def deny(self, *permissions: str) -> None:
        """The orchestrator's account lacks these IAM permissions (e.g. compute.instances.create): 403."""
        self._call("PUT", "/access", {"deny": list(permissions)})

    def disable_api(self, *services: str) -> None:
        """These APIs ("compute", "storage", "cloudbuild") are not enabled in the project: 403 SERVICE_DISABLED."""
        self._call("PUT", "/access", {"disable": list(services)})

    def reset_access(self) -> None:
        self._call("DELETE", "/access")

    # -- the project's IAM, buckets and images (what a pre-flight check reads) -------------------
    def grant_role(self, role: str, member: str, bucket: str | None = None) -> list[dict[str, Any]]:
        """Bind `role` (roles/...) to `member` (user:EMAIL, serviceAccount:EMAIL) on the project, or on a
        bucket's own policy; the bindings after."""
        body = {"role": role, "member": member, "bucket": bucket}
        bindings: list[dict[str, Any]] = self._call("POST", "/iam:grant", body)["bindings"]
        return bindings

    def revoke_role(self, role: str, member: str, bucket: str | None = None) -> list[dict[str, Any]]:
        """Remove `member` from `role` on the project or a bucket (e.g. roles/editor from the VMs' service
        account: it loses every permission that role gave, the bucket's projectEditor grants too)."""
        body = {"role": role, "member": member, "bucket": bucket}
        bindings: list[dict[str, Any]] = self._call("POST", "/iam:revoke", body)["bindings"]
        return bindings

    def delete_service_account(self, email: str) -> None:
        """Delete a service account (the VMs' default one, say): IAM answers 404 for it, its bindings
        become `deleted:...`, and a VM that names it fails to be created (EXTERNAL_RESOURCE_NOT_FOUND)."""
        self._call("DELETE", f"/serviceAccounts/{quote(email)}")

    def set_bucket_location(self, location: str, bucket: str | None = None) -> None:
        """Where Storage says a bucket is (`US`, `EU`, `EUROPE-WEST1`, ...); default: the emulator's bucket."""
        self._call("PUT", f"/buckets/{quote(bucket or self._info_bucket())}/location", {"location": location})

    def delete_image(self, image: str) -> str:
        """Delete `REGISTRY/REPO:TAG` or `REGISTRY/REPO@DIGEST` from the emulator's registry; its digest."""
        return str(self._call("POST", "/images:delete", {"image": image})["digest"])

    def _info_bucket(self) -> str:
        return str(self.info()["bucket"])

    # -- observation ----------------------------------------------------------------------
    def calls(self) -> dict[str, Any]:
        """{"compute": counts, "storage": counts, "cloudbuild": ..., "oauth": ...}; counts = {total, byCaller,
        byVm, byMethod, injected, unauthenticated} (unauthenticated: calls answered 401, by method and caller)."""
        return self._call("GET", "/calls")

    def reset_calls(self) -> None:
        self._call("DELETE", "/calls")

    def vms(self) -> list[dict[str, Any]]:
        vms: list[dict[str, Any]] = self._call("GET", "/vms")["vms"]
        return vms

    def pids(self, name: str, zone: str | None = None) -> list[int]:
        pids = self._call("GET", f"/zones/{self._zone(zone)}/instances/{quote(name)}/pids")["pids"]
        return [int(pid) for pid in pids]

    def console(self, name: str, zone: str | None = None) -> str:
        return str(self._call("GET", f"/zones/{self._zone(zone)}/instances/{quote(name)}/console")["console"])


def _floats(answer: dict[str, Any]) -> dict[str, float]:
    return {key: float(value) for key, value in answer.items()}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)
