"""`collect`: only regular files, links listed never followed, store names checked, one run per folder."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import re
import time
from pathlib import Path

import pytest

import parallel_engine as pe
from parallel_engine.collect import COLLECTED_MARKER, collect
from parallel_engine.errors import RunNotFoundError, StoreError, TaskSourceError
from parallel_engine.model import AttemptState
from parallel_engine.store import RunStore, local_store
from parallel_engine.tasks import load_tasks
from tests.collect_helpers import (
    RUN_ID,
    MemoryBlobs,
    finished_run,
    memory_store,
    outputs_dir,
    outputs_key,
    staging_left,
    tree,
)
from tests.helpers import cli, printed_run_id

OK = AttemptState.SUCCEEDED
SECRET = b"the secret: 6f1d0c2a\n"


def skipped_rows(dest: Path) -> list[dict[str, str]]:
    with open(dest / "skipped.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def run_script(folder: Path, script: str, params: str = "task_id,x\na,1\n", exit_code: int = 0) -> str:
    """`parallel-engine run` of `script` (bash, once per task) on the process runtime; its run id."""
    (folder / "task.sh").write_text("#!/bin/bash\nset -e\no=$PE_OUTPUT_DIR\n" + script)
    (folder / "task.sh").chmod(0o755)
    (folder / "params.csv").write_text(params)
    done = cli("run", "params.csv", "--command", str(folder / "task.sh"), "--runtime", "process", cwd=folder)
    assert done.returncode == exit_code, done.stdout + done.stderr
    return printed_run_id(done)


# ---------------------------------------------------------------------------- links and special files


def test_links_in_outputs_are_listed_in_skipped_csv_and_never_followed(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "key").write_bytes(SECRET)
    run_id = run_script(tmp_path, f"""
echo kept > $o/value.txt
mkdir $o/sub && echo deep > $o/sub/deep.txt
ln -s {tmp_path}/secret.txt $o/absolute
ln -s ../../../../run.json $o/climbs
ln -s /dev/zero $o/zero
ln -s /nonexistent/file $o/dangling
ln -s loop $o/loop
ln -s {tmp_path}/secrets $o/sub/folder-link
ln -s value.txt $o/inside
""")
    started = time.monotonic()
    done = cli("collect", run_id, "--dest", "res", cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 30  # /dev/zero was never read
    assert tree(tmp_path / "res" / "a") == {"value.txt": b"kept\n", "sub": "folder", "sub/deep.txt": b"deep\n"}
    rows = {row["path"]: (row["task_id"], row["kind"], row["detail"]) for row in skipped_rows(tmp_path / "res")}
    assert rows == {
        "absolute": ("a", "link", f"{tmp_path}/secret.txt"),
        "climbs": ("a", "link", "../../../../run.json"),
        "zero": ("a", "link", "/dev/zero"),
        "dangling": ("a", "link", "/nonexistent/file"),
        "loop": ("a", "link", "loop"),
        "sub/folder-link": ("a", "link", f"{tmp_path}/secrets"),
        "inside": ("a", "link", "value.txt"),  # even a link that stays inside is not followed
    }
    assert "warning: 7 output(s) not copied (7 link): listed in res/skipped.csv" in done.stderr
    assert staging_left(tmp_path / "res") == []
    for path in (tmp_path / "res").rglob("*"):
        assert path.is_dir() or SECRET not in path.read_bytes()


def test_a_fifo_and_a_socket_are_skipped_with_a_warning_and_the_rest_collected(tmp_path: Path) -> None:
    run_id = run_script(tmp_path, """
echo kept > $o/value.txt
mkfifo $o/pipe
cd $o && python3 -c "import socket; socket.socket(socket.AF_UNIX).bind('sock')"  # relative: a socket path is short
""")
    done = cli("collect", run_id, "--dest", "res", cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    assert tree(tmp_path / "res" / "a") == {"value.txt": b"kept\n"}
    assert {(r["path"], r["kind"]) for r in skipped_rows(tmp_path / "res")} == {("pipe", "fifo"), ("sock", "socket")}
    assert "warning: 2 output(s) not copied (1 fifo, 1 socket)" in done.stderr


def test_a_dangling_link_no_longer_fails_the_whole_collect(tmp_path: Path) -> None:
    store = local_store(tmp_path / "store")
    finished_run(store, {"a": OK, "b": OK})
    (outputs_dir(tmp_path / "store", RUN_ID, "a") / "dangling").symlink_to("/nonexistent")
    (outputs_dir(tmp_path / "store", RUN_ID, "b") / "result.txt").write_text("b")
    done = collect(store, RUN_ID, tmp_path / "res")
    assert tree(tmp_path / "res") == {
        "a": "folder", "b": "folder", "b/result.txt": b"b",
        "results.csv": tree(tmp_path / "res")["results.csv"], "skipped.csv": tree(tmp_path / "res")["skipped.csv"],
        COLLECTED_MARKER: tree(tmp_path / "res")[COLLECTED_MARKER],
    }
    assert [(s.task_id, s.path, s.kind) for s in done.skipped] == [("a", "dangling", "link")]


def test_a_folder_swapped_for_a_link_after_the_listing_is_not_followed(tmp_path: Path) -> None:
    """The race a task still writing can win: listed as a folder, a link by the time it is read."""
    store = local_store(tmp_path / "store")
    finished_run(store, {"a": OK})
    out = outputs_dir(tmp_path / "store", RUN_ID, "a")
    (out / "sub").mkdir()
    (out / "sub" / "key").write_text("harmless")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "key").write_bytes(SECRET)
    keys, _ = store.blobs.scan(outputs_key(RUN_ID, "a"))
    (out / "sub" / "key").unlink()
    (out / "sub").rmdir()
    (out / "sub").symlink_to(tmp_path / "secrets")
    (tmp_path / "copy").mkdir()
    skipped = store.blobs.fetch([(keys[0], tmp_path / "copy" / "key")])
    assert [(s.kind, s.detail) for s in skipped] == [("link", "a folder on its path became a link while being collected")]
    assert list((tmp_path / "copy").iterdir()) == []


def test_a_file_swapped_for_a_link_or_a_fifo_after_the_listing_is_not_read(tmp_path: Path) -> None:
    store = local_store(tmp_path / "store")
    finished_run(store, {"a": OK})
    out = outputs_dir(tmp_path / "store", RUN_ID, "a")
    (out / "f1").write_text("x")
    (out / "f2").write_text("x")
    keys, _ = store.blobs.scan(outputs_key(RUN_ID, "a"))
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (out / "f1").unlink()
    (out / "f1").symlink_to(tmp_path / "secret.txt")
    (out / "f2").unlink()
    os.mkfifo(out / "f2")
    (tmp_path / "copy").mkdir()
    started = time.monotonic()
    skipped = store.blobs.fetch([(key, tmp_path / "copy" / key.rsplit("/", 1)[1]) for key in keys])
    assert time.monotonic() - started < 5  # opening the fifo did not wait for a writer
    assert [(s.key.rsplit("/", 1)[1], s.kind) for s in skipped] == [("f1", "link"), ("f2", "fifo")]
    assert list((tmp_path / "copy").iterdir()) == []


# ---------------------------------------------------------------------------- names from the store


def test_object_names_that_climb_out_are_skipped_and_listed_never_joined(tmp_path: Path) -> None:
    store = memory_store()
    finished_run(store, {"a": OK})
    prefix = outputs_key(RUN_ID, "a")
    hostile = ["../../../../escaped.txt", "./dot.txt", "sub//empty.txt", "x/../../up.txt", "nul\0.txt", "ends/"]
    for name in hostile:
        store.blobs.write(prefix + name, b"hostile")
    store.blobs.write(prefix + "ok/fine.txt", b"fine")
    dest = tmp_path / "box" / "one" / "two" / "res"
    done = collect(store, RUN_ID, dest)
    assert {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()} == {
        "box/one/two/res/a/ok/fine.txt", "box/one/two/res/results.csv", "box/one/two/res/skipped.csv",
        f"box/one/two/res/{COLLECTED_MARKER}",
    }
    assert sorted((s.path, s.kind) for s in done.skipped) == sorted((name, "unsafe name") for name in hostile)


def test_a_file_and_a_folder_of_the_same_name_in_a_bucket_keep_the_folder(tmp_path: Path) -> None:
    store = memory_store()
    finished_run(store, {"a": OK})
    prefix = outputs_key(RUN_ID, "a")
    store.blobs.write(prefix + "x", b"file")
    store.blobs.write(prefix + "x/y", b"inside")
    done = collect(store, RUN_ID, tmp_path / "res")
    assert tree(tmp_path / "res" / "a") == {"x": "folder", "x/y": b"inside"}
    assert [(s.path, s.kind) for s in done.skipped] == [("x", "name clash")]


def test_what_a_vm_worker_did_not_upload_is_listed_in_skipped_csv(tmp_path: Path) -> None:
    store = memory_store()
    finished_run(store, {"a": OK, "b": AttemptState.FAILED})
    store.blobs.write(outputs_key(RUN_ID, "a") + "kept.txt", b"kept")
    listed = b"link\0host-link\0/etc/hostname\0fifo\0pipe\0\0made-up\0odd\0\0name refused here\0a\nb\0why\0"
    store.blobs.write(RunStore.attempt_prefix(RUN_ID, "a", 1) + "skipped", listed)
    store.blobs.write(RunStore.attempt_prefix(RUN_ID, "b", 1) + "skipped", b"link\0lost\0/x\0")  # b did not win
    done = collect(store, RUN_ID, tmp_path / "res")
    assert tree(tmp_path / "res" / "a") == {"kept.txt": b"kept"}
    assert [(r["task_id"], r["path"], r["kind"], r["detail"]) for r in skipped_rows(tmp_path / "res")] == [
        ("a", "a\nb", "name refused here", "why"), ("a", "host-link", "link", "/etc/hostname"),
        ("a", "odd", "other", ""), ("a", "pipe", "fifo", ""),
    ]
    assert len(done.skipped) == 4


def test_a_local_attempt_file_named_like_the_workers_list_is_never_read(tmp_path: Path) -> None:
    """A local store is scanned itself: a `skipped` beside the outputs (here a link to /dev/zero
    that a process-runtime task made with $PE_OUTPUT_DIR/../skipped) is not the worker's list."""
    store = local_store(tmp_path / "store")
    finished_run(store, {"a": OK})
    (outputs_dir(tmp_path / "store", RUN_ID, "a").parent / "skipped").symlink_to("/dev/zero")
    started = time.monotonic()
    done = collect(store, RUN_ID, tmp_path / "res")
    assert time.monotonic() - started < 10
    assert done.skipped == () and done.ignored == ()


def test_a_run_json_whose_task_id_is_no_folder_name_is_refused(tmp_path: Path) -> None:
    store = memory_store()
    finished_run(store, {"a": OK})
    blobs: MemoryBlobs = store.blobs  # type: ignore[assignment]
    record = json.loads(blobs.objects[f"runs/{RUN_ID}/run.json"])
    record["tasks"][0]["id"] = "../../outside"
    blobs.objects[f"runs/{RUN_ID}/run.json"] = json.dumps(record).encode()
    with pytest.raises(StoreError, match=r"holds a task id that cannot name a folder: '\.\./\.\./outside'"):
        collect(store, RUN_ID, tmp_path / "res")
    assert not (tmp_path / "res").exists()


@pytest.mark.parametrize("run_id", ["..", ".", ""])
def test_a_run_id_that_is_no_single_name_is_no_run(tmp_path: Path, run_id: str) -> None:
    store = local_store(tmp_path / "store")
    finished_run(store, {"a": OK})
    record = (tmp_path / "store" / "runs" / RUN_ID / "run.json").read_bytes()
    (tmp_path / "store" / "run.json").write_bytes(record)  # what runs/../run.json would read
    (tmp_path / "store" / "runs" / "run.json").write_bytes(record)  # ... and runs/./run.json, runs//run.json
    with pytest.raises(RunNotFoundError):
        store.load_run(run_id)


# ---------------------------------------------------------------------------- stray entries, staging


def test_a_stray_file_in_the_store_is_ignored_and_reported_once(tmp_path: Path) -> None:
    run_id = run_script(tmp_path, "echo kept > $o/value.txt\necho stray > $o/../../stray.txt\n"
                                  "echo stray > $o/../../../stray-too.txt\n")
    done = cli("collect", run_id, "--dest", "res", cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.count("ignored 2 store entries under no attempt of this run") == 1
    assert tree(tmp_path / "res" / "a") == {"value.txt": b"kept\n"}
    assert staging_left(tmp_path / "res") == []


class _Failing(MemoryBlobs):
    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error

    def fetch(self, pairs: list[tuple[str, Path]]) -> list[object]:
        (pairs[0][1]).write_bytes(b"half")
        raise self.error


@pytest.mark.parametrize("error", [StoreError("cannot write: no space"), KeyboardInterrupt()])
def test_no_staging_folder_is_left_when_a_collect_stops_half_way(tmp_path: Path, error: BaseException) -> None:
    store = RunStore(_Failing(error), "memory://bucket")  # type: ignore[arg-type]
    finished_run(store, {"a": OK})
    store.blobs.write(outputs_key(RUN_ID, "a") + "x.txt", b"x")
    with pytest.raises(type(error)):
        collect(store, RUN_ID, tmp_path / "res")
    assert staging_left(tmp_path / "res") == []
    assert not (tmp_path / "res" / "a").exists() and not (tmp_path / "res" / "results.csv").exists()


def test_a_staging_folder_a_killed_collect_left_is_removed_by_the_next(tmp_path: Path) -> None:
    store = local_store(tmp_path / "store")
    finished_run(store, {"a": OK})
    (tmp_path / "res" / ".collecting-abc123" / "a").mkdir(parents=True)
    collect(store, RUN_ID, tmp_path / "res")
    assert staging_left(tmp_path / "res") == []


def test_a_second_collect_into_a_folder_being_collected_into_is_refused(tmp_path: Path) -> None:
    store = local_store(tmp_path / "store")
    finished_run(store, {"a": OK})
    (tmp_path / "res").mkdir()
    fd = os.open(tmp_path / "res", os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(StoreError, match="another collect is writing into"):
            collect(store, RUN_ID, tmp_path / "res")
    finally:
        os.close(fd)


def test_collect_into_the_run_store_itself_is_refused(tmp_path: Path) -> None:
    store = local_store(tmp_path / "store")
    finished_run(store, {"a": OK})
    with pytest.raises(StoreError, match="is inside the run store"):
        collect(store, RUN_ID, tmp_path / "store" / "runs" / RUN_ID / "tasks" / "a" / "1" / "outputs")


# ---------------------------------------------------------------------------- one run per folder


def test_collecting_another_run_into_the_same_folder_is_refused_with_a_hint(tmp_path: Path) -> None:
    first = run_script(tmp_path, "echo A > $o/value.txt\n", "task_id,x\na,1\nb,2\n")
    assert cli("collect", first, "--dest", "res", cwd=tmp_path).returncode == 0
    second = run_script(tmp_path, 'echo B > $o/value.txt\ntest "$PE_TASK_ID" = a\n', "task_id,x\na,1\nb,2\n", exit_code=1)
    done = cli("collect", second, "--dest", "res", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"res holds the collected outputs of run {first}: collecting run {second} into it would mix two runs" in done.stderr
    assert "--replace" in done.stderr
    assert (tmp_path / "res" / "b" / "value.txt").read_text() == "A\n"  # untouched
    rows = list(csv.DictReader(open(tmp_path / "res" / "results.csv", newline="")))
    assert {r["task_id"]: r["state"] for r in rows} == {"a": "succeeded", "b": "succeeded"}


def test_replace_replaces_the_whole_previous_collection(tmp_path: Path) -> None:
    first = run_script(tmp_path, "echo A > $o/value.txt\nln -s x $o/link\n", "task_id,x\na,1\nb,2\n")
    assert cli("collect", first, "--dest", "res", cwd=tmp_path).returncode == 0
    assert (tmp_path / "res" / "skipped.csv").exists()
    second = run_script(tmp_path, 'echo B > $o/value.txt\ntest "$PE_TASK_ID" = a\n', "task_id,x\na,1\nb,2\n", exit_code=1)
    done = cli("collect", second, "--dest", "res", "--replace", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == [COLLECTED_MARKER, "a", "results.csv"]
    assert (tmp_path / "res" / "a" / "value.txt").read_text() == "B\n"
    rows = list(csv.DictReader(open(tmp_path / "res" / "results.csv", newline="")))
    assert {r["task_id"]: r["state"] for r in rows} == {"a": "succeeded", "b": "failed"}
    assert json.loads((tmp_path / "res" / COLLECTED_MARKER).read_text())["run_id"] == second


def test_a_folder_an_older_collect_wrote_without_its_run_is_refused_unless_replace(tmp_path: Path) -> None:
    store = local_store(tmp_path / "store")
    finished_run(store, {"a": OK})
    (tmp_path / "res" / "a").mkdir(parents=True)
    (tmp_path / "res" / "a" / "old.txt").write_text("old")
    (tmp_path / "res" / COLLECTED_MARKER).write_text(json.dumps(["a", "results.csv"]))
    with pytest.raises(StoreError, match="a run it does not name"):
        collect(store, RUN_ID, tmp_path / "res")
    collect(store, RUN_ID, tmp_path / "res", replace=True)
    assert tree(tmp_path / "res" / "a") == {}


def test_replace_never_removes_what_collect_did_not_write(tmp_path: Path) -> None:
    store = local_store(tmp_path / "store")
    finished_run(store, {"a": OK}, run_id="20260101-000000-first")
    finished_run(store, {"b": OK}, run_id="20260101-000000-other")
    collect(store, "20260101-000000-first", tmp_path / "res")
    (tmp_path / "res" / "mine.txt").write_text("mine")
    (tmp_path / "res" / COLLECTED_MARKER).write_text(json.dumps(
        {"run_id": "20260101-000000-first", "names": ["a", "results.csv", "../../outside"]}))
    (tmp_path / "outside").write_text("keep")
    collect(store, "20260101-000000-other", tmp_path / "res", replace=True)
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == [COLLECTED_MARKER, "b", "mine.txt", "results.csv"]
    assert (tmp_path / "outside").read_text() == "keep"


# ---------------------------------------------------------------------------- names collect reserves, formulas


@pytest.mark.parametrize("task_id", ["results.csv", "skipped.csv", "Results.CSV"])
def test_a_task_id_named_like_a_file_collect_writes_is_refused_with_file_and_line(tmp_path: Path, task_id: str) -> None:
    (tmp_path / "params.csv").write_text(f"task_id,x\nok,1\n{task_id},2\n")
    with pytest.raises(TaskSourceError, match=rf"params.csv:3: task id '{re.escape(task_id)}' is reserved"):
        load_tasks(tmp_path / "params.csv")
    (tmp_path / "tasks.yaml").write_text(f"tasks:\n  - id: ok\n    argv: []\n  - id: {task_id}\n    argv: []\n")
    with pytest.raises(TaskSourceError, match=r"tasks.yaml:\d+: task id .* is reserved"):
        load_tasks(tmp_path / "tasks.yaml")


FORMULAS = {"a": "=HYPERLINK(\"http://x\")", "b": "+1", "c": "-2", "d": "@SUM(1)", "e": "plain"}


def test_formula_cells_go_verbatim_into_results_csv_by_default(tmp_path: Path) -> None:
    store = local_store(tmp_path / "store")
    finished_run(store, dict.fromkeys(FORMULAS, OK), params={k: {"x": v} for k, v in FORMULAS.items()})
    collect(store, RUN_ID, tmp_path / "res")
    rows = list(csv.DictReader(open(tmp_path / "res" / "results.csv", newline="")))
    assert {r["task_id"]: r["x"] for r in rows} == FORMULAS


def test_excel_safe_prefixes_formula_cells_of_params_and_task_ids(tmp_path: Path) -> None:
    store = local_store(tmp_path / "store")
    params = {k: {"task_id": "-" + k if k == "c" else k, "x": v} for k, v in FORMULAS.items()}
    finished_run(store, dict.fromkeys(FORMULAS, OK), params=params)
    collect(store, RUN_ID, tmp_path / "res", excel_safe=True)
    rows = list(csv.DictReader(open(tmp_path / "res" / "results.csv", newline="")))
    assert [(r["task_id"], r["x"], r["exit_code"]) for r in rows] == [
        ("a", "'=HYPERLINK(\"http://x\")", "0"), ("b", "'+1", "0"), ("'-c", "'-2", "0"), ("d", "'@SUM(1)", "0"),
        ("e", "plain", "0"),
    ]


def test_the_cli_and_the_api_offer_excel_safe(tmp_path: Path) -> None:
    run_id = run_script(tmp_path, "true\n", "task_id,x\na,=1+1\n")
    done = cli("collect", run_id, "--dest", "res", "--excel-safe", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (row,) = csv.DictReader(open(tmp_path / "res" / "results.csv", newline=""))
    assert row["x"] == "'=1+1"
    from parallel_engine.config import load_config

    handle = pe.get_run(run_id, load_config(None, flags={"STORE": str(tmp_path / ".parallel-engine")}, environ={}))
    handle.collect(tmp_path / "api", excel_safe=True)
    (row,) = csv.DictReader(open(tmp_path / "api" / "results.csv", newline=""))
    assert row["x"] == "'=1+1"
