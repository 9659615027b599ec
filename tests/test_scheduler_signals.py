"""The scheduler's wait for events must notice a cancel set by a signal handler, however late
the handler runs (on a loaded machine it can outlast the scheduler's 0.1 s poll)."""

from __future__ import annotations

import signal
import subprocess
import sys

# A scheduler in the main thread of its own process, over a pool whose tasks only end when
# cancelled. The SIGTERM handler takes 0.15 s before it sets the cancel (as a busy GIL makes it).
SCRIPT = r'''
import signal, sys, threading, time
from parallel_engine.backends.base import Finished, Started
from parallel_engine.model import AttemptState, AttemptStatus, Task
from parallel_engine.scheduler import Scheduler
from parallel_engine.state import Budgets

class PoolUntilCancelled:
    def __init__(self, on_event):
        self.on_event, self.running = on_event, []
    def start(self):
        pass
    def submit(self, task, attempt):
        status = AttemptStatus(task.id, attempt, AttemptState.RUNNING, started_at=time.time())
        self.running.append(status)
        self.on_event(Started(status))
        print("ready", flush=True)
    def cancel(self):
        for status in self.running:
            status.state, status.finished_at = AttemptState.CANCELLED, time.time()
            self.on_event(Finished(status))
    def close(self):
        pass
    def check(self):
        pass

cancel = threading.Event()
def late_handler(signum, frame):
    time.sleep(0.15)
    cancel.set()
signal.signal(signal.SIGTERM, late_handler)
outcome = Scheduler((Task("t1"),), Budgets(retries=0, infra_retries=0), PoolUntilCancelled).run(cancel)
print("cancelled" if outcome.cancelled else "not cancelled", flush=True)
'''


def test_a_signal_handler_that_runs_late_still_stops_the_scheduler() -> None:
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)  # lands while the scheduler waits for an event
        stdout, stderr = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("the scheduler never noticed the cancel: its event wait stayed blocked") from None
    assert proc.returncode == 0, stderr
    assert stdout == "cancelled\n"
