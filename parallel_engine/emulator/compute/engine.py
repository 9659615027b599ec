"""The emulated Compute Engine: instances with real lifecycles, their operations, quotas and faults.

Every mutating call validates synchronously (Google's 400/404/409 refusals), then returns a zone
operation and lets emulated time move the instance along PROVISIONING → STAGING → RUNNING (the
guest boots and runs its startup script) → STOPPING → TERMINATED or gone. Preemption, maxRunDuration
and exhausted capacity follow the same timelines, scaled by the clock.
"""

from __future__ import annotations

import copy
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from parallel_engine.emulator.clock import Clock
from parallel_engine.emulator.compute import catalog, filters
from parallel_engine.emulator.compute.errors import (
    ApiError,
    OperationFailure,
    already_exists,
    invalid,
    not_found,
    not_ready,
    quota_exceeded_sync,
    quota_failure,
    service_account_missing,
    zone_exhausted,
)
from parallel_engine.emulator.compute.exhaustion import ControlError, Exhaustion
from parallel_engine.emulator.compute.operations import Operations, new_id, rfc3339_now
from parallel_engine.emulator.compute.quotas import QuotaLedger, demand, stopped_part
from parallel_engine.emulator.compute.resources import (
    Links,
    instance_resource,
    machine_type_resource,
    region_resource,
    zone_resource,
)
from parallel_engine.emulator.compute.validation import InstanceSpec, bulk_names, check_instance
from parallel_engine.emulator.guest.hypervisor import Hypervisor
from parallel_engine.emulator.guest.machine import Machine
from parallel_engine.emulator.guest.metadata import GuestInfo
from parallel_engine.emulator.iam import compute_account
from parallel_engine.emulator.identity import TokenRegistry
from parallel_engine.emulator.timers import Timers

SYSTEM_USER = "system"
SERIAL_PORT_MAX = 1024 * 1024


@dataclass
class Vm:
    spec: InstanceSpec
    zone: str
    resource: dict[str, Any]
    need: dict[str, float]
    held: dict[str, float]
    info: GuestInfo
    machine: Machine | None = None
    epoch: int = 0
    deleting: bool = False
    removed: bool = False
    pending_ops: list[str] = field(default_factory=list)
    power: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def status(self) -> str:
        return str(self.resource["status"])

    @property
    def region(self) -> str:
        return catalog.region_of(self.zone)

    def set_status(self, status: str) -> None:
        self.resource["status"] = status
        if status == "RUNNING":
            self.resource["lastStartTimestamp"] = rfc3339_now()
        if status == "TERMINATED":
            self.resource["lastStopTimestamp"] = rfc3339_now()


class ComputeEngine:
    def __init__(
        self,
        project: str,
        project_number: int,
        base_url: str,
        clock: Clock,
        timers: Timers,
        quotas: QuotaLedger,
        hypervisor: Hypervisor,
        tokens: TokenRegistry,
        zones: list[str],
        rng: random.Random | None = None,
    ) -> None:
        self.project = project
        self.project_number = project_number
        self.links = Links(base_url, project)
        self.clock = clock
        self.timers = timers
        self.quotas = quotas
        self.hypervisor = hypervisor
        self.tokens = tokens
        self._zones = tuple(zones)  # in the order zones.list answers
        self._zone_set = frozenset(zones)  # checked on every zonal call
        self._zones_by_region: dict[str, list[str]] = {}
        for zone in zones:
            self._zones_by_region.setdefault(catalog.region_of(zone), []).append(zone)
        self.operations = Operations(project, base_url)
        self.exhaustion = Exhaustion()
        self._lock = threading.RLock()
        self._vms: dict[tuple[str, str], Vm] = {}
        self._serial = 0
        self.random = rng or random.Random()  # how late each maxRunDuration acts (seed it to replay a run)
        #: whether a service account exists (the project's IAM tells; deleted ones do not)
        self.account_exists: Callable[[str], bool] = lambda email: True

    # -- scope checks ---------------------------------------------------------------------
    def check_project(self, project: str) -> None:
        if project != self.project:
            raise not_found(f"projects/{project}")

    def check_zone(self, project: str, zone: str) -> None:
        """400 invalid "Unknown zone." for a zone Google does not have, as Google answers zonal calls."""
        self.check_project(project)
        if zone not in self._zone_set:
            raise invalid("zone", zone, "Unknown zone.")

    def _path(self, zone: str, name: str) -> str:
        return f"projects/{self.project}/zones/{zone}/instances/{name}"

    def _vm(self, zone: str, name: str) -> Vm:
        vm = self._vms.get((zone, name))
        if vm is None or vm.removed:
            raise not_found(self._path(zone, name))
        return vm

    def default_email(self) -> str:
        return compute_account(self.project_number)

    def _email(self, spec: InstanceSpec) -> str | None:
        """The service account a VM of `spec` runs as."""
        if spec.service_account is None:
            return None
        return self.default_email() if spec.service_account == "default" else spec.service_account

    def _demand(self, zone: str, spec: InstanceSpec) -> dict[str, float]:
        """What a VM of `spec` takes from its region's quotas. A Spot VM's vCPUs count against
        PREEMPTIBLE_CPUS where the region grants that quota, else against CPUS, as on Google."""
        need = demand(spec)
        if spec.is_spot and self.quotas.limit(catalog.region_of(zone), "PREEMPTIBLE_CPUS") > 0:
            need["PREEMPTIBLE_CPUS"] = need.pop("CPUS")
        return need

    # -- reads ----------------------------------------------------------------------------
    def get(self, project: str, zone: str, name: str) -> dict[str, Any]:
        self.check_zone(project, zone)
        with self._lock:
            return copy.deepcopy(self._vm(zone, name).resource)

    def list_instances(
        self, project: str, zone: str, filter_text: str | None, max_results: str | None, token: str | None
    ) -> dict[str, Any]:
        self.check_zone(project, zone)
        match = filters.parse(filter_text)
        with self._lock:
            items = [copy.deepcopy(vm.resource) for (z, _), vm in self._vms.items() if z == zone and not vm.removed]
        items = sorted((r for r in items if match(r)), key=lambda r: r["name"])
        chunk, next_token = filters.page(items, max_results, token)
        body: dict[str, Any] = {"kind": "compute#instanceList", "id": f"projects/{project}/zones/{zone}/instances",
                                "items": chunk, "selfLink": f"{self.links.zone(zone)}/instances"}  # fmt: skip
        if next_token:
            body["nextPageToken"] = next_token
        return body

    def aggregated_list(
        self, project: str, filter_text: str | None, max_results: str | None, token: str | None
    ) -> dict[str, Any]:
        self.check_project(project)
        match = filters.parse(filter_text)
        with self._lock:
            pairs = [(z, copy.deepcopy(vm.resource)) for (z, _), vm in self._vms.items() if not vm.removed]
        pairs = sorted(((z, r) for z, r in pairs if match(r)), key=lambda p: (p[0], p[1]["name"]))
        flat = [{"zone": z, "resource": r} for z, r in pairs]
        chunk, next_token = filters.page(flat, max_results, token)
        items: dict[str, Any] = {}
        for entry in chunk:
            items.setdefault(f"zones/{entry['zone']}", {"instances": []})["instances"].append(entry["resource"])
        body: dict[str, Any] = {
            "kind": "compute#instanceAggregatedList",
            "id": f"projects/{project}/aggregated/instances",
            "items": items,
            "selfLink": f"{self.links.project_url}/aggregated/instances",
        }
        if next_token:
            body["nextPageToken"] = next_token
        return body

    def serial_port_output(self, project: str, zone: str, name: str, start: str | None) -> dict[str, Any]:
        self.check_zone(project, zone)
        with self._lock:
            vm = self._vm(zone, name)
            machine = vm.machine
        data = machine.console.read_bytes() if machine is not None and machine.console.exists() else b""
        offset = int(start or 0)
        if offset < 0:
            offset = max(0, len(data) + offset)
        offset = max(offset, len(data) - SERIAL_PORT_MAX)
        chunk = data[offset:]
        return {
            "kind": "compute#serialPortOutput",
            "contents": chunk.decode(errors="replace"),
            "start": str(offset),
            "next": str(offset + len(chunk)),
            "selfLink": f"{self.links.instance(zone, name)}/serialPort",
        }

    def machine(self, zone: str, name: str) -> Machine | None:
        """The guest of a VM (the control API and tests read its PIDs and console)."""
        with self._lock:
            return self._vm(zone, name).machine

    def machine_type(self, project: str, zone: str, name: str) -> dict[str, Any]:
        self.check_zone(project, zone)
        found = catalog.machine_type(name)
        if found is None:
            raise not_found(f"projects/{project}/zones/{zone}/machineTypes/{name}")
        return machine_type_resource(found, zone, self.links)

    def machine_types(
        self, project: str, zone: str, filter_text: str | None, max_results: str | None, token: str | None
    ) -> dict[str, Any]:
        self.check_zone(project, zone)
        match = filters.parse(filter_text)
        items = [machine_type_resource(mt, zone, self.links) for mt in catalog.MACHINE_TYPES.values()]
        items = sorted((r for r in items if match(r)), key=lambda r: r["name"])
        chunk, next_token = filters.page(items, max_results, token)
        body: dict[str, Any] = {"kind": "compute#machineTypeList", "items": chunk}
        if next_token:
            body["nextPageToken"] = next_token
        return body

    def region(self, project: str, region: str) -> dict[str, Any]:
        self.check_project(project)
        zones = self._zones_by_region.get(region)
        if zones is None:
            raise not_found(f"projects/{project}/regions/{region}")
        return region_resource(region, self.quotas.report(region), self.links, zones)

    def zone(self, project: str, zone: str) -> dict[str, Any]:
        self.check_project(project)
        if zone not in self._zone_set:
            raise not_found(f"projects/{project}/zones/{zone}")
        return zone_resource(zone, self.links)

    def zones(self, project: str) -> dict[str, Any]:
        self.check_project(project)
        return {"kind": "compute#zoneList", "items": [zone_resource(z, self.links) for z in self._zones]}

    # -- creation -------------------------------------------------------------------------
    def _admission(self, zone: str, spec: InstanceSpec, need: dict[str, float]) -> OperationFailure | None:
        """Why a creation fails after being accepted (its service account, capacity, quota), reserving
        quota when it does not."""
        email = self._email(spec)
        if email is not None and not self.account_exists(email):
            return service_account_missing(email)
        if self.exhaustion.take("zone"):
            return zone_exhausted(self.project, zone, spec.machine_type.name)
        region = catalog.region_of(zone)
        if self.exhaustion.take("quota"):
            return quota_failure("CPUS", self.quotas.limit(region, "CPUS"), region)
        return self.quotas.reserve(region, need)

    def _new_vm(self, zone: str, spec: InstanceSpec, body: dict[str, Any], need: dict[str, float]) -> Vm:
        instance_id = new_id()
        email = self._email(spec)
        self._serial += 1
        resource = instance_resource(body, spec, zone, instance_id, self.links, self._serial, email)
        info = GuestInfo(
            name=spec.name,
            instance_id=instance_id,
            zone=zone,
            project=self.project,
            project_number=self.project_number,
            machine_type=spec.machine_type.name,
            attributes=dict(spec.metadata),
            email=email,
            scopes=spec.scopes,
            tokens=self.tokens,
            internal_ip=resource["networkInterfaces"][0]["networkIP"]
            if resource["networkInterfaces"]
            else "10.128.0.2",
        )
        vm = Vm(spec=spec, zone=zone, resource=resource, need=need, held=dict(need), info=info)
        self._vms[(zone, spec.name)] = vm
        return vm

    def insert(self, project: str, zone: str, body: dict[str, Any], user: str) -> dict[str, Any]:
        self.check_zone(project, zone)
        spec = check_instance(body, zone)
        need = self._demand(zone, spec)
        with self._lock:
            if (zone, spec.name) in self._vms:
                raise already_exists(self._path(zone, spec.name))
            failure = self._admission(zone, spec, need)
            link = self.links.instance(zone, spec.name)
            if failure is not None:
                op = self.operations.create(zone, "insert", link, new_id(), user)
                self.timers.after(
                    self.clock.real(self.clock.durations.insert_seconds), self._finisher(zone, op["name"], failure)
                )
                return op
            vm = self._new_vm(zone, spec, body, need)
            op = self.operations.create(zone, "insert", link, vm.resource["id"], user)
            self._schedule_boot(vm, [op["name"]])
        return op

    def bulk_insert(self, project: str, zone: str, body: dict[str, Any], user: str) -> dict[str, Any]:
        self.check_zone(project, zone)
        props = body.get("instanceProperties")
        if not props:
            if body.get("sourceInstanceTemplate"):
                raise invalid("bulkInsertInstanceResource.sourceInstanceTemplate", body["sourceInstanceTemplate"],
                              "Instance templates are not emulated; pass instanceProperties.")  # fmt: skip
            raise ApiError(
                400, "required", "Required field 'bulkInsertInstanceResource.instanceProperties' not specified"
            )
        with self._lock:
            existing = {name for (z, name), vm in self._vms.items() if z == zone and not vm.removed}
            names, min_count = bulk_names(body, existing)
            for name in body.get("perInstanceProperties") or {}:
                if name in existing:
                    raise already_exists(self._path(zone, name))
            prefix = "bulkInsertInstanceResource.instanceProperties"
            specs = [check_instance(props, zone, prefix=prefix, name=name) for name in names]
            need = self._demand(zone, specs[0])
            region = catalog.region_of(zone)
            link = self.links.zone(zone)
            email = self._email(specs[0])
            missing = email is not None and not self.account_exists(email)
            if missing or self.exhaustion.take("zone"):
                op = self.operations.create(zone, "bulkInsert", link, None, user)
                failure = (service_account_missing(str(email)) if missing
                           else zone_exhausted(self.project, zone, specs[0].machine_type.name))  # fmt: skip
                self.timers.after(
                    self.clock.real(self.clock.durations.insert_seconds), self._finisher(zone, op["name"], failure)
                )
                return op
            if self.exhaustion.take("quota"):
                limit = self.quotas.limit(region, "CPUS")
                raise quota_exceeded_sync(f"Quota 'CPUS' exceeded.  Limit: {limit:.1f} in region {region}.")
            fits = self.quotas.capacity(region, need, len(specs))
            if fits < min_count:
                metric, limit = self.quotas.first_shortfall(region, need, min_count) or ("CPUS", 0.0)
                raise quota_exceeded_sync(f"Quota '{metric}' exceeded.  Limit: {limit:.1f} in region {region}.")
            created = specs[:fits]
            total = {metric: amount * len(created) for metric, amount in need.items()}
            if self.quotas.reserve(region, total) is not None:  # changed under us; the ledger has its own lock
                raise quota_exceeded_sync(f"Quota 'CPUS' exceeded in region {region}.")
            op = self.operations.create(zone, "bulkInsert", link, None, user)
            for spec in created:
                vm = self._new_vm(zone, spec, props, need)
                self._schedule_boot(vm, [])
            status = {
                "createdVmCount": len(created),
                "failedToCreateVmCount": len(specs) - len(created),
                "deletedVmCount": 0,
                "rolledBackVmCount": 0,
                "targetVmCount": len(specs),
                "status": "DONE",
            }
            extra = {"instancesBulkInsertOperationMetadata": {"perLocationStatus": {f"zones/{zone}": status}}}
            self.timers.after(
                self.clock.real(self.clock.durations.insert_seconds), self._finisher(zone, op["name"], None, extra)
            )
        return op

    def _finisher(
        self, zone: str, name: str, failure: OperationFailure | None, extra: dict[str, Any] | None = None
    ) -> Callable[[], None]:
        return lambda: self.operations.finish(zone, name, failure, extra)

    def _schedule_boot(self, vm: Vm, ops: list[str]) -> None:
        epoch = vm.epoch
        durations = self.clock.durations
        insert_delay = self.clock.real(durations.insert_seconds)
        boot_delay = max(insert_delay, self.clock.real(durations.boot_seconds))

        def staged() -> None:
            for name in ops:
                self.operations.finish(vm.zone, name)
            with self._lock:
                if vm.epoch == epoch and vm.status == "PROVISIONING":
                    vm.set_status("STAGING")

        self.timers.after(insert_delay, staged)
        self.timers.after(boot_delay, lambda: self._boot(vm, epoch))

    def _boot(self, vm: Vm, epoch: int) -> None:
        with vm.power:
            with self._lock:
                if vm.epoch != epoch or vm.removed:
                    return
                vm.set_status("RUNNING")
                if vm.machine is None:
                    vm.machine = self.hypervisor.machine(vm.info)
                machine = vm.machine
            machine.power_on()
        seconds = vm.spec.max_run_seconds
        if seconds is not None:  # Google acts up to 30 s after the limit
            late = self.random.uniform(0.0, self.clock.durations.max_run_late_seconds)
            self.timers.after(self.clock.real(seconds + late), lambda: self._max_run_reached(vm, epoch, seconds + late))

    # -- deletion, stop, start ------------------------------------------------------------
    def delete(self, project: str, zone: str, name: str, user: str) -> dict[str, Any]:
        self.check_zone(project, zone)
        with self._lock:
            vm = self._vm(zone, name)
            op = self.operations.create(zone, "delete", self.links.instance(zone, name), vm.resource["id"], user)
            vm.pending_ops.append(op["name"])
            if not vm.deleting:
                self._begin_delete(vm)
        return op

    def _begin_delete(self, vm: Vm) -> None:
        """Under the lock: STOPPING now, powered off and gone after the stop grace."""
        vm.deleting = True
        vm.epoch += 1
        vm.set_status("STOPPING")
        self._shutdown(vm, self.clock.durations.stop_seconds, self._removed)

    def _removed(self, vm: Vm) -> None:
        with self._lock:
            if not vm.removed:
                vm.removed = True
                self._vms.pop((vm.zone, vm.name), None)
                self.quotas.release(vm.region, vm.held)
                vm.held = {}
            pending, vm.pending_ops = vm.pending_ops, []
        for name in pending:
            self.operations.finish(vm.zone, name)

    def _shutdown(self, vm: Vm, grace_seconds: float, then: Callable[[Vm], None]) -> None:
        """Soft shutdown now (SIGTERM, shutdown-script), hard power-off after `grace_seconds`, then `then`."""

        def soft() -> None:
            with vm.power:
                machine = vm.machine
                if machine is not None and machine.port is not None:
                    machine.signal_shutdown()
            self.timers.after(self.clock.real(grace_seconds), hard)

        def hard() -> None:
            with vm.power:
                if vm.machine is not None:
                    vm.machine.power_off()
            then(vm)

        self.timers.run_now(soft)

    def stop(self, project: str, zone: str, name: str, user: str) -> dict[str, Any]:
        self.check_zone(project, zone)
        with self._lock:
            vm = self._vm(zone, name)
            if vm.deleting:
                raise not_ready(self._path(zone, name), vm.status)
            op = self.operations.create(zone, "stop", self.links.instance(zone, name), vm.resource["id"], user)
            if vm.status == "TERMINATED":
                self.operations.finish(zone, op["name"])
                return op
            self._begin_stop(vm, [op["name"]], self.clock.durations.stop_seconds)
        return op

    def _begin_stop(self, vm: Vm, ops: list[str], grace: float, also: Callable[[], None] | None = None) -> None:
        vm.epoch += 1
        epoch = vm.epoch
        vm.set_status("STOPPING")

        def terminated(vm: Vm) -> None:
            with self._lock:
                if vm.epoch == epoch and not vm.removed:
                    vm.set_status("TERMINATED")
                    keep = stopped_part(vm.held)
                    self.quotas.release(vm.region, {m: a - keep.get(m, 0) for m, a in vm.held.items()})
                    vm.held = keep
            for name in ops:
                self.operations.finish(vm.zone, name)
            if also is not None:
                also()

        self._shutdown(vm, grace, terminated)

    def start(self, project: str, zone: str, name: str, user: str) -> dict[str, Any]:
        self.check_zone(project, zone)
        with self._lock:
            vm = self._vm(zone, name)
            op = self.operations.create(zone, "start", self.links.instance(zone, name), vm.resource["id"], user)
            if vm.status != "TERMINATED":
                if vm.status in ("STOPPING",) or vm.deleting:
                    raise not_ready(self._path(zone, name), vm.status)
                self.operations.finish(zone, op["name"])
                return op
            extra_need = {m: a - vm.held.get(m, 0) for m, a in vm.need.items() if a - vm.held.get(m, 0) > 0}
            failure = self._admission(zone, vm.spec, extra_need)
            if failure is not None:
                self.timers.after(
                    self.clock.real(self.clock.durations.insert_seconds), self._finisher(zone, op["name"], failure)
                )
                return op
            vm.held = dict(vm.need)
            vm.epoch += 1
            vm.info.update(preempted=False)
            vm.set_status("STAGING")
            self._schedule_boot(vm, [op["name"]])
        return op

    def _max_run_reached(self, vm: Vm, epoch: int, after: float) -> None:
        with self._lock:
            if vm.epoch != epoch or vm.removed or vm.deleting or vm.status != "RUNNING":
                return
            if vm.machine is not None:
                action = vm.spec.termination_action
                vm.machine.log(f"maxRunDuration reached after {after:.3f} s: instanceTerminationAction {action}")
            if vm.spec.termination_action == "DELETE":
                self._begin_delete(vm)
            else:
                self._begin_stop(vm, [], self.clock.durations.stop_seconds)

    # -- faults from the control API ------------------------------------------------------
    def preempt(self, zone: str, name: str) -> dict[str, Any]:
        """Preempt a Spot VM: `preempted` TRUE, ~30 s (scaled) soft shutdown, then TERMINATED or gone."""
        with self._lock:
            try:
                vm = self._vm(zone, name)
            except ApiError as exc:
                raise ControlError(exc.message) from None
            if not vm.spec.is_spot:
                raise ControlError(f"{name} is not a Spot VM: Google preempts only Spot (and preemptible) VMs")
            if vm.deleting or vm.status not in ("RUNNING", "STAGING", "PROVISIONING"):
                raise ControlError(f"{name} cannot be preempted now (status {vm.status})")
            op = self.operations.create(zone, "compute.instances.preempted", self.links.instance(zone, name),
                                        vm.resource["id"], SYSTEM_USER)  # fmt: skip
            vm.info.update(preempted=True)
            grace = self.clock.durations.preemption_notice_seconds
            if vm.spec.termination_action == "DELETE":
                vm.pending_ops.append(op["name"])
                self._begin_delete_after(vm, grace)
            else:
                self._begin_stop(vm, [op["name"]], grace)
        return op

    def _begin_delete_after(self, vm: Vm, grace: float) -> None:
        vm.deleting = True
        vm.epoch += 1
        vm.set_status("STOPPING")
        self._shutdown(vm, grace, self._removed)

    # -- life of the engine ---------------------------------------------------------------
    def vm_names(self) -> list[tuple[str, str]]:
        with self._lock:
            return sorted(k for k, vm in self._vms.items() if not vm.removed)

    def shutdown(self) -> None:
        """Power every VM off at once (Emulator.stop)."""
        with self._lock:
            vms = list(self._vms.values())
            for vm in vms:
                vm.epoch += 1
        threads = [threading.Thread(target=self._force_off, args=(vm,), daemon=True) for vm in vms]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)

    @staticmethod
    def _force_off(vm: Vm) -> None:
        with vm.power:
            if vm.machine is not None:
                vm.machine.power_off()
