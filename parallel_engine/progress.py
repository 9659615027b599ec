"""A live bar of task counts per state: rich on a terminal, an updating cell output in Jupyter.

Nothing is imported until a bar is drawn: rich.progress only on a terminal, IPython only when
the code already runs inside a Jupyter kernel (it is then loaded), so the CLI pays for neither.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable
from html import escape
from typing import Any

from rich.console import Console

CountsFn = Callable[[Counter[str]], None]
SHOWN_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
DONE_STATES = ("succeeded", "failed", "cancelled")


def in_jupyter() -> bool:
    """Inside a Jupyter kernel (not a terminal IPython): IPython is loaded and its shell is the kernel's."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return type(shell).__name__ == "ZMQInteractiveShell"


def counts_text(counts: Counter[str]) -> str:
    return "  ".join(f"{state} {counts[state]}" for state in SHOWN_STATES if counts[state])


class CountsBar:
    """`with CountsBar(console) as update: update(counts)`; console None draws nothing."""

    def __init__(self, console: Console | None) -> None:
        self.console = console
        self.bar: Any = None
        self.task_id: Any = None
        if console is not None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("[bold]tasks"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[counts]}"),
                TimeElapsedColumn(), console=console, transient=False,
            )

    def __enter__(self) -> CountsFn:
        if self.bar is not None:
            self.bar.start()
        return self.update

    def update(self, counts: Counter[str]) -> None:
        if self.bar is None:
            return
        total = sum(counts.values())
        done = sum(counts[s] for s in DONE_STATES)
        if self.task_id is None:
            self.task_id = self.bar.add_task("tasks", total=total, counts=counts_text(counts))
        self.bar.update(self.task_id, completed=done, total=total, counts=counts_text(counts))

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


class _Shown:
    """One reading of the bar, as Jupyter shows it (HTML) and as plain text (a saved notebook's text)."""

    def __init__(self, counts: Counter[str], elapsed: float) -> None:
        self.total = sum(counts.values())
        self.done = sum(counts[s] for s in DONE_STATES)
        self.text = f"tasks {self.done}/{self.total}  {counts_text(counts)}  {elapsed:.0f}s"

    def _repr_html_(self) -> str:
        return (f'<progress value="{self.done}" max="{max(self.total, 1)}" style="width: 30em"></progress> '
                f"<code>{escape(self.text)}</code>")

    def __repr__(self) -> str:
        return self.text


class JupyterBar:
    """The bar as one cell output updated in place (IPython's display ids: no widget library needed)."""

    def __init__(self) -> None:
        self.handle: Any = None
        self.began = time.monotonic()

    def __enter__(self) -> CountsFn:
        return self.update

    def update(self, counts: Counter[str]) -> None:
        from IPython.display import display

        shown = _Shown(counts, time.monotonic() - self.began)
        if self.handle is None:
            self.handle = display(shown, display_id=True)  # type: ignore[no-untyped-call]  # IPython is not annotated
        else:
            self.handle.update(shown)

    def __exit__(self, *exc: object) -> None:
        pass


def auto_bar() -> CountsBar | JupyterBar:
    """The bar for where the code runs: Jupyter, else rich on stderr when it is a terminal, else none."""
    if in_jupyter():
        return JupyterBar()
    console = Console(stderr=True)
    return CountsBar(console if console.is_terminal else None)
