"""Facts about processes the orchestrator relies on, checked rather than assumed.

- Its children's exit statuses can be read. A parent that ignores SIGCHLD passes that on
  through exec, and then the kernel reaps every child itself: `waitpid` finds nothing, and a
  failed task would look like one whose status is unknown. The default is restored first.
"""

from __future__ import annotations

import signal
import threading

from parallel_engine.errors import BackendError

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
