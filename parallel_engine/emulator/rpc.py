"""Errors in google.rpc.Status JSON, as the newer Google APIs answer them (Cloud Build, IAM,
Resource Manager, Service Usage) and google-api-core parses them: `{"error": {code, message,
status, details}}`."""

from __future__ import annotations

from typing import Any

_HTTP_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                405: "METHOD_NOT_ALLOWED", 409: "ALREADY_EXISTS", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
                503: "UNAVAILABLE"}  # fmt: skip


class ApiError(Exception):
    """An error answer in google.rpc.Status JSON (what google-api-core parses)."""

    def __init__(self, code: int, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or []

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "code": self.code,
            "message": self.message,
            "status": _HTTP_STATUS.get(self.code, "UNKNOWN"),
        }
        if self.details:
            error["details"] = self.details
        return {"error": error}


def rpc_error_body(status: int, message: str) -> dict[str, Any]:
    return ApiError(status, message).body()
