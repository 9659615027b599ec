"""Compute Engine's two error shapes.

A request Google refuses outright answers with an HTTP error whose JSON body has
`error.errors[].reason` (`invalid`, `notFound`, `alreadyExists`, `quotaExceeded`, ...): `ApiError`.
A request Google accepted but could not carry out answers 200 with an operation that ends DONE with
`error.errors[].code` (`QUOTA_EXCEEDED`, `ZONE_RESOURCE_POOL_EXHAUSTED`, ...) and
`httpErrorStatusCode`: `OperationFailure`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from parallel_engine.emulator.traffic import google_error

_HTTP_TEXT = {400: "BAD REQUEST", 403: "FORBIDDEN", 404: "NOT FOUND", 409: "CONFLICT", 503: "SERVICE UNAVAILABLE"}


class ApiError(Exception):
    """A synchronous refusal: HTTP status, Google `reason`, message."""

    def __init__(self, status: int, reason: str, message: str, domain: str = "global", details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.domain = domain
        self.details = details or []

    def body(self) -> dict[str, Any]:
        body = google_error(self.status, self.reason, self.message, self.domain)
        if self.details:
            body["error"]["details"] = self.details
        return body


def invalid(field_name: str, value: Any, detail: str) -> ApiError:
    return ApiError(400, "invalid", f"Invalid value for field '{field_name}': '{value}'. {detail}")


def required(field_name: str) -> ApiError:
    return ApiError(400, "required", f"Required field '{field_name}' not specified")


def not_found(resource: str) -> ApiError:
    return ApiError(404, "notFound", f"The resource '{resource}' was not found")


def already_exists(resource: str) -> ApiError:
    return ApiError(409, "alreadyExists", f"The resource '{resource}' already exists")


def not_ready(resource: str, status: str) -> ApiError:
    return ApiError(400, "resourceNotReady", f"The resource '{resource}' is not ready (status {status})")


def quota_exceeded_sync(message: str) -> ApiError:
    return ApiError(403, "quotaExceeded", message, domain="usageLimits")


def rate_limit_exceeded(project_number: int, kind: str) -> ApiError:
    message = (
        f"Quota exceeded for quota metric '{kind} requests' and limit '{kind} requests per minute' of "
        f"service 'compute.googleapis.com' for consumer 'project_number:{project_number}'."
    )
    details = [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "RATE_LIMIT_EXCEEDED",
            "domain": "googleapis.com",
            "metadata": {"service": "compute.googleapis.com", "consumer": f"projects/{project_number}"},
        }
    ]
    return ApiError(403, "rateLimitExceeded", message, domain="usageLimits", details=details)


def insufficient_scopes() -> ApiError:
    details = [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
            "domain": "googleapis.com",
            "metadata": {"service": "compute.googleapis.com", "method": "compute.v1.InstancesService"},
        }
    ]
    error = ApiError(403, "insufficientPermissions", "Request had insufficient authentication scopes.", details=details)
    return error


@dataclass
class OperationFailure:
    """What an operation that failed after being accepted carries in `error` and `httpErrorStatusCode`."""

    code: str
    message: str
    http_status: int
    details: list[dict[str, Any]] = field(default_factory=list)

    def error(self) -> dict[str, Any]:
        item: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            item["errorDetails"] = self.details
        return {"errors": [item]}

    @property
    def http_text(self) -> str:
        return _HTTP_TEXT.get(self.http_status, "ERROR")


def quota_failure(metric: str, limit: float, region: str) -> OperationFailure:
    return OperationFailure(
        code="QUOTA_EXCEEDED",
        message=f"Quota '{metric}' exceeded.  Limit: {limit:.1f} in region {region}.",
        http_status=403,
        details=[
            {
                "quotaInfo": {
                    "metricName": f"compute.googleapis.com/{metric.lower()}",
                    "limitName": f"{metric.replace('_', '-')}-per-project-region",
                    "dimensions": {"region": region},
                    "limit": limit,
                }
            }
        ],
    )


def service_account_missing(email: str) -> OperationFailure:
    """An insert (or start) whose VM names a service account that does not exist (deleted)."""
    return OperationFailure(
        code="EXTERNAL_RESOURCE_NOT_FOUND",
        message=f"The resource '{email}' of type 'serviceAccount' was not found.",
        http_status=404,
    )


def zone_exhausted(project: str, zone: str, machine_type: str) -> OperationFailure:
    return OperationFailure(
        code="ZONE_RESOURCE_POOL_EXHAUSTED",
        message=(
            f"The zone 'projects/{project}/zones/{zone}' does not have enough resources available to "
            "fulfill the request.  Try a different zone, or try again later."
        ),
        http_status=503,
        details=[
            {
                "help": {
                    "links": [
                        {
                            "description": "Troubleshooting documentation",
                            "url": "https://cloud.google.com/compute/docs/resource-error",
                        }
                    ]
                }
            },
            {
                "errorInfo": {
                    "reason": "resource_availability",
                    "domain": "compute.googleapis.com",
                    "metadatas": {"zone": zone, "vmType": machine_type, "attachment": "", "zonesAvailable": ""},
                }
            },
        ],
    )
