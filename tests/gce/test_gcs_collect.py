"""`collect` from a bucket (emulated Storage): object names are checked before they become paths."""

from __future__ import annotations

import csv
import time
from pathlib import Path

from parallel_engine.api import open_store
from parallel_engine.config import load_config
from parallel_engine.emulator import Emulator
from parallel_engine.emulator.serve import config_values, render_config
from parallel_engine.model import AttemptState, AttemptStatus, Task
from parallel_engine.store import RunRecord
from tests.helpers import cli
from tests.hostile import OBJECT_NAMES

RUN_ID = "20260101-000000-bkt01"


def test_object_names_with_dot_dot_segments_are_skipped_and_listed_never_written_outside_dest(
    cloud: Emulator, tmp_path: Path
) -> None:
    (tmp_path / ".config.yaml").write_text(render_config(config_values(cloud)))
    store = open_store(load_config(tmp_path / ".config.yaml", environ={}))
    store.save_run(RunRecord(RUN_ID, time.time(), "gce", "p.csv", ("x",), (Task("a", (), {"x": "1"}),), {"retries": 0}))
    assert store.claim(RUN_ID, "a", 1, "vm-1")
    outputs = f"runs/{RUN_ID}/tasks/a/1/outputs/"
    for name in OBJECT_NAMES:
        store.blobs.write(outputs + name, b"hostile")
    store.blobs.write(outputs + "back\\slash.txt", b"a backslash is an ordinary character here")
    store.blobs.write(outputs + "ok/fine.txt", b"fine")
    store.blobs.write(f"runs/{RUN_ID}/tasks/stray.txt", b"no attempt's")
    store.write_status(RUN_ID, AttemptStatus("a", 1, AttemptState.SUCCEEDED, 0, 1.0, 2.0, "vm-1"))
    store.write_end(RUN_ID, "finished", time.time())
    assert set(store.blobs.list(outputs)) >= {outputs + name for name in OBJECT_NAMES}  # the bucket kept them whole

    done = cli("collect", RUN_ID, "--dest", "box/one/two/res", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    dest = tmp_path / "box" / "one" / "two" / "res"
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if not p.is_dir()}
    assert written == {".config.yaml", *(f"box/one/two/res/{name}" for name in (
        "a/ok/fine.txt", "a/back\\slash.txt", "results.csv", "skipped.csv", ".parallel-engine-collected"))}
    assert (dest / "a" / "ok" / "fine.txt").read_bytes() == b"fine"
    with open(dest / "skipped.csv", newline="", encoding="utf-8") as handle:
        rows = [(r["task_id"], r["path"], r["kind"]) for r in csv.DictReader(handle)]
    assert sorted(rows) == sorted(("a", name, "unsafe name") for name in OBJECT_NAMES)
    assert "ignored 1 store entry under no attempt of this run" in done.stderr
    assert not any(p.name.startswith(".collecting-") for p in dest.iterdir())
