"""What the kernel lets a program start with, checked before a run starts.

execve() refuses (E2BIG) an argument or environment string longer than MAX_ARG_STRLEN (Linux:
32 pages, NUL included), and argv + environment together past the stack's share (what
`getconf ARG_MAX` prints, at most 6 MiB). Found at spawn time, that was an `infra` attempt,
retried PREEMPTION_RETRIES times for nothing; every number involved is known when the run is
planned, so a task that cannot start is refused up front with its file:line.

Counted as the kernel counts (fs/exec.c): every string with its NUL, a pointer per string, and
the program's path once more. Containers (the docker runtime, gce) also get the image's own
environment and entrypoint, which we do not read: CONTAINER_RESERVE bytes are kept for them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

from parallel_engine.errors import TaskSourceError, brief
from parallel_engine.model import TaskList

MAX_ARG_STRLEN = 32 * 4096
STACK_CAP = 6 * 1024 * 1024  # the kernel's own cap: 3/4 of _STK_LIM (8 MiB), whatever `ulimit -s` says
POINTER = 8
CONTAINER_RESERVE = 16 * 1024  # an image's ENV and ENTRYPOINT (python:3.11-slim's: ~300 bytes)
KERNEL_RESERVE = 4096  # the program's path again, alignment


def total_limit() -> int:
    """Bytes of argv + environment (strings, NULs and pointers) execve() accepts here."""
    try:
        limit = os.sysconf("SC_ARG_MAX")
    except (OSError, ValueError):
        limit = 128 * 1024  # POSIX's floor on Linux, when sysconf cannot say
    return min(limit, STACK_CAP) if sys.platform.startswith("linux") else limit


def _size(text: str) -> int:
    """Bytes of `text` as an argv or environment string, NUL excluded (counting never fails)."""
    return len(text.encode("utf-8", "surrogatepass"))


def _cost(strings: Sequence[str]) -> int:
    return sum(_size(s) + 1 + POINTER for s in strings)


def check_tasks_can_start(
    task_list: TaskList,
    command: Sequence[str],
    environ: Mapping[str, str],
    *,
    per_argument: bool = True,
    reserve: int = 0,
) -> None:
    """Refuse the first task execve() would refuse, naming its file:line and the limit.

    `command` goes before a task's argv (unless the task has its own); `environ` is what every
    task gets (PE_* included, at their longest: a 100-character task id, attempt 9999);
    `per_argument` applies MAX_ARG_STRLEN (Linux, and every container); `reserve` is kept for
    what we cannot see (an image's environment and entrypoint).
    """
    limit = total_limit() - KERNEL_RESERVE - reserve
    env_cost = _cost([f"{key}={value}" for key, value in environ.items()])
    command_cost = _cost(command)
    for task in task_list.tasks:
        words = task.command if task.command is not None else task.argv
        where = f"{task_list.path}:{task.source.rpartition(':')[2]}"
        if per_argument:
            for index, word in enumerate(words, start=1):
                size = _size(word) + 1
                if size > MAX_ARG_STRLEN:
                    raise TaskSourceError(
                        f"{where}: task {task.id}: argument {index} ({brief(word, 40)!r}) is {size - 1:,} "
                        f"bytes; Linux starts a program only with arguments under {MAX_ARG_STRLEN:,} "
                        "bytes each (MAX_ARG_STRLEN)",
                        hint="pass a big value in a file: put the file's path in the task, and let the "
                        "program read it",
                    )
        total = env_cost + _cost(words) + (command_cost if task.command is None else 0)
        if total > limit:
            raise TaskSourceError(
                f"{where}: task {task.id}: its command line and environment take {total:,} bytes; "
                f"a program can start here with at most {limit:,} (ARG_MAX, less what the kernel "
                f"{'and the image keep' if reserve else 'keeps'})",
                hint="pass big values in files (the task names the file, the program reads it), "
                "or start with fewer or smaller environment variables",
            )

