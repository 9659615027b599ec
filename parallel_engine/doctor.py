"""`parallel-engine doctor`: is everything a run needs there? One check per line, ✓ or ✗, and for
each ✗ the fix.

The checks are each backend's (backends/<name>/doctor.py: small functions, one per check, listed
in its CHECKS and reached through `Backend.doctor`). A check that cannot answer because an
earlier one failed says so instead of failing again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from parallel_engine.errors import ParallelEngineError

EXIT_ALL_PASS = 0
EXIT_SOME_FAIL = 2


@dataclass(frozen=True)
class Check:
    """One line of doctor's table: what was checked, whether it passed, what was seen, the fix."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


class Skip(Exception):
    """A check that cannot be made: an earlier one it needs failed (the message says which)."""


C = TypeVar("C")


@dataclass(frozen=True)
class CheckFn(Generic[C]):
    """A named check over a backend's context `C`: returns (ok, detail, fix), or raises
    ParallelEngineError (a ✗ whose message and hint are the detail and the fix) or Skip."""

    name: str
    run: Callable[[C], tuple[bool, str, str]]


def run_checks(context: C, checks: Iterable[CheckFn[C]]) -> Iterator[Check]:
    """Each check's verdict, in order, as it is made."""
    for check in checks:
        try:
            ok, detail, fix = check.run(context)
        except Skip as exc:
            yield Check(check.name, False, f"not checked: {exc}", "fix the check it needs first")
        except ParallelEngineError as exc:
            yield Check(check.name, False, exc.message, exc.hint or "")
        else:
            yield Check(check.name, ok, detail, "" if ok else fix)


def exit_code(checks: Iterable[Check]) -> int:
    return EXIT_ALL_PASS if all(check.ok for check in checks) else EXIT_SOME_FAIL
