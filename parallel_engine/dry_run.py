"""`run --dry-run`: the plan `run` made (tasks read, config checked, image resolved, the VM request
rendered), shown instead of carried out, with an estimate of time, VM-hours and cost.

The estimate takes a task's duration from past runs of the same source in the store (the mean of
their succeeded tasks), else TASK_TIMEOUT as an upper bound; the price of a VM-hour from
PRICE_PER_VM_HOUR, else the built-in table (parallel_engine/prices.py). Only reads: nothing is
written to the store, no VM is asked for.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parallel_engine.backends.base import Backend, Plan
from parallel_engine.config import Config
from parallel_engine.errors import ParallelEngineError
from parallel_engine.model import TaskList, TaskState
from parallel_engine.prices import vm_hour_price
from parallel_engine.results import run_status
from parallel_engine.store import RunStore

#: Past runs of the same source that the estimate reads at most (the newest).
PAST_RUNS = 5
#: What a VM is billed for before its first task starts (boot, image pull): a rough minute.
BOOT_S = 60.0
#: run.json's spec keys shown, in order, and how they are named.
SHOWN = {"runtime": "runtime", "command": "command", "image": "image", "machine_type": "machine type",
         "spot": "Spot VMs", "zones": "zones", "tasks_per_vm": "tasks per VM", "project": "project"}


@dataclass(frozen=True)
class Estimate:
    """A task's expected duration and where it comes from; VM-hours and cost when VMs are billed."""

    task_s: float | None
    task_basis: str
    wall_s: float | None
    vm_hours: float | None = None
    price: float | None = None
    price_basis: str = ""

    @property
    def cost(self) -> float | None:
        return None if self.vm_hours is None or self.price is None else self.vm_hours * self.price


@dataclass(frozen=True)
class DryRun:
    source: str
    backend: str
    tasks: int
    workers: int
    spec: dict[str, Any]
    estimate: Estimate

    def lines(self) -> list[str]:
        """The plan, as `run --dry-run` prints it."""
        shown = [f"dry run: nothing was created (no run, no VM); `parallel-engine run {self.source}` would run:",
                 f"  tasks: {self.tasks} from {self.source}",
                 f"  backend: {self.backend}, {self.workers} worker(s) at once"]
        for key, name in SHOWN.items():
            value = self.spec.get(key)
            if value is not None:
                shown.append(f"  {name}: {shlex.join(value) if key == 'command' else _shown(value)}")
        if "machine_type" in self.spec:
            shown.append("  VM request: rendered and checked (`parallel-engine render --vm-request` prints it)")
        shown += self.estimate_lines()
        return shown

    def estimate_lines(self) -> list[str]:
        est = self.estimate
        if est.task_s is None:
            return [f"estimate: none ({est.task_basis})"]
        lines = [f"estimate: a task takes ~{_duration(est.task_s)} ({est.task_basis}); "
                 f"all {self.tasks} take ~{_duration(est.wall_s or 0.0)} with {self.workers} at once"]
        if est.vm_hours is not None:
            cost = "unknown" if est.cost is None else f"~${est.cost:,.2f}"
            rate = "" if est.price is None else f" at ${est.price:g}/VM-hour"
            lines.append(f"  ~{est.vm_hours:,.2f} VM-hours (with ~{BOOT_S:g} s boot per VM), cost {cost}{rate} "
                         f"({est.price_basis})")
        return lines


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    return str(value)


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def past_durations(store: RunStore, source: str) -> tuple[list[float], int]:
    """Durations of the succeeded tasks of the newest PAST_RUNS runs of `source`, and how many runs."""
    try:
        ids = store.run_ids()
    except ParallelEngineError:
        return [], 0  # no store yet: no history
    durations: list[float] = []
    runs = 0
    for run_id in ids:
        if runs == PAST_RUNS:
            break
        try:
            status = run_status(store, run_id)
        except ParallelEngineError:
            continue  # an unreadable run says nothing about durations
        if status.record.source != source:
            continue
        found = [view.duration_s for view in status.tasks
                 if view.state is TaskState.SUCCEEDED and view.duration_s is not None]
        if found:
            runs += 1
            durations += found
    return durations, runs


def plan_run(source: str | Path, config: Config, task_list: TaskList, backend: Backend, store: RunStore,
             quota: int, plan: Plan) -> DryRun:
    """The dry run's plan and estimate, from what `api.prepare` made."""
    name = str(Path(source))
    tasks = len(task_list.tasks)
    workers = max(1, min(quota, tasks, int(plan.spec.get("workers", quota))))  # gce: capped by the quotas
    durations, runs = past_durations(store, name)
    if durations:
        task_s: float | None = sum(durations) / len(durations)
        basis = f"the mean of {len(durations)} succeeded task(s) in the last {runs} run(s) of {name}"
    elif config.task_timeout is not None:
        task_s, basis = config.task_timeout, f"at most: TASK_TIMEOUT, as no past run of {name} is in the store"
    else:
        task_s, basis = None, f"no past run of {name} is in the store, and no TASK_TIMEOUT is set"
    wall_s = None if task_s is None else math.ceil(tasks / workers) * task_s
    estimate = Estimate(task_s, basis, wall_s)
    machine_type = plan.spec.get("machine_type")
    if task_s is not None and wall_s is not None and machine_type:
        if plan.spec.get("tasks_per_vm") == 1:
            vm_hours = tasks * (task_s + BOOT_S) / 3600
        else:
            vm_hours = workers * (wall_s + BOOT_S) / 3600
        price = vm_hour_price(str(machine_type), bool(plan.spec.get("spot")), config.price_per_vm_hour)
        estimate = Estimate(task_s, basis, wall_s, vm_hours, price.per_hour, price.basis)
    return DryRun(name, backend.name, tasks, workers, plan.spec, estimate)
