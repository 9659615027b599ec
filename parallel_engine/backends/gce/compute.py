"""The few Compute Engine verbs the gce backend needs, through the official client: every call
retried (clients.call_google), zone operations waited on by hand (the client's `.result()` polls
Google's host, never an endpoint of ours), a capacity refusal told apart from a failure."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from parallel_engine.backends.gce.clients import call_google, compute_client
from parallel_engine.backends.gce.credentials import google_project
from parallel_engine.backends.gce.vm import to_bulk, to_instance
from parallel_engine.config import Config
from parallel_engine.errors import BackendError
from parallel_engine.protocol import LABEL_RUN

CAPACITY_MARKERS = ("QUOTA_EXCEEDED", "Quota '", "ZONE_RESOURCE_POOL_EXHAUSTED", "does not have enough resources")


class CapacityRefused(BackendError):
    """Quota or zone capacity said no: wait for capacity (or try a fallback zone), not a failure."""


class Compute:
    """The few Compute verbs the backend needs; every call retried, zone operations waited on by hand."""

    def __init__(self, config: Config) -> None:
        self.project = google_project(config)
        self.instances = compute_client(config, "InstancesClient")
        self.operations = compute_client(config, "ZoneOperationsClient")

    def _wait(self, zone: str, operation: Any, timeout: float = 600) -> None:
        from google.cloud import compute_v1

        deadline = time.monotonic() + timeout
        while operation.status != compute_v1.Operation.Status.DONE:
            if time.monotonic() > deadline:
                raise BackendError(f"Compute operation {operation.name} not done after {timeout:g} s")
            operation = call_google(self.operations.wait, project=self.project, zone=zone, operation=operation.name)
        errors = list(operation.error.errors) if operation.error else []
        if errors:
            message = "; ".join(f"{e.code}: {e.message}" for e in errors)
            if any(marker in message for marker in CAPACITY_MARKERS):
                raise CapacityRefused(message)
            raise BackendError(f"Compute refused the request: {message}")

    def _mutate(self, zone: str, func: Callable[..., Any], request: Any) -> None:
        try:
            operation = call_google(func, request=request)
        except BackendError as exc:
            if any(marker in str(exc) for marker in CAPACITY_MARKERS):
                raise CapacityRefused(str(exc)) from exc
            raise
        self._wait(zone, operation)

    def insert(self, zone: str, body: dict[str, Any]) -> None:
        """Create one VM. One `requestId` per logical call, the same on every retry: a retry of a
        create whose answer was lost gets the first operation back instead of a second VM (or a 409).
        A 409 anyway (the id forgotten) is success when the VM is this run's: it is the one we asked for."""
        from google.api_core.exceptions import Conflict
        from google.cloud import compute_v1

        request = compute_v1.InsertInstanceRequest(
            project=self.project, zone=zone, instance_resource=to_instance(body), request_id=str(uuid.uuid4())
        )
        try:
            self._mutate(zone, self.instances.insert, request)
        except BackendError as exc:
            if not isinstance(exc.__cause__, Conflict) or not self._is_ours(zone, body):
                raise

    def _is_ours(self, zone: str, body: dict[str, Any]) -> bool:
        from google.api_core.exceptions import NotFound

        try:
            vm = call_google(self.instances.get, project=self.project, zone=zone, instance=body["name"])
        except BackendError as exc:
            if isinstance(exc.__cause__, NotFound):
                return False
            raise
        return bool(vm.labels.get(LABEL_RUN) == body["labels"][LABEL_RUN])  # never empty: the run id

    def bulk_insert(self, zone: str, body: dict[str, Any]) -> None:
        """Create identical VMs in one call; its `requestId` makes a retried call one batch, not two."""
        from google.cloud import compute_v1

        request = compute_v1.BulkInsertInstanceRequest(
            project=self.project, zone=zone, bulk_insert_instance_resource_resource=to_bulk(body),
            request_id=str(uuid.uuid4()),
        )
        self._mutate(zone, self.instances.bulk_insert, request)

    def delete(self, zone: str, name: str, wait: bool = True) -> None:
        """Delete a VM (already gone is fine). `wait=False` returns once Google accepted it: the
        monitor sees the VM go on a later poll instead of blocking on it now."""
        from google.api_core.exceptions import NotFound
        from google.cloud import compute_v1

        request = compute_v1.DeleteInstanceRequest(
            project=self.project, zone=zone, instance=name, request_id=str(uuid.uuid4())
        )
        try:
            if wait:
                self._mutate(zone, self.instances.delete, request)
            else:
                call_google(self.instances.delete, request=request)
        except BackendError as exc:
            if not isinstance(exc.__cause__, NotFound) and "not found" not in str(exc).lower():
                raise

    def list_run(self, zone: str, run_id: str) -> dict[str, str]:
        """{name: status} of the run's VMs in `zone`: one list call (paged by the client)."""
        from google.cloud import compute_v1

        request = compute_v1.ListInstancesRequest(
            project=self.project, zone=zone, filter=f'labels.{LABEL_RUN} = "{run_id}"'
        )
        return {vm.name: vm.status for vm in call_google(self.instances.list, request=request)}

    def list_run_everywhere(self, run_id: str) -> list[tuple[str, str]]:
        """(zone, name) of the run's VMs in every zone of the project: one aggregatedList (paged by
        the client), so `down` finds VMs in zones this machine's config does not name."""
        from google.cloud import compute_v1

        request = compute_v1.AggregatedListInstancesRequest(
            project=self.project, filter=f'labels.{LABEL_RUN} = "{run_id}"'
        )
        found = []
        for scope, listed in call_google(self.instances.aggregated_list, request=request):
            zone = scope.rsplit("/", 1)[-1]
            found += [(zone, vm.name) for vm in listed.instances]
        return found

    def list_labelled(self) -> list[tuple[str, str, str, str, str]]:
        """(zone, name, run id, status, creationTimestamp) of every VM of any run in the project
        (labelled parallel-engine-run), in every zone: one aggregatedList, for `reap`."""
        from google.cloud import compute_v1

        request = compute_v1.AggregatedListInstancesRequest(project=self.project, filter=f"labels.{LABEL_RUN}:*")
        found = []
        for scope, listed in call_google(self.instances.aggregated_list, request=request):
            zone = scope.rsplit("/", 1)[-1]
            found += [(zone, vm.name, vm.labels.get(LABEL_RUN, ""), vm.status, vm.creation_timestamp)
                      for vm in listed.instances]
        return found

    def preempted(self, zone: str) -> set[str]:
        """Names of VMs in `zone` that Google recorded as preempted."""
        from google.cloud import compute_v1

        request = compute_v1.ListZoneOperationsRequest(
            project=self.project, zone=zone, filter='operationType="compute.instances.preempted"'
        )
        return {op.target_link.rsplit("/", 1)[-1] for op in call_google(self.operations.list, request=request)}


def delete_run_vms(compute: Compute, run_id: str, timeout: float = 600) -> int:
    """Delete every VM labelled with the run, in any zone, concurrently, then check none is left.
    Returns how many."""
    deleted = 0
    deadline = time.monotonic() + timeout
    while True:
        found = compute.list_run_everywhere(run_id)
        if not found:
            return deleted
        if time.monotonic() > deadline:
            left = ", ".join(name for _, name in found)
            raise BackendError(f"VMs of run {run_id} still exist after {timeout:g} s: {left}",
                               hint=f"run `parallel-engine down {run_id}` again, or delete them in the console")
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(lambda item: compute.delete(*item), found))
        deleted += len(found)
