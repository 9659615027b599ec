"""`parallel-engine report`: what the report says about real local runs (failures, retries, a run
still going), where bars go when a start was never recorded, and its errors. The rendered page
in a real browser is tests/test_report_browser.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from markupsafe import escape

import parallel_engine as pe
from parallel_engine.model import AttemptState, AttemptStatus, Task
from parallel_engine.report import STATE_COLORS, summary_rows, write_png, write_report
from parallel_engine.report_data import NO_WORKER, report_data
from parallel_engine.results import status_of
from parallel_engine.store import RunRecord, local_store
from tests.helpers import cli, cli_env, colour_pixels, write_probe


def run_in(folder: Path, monkeypatch: pytest.MonkeyPatch, source: Path, **overrides: object) -> pe.Run:
    """A real local run, in-process, in `folder` and its own store, with no settings of ours leaking in."""
    for key in [k for k in os.environ if k.startswith("PARALLEL_ENGINE_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(folder)
    return pe.run(source, store=str(folder / "store"), **overrides)


def test_report_of_a_run_with_failures_and_retries_shows_each_attempt_and_the_failed_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_probe(tmp_path)
    (tmp_path / "params.csv").write_text("x\nok\n--fail-until=2\n--exit=7\n")
    run = run_in(tmp_path, monkeypatch, tmp_path / "params.csv", command=f"{sys.executable} {tmp_path / 'probe.py'}",
                 args_template="{x}", retries=1, jobs=2)
    data = write_report(run.store, run.run_id, tmp_path / "report.html", tmp_path / "timeline.png")

    assert sorted((b.task_id, b.attempt, b.state) for b in data.bars) == [
        ("1", 1, "succeeded"), ("2", 1, "failed"), ("2", 2, "succeeded"), ("3", 1, "failed"), ("3", 2, "failed")]
    assert all(b.start_known and b.end_known and b.start <= b.end for b in data.bars)
    assert data.tasks_by_state == {"failed": 1, "succeeded": 2}
    assert data.attempts_by_state == {"failed": 3, "succeeded": 2}
    assert data.retries == 2 and data.preemptions == 0 and data.undrawn == 0
    assert set(data.lanes) == {b.worker for b in data.bars} and all(w.startswith("local-") for w in data.lanes)
    assert data.busy_s == pytest.approx(sum(b.duration_s for b in data.bars))
    (failed,) = data.failed
    assert (failed.task_id, failed.attempts, failed.exit_code, failed.params) == ("3", 2, 7, "x=--exit=7")
    assert failed.stderr_tail == "exiting with 7"
    assert {t.task_id for t in data.slowest} == {"1", "2", "3"}

    html = (tmp_path / "report.html").read_text()
    assert "Failed tasks (1)" in html and "<pre>exiting with 7</pre>" in html
    rows = dict(summary_rows(data))
    assert rows["retries"].startswith("2 ") and rows["attempts"] == "5 (3 failed, 2 succeeded)"
    assert "slot-hours running attempts" in rows  # local: the sum of attempt durations, not VM-hours
    for what, value in rows.items():
        assert f"<th>{escape(what)}</th><td>{escape(value)}</td>" in html
    assert not re.search(r"<script[^>]*\ssrc=|<link[^>]*\shref=", html)  # everything inline: nothing to fetch
    assert colour_pixels(tmp_path / "timeline.png", STATE_COLORS["failed"]) > 100
    assert colour_pixels(tmp_path / "timeline.png", STATE_COLORS["succeeded"]) > 100


def test_values_from_the_store_are_escaped_in_the_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_probe(tmp_path)
    hostile = '</script><script>alert(1)</script><b>x'
    (tmp_path / "tasks.yaml").write_text(yaml.safe_dump({"tasks": [
        {"id": "t1", "args": {"x": hostile, "exit": "2"}},
    ]}))
    run = run_in(tmp_path, monkeypatch, tmp_path / "tasks.yaml", command=f"{sys.executable} {tmp_path / 'probe.py'}")
    write_report(run.store, run.run_id, tmp_path / "report.html")
    html = (tmp_path / "report.html").read_text()
    assert "alert(1)" in html  # it is shown...
    assert "<script>alert(1)" not in html and "<b>x" not in html  # ...as text, never as markup


def test_a_running_run_gives_a_snapshot_with_its_running_attempt_drawn_up_to_now(tmp_path: Path) -> None:
    # One worker: `quick` ends, then `held` runs until the test releases it (a condition, not a sleep).
    release = tmp_path / "release"
    wait = (f"import os, time\ndeadline = time.time() + 120\n"
            f"while not os.path.exists({str(release)!r}) and time.time() < deadline: time.sleep(0.05)\n")
    (tmp_path / "tasks.yaml").write_text(yaml.safe_dump({"tasks": [
        {"id": "quick", "command": [sys.executable, "-c", "pass"]},
        {"id": "held", "command": [sys.executable, "-c", wait]},
    ]}))
    orchestrator = subprocess.Popen([sys.executable, "-m", "parallel_engine", "run", "tasks.yaml", "-j", "1", "-q"],
                                    cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        store = local_store(tmp_path / ".parallel-engine")
        run_id = wait_for(lambda: next(iter(store.run_ids()), None), "the run to be recorded")
        wait_for(lambda: ("held", 1) in store.claimed(run_id), "`held` to be claimed")
        shown = cli("report", run_id, cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        assert "(a snapshot: the run is still going)" in shown.stdout
        assert "still running: snapshot at" in (tmp_path / "report.html").read_text()

        now = time.time()
        data = write_report(store, run_id, tmp_path / "snapshot.html", now=now)
        assert data.running and data.snapshot_at == now and data.wall_s == pytest.approx(now - data.created)
        quick, held = sorted(data.bars, key=lambda bar: bar.start)
        assert (quick.task_id, quick.state, quick.end_known) == ("quick", "succeeded", True)
        assert (held.task_id, held.state, held.end, held.end_known) == ("held", "running", now, False)
        # Its record is written when it ends: drawn from when its worker was last free.
        assert not held.start_known and held.start == quick.end and held.worker == quick.worker
        assert data.tasks_by_state == {"running": 1, "succeeded": 1}
    finally:
        release.touch()
        _, stderr = orchestrator.communicate(timeout=120)
    assert orchestrator.returncode == 0, stderr
    after = write_report(store, run_id, tmp_path / "after.html")
    assert not after.running and {b.state for b in after.bars} == {"succeeded"}
    assert all(b.start_known and b.end_known for b in after.bars)


def wait_for(value: object, what: str, timeout: float = 60) -> object:
    """`value()` once it is truthy, polled with a deadline."""
    deadline = time.monotonic() + timeout
    while not (found := value()):  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return found


def test_attempts_without_a_recorded_start_start_when_their_worker_was_last_free() -> None:
    """What a gce run records: the orchestrator ends a preempted attempt knowing only when; a lost
    local attempt has no time at all."""
    record = RunRecord("r1", 1000.0, "gce", "params.csv", ("x",),
                       (Task("a", params={"x": "1"}), Task("b", params={"x": "2"}), Task("c")), {})
    attempts = {
        "a": [AttemptStatus("a", 1, AttemptState.SUCCEEDED, 0, 1010.0, 1020.0, "vm-1"),
              AttemptStatus("a", 2, AttemptState.SUCCEEDED, 0, 1030.0, 1031.0, "vm-1")],
        "b": [AttemptStatus("b", 1, AttemptState.PREEMPTED, None, None, 1050.0, "vm-1", "VM preempted"),
              AttemptStatus("b", 2, AttemptState.PREEMPTED, None, None, 1040.0, "vm-2", "VM preempted"),
              AttemptStatus("b", 3, AttemptState.SUCCEEDED, 0, 1060.0, 1070.0, "vm-3")],
        "c": [AttemptStatus("c", 1, AttemptState.LOST, None, None, None, "", "its orchestrator is gone")],
    }
    data = report_data(status_of(record, "finished", attempts), lambda task, attempt: None, now=2000.0)
    starts = {(b.task_id, b.attempt): (b.worker, b.start, b.end, b.start_known) for b in data.bars}
    assert starts[("b", 1)] == ("vm-1", 1031.0, 1050.0, False)  # after vm-1's last attempt
    assert starts[("b", 2)] == ("vm-2", 1000.0, 1040.0, False)  # vm-2's first: from the run's creation
    assert starts[("b", 3)] == ("vm-3", 1060.0, 1070.0, True)
    assert data.preemptions == 2 and data.undrawn == 1 and len(data.bars) == 5
    assert NO_WORKER not in data.lanes and data.lanes == ("vm-2", "vm-1", "vm-3")  # by their first bar
    assert data.wall_s == 70.0 and data.busy_s == 10.0 + 1.0 + 10.0  # estimated starts are not summed
    assert any("not drawn" in note for note in data.notes)
    assert dict(summary_rows(data))["VM-hours running attempts"].startswith("0.006 h")


def test_png_of_a_run_with_no_attempt_yet_is_an_empty_timeline(tmp_path: Path) -> None:
    record = RunRecord("r2", 1000.0, "local", "params.csv", (), (Task("a"),), {})
    data = report_data(status_of(record, "running", {}), lambda task, attempt: None, now=1005.0)
    write_png(data, tmp_path / "empty.png")
    assert (tmp_path / "empty.png").read_bytes().startswith(b"\x89PNG")
    assert data.bars == () and data.tasks_by_state == {"queued": 1}


def test_report_of_an_unknown_run_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()  # a store that exists (a missing one is its own error)
    done = cli("report", "20200101-000000-nope0", "--store", str(tmp_path / "store"), cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "error: no run '20200101-000000-nope0' in" in done.stderr
    assert "hint: `parallel-engine runs` lists the runs" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "report.html").exists()


@pytest.mark.parametrize(("hidden", "flags"), [("bokeh", []), ("matplotlib", ["--png", "t.png"])])
def test_a_missing_plotting_extra_is_a_clear_error_naming_the_install_command(
    tmp_path: Path, hidden: str, flags: list[str]
) -> None:
    hide = f"import sys; sys.modules[{hidden!r}] = None; from parallel_engine.cli import main; main()"
    done = subprocess.run([sys.executable, "-c", hide, "report", "any-run", *flags], check=False, cwd=tmp_path, env=cli_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"error: parallel-engine report needs the Python package '{hidden}', which is not installed" in done.stderr
    assert "hint: pip install 'parallel-engine[report]'" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "report.html").exists()


def test_the_cli_and_the_report_do_not_import_the_plotting_libraries_until_asked() -> None:
    probe = ("import sys, parallel_engine.cli, parallel_engine.report; "
             "print(sorted(m for m in ('bokeh', 'matplotlib') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], check=False, capture_output=True, text=True, timeout=60, env=cli_env())
    assert done.stdout.strip() == "[]", done.stderr


def test_an_output_that_cannot_be_written_is_one_clear_error_and_no_file(tmp_path: Path) -> None:
    from parallel_engine.errors import ParallelEngineError
    from parallel_engine.report import write_html

    record = RunRecord("r3", 1000.0, "local", "params.csv", (), (Task("a"),), {})
    data = report_data(status_of(record, "finished", {}), lambda task, attempt: None, now=1005.0)
    with pytest.raises(ParallelEngineError, match=r"cannot write .*/no-such-folder/report.html: No such file"):
        write_html(data, tmp_path / "no-such-folder" / "report.html")
    assert list(tmp_path.iterdir()) == []
