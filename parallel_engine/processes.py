"""Two facts about processes the orchestrator relies on, checked rather than assumed.

- Its children's exit statuses can be read. A parent that ignores SIGCHLD passes that on
  through exec, and then the kernel reaps every child itself: `waitpid` finds nothing, and a
  failed task would look like one whose status is unknown. The default is restored first.
- A process is its pid *and* its start time: a pid is reused once its process is gone, and a
  killed process its parent has not reaped yet (a zombie) still has one. Neither is alive.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from typing import Any

from parallel_engine.errors import BackendError

_PROC = "/proc"


def keep_child_statuses() -> None:
    """Put SIGCHLD back to its default if it is ignored, so `waitpid` gets each child's status.

    Only the main thread may change a signal's handler: elsewhere an ignored SIGCHLD is refused,
    since every attempt's status would be lost.
    """
    if signal.getsignal(signal.SIGCHLD) != signal.SIG_IGN:
        return
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        return
    raise BackendError(
        "SIGCHLD is ignored in this process (inherited from the program that started it), so the "
        "exit status of a task's process cannot be read",
        hint="start the run from the main thread (parallel-engine restores SIGCHLD there), or call "
        "signal.signal(signal.SIGCHLD, signal.SIG_DFL) in the main thread first",
    )


def process_start(pid: int) -> str | None:
    """When process `pid` started, as a token to compare with a later reading on this machine;
    None if there is no such process or it is a zombie (it exited, its parent has not reaped it)."""
    if pid <= 0:
        return None
    if os.path.isdir(_PROC):
        try:
            with open(f"{_PROC}/{pid}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            return None
        fields = stat[stat.rfind(b")") + 2:].split()  # after "pid (comm) ": comm may hold anything
        if not fields or fields[0] in (b"Z", b"X"):
            return None
        return f"ticks:{int(fields[19])}"  # field 22 of proc(5): start time, in clock ticks since boot
    import psutil  # where there is no /proc

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return f"time:{proc.create_time()!r}"
    except psutil.Error:
        return None


def this_orchestrator() -> dict[str, Any]:
    """Who runs this run, for run.json's spec.orchestrator: host, pid and the pid's start time."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "started": process_start(pid)}


def orchestrator_alive(owner: dict[str, Any]) -> bool:
    """Whether the orchestrator recorded in `owner` (this_orchestrator) still runs on this machine.

    Only meaningful on its own host. A run recorded before the start time was kept is judged by
    its pid alone (a zombie is still dead)."""
    try:
        pid = int(owner.get("pid", 0))
    except (TypeError, ValueError):
        return False
    started = process_start(pid)
    if started is None:
        return False
    recorded = owner.get("started")
    return recorded is None or recorded == started
