"""Task sources: a params table, a YAML task file or a plain task list, turned into Tasks.

`load_tasks` picks the format by extension: `.csv` is a params table, `.yaml`/`.yml` a YAML
task file (ictasks style), anything else a plain task list (ictasks' tasklist.dat). Every
problem is a `TaskSourceError` naming `file:line` (the path as the user gave it; only a file
that cannot be read at all has no line) and a hint saying what to do. `Task.source` is
`<file name>:<line>`.

params.csv
- The header row names the columns; every data row is one task. A row becomes
  `--name=value` items in column order (arg_style "equals": a value starting with `-` survives
  argparse), or `--name`, `value` (arg_style "space").
- An EMPTY cell means "omit this argument for this row", so the program's default applies.
  (There is no way to pass an empty string without an args template.)
- Values arrive byte-exact as argv items: never stripped, never parsed by a shell, so quotes,
  `$()`, backticks, `;`, newlines inside quoted cells, unicode and a leading `-` are plain data.
  Header names are not stripped either: ` name` is refused rather than guessed at.
- Quoting is strict: a quote that is never closed is an error at the row where it starts,
  instead of silently swallowing the rest of the file into one value.
- Blank lines are skipped and do not count as rows.
- A `task_id` column gives the task id and is not passed as an argument; otherwise the id is
  the 1-based data-row number. `Task.params` is the whole row, `task_id` included.
- Columns named `state`, `exit_code`, `attempts` or `duration_s` are refused: results.csv adds
  columns of those names after the parameters (a YAML `args` name `task_id` likewise).
- An args template (`--dataset {dataset} --var={var}`) replaces the `--name=value` items. It is
  split once, like a POSIX shell would split it, and `{column}` is then substituted inside each
  word, so a value never creates or merges words; `{{` and `}}` are literal braces. Here an
  empty cell substitutes the empty string. A placeholder with no column is an error; a column
  the template does not use is fine. An empty template counts as no template. Templates apply
  to params tables only: with another format they are refused.

YAML task file
- `tasks: {items: [...]}`, `tasks: [...]` or a top-level list. Each item has an `id` (string
  or integer) and exactly one of: `args` (a mapping turned into argv like a CSV row; `null` or
  `""` omits the argument, other scalars are written as Python's str() does, so quote values
  whose exact spelling matters), `argv` (a list appended to COMMAND), `command` (a string split
  like a task-list line, or a list: the full command, replacing COMMAND) or `launch_cmd`
  (ictasks' key, same as a `command` string). Other keys are ignored, so an ictasks file that
  carries its own bookkeeping (state, timings) loads as is.

Plain task list
- One command per line, split as a POSIX shell splits words (quotes, backslashes, `#` starting
  a comment at the beginning of a word only, so `--color=#fff` stays whole) but never run by a
  shell: `;`, `|`, `&&`, `$VAR` and globs reach the program literally. Blank lines and comment
  lines are skipped; the task id is the line number. A trailing `\\` does not continue a line.

All formats
- A UTF-8 byte order mark at the start is dropped; CRLF line endings are fine. Anything not
  UTF-8 is refused at the line of the first bad byte, and a NUL anywhere is refused because
  NUL cannot travel in argv: a raw NUL byte, and in YAML one written as an escape (`"\\0"`,
  `"\\x00"`, `"\\u0000"`) at the line of the value that holds it; likewise an escaped lone
  surrogate (`"\\ud800"`), which is no character. YAML is read within bounds (bounded_yaml).
- A value may be of any length here; whether a program can be started with it is checked when
  the run is planned (exec_limits), naming the task's line.
- Task ids match `[A-Za-z0-9][A-Za-z0-9._-]{0,99}` (they name folders in the store and claims),
  and are none of the files `collect` writes beside the task folders (`results.csv`, `skipped.csv`,
  in any case).
  Two ids that differ only in case are refused as duplicates, because some filesystems fold
  case and the store keeps one folder per task.
"""

from __future__ import annotations

import csv
import io
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from parallel_engine.bounded_yaml import BoundedLoader, YamlRefused
from parallel_engine.errors import ConfigError, TaskSourceError, brief, shown
from parallel_engine.model import COLLECT_FILES, RESERVED_COLUMNS, Task, TaskList
from parallel_engine.protocol import TASK_ID_RE

ARG_STYLES = ("equals", "space")
TASK_ID_COLUMN = "task_id"
OPTION_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
OPTION_NAME_RULE = "letters, digits, '_', '.' and '-', starting with a letter or '_'"
TASK_ID_RULE = (
    "1 to 100 characters: letters, digits, '.', '_' and '-', starting with a letter or digit"
)
YAML_KINDS = ("args", "argv", "command", "launch_cmd")

_BOM = b"\xef\xbb\xbf"
_SHELL_BLANKS = " \t\r\n"
_SURROGATE = re.compile("[\ud800-\udfff]")


def load_tasks(
    path: str | Path, *, args_template: str | None = None, arg_style: str = "equals"
) -> TaskList:
    """Read a task source into Tasks, refusing anything that would surprise at run time."""
    if arg_style not in ARG_STYLES:
        raise ConfigError(
            f"unknown argument style {shown(arg_style)}",
            hint=f"use one of: {', '.join(ARG_STYLES)}",
        )
    src = _Source(Path(path), str(path))
    suffix = src.path.suffix.lower()
    if suffix == ".csv":
        return _load_params(src, args_template or None, arg_style)
    if args_template:
        raise TaskSourceError(
            f"{src.shown}: an args template applies to a params table (.csv) only",
            hint="drop the args template, or give the parameters as a .csv table",
        )
    if suffix in (".yaml", ".yml"):
        return _load_yaml(src, arg_style)
    return _load_task_list(src)


def load_source(
    source: object, *, args_template: str | None = None,
    arg_style: str = "equals",
) -> TaskList:
    """A task file (load_tasks), or the rows of a params table given as a list of dicts or a pandas
    DataFrame: read like params.csv, with the same checks, errors naming the row (from 1)."""
    if isinstance(source, (str, Path)):
        return load_tasks(source, args_template=args_template, arg_style=arg_style)
    if _is_dataframe(source):
        frame: Any = source
        twice = sorted({str(name) for name in frame.columns[frame.columns.duplicated()]})
        if twice:
            raise TaskSourceError(f"DataFrame: column name {shown(twice[0])} appears twice",
                                  hint="give every column its own name")
        if not all(isinstance(name, str) for name in frame.columns):
            names = ", ".join(shown(name) for name in frame.columns)
            raise TaskSourceError(f"DataFrame: every column name must be text, these are: {names}",
                                  hint="rename the columns, e.g. frame.columns = frame.columns.map(str)")
        return load_rows(frame.to_dict(orient="records"), "DataFrame", args_template=args_template,
                         arg_style=arg_style)
    if isinstance(source, Sequence) and not isinstance(source, (str, bytes)):
        rows: Any = source  # each row is checked
        return load_rows(rows, "list of dicts", args_template=args_template, arg_style=arg_style)
    raise TaskSourceError(f"tasks of type {type(source).__name__} are not a task source",
                          hint="give a path (params.csv, a YAML task file, a task list), a list of dicts, "
                               "or a pandas DataFrame")


def load_rows(
    rows: Sequence[Mapping[str, object]], shown_as: str, *, args_template: str | None = None,
    arg_style: str = "equals",
) -> TaskList:
    """One task per row: the first row's keys are the columns (in its order), as params.csv's header."""
    if arg_style not in ARG_STYLES:
        raise ConfigError(f"unknown argument style {shown(arg_style)}", hint=f"use one of: {', '.join(ARG_STYLES)}")
    src = _Source(Path(shown_as), shown_as, unit="row")
    if not rows:
        raise TaskSourceError(f"{shown_as}: no rows: no tasks", hint="give one row per task")
    header: list[str] = []
    table: list[tuple[int, list[str]]] = [(0, header)]
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, Mapping):
            raise src.error(number, f"a {type(row).__name__}, not a dict of column to value",
                            hint="give every row as a dict, e.g. {'dataset': 'a', 'var': 'x'}")
        if number == 1:
            for name in row:
                if not isinstance(name, str):
                    raise src.error(0, f"column name {shown(name)} is not text", hint="name every column with a string")
                header.append(name)
        elif set(row) != set(header):
            missing, extra = [c for c in header if c not in row], [c for c in row if c not in header]
            raise src.error(number, "its columns differ from the first row's: "
                            + "; ".join(part for part in (f"missing {_listed(missing)}" if missing else "",
                                                          f"extra {_listed([str(c) for c in extra])}" if extra else "")
                                        if part),
                            hint="give every row the same keys; None or '' omits an argument for that row")
        cells = [_cell(src, number, name, row[name]) for name in header]
        table.append((number, cells))
    return _params_table(src, table, args_template or None, arg_style)


def _is_dataframe(value: object) -> bool:
    """A pandas DataFrame, known without importing pandas (it is loaded if one was made)."""
    kind = type(value)
    return kind.__name__ == "DataFrame" and kind.__module__.split(".")[0] == "pandas"


def _cell(src: _Source, number: int, column: str, value: object) -> str:
    """A value as params.csv would hold it: text; a number as Python writes it; None or a missing
    value (NaN, pandas' NA or NaT) as an empty cell, which omits the argument."""
    if value is None or (isinstance(value, float) and value != value) or type(value).__name__ in ("NAType", "NaTType"):
        return ""
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        value = value.item()  # a numpy scalar, as the Python number it holds
        if isinstance(value, float) and value != value:
            return ""
    if isinstance(value, (str, int, float)):  # bool is an int: True, False
        text = str(value)
        _check_argv_text(src, number, text, f"column {shown(column)}")
        return text
    raise src.error(number, f"column {shown(column)} holds a {type(value).__name__}, not text or a number",
                    hint="give text, a number or None (e.g. format a date as text first)")


# --------------------------------------------------------------------------- common parts


@dataclass(frozen=True)
class _Source:
    path: Path
    shown: str  # as the user wrote it, for messages
    unit: str = "line"  # or "row": a list of dicts or a DataFrame (rows counted from 1; 0 is its columns)

    def at(self, line: int) -> str:
        if self.unit == "line":
            return f"{self.shown}:{line}"
        return f"{self.shown}, its column names" if line == 0 else f"{self.shown}, row {line}"

    def source(self, line: int) -> str:
        return f"{self.path.name}:{line}" if self.unit == "line" else f"{self.shown} row {line}"

    def error(self, line: int, message: str, hint: str) -> TaskSourceError:
        return TaskSourceError(f"{self.at(line)}: {message}", hint=hint)


def _read_text(src: _Source) -> str:
    """The file as text: UTF-8, no BOM, no NUL (which no argv item can carry)."""
    try:
        data = src.path.read_bytes()
    except FileNotFoundError:
        raise TaskSourceError(
            f"{src.shown}: no such file", hint="check the path (relative paths start here)"
        ) from None
    except IsADirectoryError:
        raise TaskSourceError(
            f"{src.shown}: is a folder, not a task file", hint="give the path of the file itself"
        ) from None
    except OSError as exc:
        raise TaskSourceError(
            f"{src.shown}: cannot be read ({exc.strerror or exc})",
            hint="check that the file exists and that you may read it",
        ) from None
    data = data.removeprefix(_BOM)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise src.error(
            line,
            f"not UTF-8 (byte 0x{data[exc.start]:02x} cannot be decoded)",
            hint="save the file as UTF-8",
        ) from None
    nul = text.find("\0")
    if nul >= 0:
        raise src.error(
            text.count("\n", 0, nul) + 1,
            "contains a NUL character: NUL cannot travel in argv",
            hint="remove the NUL character (was a binary file given by mistake?)",
        )
    if not text.strip():
        raise src.error(1, "the file is empty: no tasks", hint="add at least one task")
    return text


def _check_argv_text(src: _Source, line: int, text: str, what: str) -> None:
    """YAML escapes can make what the raw-byte checks never saw: a NUL (the spawn would refuse
    it), or a lone surrogate (`\\ud800`: not UTF-8, no argv item can carry it as text)."""
    if "\0" in text:
        raise src.error(
            line,
            f"{what} contains a NUL character (written as an escape such as \\0): "
            "NUL cannot travel in argv",
            hint="remove the NUL escape (\\0, \\x00 or \\u0000) from the value",
        )
    surrogate = _SURROGATE.search(text)
    if surrogate:
        raise src.error(
            line,
            f"{what} contains a lone surrogate (an escape such as \\u{ord(surrogate.group()):04x}): "
            "it is not a character, and cannot travel in argv as UTF-8",
            hint="write the character itself, or its escape as one \\U0001xxxx (not a surrogate pair)",
        )


def _listed(names: list[str], most: int = 10) -> str:
    """Names for a message: the first `most`, and how many there are in all."""
    text = ", ".join(brief(name, 40) for name in names[:most])
    return text + (f", ... ({len(names)} in all)" if len(names) > most else "")


def _check_id(src: _Source, line: int, task_id: str) -> None:
    if not TASK_ID_RE.fullmatch(task_id):
        raise src.error(
            line,
            f"invalid task id {shown(task_id)}: a task id is {TASK_ID_RULE}",
            hint="change the id so that it follows that rule",
        )
    if task_id.casefold() in COLLECT_FILES:
        raise src.error(
            line,
            f"task id {task_id!r} is reserved: `collect` writes {', '.join(COLLECT_FILES)} beside the task folders",
            hint=f"rename the task (e.g. to 'task-{task_id}')",
        )


def _check_unique_ids(src: _Source, tasks: Iterable[tuple[int, Task]]) -> None:
    seen: dict[str, tuple[str, int]] = {}
    for line, task in tasks:
        key = task.id.casefold()
        if key in seen:
            first_id, first_line = seen[key]
            same = "" if first_id == task.id else f" (as {first_id!r}: ids differ only in case)"
            raise src.error(
                line,
                f"duplicate task id {task.id!r}, already used at {src.unit} {first_line}{same}",
                hint=f"give every task its own id; see {src.at(first_line)} and {src.at(line)}",
            )
        seen[key] = (task.id, line)


def _check_option_name(src: _Source, line: int, name: str, what: str) -> None:
    if OPTION_NAME_RE.fullmatch(name):
        return
    hint = f"{what}s become option names (--NAME): use {OPTION_NAME_RULE}"
    if name != name.strip():
        hint += "; remove the spaces around it"
    raise src.error(line, f"{what} {shown(name)} cannot be an option name", hint=hint)


def _check_not_reserved(src: _Source, line: int, name: str, what: str, reserved: tuple[str, ...]) -> None:
    if name in reserved:
        raise src.error(
            line,
            f"{what} {shown(name)} is taken: results.csv and Run.results() add their own columns "
            f"{', '.join(reserved)} after the parameters",
            hint=f"rename {shown(name)} (e.g. to 'my_{name}') and the option your program reads",
        )


def _option_argv(values: Iterable[tuple[str, str]], arg_style: str) -> tuple[str, ...]:
    """`--name=value` (or `--name`, `value`) items; an empty value omits the argument."""
    argv: list[str] = []
    for name, value in values:
        if value == "":
            continue
        if arg_style == "equals":
            argv.append(f"--{name}={value}")
        else:
            argv += [f"--{name}", value]
    return tuple(argv)


def shell_split(text: str) -> list[str]:
    """Split `text` into words as sh does, without running anything.

    shlex's own comment handling cuts `a#b` to `a`; sh starts a comment only at the beginning
    of a word, so comments are handled here: `#` as the first raw character of a word skips to
    the end of the line. Raises ValueError on unbalanced quotes or a trailing backslash.
    """
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    stream = io.StringIO(text)
    lexer.instream = stream  # a file shlex reads from, whose position this loop moves past comments
    words: list[str] = []
    while True:
        start = stream.tell()
        while start < len(text) and text[start] in _SHELL_BLANKS:
            start += 1
        if start < len(text) and text[start] == "#":
            end = text.find("\n", start)
            if end < 0:
                break
            stream.seek(end)
            continue
        word = lexer.get_token()
        if word is None:
            break
        words.append(word)
    return words


# --------------------------------------------------------------------------- params.csv


@dataclass(frozen=True)
class _Field:
    column: str


_Piece = str | _Field


def _load_params(src: _Source, template: str | None, arg_style: str) -> TaskList:
    return _params_table(src, _read_rows(src, _read_text(src)), template, arg_style)


def _params_table(src: _Source, rows: list[tuple[int, list[str]]], template: str | None, arg_style: str) -> TaskList:
    """Tasks from a header row and data rows, each with the line (or row) it came from."""
    if not rows:
        raise src.error(1, "the file is empty: no tasks", hint="add a header row and task rows")
    header_line, header = rows[0]
    _check_header(src, header_line, header)
    compiled = _compile_template(src, header_line, header, template) if template else None
    if len(rows) == 1:
        raise src.error(
            header_line,
            "a header row but no task rows: no tasks",
            hint="add one row per task below the header",
        )
    tasks: list[tuple[int, Task]] = []
    for number, (line, row) in enumerate(rows[1:], start=1):
        if len(row) != len(header):
            raise src.error(
                line,
                f"this row has {len(row)} cells, the header has {len(header)}",
                hint="give every row one cell per column; quote a value that contains a comma",
            )
        params = dict(zip(header, row, strict=True))
        if TASK_ID_COLUMN in params:
            task_id = params[TASK_ID_COLUMN]
            _check_id(src, line, task_id)
        else:
            task_id = str(number)
        if compiled is not None:
            argv = _render(compiled, params)
        else:
            args = ((name, value) for name, value in params.items() if name != TASK_ID_COLUMN)
            argv = _option_argv(args, arg_style)
        tasks.append((line, Task(id=task_id, argv=argv, params=params, source=src.source(line))))
    _check_unique_ids(src, tasks)
    return TaskList(path=src.shown, tasks=tuple(t for _, t in tasks), columns=tuple(header))


def _read_rows(src: _Source, text: str) -> list[tuple[int, list[str]]]:
    """Non-blank rows with the physical line each starts on (quoted cells may span lines).

    A cell may be as long as the file: csv's own limit (128 Ki characters, process-wide) is
    raised, never lowered, so a long cell is judged by what a program can take as an argument
    (api.run checks that, naming the cell's line) instead of a csv error about quotes.
    """
    if csv.field_size_limit() <= len(text):
        csv.field_size_limit(len(text) + 1)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[tuple[int, list[str]]] = []
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return rows
        except csv.Error as exc:
            raise src.error(
                start,
                f"malformed CSV in the row starting here: {exc}",
                hint='close every quoted value with " and write a quote inside one as ""',
            ) from None
        if row:
            rows.append((start, row))


def _check_header(src: _Source, line: int, header: list[str]) -> None:
    first: dict[str, int] = {}
    for position, name in enumerate(header, start=1):
        if name == "":
            raise src.error(
                line,
                f"column {position} of the header has no name",
                hint="name every column (or remove the empty column)",
            )
        _check_option_name(src, line, name, "column name")
        _check_not_reserved(src, line, name, "column name", RESERVED_COLUMNS)
        if name in first:
            raise src.error(
                line,
                f"column name {shown(name)} appears twice (columns {first[name]} and {position})",
                hint="give every column its own name",
            )
        first[name] = position


def _compile_template(
    src: _Source, header_line: int, header: list[str], template: str
) -> list[list[_Piece]]:
    """Split once, then find placeholders per word: values can never change the word split."""
    try:
        words = shlex.split(template, posix=True)
    except ValueError as exc:
        raise TaskSourceError(
            f"args template {shown(template)} cannot be split into words: {exc}",
            hint="balance the quotes in the args template",
        ) from None
    compiled = [_parse_word(template, word) for word in words]
    columns = set(header)
    for pieces in compiled:
        for piece in pieces:
            if isinstance(piece, _Field) and piece.column not in columns:
                raise src.error(
                    header_line,
                    f"args template placeholder {{{brief(piece.column)}}} names no column; "
                    f"the columns are: {_listed(header)}",
                    hint=f"fix the placeholder, or add a column {shown(piece.column)} to the header",
                )
    return compiled


def _parse_word(template: str, word: str) -> list[_Piece]:
    pieces: list[_Piece] = []
    literal: list[str] = []
    i = 0
    while i < len(word):
        ch = word[i]
        if ch in "{}" and word[i : i + 2] == ch * 2:
            literal.append(ch)
            i += 2
            continue
        if ch == "}":
            raise _template_error(template, f"a lone '}}' in {shown(word)}")
        if ch == "{":
            end = word.find("}", i + 1)
            name = word[i + 1 : end] if end >= 0 else ""
            if end < 0 or "{" in name:
                raise _template_error(template, f"a '{{' that is never closed in {shown(word)}")
            if literal:
                pieces.append("".join(literal))
                literal = []
            pieces.append(_Field(name))
            i = end + 1
            continue
        literal.append(ch)
        i += 1
    if literal:
        pieces.append("".join(literal))
    return pieces


def _template_error(template: str, what: str) -> TaskSourceError:
    return TaskSourceError(
        f"args template {shown(template)}: {what}",
        hint="write {column} for a value, and {{ or }} for a literal brace",
    )


def _render(compiled: list[list[_Piece]], params: dict[str, str]) -> tuple[str, ...]:
    return tuple(
        "".join(params[p.column] if isinstance(p, _Field) else p for p in pieces)
        for pieces in compiled
    )


# --------------------------------------------------------------------------- YAML task file


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _load_yaml(src: _Source, arg_style: str) -> TaskList:
    text = _read_text(src)
    loader: BoundedLoader | None = None
    try:
        loader = BoundedLoader(text)
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except YamlRefused as exc:
        raise src.error(exc.line, exc.problem, hint=exc.hint) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise src.error(
            line, f"not valid YAML: {exc.problem or exc}", hint="fix the YAML syntax there"
        ) from None
    except yaml.YAMLError as exc:
        raise src.error(1, f"not valid YAML: {exc}", hint="fix the YAML syntax") from None
    finally:
        if loader is not None:
            loader.dispose()
    if root is None:
        raise src.error(1, "the file is empty: no tasks", hint="add a list of tasks")
    items_node, items = _find_items(src, root, data)
    if not items:
        raise src.error(_line(items_node), "the task list is empty: no tasks", hint="add tasks")
    tasks = [
        _yaml_task(src, node, item, arg_style)
        for node, item in zip(items_node.value, items, strict=True)
    ]
    _check_unique_ids(src, tasks)
    return TaskList(path=src.shown, tasks=tuple(t for _, t in tasks))


_SHAPE_HINT = "write `tasks: [...]`, `tasks: {items: [...]}` or a list of tasks at the top"


def _child(node: yaml.MappingNode, key: str) -> yaml.Node | None:
    for key_node, value_node in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
            found: yaml.Node = value_node
            return found
    return None


def _find_items(src: _Source, root: yaml.Node, data: Any) -> tuple[yaml.SequenceNode, list[Any]]:
    node, value = root, data
    if isinstance(node, yaml.MappingNode) and isinstance(value, dict):
        tasks_node = _child(node, "tasks")
        if tasks_node is None or "tasks" not in value:
            raise src.error(_line(node), "no `tasks` key at the top", hint=_SHAPE_HINT)
        node, value = tasks_node, value["tasks"]
        if isinstance(node, yaml.MappingNode) and isinstance(value, dict):
            items_node = _child(node, "items")
            if items_node is None or "items" not in value:
                raise src.error(_line(node), "`tasks` has no `items` list", hint=_SHAPE_HINT)
            node, value = items_node, value["items"]
    if value is None:
        raise src.error(_line(node), "the task list is empty: no tasks", hint="add tasks")
    if not isinstance(node, yaml.SequenceNode) or not isinstance(value, list):
        raise src.error(_line(node), "expected a list of tasks here", hint=_SHAPE_HINT)
    return node, value


def _scalar(value: Any) -> str | None:
    """A YAML scalar as an argv string; None for something that is not a scalar."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, (list, dict, set, bytes)):
        return None
    return str(value)


def _yaml_task(src: _Source, node: yaml.Node, item: Any, arg_style: str) -> tuple[int, Task]:
    line = _line(node)
    if not isinstance(node, yaml.MappingNode) or not isinstance(item, dict):
        raise src.error(
            line,
            "a task must be a mapping with an `id` and one of: " + ", ".join(YAML_KINDS),
            hint="write e.g. `- {id: a1, args: {dataset: x}}`",
        )
    key_lines = _key_lines(src, node)
    if "id" not in item:
        raise src.error(line, "this task has no `id`", hint="add `id:` (a string or an integer)")
    raw_id = item["id"]
    id_line = key_lines.get("id", line)
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
        raise src.error(
            id_line,
            f"task id {shown(raw_id)} is not a string or an integer",
            hint="quote the id",
        )
    task_id = str(raw_id)
    _check_id(src, id_line, task_id)
    kinds = [kind for kind in YAML_KINDS if kind in item]
    if len(kinds) != 1:
        found = "none" if not kinds else " and ".join(kinds)
        raise src.error(
            line,
            f"task {shown(task_id)} has {found} of: {', '.join(YAML_KINDS)}; it needs exactly one",
            hint="give `args` (a mapping), `argv` (a list), `command` or `launch_cmd`",
        )
    kind = kinds[0]
    value = item[kind]
    where = key_lines.get(kind, line)
    source = src.source(line)
    if kind == "args":
        params = _yaml_args(src, where, node, value)
        argv = _option_argv(params.items(), arg_style)
        return line, Task(id=task_id, argv=argv, params=params, source=source)
    if kind == "argv":
        words = _yaml_words(src, where, kind, value, _child(node, kind))
        return line, Task(id=task_id, argv=tuple(words), source=source)
    if isinstance(value, str):
        _check_argv_text(src, where, value, f"`{kind}`")
        try:
            words = shell_split(value)
        except ValueError as exc:
            raise src.error(
                where, f"`{kind}` cannot be split into words: {exc}", hint="balance the quotes"
            ) from None
    elif kind == "command" and isinstance(value, list):
        words = _yaml_words(src, where, kind, value, _child(node, kind))
    else:
        what = "a string or a list of strings" if kind == "command" else "a string"
        raise src.error(where, f"`{kind}` must be {what}", hint=f"write `{kind}:` as {what}")
    if not words:
        raise src.error(where, f"`{kind}` is empty", hint="give the command to run")
    return line, Task(id=task_id, command=tuple(words), source=source)


def _key_lines(src: _Source, node: yaml.MappingNode) -> dict[str, int]:
    """Line of each key; a repeated key is refused (YAML loaders silently keep the last)."""
    lines: dict[str, int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            continue
        if key_node.value in lines:
            raise src.error(
                _line(key_node),
                f"key {shown(key_node.value)} repeated (first at line {lines[key_node.value]})",
                hint="keep one of the two",
            )
        lines[key_node.value] = _line(key_node)
    return lines


def _yaml_args(src: _Source, line: int, item_node: yaml.MappingNode, value: Any) -> dict[str, str]:
    if value is None:
        value = {}
    args_node = _child(item_node, "args")
    if not isinstance(value, dict) or not isinstance(args_node, yaml.MappingNode):
        raise src.error(
            line, "`args` must be a mapping of name: value", hint="write `args: {name: value}`"
        )
    key_lines = _key_lines(src, args_node)
    params: dict[str, str] = {}
    for name, raw in value.items():
        name_line = key_lines.get(str(name), line)
        if not isinstance(name, str):
            raise src.error(
                name_line, f"argument name {shown(name)} is not a string", hint="quote the name"
            )
        _check_option_name(src, name_line, name, "argument name")
        _check_not_reserved(src, name_line, name, "argument name", (TASK_ID_COLUMN, *RESERVED_COLUMNS))
        text = "" if raw is None else _scalar(raw)
        if text is None:
            raise src.error(
                name_line,
                f"argument {shown(name)} has a {type(raw).__name__} value; it needs a single value",
                hint="give a string or a number (one task per parameter set)",
            )
        _check_argv_text(src, name_line, text, f"argument {shown(name)}")
        params[name] = text
    return params


def _yaml_words(
    src: _Source, line: int, kind: str, value: Any, node: yaml.Node | None
) -> list[str]:
    if not isinstance(value, list):
        raise src.error(line, f"`{kind}` must be a list of strings", hint=f"write `{kind}: [a, b]`")
    lines = [_line(n) for n in node.value] if isinstance(node, yaml.SequenceNode) else []
    words: list[str] = []
    for index, word in enumerate(value):
        text = _scalar(word)
        if text is None:
            raise src.error(
                line,
                f"`{kind}` item {shown(word)} is not a string",
                hint="every item must be a single string (quote it)",
            )
        at = lines[index] if index < len(lines) else line
        _check_argv_text(src, at, text, f"`{kind}` item {index + 1}")
        words.append(text)
    return words


# --------------------------------------------------------------------------- plain task list


def _load_task_list(src: _Source) -> TaskList:
    text = _read_text(src)
    tasks: list[tuple[int, Task]] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r")
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            words = shell_split(line)
        except ValueError as exc:
            raise src.error(
                number,
                f"cannot split this line into words: {exc}",
                hint="balance the quotes; each line is one whole command (no `\\` continuation)",
            ) from None
        if not words:
            continue
        task = Task(id=str(number), command=tuple(words), source=src.source(number))
        tasks.append((number, task))
    if not tasks:
        raise src.error(
            1, "only blank and comment lines: no tasks", hint="add one command per line"
        )
    return TaskList(path=src.shown, tasks=tuple(t for _, t in tasks))
