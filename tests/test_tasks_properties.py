"""Properties of the task sources, over generated input: whatever the bytes, `load_tasks` gives
tasks or one TaskSourceError naming the file (never another exception), and what it accepts
reaches argv byte-exact. Generated: random bytes, random YAML structures, names, unicode, long
values, and values built to trip quoting (quotes, commas, newlines, `#`, `=`, leading `-`)."""

from __future__ import annotations

import csv
import io
import shlex
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parallel_engine.errors import TaskSourceError
from parallel_engine.model import RESERVED_COLUMNS, TaskList
from parallel_engine.tasks import load_tasks

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SUFFIXES = (".csv", ".yaml", ".yml", ".txt")

# Text that can travel in argv: any character but NUL, and no lone surrogates (not characters).
CHARACTER = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
TRICKY = st.sampled_from(['"', "'", ",", "\n", "\r\n", "\r", "#", "=", "-", "--", " ", "\t", "\\", "{", "}",
                          "$(x)", "`x`", ";", "*", "\ufeff", "\u2028", "\x85", "é", "漢", "🚀", ": ", "- ", "&a", "*a"])
SHORT = st.one_of(
    st.text(CHARACTER, max_size=30),
    st.lists(st.one_of(TRICKY, st.text(CHARACTER, max_size=5)), max_size=12).map("".join),
)


def values(longest: int) -> st.SearchStrategy[str]:
    """Short values, tricky ones, and one in five long (pure-Python YAML parsing keeps those shorter)."""
    long = st.builds(lambda c, n: c * n, CHARACTER, st.integers(longest // 5, longest))
    return st.one_of(SHORT, SHORT, long)


VALUE = values(5_000)
OPTION_NAME = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,15}", fullmatch=True).filter(
    lambda name: name not in ("task_id", *RESERVED_COLUMNS))


@contextmanager
def source_file(suffix: str, data: bytes) -> Iterator[Path]:
    """`data` in a fresh file (hypothesis runs many examples per test: no shared tmp_path)."""
    with tempfile.TemporaryDirectory(prefix="pe-prop-") as folder:
        path = Path(folder) / f"tasks{suffix}"
        path.write_bytes(data)
        yield path


def load_or_refuse(path: Path) -> TaskList | None:
    """The tasks, or None for a refusal that is one TaskSourceError naming the file, with a hint."""
    try:
        return load_tasks(path)
    except TaskSourceError as exc:
        assert exc.message.startswith(f"{path}:") or exc.message.startswith(f"{path} "), exc.message
        assert exc.hint
        assert len(exc.message) < 2_000  # values are quoted briefly, whatever their size
        return None


@SETTINGS
@given(st.sampled_from(SUFFIXES), st.binary(max_size=3_000))
def test_random_bytes_give_tasks_or_one_error_naming_the_file(suffix: str, data: bytes) -> None:
    with source_file(suffix, data) as path:
        load_or_refuse(path)


@SETTINGS
@given(st.sampled_from(SUFFIXES), st.lists(st.one_of(TRICKY, st.text(CHARACTER, max_size=8)), max_size=60))
def test_random_text_gives_tasks_or_one_error_naming_the_file(suffix: str, pieces: list[str]) -> None:
    with source_file(suffix, "".join(pieces).encode("utf-8")) as path:
        load_or_refuse(path)


YAML_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), VALUE)
YAML_ANY = st.recursive(YAML_SCALAR, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(VALUE, st.sampled_from(
        ["id", "args", "argv", "command", "launch_cmd", "tasks", "items"])), inner, max_size=4)), max_leaves=20)


@SETTINGS
@given(YAML_ANY)
def test_any_yaml_structure_gives_tasks_or_one_error_naming_the_file(document: Any) -> None:
    text = yaml.safe_dump(document, allow_unicode=True)
    with source_file(".yaml", text.encode("utf-8")) as path:
        load_or_refuse(path)


@SETTINGS
@given(st.lists(OPTION_NAME, min_size=1, max_size=5, unique=True), st.data())
def test_accepted_csv_values_reach_argv_byte_exact(header: list[str], data: st.DataObject) -> None:
    rows = data.draw(st.lists(st.lists(VALUE, min_size=len(header), max_size=len(header)), min_size=1, max_size=5))
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerows([header, *rows])
    with source_file(".csv", buffer.getvalue().encode("utf-8")) as path:
        loaded = load_or_refuse(path)
    assert loaded is not None
    assert [task.argv for task in loaded.tasks] == [
        tuple(f"--{name}={value}" for name, value in zip(header, row) if value != "") for row in rows]


YAML_VALUE = values(1_000)
TASK = st.fixed_dictionaries({"argv": st.lists(YAML_VALUE, max_size=5),
                              "args": st.dictionaries(OPTION_NAME, YAML_VALUE, max_size=4)})
YAML_BREAKS = str.maketrans("", "", "\x85\u2028\u2029")


@SETTINGS
@given(st.lists(TASK, min_size=1, max_size=5), st.booleans())
def test_accepted_yaml_argv_and_args_reach_argv_byte_exact(tasks: list[dict[str, Any]], raw_unicode: bool) -> None:
    if raw_unicode:  # PyYAML then writes NEL and LS/PS raw, where YAML reads them as line breaks
        tasks = [{"argv": [v.translate(YAML_BREAKS) for v in task["argv"]],
                  "args": {k: v.translate(YAML_BREAKS) for k, v in task["args"].items()}} for task in tasks]
    items = [{"id": f"t{i}", "argv": task["argv"]} if i % 2 else {"id": f"t{i}", "args": task["args"]}
             for i, task in enumerate(tasks)]
    text = yaml.safe_dump({"tasks": items}, allow_unicode=raw_unicode, sort_keys=False)
    with source_file(".yaml", text.encode("utf-8")) as path:
        loaded = load_or_refuse(path)
    assert loaded is not None, text
    expected = [tuple(item["argv"]) if "argv" in item else
                tuple(f"--{name}={value}" for name, value in item["args"].items() if value != "") for item in items]
    assert [task.argv for task in loaded.tasks] == expected


LINE_WORD = VALUE.map(lambda value: value.replace("\n", "").replace("\r", ""))  # a line is one command


@SETTINGS
@given(st.lists(st.lists(LINE_WORD, min_size=1, max_size=6), min_size=1, max_size=5))
def test_accepted_task_list_lines_reach_argv_byte_exact(commands: list[list[str]]) -> None:
    text = "".join(shlex.join(words) + "\n" for words in commands)
    with source_file(".txt", text.encode("utf-8")) as path:
        loaded = load_or_refuse(path)
    assert loaded is not None, text
    assert [list(task.command or ()) for task in loaded.tasks] == commands
