"""Kill points for the kill-point tests: `PE_CRASH_AT=<point>` makes the orchestrator SIGKILL
itself when it reaches that point, as a power cut or `kill -9` would, to prove `resume` takes
over from there. Read once at import; each point is a string compare off the hot path (run
creation, a retry being decided, the run's end).

Points: run-json (the run exists, nothing started), retry-due (an attempt failed, its retry not
submitted yet), teardown (every task closed, the run's end not written; gce: its VMs not yet
deleted), and on gce vm-create (a VM being asked for), vm-created (asked for, not yet noted),
poll (a monitor's look has seen an attempt's end, not yet taken it in)."""

from __future__ import annotations

import os
import signal

CRASH_ENV = "PE_CRASH_AT"
_AT = os.environ.get(CRASH_ENV, "")


def crash_point(name: str) -> None:
    """SIGKILL this process here if PE_CRASH_AT names this point."""
    if _AT and _AT == name:
        os.kill(os.getpid(), signal.SIGKILL)
