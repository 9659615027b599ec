"""Names from a store (object names, task ids, run ids) checked before they become local paths.

A bucket holds any name: `outputs/../../../../escaped.txt` is one object, and joined onto a folder
it writes outside it. Every place where a name read from a store becomes a path (collect, a local
store's keys, a run's task ids) splits it with `parts_of`, the one check, and refuses or skips
what it rejects.
"""

from __future__ import annotations

#: Segments that mean something to a filesystem beyond a name.
_SPECIAL = frozenset({"", ".", ".."})


def unsafe_segment(segment: str) -> bool:
    """True if `segment` cannot be one file name beneath a folder: empty, `.`, `..`, or holding a
    separator or a NUL (which no path can carry). A backslash is an ordinary character here."""
    return segment in _SPECIAL or "/" in segment or "\0" in segment


def parts_of(name: str) -> tuple[str, ...] | None:
    """`name` split on `/` when every segment is safe (`unsafe_segment`), else None."""
    parts = tuple(name.split("/"))
    return None if any(unsafe_segment(part) for part in parts) else parts
