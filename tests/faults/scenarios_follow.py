"""Following a run (`wait`, `status --watch`, `Run.wait()`) as its orchestrator records the end
and exits at a random moment: the follower must read the end it recorded, never "interrupted".

The orchestrator here is a small process that writes end.json through the store after a drawn
delay and exits at once; the follower polls without pause, so its reads land all over the short
window between reading end.json and finding its orchestrator gone (5 of 300 tries read
"interrupted" before results.run_state read end.json again).
"""

from __future__ import annotations

import dataclasses
import random
import subprocess
import sys
import textwrap
from pathlib import Path

from parallel_engine.follow import exit_code, follow
from parallel_engine.processes import process_start, this_orchestrator
from parallel_engine.store import local_store
from tests.faults.harness import scenario
from tests.helpers import ROOT, SUCCEEDED, record_run

RUN = "20260101-120000-abcde"
ORCHESTRATOR = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from parallel_engine.store import local_store
    store = local_store(Path(sys.argv[1]))
    sys.stdout.write("ready\\n"); sys.stdout.flush()
    time.sleep(float(sys.argv[2]))
    store.write_end(sys.argv[3], "finished", time.time())
    os._exit(0)  # no interpreter teardown: gone right after the write
""")


@scenario("wait: the run's end recorded as its orchestrator exits, at a random moment", ci_tries=20)
def end_while_followed(rng: random.Random, tmp: Path) -> None:
    store = local_store(tmp)
    record = record_run(store, RUN, {"a": [SUCCEEDED], "b": [SUCCEEDED]}, ended=None)
    with subprocess.Popen([sys.executable, "-c", ORCHESTRATOR, str(tmp), f"{rng.uniform(0, 0.02):.4f}", RUN],
                          cwd=ROOT, stdout=subprocess.PIPE, text=True) as orchestrator:
        assert orchestrator.stdout is not None and orchestrator.stdout.readline() == "ready\n"
        owner = {**this_orchestrator(), "pid": orchestrator.pid, "started": process_start(orchestrator.pid)}
        store.save_run(dataclasses.replace(record, spec={**record.spec, "orchestrator": owner}))
        status = follow(store, RUN, lambda reading: None, poll_s=0)
    assert status.run_state == "finished", f"followed to {status.run_state!r}, but end.json says finished"
    assert exit_code(status) == 0
