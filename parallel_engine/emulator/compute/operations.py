"""Zone operations: what every mutating Compute call returns, and what callers poll or wait on."""

from __future__ import annotations

import copy
import secrets
import threading
import time
from datetime import UTC, datetime
from typing import Any

from parallel_engine.emulator.compute.errors import OperationFailure, not_found


def rfc3339_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def new_id() -> str:
    """A uint64 id as Compute prints it (a decimal string)."""
    return str(secrets.randbits(63) | (1 << 62))


class Operations:
    """Every operation of one project, by zone; thread-safe, waiters woken when one ends."""

    def __init__(self, project: str, base_url: str) -> None:
        self.project = project
        self.base_url = base_url  # http://127.0.0.1:PORT/compute/v1
        self._cond = threading.Condition()
        self._ops: dict[tuple[str, str], dict[str, Any]] = {}

    def _zone_url(self, zone: str) -> str:
        return f"{self.base_url}/projects/{self.project}/zones/{zone}"

    def create(
        self, zone: str, operation_type: str, target_link: str, target_id: str | None, user: str, done: bool = False
    ) -> dict[str, Any]:
        now = rfc3339_now()
        suffix = f"{secrets.token_hex(7)[:13]}-{secrets.token_hex(4)}-{secrets.token_hex(4)}"
        name = f"operation-{int(time.time() * 1000)}-{suffix}"
        op: dict[str, Any] = {
            "kind": "compute#operation",
            "id": new_id(),
            "name": name,
            "zone": self._zone_url(zone),
            "operationType": operation_type,
            "targetLink": target_link,
            "status": "DONE" if done else "RUNNING",
            "user": user,
            "progress": 100 if done else 0,
            "insertTime": now,
            "startTime": now,
            "selfLink": f"{self._zone_url(zone)}/operations/{name}",
        }
        if target_id:
            op["targetId"] = target_id
        if done:
            op["endTime"] = now
        with self._cond:
            self._ops[(zone, name)] = op
            return copy.deepcopy(op)

    def finish(
        self, zone: str, name: str, failure: OperationFailure | None = None, extra: dict[str, Any] | None = None
    ) -> None:
        with self._cond:
            op = self._ops[(zone, name)]
            if op["status"] == "DONE":
                return
            op.update(extra or {})
            op["status"] = "DONE"
            op["progress"] = 100
            op["endTime"] = rfc3339_now()
            if failure is not None:
                op["error"] = failure.error()
                op["httpErrorStatusCode"] = failure.http_status
                op["httpErrorMessage"] = failure.http_text
            self._cond.notify_all()

    def get(self, zone: str, name: str) -> dict[str, Any]:
        with self._cond:
            op = self._ops.get((zone, name))
            if op is None:
                raise not_found(f"projects/{self.project}/zones/{zone}/operations/{name}")
            return copy.deepcopy(op)

    def wait(self, zone: str, name: str, timeout: float) -> dict[str, Any]:
        """The operation once DONE, or as it is after `timeout` real seconds (as Google's wait does)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                op = self._ops.get((zone, name))
                if op is None:
                    raise not_found(f"projects/{self.project}/zones/{zone}/operations/{name}")
                remaining = deadline - time.monotonic()
                if op["status"] == "DONE" or remaining <= 0:
                    return copy.deepcopy(op)
                self._cond.wait(remaining)

    def delete(self, zone: str, name: str) -> None:
        with self._cond:
            if self._ops.pop((zone, name), None) is None:
                raise not_found(f"projects/{self.project}/zones/{zone}/operations/{name}")

    def in_zone(self, zone: str) -> list[dict[str, Any]]:
        with self._cond:
            ops = [copy.deepcopy(op) for (z, _), op in self._ops.items() if z == zone]
        return sorted(ops, key=lambda op: (op["insertTime"], op["name"]))
