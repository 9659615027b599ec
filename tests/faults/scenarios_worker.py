"""The Python VM worker stopped at a random moment while another keeps claiming.

The worker asks for its next listings in threads while an attempt's end (logs, outputs, status,
event) is written. Those are reads only: the writes keep their order, and a worker shut down or
preempted at any moment must still leave every claim either recorded or named by its own
record (the one claim the orchestrator settles when the VM is gone), every record with its
outputs and its event, and the rest run by the other worker.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path

from parallel_engine.emulator import Emulator
from parallel_engine.model import AttemptState
from parallel_engine.worker.loop import Signals
from tests.emulator.emulator_helpers import Clients, wait_for
from tests.faults.harness import scenario
from tests.gce.worker_side import RUN, Side

TASKS = [f"t{n}" for n in range(4)]


@scenario("worker shut down at random while its attempts' ends are written", ci_tries=1, marks=("docker",))
def worker_stopped_mid_end(rng: random.Random, tmp: Path) -> None:
    with Emulator(time_scale=0.01, workdir=tmp / "emulator") as cloud:
        side = Side(Clients(cloud), tmp / "work")
        for task in TASKS:
            side.publish(task, "--sleep=0.3")
        stopped = Signals()
        workers = [side.worker("a", stopped, stop_grace_s=0), side.worker("b")]  # no grace: a stop kills
        threads = [threading.Thread(target=w.run, daemon=True) for w in workers]
        for thread in threads:
            thread.start()
        wait_for(lambda: workers[0].won, timeout=60, what="the first claim of worker a")
        threading.Event().wait(rng.uniform(0.0, 1.2))  # its attempt runs, ends, its end is written, the next...
        preempted = rng.random() < 0.5
        if preempted:
            stopped.preempted.set()
        stopped.terminating.set()
        for thread in threads:
            thread.join(120)
            assert not thread.is_alive(), f"a worker did not return: {side.lines[-5:]}"

        claims = {name: side.read(f"runs/{RUN}/claims/{name}") for name in side.names("claims/")}
        events = {name.split("-", 1)[1] for name in side.names("events/")}
        unrecorded = []
        for name, holder in claims.items():
            task, attempt = name.rsplit(".", 1)
            status = side.status(task, int(attempt))
            if status is None:
                unrecorded.append((name, holder))
                continue
            assert status.worker.encode() == holder, f"{name}: recorded by {status.worker}, claimed by {holder!r}"
            assert name in events, f"{name} has a status but no event"
            if status.state == AttemptState.SUCCEEDED:
                assert side.outputs(task) == {"out.txt": task.encode()}, f"{name}: outputs {side.outputs(task)}"
                assert side.log(task).splitlines()[-1:] == ["done"], f"{name}: stdout {side.log(task)!r}"
            else:
                assert holder == b"a" and status.state == AttemptState.PREEMPTED and preempted, f"{name}: {status}"
        assert events <= set(claims), f"events without a claim: {sorted(events - set(claims))}"
        assert all(holder == b"a" for _, holder in unrecorded) and len(unrecorded) <= 1, f"unrecorded: {unrecorded}"
        if unrecorded:  # the orchestrator settles the one claim the stopped VM's record names
            assert side.read(f"runs/{RUN}/workers/a") == unrecorded[0][0].encode(), side.lines[-10:]
        assert sorted(name.rsplit(".", 1)[0] for name in claims) == sorted(TASKS), f"claims: {sorted(claims)}"
