"""Hostile values, one list per kind, shared by every test that proves something survives them.

A value here is one a shell, a template, a CSV or YAML parser, JSON, percent-encoding or a path
join could change or act on. Each test sends one of these lists through its own channel (a
params.csv cell, a YAML task, an argv item, a VM's startup script, a bucket's object name) and
checks it arrives byte for byte, or is refused and named, never acted on.
"""

from __future__ import annotations

#: Argument values that must reach the program byte for byte, from any task source: none is
#: empty or blank (an empty table cell omits its argument), so a params.csv cell can carry each.
VALUES = [
    "plain",
    "with space",
    "  padded  ",
    "\"double\" and 'single' quotes",
    'only"one"quote"',
    "$(touch /tmp/pe-pwned)",
    "${HOME}",
    "$HOME ${PATH}",
    "a; rm -rf / ; echo b",
    "`id`",
    "pipe | and && or ||",
    "line1\nline2",
    "cr\r\nlf",
    "tab\there",
    "back\\slash\\",
    "ünïcødé ✓ 日本語 🚀",
    "\u2028line-separator",
    "-leading-dash",
    "--looks=like-an-option",
    "-",
    "--",
    "=",
    "*",
    "glob * ? [a]",
    "%s %d",
    ">redirect",
    "#not-a-comment",
    "{braces}",
]

#: Every item an argv can carry: the values, and those only a list can (an empty or blank item).
ARGV = [*VALUES, "", "  "]

#: Texts that worker and VM names, and label values, are derived from (parallel_engine/names.py):
#: each must become a valid name or a clear error, never a name Google refuses.
NAME_TEXTS = [
    "",
    "-",
    "_",
    "---",
    "A",
    "UPPER",
    "1",
    "123-abc",
    "a" * 63,
    "a" * 64,
    "a" * 200,
    "-" * 100,
    "x-" * 40,
    "with space",
    "tab\tand\nnewline",
    "émigré",
    "漢字",
    "🚀",
    "İstanbul",
    "ß",
    "a.b.c",
    "a/b\\c",
    "$(rm -rf /)",
    "\x00nul",
    "\ud800",
    "trailing-",
    "a--b",
]

#: Object names a bucket holds as ordinary objects, each of which would land outside --dest if
#: `collect` joined it onto a path.
OBJECT_NAMES = ["../../../../escaped.txt", "sub/../../../../../escaped-too.txt", "./dot.txt", "sub//empty.txt",
                "nul\0.txt"]

#: Path segments that object names are made of at random (tests/faults/scenarios_collect.py).
SEGMENTS = ["..", ".", "", "x\0y", "\\..", "é", "a", "b", "L" * 300]
