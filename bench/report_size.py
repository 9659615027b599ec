"""Benchmark (not a test): the size of `parallel-engine report`'s HTML file and the time to write it,
for a synthetic run of 1,000 and 10,000 tasks built with the store API (64 workers back to back,
10% of tasks failed once then retried, 1% failed for good with a few stderr lines).

With --compare, the same timeline (one bar per attempt, the same hover fields, the library's JS
inlined) is also written with Plotly and with Altair, when they are installed, side by side:
the figures behind the choice of Bokeh (parallel_engine/report.py). Figures in README.md.

    python bench/report_size.py [--tasks 1000 10000] [--workers 64] [--compare]
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from parallel_engine.model import AttemptState, AttemptStatus, Task
from parallel_engine.report import write_report
from parallel_engine.report_data import ReportData
from parallel_engine.store import RunRecord, RunStore, local_store

START = 1_700_000_000.0  # 2023-11-14


def synthetic_run(store: RunStore, tasks: int, workers: int, seed: int = 1) -> str:
    """A finished run written as workers write it: a claim, then a record, per attempt."""
    rng = random.Random(seed)
    run_id = f"bench-{tasks}"
    params = [{"dataset": f"set{i % 13}", "project": "demo", "var": str(i % 7)} for i in range(tasks)]
    store.save_run(RunRecord(run_id, START, "gce", "params.csv", ("dataset", "project", "var"),
                             tuple(Task(str(i), params=p) for i, p in enumerate(params)),
                             {"retries": 1, "preemption_retries": 3}))
    free = [START + 60.0] * workers
    for i in range(tasks):
        outcome = rng.random()
        states = ([AttemptState.FAILED, AttemptState.FAILED] if outcome < 0.01 else
                  [AttemptState.FAILED, AttemptState.SUCCEEDED] if outcome < 0.11 else [AttemptState.SUCCEEDED])
        for attempt, state in enumerate(states, start=1):
            worker = min(range(workers), key=free.__getitem__)
            started = free[worker]
            free[worker] = started + rng.uniform(20, 600)
            vm = f"pe-{run_id}-w{worker:03d}"
            store.claim(run_id, str(i), attempt, vm)
            store.add_attempt_folders(run_id, str(i), attempt)
            code = 0 if state is AttemptState.SUCCEEDED else 1
            store.write_status(run_id, AttemptStatus(str(i), attempt, state, code, started, free[worker], vm,
                                                     "" if code == 0 else "exit code 1"))
            if code:
                store.blobs.write(store.attempt_prefix(run_id, str(i), attempt) + "stderr.log",
                                  b"loading\nTraceback (most recent call last):\nValueError: bad input\n")
    store.write_end(run_id, "finished", max(free))
    return run_id


def plotly_html(data: ReportData) -> bytes:
    import plotly.graph_objects as go

    figure = go.Figure()
    for state in sorted({bar.state for bar in data.bars}):
        bars = [bar for bar in data.bars if bar.state == state]
        figure.add_bar(orientation="h", y=[b.worker for b in bars], base=[b.start * 1000 for b in bars],
                       x=[b.duration_s * 1000 for b in bars], name=state,
                       customdata=[[b.task_id, b.params, b.attempt, b.exit_code, b.reason] for b in bars],
                       hovertemplate="%{customdata[0]} attempt %{customdata[2]}<br>%{customdata[1]}<br>"
                                     "exit %{customdata[3]} %{customdata[4]}<extra></extra>")
    figure.update_layout(barmode="overlay", xaxis_type="date")
    return figure.to_html(include_plotlyjs=True, full_html=True).encode()


def altair_html(data: ReportData) -> bytes:
    import altair as alt

    rows = [{"worker": b.worker, "start": b.start * 1000, "end": b.end * 1000, "state": b.state, "task": b.task_id,
             "params": b.params, "attempt": b.attempt, "exit": b.exit_code, "reason": b.reason} for b in data.bars]
    chart = alt.Chart(alt.Data(values=rows)).mark_bar().encode(
        y="worker:N", x="start:T", x2="end:T", color="state:N",
        tooltip=["task:N", "params:N", "attempt:Q", "exit:Q", "reason:N"])
    buffer = io.StringIO()
    chart.save(buffer, format="html", inline=True)  # inline JS needs vl-convert-python
    return buffer.getvalue().encode()


def measure(label: str, make: Callable[[], int]) -> None:
    started = time.perf_counter()
    try:
        size = make()
    except ImportError as exc:
        print(f"  {label:<34} not installed ({exc.name})")
        return
    print(f"  {label:<34} {size / 1e6:6.2f} MB  in {time.perf_counter() - started:5.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--compare", action="store_true", help="also Plotly and Altair, when installed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pe-bench-report-") as work:
        store = local_store(Path(work) / "store")
        for tasks in args.tasks:
            run_id = synthetic_run(store, tasks, args.workers)
            html = Path(work) / f"report-{tasks}.html"
            print(f"{tasks:,} tasks on {args.workers} workers:")
            started = time.perf_counter()
            data = write_report(store, run_id, html)
            print(f"  {'parallel-engine report (Bokeh)':<34} {html.stat().st_size / 1e6:6.2f} MB  in "
                  f"{time.perf_counter() - started:5.2f} s ({data.attempts:,} attempts; reading the store included)")
            if args.compare:
                measure("same timeline, Plotly", lambda: len(plotly_html(data)))  # noqa: B023 - called at once
                measure("same timeline, Altair + vl-convert", lambda: len(altair_html(data)))  # noqa: B023
    sys.stdout.flush()


if __name__ == "__main__":
    main()
