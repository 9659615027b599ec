"""Task sources: params.csv, YAML task files and plain task lists, and every refusal."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from parallel_engine.errors import ConfigError, TaskSourceError
from parallel_engine.tasks import load_tasks, shell_split
from tests.helpers import alias_bomb
from tests.hostile import VALUES


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, str):
        text = text.encode("utf-8")
    path.write_bytes(text)
    return path


def csv_text(rows: list[list[str]], lineterminator: str = "\n") -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator=lineterminator).writerows(rows)
    return buf.getvalue()


def refused(path: Path, line: int | None, *fragments: str, **kwargs: str) -> TaskSourceError:
    """Load, expect a TaskSourceError naming path:line and the fragments, with a hint."""
    with pytest.raises(TaskSourceError) as info:
        load_tasks(path, **kwargs)
    message = str(info.value)
    where = f"{path}:{line}" if line is not None else str(path)
    assert where in message, message
    for fragment in fragments:
        assert fragment in message, message
    assert info.value.hint, "every refusal says what to do"
    return info.value


# --------------------------------------------------------------------------- params.csv


def test_csv_row_becomes_equals_args_in_column_order(tmp_path: Path) -> None:
    path = write(tmp_path / "params.csv", "dataset,var,seed\nera5,t2m,1\ncmip6,tp,2\n")
    tl = load_tasks(path)
    assert tl.path == str(path)
    assert tl.columns == ("dataset", "var", "seed")
    assert [t.id for t in tl.tasks] == ["1", "2"]
    assert tl.tasks[0].argv == ("--dataset=era5", "--var=t2m", "--seed=1")
    assert tl.tasks[1].argv == ("--dataset=cmip6", "--var=tp", "--seed=2")
    assert tl.tasks[0].params == {"dataset": "era5", "var": "t2m", "seed": "1"}
    assert tl.tasks[0].command is None


def test_csv_space_style_gives_name_and_value_as_two_items(tmp_path: Path) -> None:
    path = write(tmp_path / "params.csv", "dataset,var\nera5,-5\n")
    (task,) = load_tasks(path, arg_style="space").tasks
    assert task.argv == ("--dataset", "era5", "--var", "-5")


def test_unknown_arg_style_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path / "params.csv", "a\n1\n")
    with pytest.raises(ConfigError, match="colon"):
        load_tasks(path, arg_style="colon")


def test_csv_source_is_file_name_and_physical_line(tmp_path: Path) -> None:
    path = write(tmp_path / "params.csv", 'a,b\n1,"two\nlines"\n\n3,4\n')
    tl = load_tasks(path)
    assert [t.source for t in tl.tasks] == ["params.csv:2", "params.csv:5"]
    assert [t.id for t in tl.tasks] == ["1", "2"], "blank lines do not count as rows"


@pytest.mark.parametrize("style", ["equals", "space"])
def test_empty_cell_omits_the_argument(tmp_path: Path, style: str) -> None:
    path = write(tmp_path / "params.csv", "a,b,c\n1,,3\n,,\n")
    first, second = load_tasks(path, arg_style=style).tasks
    if style == "equals":
        assert first.argv == ("--a=1", "--c=3")
    else:
        assert first.argv == ("--a", "1", "--c", "3")
    assert second.argv == ()
    assert first.params == {"a": "1", "b": "", "c": "3"}


def test_task_id_column_names_tasks_and_is_not_an_argument(tmp_path: Path) -> None:
    path = write(tmp_path / "params.csv", "x,task_id\n1,run-a\n2,run.b_2\n")
    tl = load_tasks(path)
    assert [t.id for t in tl.tasks] == ["run-a", "run.b_2"]
    assert tl.tasks[0].argv == ("--x=1",)
    assert tl.tasks[0].params == {"x": "1", "task_id": "run-a"}
    assert tl.columns == ("x", "task_id")


@pytest.mark.parametrize("style", ["equals", "space"])
def test_hostile_values_arrive_byte_exact_in_argv(tmp_path: Path, style: str) -> None:
    rows = [["task_id", "value"]] + [[f"t{i}", v] for i, v in enumerate(VALUES)]
    path = write(tmp_path / "params.csv", csv_text(rows))
    tl = load_tasks(path, arg_style=style)
    assert len(tl.tasks) == len(VALUES)
    for task, value in zip(tl.tasks, VALUES, strict=True):
        expected = (f"--value={value}",) if style == "equals" else ("--value", value)
        assert task.argv == expected
        assert task.params["value"] == value


def test_hostile_values_survive_a_real_exec(tmp_path: Path) -> None:
    rows = [["value"]] + [[v] for v in VALUES]
    path = write(tmp_path / "params.csv", csv_text(rows, lineterminator="\r\n"))
    tl = load_tasks(path, arg_style="space")
    argv = [item for task in tl.tasks for item in task.argv]
    out = subprocess.run(
        [sys.executable, "-c", "import json,sys; print(json.dumps(sys.argv[1:]))", *argv],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout) == argv


def test_csv_with_bom_and_crlf_loads_cleanly(tmp_path: Path) -> None:
    path = write(tmp_path / "params.csv", b"\xef\xbb\xbfname,val\r\nA,1\r\nB,2\r\n")
    tl = load_tasks(path)
    assert tl.columns == ("name", "val"), "the BOM is not part of the first column name"
    assert tl.tasks[0].argv == ("--name=A", "--val=1")
    assert tl.tasks[1].argv == ("--name=B", "--val=2"), "no stray \\r in values"
    assert tl.tasks[1].source == "params.csv:3"


def test_quoted_crlf_inside_a_value_is_kept(tmp_path: Path) -> None:
    path = write(tmp_path / "params.csv", b'a\r\n"x\r\ny"\r\n')
    (task,) = load_tasks(path).tasks
    assert task.argv == ("--a=x\r\ny",)


def test_csv_extension_is_case_insensitive(tmp_path: Path) -> None:
    path = write(tmp_path / "PARAMS.CSV", "a\n1\n")
    assert load_tasks(path).tasks[0].argv == ("--a=1",)


# --------------------------------------------------------------------------- args template


def test_template_substitutes_columns_and_ignores_unused_ones(tmp_path: Path) -> None:
    path = write(tmp_path / "params.csv", "dataset,var,unused\nera5,t2m,zzz\n")
    (task,) = load_tasks(path, args_template="--dataset {dataset} --var={var}").tasks
    assert task.argv == ("--dataset", "era5", "--var=t2m")
    assert task.params["unused"] == "zzz"


def test_template_is_split_once_so_values_never_split_or_merge_words(tmp_path: Path) -> None:
    rows = [["v"]] + [[v] for v in VALUES]
    path = write(tmp_path / "params.csv", csv_text(rows))
    tl = load_tasks(path, args_template="run --v {v} 'quoted {v} word'")
    for task, value in zip(tl.tasks, VALUES, strict=True):
        assert task.argv == ("run", "--v", value, f"quoted {value} word")


def test_template_empty_cell_substitutes_empty_string(tmp_path: Path) -> None:
    path = write(tmp_path / "params.csv", "a,b\n,2\n")
    (task,) = load_tasks(path, args_template="--a {a} --b={b}").tasks
    assert task.argv == ("--a", "", "--b=2")


def test_template_double_braces_are_literal(tmp_path: Path) -> None:
    path = write(tmp_path / "params.csv", "a\nx\n")
    (task,) = load_tasks(path, args_template="{{{a}}} {{}}").tasks
    assert task.argv == ("{x}", "{}")


def test_template_can_use_task_id_and_dotted_column_names(tmp_path: Path) -> None:
    path = write(tmp_path / "params.csv", "task_id,learning.rate\nt1,0.1\n")
    (task,) = load_tasks(path, args_template="--id {task_id} --lr={learning.rate}").tasks
    assert task.argv == ("--id", "t1", "--lr=0.1")


def test_empty_template_means_no_template(tmp_path: Path) -> None:
    path = write(tmp_path / "params.csv", "a\n1\n")
    assert load_tasks(path, args_template="").tasks[0].argv == ("--a=1",)


def test_template_placeholder_without_column_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "params.csv", "dataset,var\nera5,t2m\n")
    err = refused(path, 1, "{varr}", "dataset, var", args_template="--var {varr}")
    assert "varr" in (err.hint or "")


def test_template_placeholder_error_points_at_the_header_line(tmp_path: Path) -> None:
    path = write(tmp_path / "params.csv", "\n\ndataset\nera5\n")
    refused(path, 3, "{nope}", args_template="{nope}")


@pytest.mark.parametrize("template", ["--a {a", "--a a}", "--a {{a}", "'--a {a}"])
def test_malformed_template_is_refused(tmp_path: Path, template: str) -> None:
    path = write(tmp_path / "params.csv", "a\n1\n")
    with pytest.raises(TaskSourceError) as info:
        load_tasks(path, args_template=template)
    assert "args template" in str(info.value)
    assert info.value.hint


def test_template_with_a_yaml_source_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "tasks.yaml", "- {id: a, argv: [x]}\n")
    refused(path, None, "params table", args_template="--x {x}")


# --------------------------------------------------------------------------- CSV refusals


def test_missing_file_is_refused(tmp_path: Path) -> None:
    refused(tmp_path / "nope.csv", None, "no such file")


def test_unreadable_path_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    refused(folder, None, "folder")


@pytest.mark.parametrize("name", ["params.csv", "tasks.yaml", "tasklist.dat"])
@pytest.mark.parametrize("content", [b"", b"\xef\xbb\xbf", b"\n\n  \r\n"])
def test_empty_file_is_refused_as_no_tasks(tmp_path: Path, name: str, content: bytes) -> None:
    refused(write(tmp_path / name, content), 1, "no tasks")


def test_header_without_rows_is_refused(tmp_path: Path) -> None:
    refused(write(tmp_path / "params.csv", "a,b\n"), 1, "no tasks")


def test_ragged_row_is_refused_with_both_counts(tmp_path: Path) -> None:
    path = write(tmp_path / "params.csv", "a,b,c\n1,2,3\n4,5\n")
    refused(path, 3, "2 cells", "header has 3")


def test_row_with_too_many_cells_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "params.csv", "a,b\n1,2\n3,4,5\n")
    refused(path, 3, "3 cells", "header has 2")


def test_unclosed_quote_is_refused_where_the_row_starts(tmp_path: Path) -> None:
    path = write(tmp_path / "params.csv", 'a,b\n1,2\n3,"open\n5,6\n7,8\n')
    refused(path, 3, "malformed CSV")


def test_text_after_a_closing_quote_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "params.csv", 'a,b\n1,"x"y\n')
    refused(path, 2, "malformed CSV")


def test_empty_header_name_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "params.csv", "a,,c\n1,2,3\n")
    refused(path, 1, "column 2", "no name")


def test_duplicate_header_name_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "params.csv", "a,b,a\n1,2,3\n")
    refused(path, 1, "'a'", "twice", "columns 1 and 3")


@pytest.mark.parametrize("name", ["1abc", "-x", "with space", " a", "a=b", "é", "a/b", "$x"])
def test_header_name_that_cannot_be_an_option_is_refused(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / "params.csv", csv_text([["ok", name], ["1", "2"]]))
    err = refused(path, 1, repr(name), "option name")
    if name != name.strip():
        assert "spaces" in (err.hint or "")


@pytest.mark.parametrize("name", ["a", "_a", "A9", "learning.rate", "n-layers", "x_y.z-w"])
def test_usable_header_names_are_accepted(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / "params.csv", f"{name}\n1\n")
    assert load_tasks(path).tasks[0].argv == (f"--{name}=1",)


@pytest.mark.parametrize("name", ["state", "exit_code", "attempts", "duration_s", "worker", "started_at",
                                  "finished_at", "reason", "outputs"])
def test_column_named_like_a_results_csv_column_is_refused(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / "params.csv", f"x,{name}\n1,2\n")
    err = refused(path, 1, f"column name {name!r}", "results.csv")
    assert f"my_{name}" in (err.hint or "")


@pytest.mark.parametrize("name", ["task_id", "state", "duration_s"])
def test_yaml_arg_named_like_a_results_csv_column_is_refused(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / "tasks.yaml", f"- id: a\n  args:\n    x: 1\n    {name}: 2\n")
    refused(path, 4, f"argument name {name!r}", "results.csv")


def test_non_utf8_byte_is_refused_at_its_line(tmp_path: Path) -> None:
    path = write(tmp_path / "params.csv", b"a\nok\n\xe9t\xe9\n")
    refused(path, 3, "not UTF-8", "0xe9")


def test_non_utf8_line_counts_correctly_after_a_bom(tmp_path: Path) -> None:
    path = write(tmp_path / "params.csv", b"\xef\xbb\xbfa\n\xff\n")
    refused(path, 2, "not UTF-8")


def test_nul_is_refused_at_its_line(tmp_path: Path) -> None:
    path = write(tmp_path / "params.csv", b"a,b\n1,2\n3,x\x00y\n")
    refused(path, 3, "NUL cannot travel in argv")


def test_nul_inside_a_quoted_multiline_value_is_refused_at_its_own_line(tmp_path: Path) -> None:
    path = write(tmp_path / "params.csv", b'a\n"first\nsecond\x00"\n')
    refused(path, 3, "NUL")


def test_duplicate_task_ids_are_refused_naming_both_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "params.csv", "task_id,x\na,1\nb,2\na,3\n")
    err = refused(path, 4, "'a'", "line 2")
    assert f"{path}:2" in (err.hint or "")


def test_task_ids_differing_only_in_case_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "params.csv", "task_id\nRun1\nrun1\n")
    refused(path, 3, "case", "line 2")


@pytest.mark.parametrize(
    "bad", ["", "-a", ".hidden", "a b", "a/b", "..", "é", "a:b", "x" * 101, "a;b"]
)
def test_invalid_task_id_is_refused_stating_the_rule(tmp_path: Path, bad: str) -> None:
    path = write(tmp_path / "params.csv", csv_text([["task_id", "x"], ["ok", "1"], [bad, "2"]]))
    refused(path, 3, "invalid task id", "starting with a letter or digit")


def test_longest_valid_task_id_is_accepted(tmp_path: Path) -> None:
    good = "A" + "b.-_9" * 19 + "abcd"
    assert len(good) == 100
    path = write(tmp_path / "params.csv", f"task_id\n{good}\n")
    assert load_tasks(path).tasks[0].id == good


# --------------------------------------------------------------------------- YAML


@pytest.mark.parametrize(
    "text",
    [
        "tasks:\n  items:\n    - id: a\n      argv: [x]\n",
        "tasks:\n  - id: a\n    argv: [x]\n",
        "- id: a\n  argv: [x]\n",
    ],
)
def test_yaml_accepts_all_three_shapes(tmp_path: Path, text: str) -> None:
    (task,) = load_tasks(write(tmp_path / "tasks.yaml", text)).tasks
    assert task.id == "a"
    assert task.argv == ("x",)


def test_yaml_args_mapping_becomes_argv_like_a_csv_row(tmp_path: Path) -> None:
    text = (
        "tasks:\n"
        "  - id: 7\n"
        "    args: {dataset: era5, n: 3, ratio: 0.5, flag: true, skip: null, blank: '', neg: -1}\n"
    )
    path = write(tmp_path / "tasks.yml", text)
    (task,) = load_tasks(path).tasks
    assert task.id == "7"
    assert task.argv == ("--dataset=era5", "--n=3", "--ratio=0.5", "--flag=True", "--neg=-1")
    assert task.params["n"] == "3" and task.params["skip"] == ""
    assert task.source == "tasks.yml:2"
    (spaced,) = load_tasks(path, arg_style="space").tasks
    assert spaced.argv[:2] == ("--dataset", "era5")


def test_yaml_command_string_is_split_like_a_shell(tmp_path: Path) -> None:
    text = '- id: a\n  command: python main.py --msg "hello world" --c=#fff  # note\n'
    (task,) = load_tasks(write(tmp_path / "tasks.yaml", text)).tasks
    assert task.command == ("python", "main.py", "--msg", "hello world", "--c=#fff")
    assert task.argv == ()


def test_yaml_command_list_and_launch_cmd(tmp_path: Path) -> None:
    text = (
        "tasks:\n  items:\n"
        "    - id: a\n      command: [echo, 'a b', '$(x)']\n"
        "    - id: b\n      launch_cmd: echo 'c d'\n      state: finished\n"
    )
    a, b = load_tasks(write(tmp_path / "tasks.yaml", text)).tasks
    assert a.command == ("echo", "a b", "$(x)")
    assert b.command == ("echo", "c d"), "ictasks bookkeeping keys are ignored"


def test_yaml_hostile_strings_are_byte_exact(tmp_path: Path) -> None:
    items = [{"id": f"t{i}", "args": {"v": v}, "argv": None} for i, v in enumerate(VALUES)]
    for item in items:
        del item["argv"]
    items.append({"id": "argv", "argv": list(VALUES)})
    path = write(tmp_path / "tasks.yaml", yaml.safe_dump({"tasks": items}, allow_unicode=True))
    tl = load_tasks(path)
    for task, value in zip(tl.tasks[:-1], VALUES, strict=True):
        assert task.argv == (f"--v={value}",)
    assert tl.tasks[-1].argv == tuple(VALUES)


def test_yaml_with_bom_and_crlf_loads(tmp_path: Path) -> None:
    path = write(tmp_path / "tasks.yaml", b"\xef\xbb\xbf- id: a\r\n  argv: [x]\r\n")
    (task,) = load_tasks(path).tasks
    assert task.argv == ("x",)


def test_yaml_item_without_id_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "tasks.yaml", "- id: a\n  argv: [x]\n- argv: [y]\n")
    refused(path, 3, "no `id`")


def test_yaml_item_with_no_kind_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "tasks.yaml", "- id: a\n  argz: [x]\n")
    refused(path, 1, "none of", "exactly one")


def test_yaml_item_with_two_kinds_is_refused(tmp_path: Path) -> None:
    text = "- id: a\n  argv: [x]\n\n- id: b\n  args: {}\n  command: ls\n"
    path = write(tmp_path / "tasks.yaml", text)
    refused(path, 4, "args and command", "exactly one")


def test_yaml_duplicate_ids_are_refused_naming_both_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "tasks.yaml", "- {id: 1, argv: []}\n- {id: '1', argv: []}\n")
    err = refused(path, 2, "duplicate task id", "line 1")
    assert f"{path}:1" in (err.hint or "")


@pytest.mark.parametrize("bad_id", ["'a b'", "true", "1.5", "[a]", "'-x'"])
def test_yaml_invalid_id_is_refused(tmp_path: Path, bad_id: str) -> None:
    path = write(tmp_path / "tasks.yaml", f"- id: ok\n  argv: []\n- argv: []\n  id: {bad_id}\n")
    refused(path, 4, "task id")


def test_yaml_bad_arg_name_is_refused_at_its_line(tmp_path: Path) -> None:
    path = write(tmp_path / "tasks.yaml", "- id: a\n  args:\n    good: 1\n    'bad name': 2\n")
    refused(path, 4, "'bad name'", "option name")


def test_yaml_nested_arg_value_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "tasks.yaml", "- id: a\n  args:\n    xs: [1, 2]\n")
    refused(path, 3, "'xs'", "list")


def test_yaml_args_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "tasks.yaml", "- id: a\n  args: [x]\n")
    refused(path, 2, "`args` must be a mapping")


def test_yaml_argv_that_is_not_a_list_of_strings_is_refused(tmp_path: Path) -> None:
    refused(write(tmp_path / "a.yaml", "- id: a\n  argv: x\n"), 2, "list of strings")
    refused(write(tmp_path / "b.yaml", "- id: a\n  argv: [x, {y: 1}]\n"), 2, "not a string")


def test_yaml_command_with_unbalanced_quote_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "tasks.yaml", "- id: a\n  command: echo 'oops\n")
    refused(path, 2, "`command`", "quotation")


def test_yaml_empty_command_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "tasks.yaml", "- id: a\n  launch_cmd: '  # only a comment'\n")
    refused(path, 2, "empty")


def test_yaml_repeated_key_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "tasks.yaml", "- id: a\n  argv: [x]\n  id: b\n")
    refused(path, 3, "'id' repeated", "line 1")


def test_yaml_item_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "tasks.yaml", "- {id: a, argv: []}\n- just a string\n")
    refused(path, 2, "must be a mapping")


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("other: 1\n", 1, "no `tasks`"),
        ("x: 1\ntasks: 3\n", 2, "list of tasks"),
        ("tasks:\n  other: []\n", 2, "no `items`"),
        ("tasks: []\n", 1, "no tasks"),
        ("tasks:\n", 1, "no tasks"),
        ("tasks:\n  items:\n", 2, "no tasks"),
        ("just text\n", 1, "list of tasks"),
    ],
)
def test_yaml_wrong_shape_is_refused(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    refused(write(tmp_path / "tasks.yaml", text), line, fragment)


def test_yaml_syntax_error_is_refused_at_its_line(tmp_path: Path) -> None:
    path = write(tmp_path / "tasks.yaml", "- id: a\n  argv: [x\n- id: b\n")
    with pytest.raises(TaskSourceError) as info:
        load_tasks(path)
    assert f"{path}:" in str(info.value) and "not valid YAML" in str(info.value)


def test_yaml_unsafe_tag_is_refused_not_executed(tmp_path: Path) -> None:
    path = write(tmp_path / "tasks.yaml", "- id: !!python/object/apply:os.getpid []\n  argv: []\n")
    refused(path, 1, "not valid YAML")


def test_yaml_nul_and_bad_bytes_are_refused(tmp_path: Path) -> None:
    refused(write(tmp_path / "a.yaml", b'- id: a\n  argv: ["x\x00"]\n'), 2, "NUL")
    refused(write(tmp_path / "b.yaml", b"- id: a\n\n  argv: [\xfe]\n"), 3, "not UTF-8")


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ('- id: a\n  command: "echo \\0x"\n', 2, "`command`"),
        ('- id: a\n  launch_cmd: "echo \\x00"\n', 2, "`launch_cmd`"),
        ('- id: a\n  command: [echo, "\\u0000"]\n', 2, "`command` item 2"),
        ('- id: a\n  args: {x: "a\\0b"}\n', 2, "argument 'x'"),
        ('- id: a\n  args:\n    ok: 1\n    x: "a\\0b"\n', 4, "argument 'x'"),
        ('- id: a\n  argv: ["a\\0b"]\n', 2, "`argv` item 1"),
        ('- id: a\n  argv:\n    - fine\n    - "a\\0b"\n', 4, "`argv` item 2"),
    ],
    ids=["command", "launch_cmd", "command-list", "args", "args-multiline", "argv", "argv-multiline"],
)
def test_yaml_nul_written_as_an_escape_is_refused_at_its_line(
    tmp_path: Path, text: str, line: int, fragment: str
) -> None:
    path = write(tmp_path / "tasks.yaml", text)
    assert b"\0" not in path.read_bytes()  # no raw NUL: only the YAML escape makes one
    refused(path, line, fragment, "NUL cannot travel in argv")


# --------------------------------------------------------------------------- plain task list


def test_task_list_splits_like_a_shell_without_running_one(tmp_path: Path) -> None:
    text = (
        "# a comment\n"
        "\n"
        "python main.py --msg 'hello world' --n=3\n"
        "   # indented comment\n"
        'echo "$HOME" `id` $(x) a;b | c && d *  # trailing\n'
        "prog --color=#fff \"a#b\" 'it'\\''s'\n"
    )
    tl = load_tasks(write(tmp_path / "tasklist.dat", text))
    assert [t.id for t in tl.tasks] == ["3", "5", "6"]
    assert [t.source for t in tl.tasks] == ["tasklist.dat:3", "tasklist.dat:5", "tasklist.dat:6"]
    assert tl.tasks[0].command == ("python", "main.py", "--msg", "hello world", "--n=3")
    assert tl.tasks[1].command == ("echo", "$HOME", "`id`", "$(x)", "a;b", "|", "c", "&&", "d", "*")
    assert tl.tasks[2].command == ("prog", "--color=#fff", "a#b", "it's")
    assert all(t.argv == () for t in tl.tasks)


def test_task_list_with_bom_and_crlf(tmp_path: Path) -> None:
    path = write(tmp_path / "tasks.txt", b"\xef\xbb\xbfecho a\r\n\r\necho 'b c'\r\n")
    tl = load_tasks(path)
    assert [t.command for t in tl.tasks] == [("echo", "a"), ("echo", "b c")]
    assert [t.id for t in tl.tasks] == ["1", "3"]


def test_task_list_unbalanced_quote_is_refused_at_its_line(tmp_path: Path) -> None:
    path = write(tmp_path / "tasklist.dat", "echo ok\necho 'oops\necho fine\n")
    refused(path, 2, "quotation")


def test_task_list_trailing_backslash_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "tasklist.dat", "echo a \\\necho b\n")
    refused(path, 1, "cannot split")


def test_task_list_of_only_comments_is_refused(tmp_path: Path) -> None:
    refused(write(tmp_path / "tasklist.dat", "# nothing\n\n#more\n"), 1, "no tasks")


def test_task_list_nul_and_bad_bytes_are_refused(tmp_path: Path) -> None:
    refused(write(tmp_path / "a.dat", b"echo a\necho \x00\n"), 2, "NUL")
    refused(write(tmp_path / "b.dat", b"echo a\necho b\necho \xc3\x28\n"), 3, "not UTF-8")


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("a#b", ["a#b"]),
        ("a #b c", ["a"]),
        ("#x", []),
        ("'#x' y", ["#x", "y"]),
        ("\\#x y", ["#x", "y"]),
        ("a '' b", ["a", "", "b"]),
        ("a\n#c\nb", ["a", "b"]),
    ],
)
def test_shell_split_starts_comments_only_at_word_start(line: str, words: list[str]) -> None:
    assert shell_split(line) == words


# --------------------------------------------------------------------------- bounds: sizes and shapes


@pytest.mark.timeout(60)  # main took minutes and gigabytes: the bound is this test's own timeout
def test_a_yaml_alias_bomb_in_a_task_file_is_refused_at_the_alias_that_overflows(tmp_path: Path) -> None:
    path = write(tmp_path / "bomb.yaml", alias_bomb(9, "tasks: [{id: a, argv: [*a9]}]"))
    error = refused(path, 6, "aliases expand this file beyond 1,000,000 characters", "alias *a4 here")  # line 6 holds a5: [*a4, ...]
    assert len(str(error)) < 200 and "lol" not in str(error)


def test_a_few_aliases_in_a_task_file_are_fine(tmp_path: Path) -> None:
    path = write(tmp_path / "tasks.yaml", "defaults: &d {dataset: era5, var: t2m}\n"
                                          "tasks:\n  - {id: a, args: *d}\n  - {id: b, args: {<<: *d, seed: 1}}\n")
    assert [t.argv for t in load_tasks(path).tasks] == [
        ("--dataset=era5", "--var=t2m"), ("--dataset=era5", "--var=t2m", "--seed=1")]


def test_a_yaml_alias_inside_its_own_anchor_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "loop.yaml", "tasks:\n  - id: a\n    argv: &x [1, *x]\n")
    refused(path, 3, "alias *x is inside its own anchor")


def test_yaml_nested_deeper_than_the_limit_is_refused_not_a_recursion_error(tmp_path: Path) -> None:
    path = write(tmp_path / "deep.yaml", "tasks:\n  - {id: a, argv: " + "[" * 5000 + "]" * 5000 + "}\n")
    refused(path, 2, "nested more than 100 levels deep")


def test_a_yaml_number_python_cannot_read_is_refused_at_its_line(tmp_path: Path) -> None:
    path = write(tmp_path / "big.yaml", "tasks:\n  - id: a\n    argv:\n      - " + "1" * 5000 + "\n")
    refused(path, 4, "this int cannot be read", "quote it")


def test_a_value_shown_in_an_error_is_cut_short(tmp_path: Path) -> None:
    path = write(tmp_path / "long.yaml", "tasks:\n  - id: a\n    argv: [[" + ", ".join(["x" * 1000] * 1000) + "]]\n")
    error = refused(path, 3, "`argv` item [")
    assert len(str(error)) < 200


@pytest.mark.parametrize("escape", ["\\ud800", "\\udc80", "\\ud83d\\ude80"])
def test_a_lone_surrogate_written_as_a_yaml_escape_is_refused_at_its_line(tmp_path: Path, escape: str) -> None:
    path = write(tmp_path / "t.yaml", f'tasks:\n  - id: a\n    argv: ["x{escape}y"]\n')
    refused(path, 3, "`argv` item 1 contains a lone surrogate")


def test_a_character_yaml_does_not_allow_is_refused_at_its_line_not_a_traceback(tmp_path: Path) -> None:
    path = write(tmp_path / "t.yaml", "tasks:\n  - {id: a, argv: [x\x7f]}\n")  # found by test_tasks_properties
    refused(path, 2, "character U+007F is not allowed in YAML")
