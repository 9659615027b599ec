"""`parallel-engine report`: one self-contained HTML file per run (it opens offline: Bokeh's
JavaScript is inlined, nothing is fetched), and optionally the timeline alone as a PNG.

Why Bokeh: a plotting library users know, with hover and zoom, whose inline runtime is small.
Measured here (bench/report_size.py --compare; 64 workers, 11% of tasks retried), the file at
1,000 / 10,000 tasks, and the time to write it at 10,000:
  this report with Bokeh 3.9 (core JS inline)       1.41 MB / 2.52 MB, 1.0 s (1.27 MB of it bokeh.min.js)
  the timeline alone with Plotly 7.1 (JS inline)    4.95 MB / 6.08 MB, 0.4 s (4.8 MB of it plotly.min.js)
  the timeline alone with Altair 6.3 + vl-convert   1.14 MB / 3.30 MB, 3.6 s (one JSON object per bar)
Bokeh is the smallest where size matters (large runs), ships columns as base64 arrays, and
draws 10,000 bars on a canvas without trouble. The PNG is drawn with matplotlib (no browser
needed). Both come with the `report` extra and are imported only here, only when called.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from parallel_engine import __version__
from parallel_engine.backends.base import backend_class
from parallel_engine.errors import MissingExtraError, ParallelEngineError
from parallel_engine.report_data import Bar, ReportData, report_data
from parallel_engine.results import run_status
from parallel_engine.store import RunStore, write_atomic

FEATURE = "parallel-engine report"
EXTRA = "report"

#: Attempt and task states; matplotlib's and Bokeh's Category10 colours, so the PNG matches.
STATE_COLORS = {
    "succeeded": "#2ca02c",
    "failed": "#d62728",
    "timeout": "#ff7f0e",
    "preempted": "#9467bd",
    "lost": "#8c564b",
    "infra": "#e377c2",
    "cancelled": "#7f7f7f",
    "running": "#1f77b4",
    "queued": "#c7c7c7",
}
EDGE_COLORS = {state: "#" + "".join(f"{int(c[i:i + 2], 16) * 2 // 3:02x}" for i in (1, 3, 5))
               for state, c in STATE_COLORS.items()}  # darker: back-to-back bars stay apart, tiny ones visible
LANE_PX = 22  # one worker's lane in the HTML timeline, until the plot is MAX_HEIGHT tall
MAX_HEIGHT = 1400
MIN_LABEL_PX = 9  # narrower lanes are not named on the axis (the hover names the worker)
PNG_LABELLED_LANES = 100
TIMELINE_NAME = "attempts"  # the Bokeh renderer of the bars: tests find it by this name


def write_report(store: RunStore, run_id: str, html: Path, png: Path | None = None,
                 now: float | None = None) -> ReportData:
    """Read the run as `status` does (a snapshot if it is still going) and write its report."""
    require_extra(png=png is not None)  # before reading a large store
    status = run_status(store, run_id)
    data = report_data(status, lambda task_id, attempt: store.read_log(run_id, task_id, attempt, "stderr"), now)
    write_html(data, html)
    if png is not None:
        write_png(data, png)
    return data


@dataclass(frozen=True)
class WrittenReport:
    """A report written to `path`: Jupyter shows the page itself, inline (in an iframe, its
    scripts inside); anywhere else it reads as where the file is."""

    path: Path
    data: ReportData
    height_px: int = 900

    def _repr_html_(self) -> str:
        page = self.path.read_text(encoding="utf-8")
        return (f'<iframe srcdoc="{escape(page, quote=True)}" title="report of run {escape(self.data.run_id)}" '
                f'style="width: 100%; height: {self.height_px}px; border: 1px solid #ddd"></iframe>')

    def __repr__(self) -> str:
        snapshot = " (a snapshot: the run is still going)" if self.data.running else ""
        return f"report of run {self.data.run_id}: {self.path}{snapshot}"


def require_extra(png: bool = False) -> None:
    """A clear error naming the extra, before any work, when a plotting package is missing."""
    import importlib.util

    for module in ("bokeh", *(("matplotlib",) if png else ())):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # ValueError: a module stubbed out as None
            found = False
        if not found:
            raise MissingExtraError(FEATURE, EXTRA, module)


# -- HTML ----------------------------------------------------------------------------------------

def write_html(data: ReportData, path: Path) -> None:
    try:
        from bokeh.embed import components
        from bokeh.resources import Resources
    except ImportError:
        raise MissingExtraError(FEATURE, EXTRA, "bokeh") from None
    script, divs = components({"timeline": _timeline(data), "durations": _durations(data)})
    js = Resources(mode="inline", components=["bokeh"]).render_js()  # core only: no widgets, tables, GL
    _write(path, _page(data, js, script, divs).encode("utf-8"))


def _ms(seconds: float) -> float:
    return seconds * 1000.0  # Bokeh's datetime axis: milliseconds since the epoch, shown in UTC


def _timeline(data: ReportData) -> Any:
    import numpy as np
    from bokeh.models import (
        ColumnDataSource,
        DatetimeTickFormatter,
        FactorRange,
        HoverTool,
    )
    from bokeh.models.annotations import Span
    from bokeh.plotting import figure
    from bokeh.transform import factor_cmap

    bars = data.bars
    source = ColumnDataSource({
        "worker": [bar.worker for bar in bars],
        "left": np.array([_ms(bar.start) for bar in bars], dtype=float),
        "right": np.array([_ms(bar.end) for bar in bars], dtype=float),
        "duration": np.array([bar.duration_s for bar in bars], dtype=float),
        "task": [bar.task_id for bar in bars],
        "attempt": np.array([bar.attempt for bar in bars], dtype=np.int32),
        "state": [bar.state for bar in bars],
        "exit": ["" if bar.exit_code is None else str(bar.exit_code) for bar in bars],
        "reason": [bar.reason[:300] for bar in bars],
        "params": [bar.params for bar in bars],
        "note": [_note(bar) for bar in bars],
    })
    lanes = list(reversed(data.lanes))  # a categorical axis counts from the bottom: first worker on top
    height = min(max(80 + LANE_PX * len(lanes), 240), MAX_HEIGHT)
    room = (height - 80) / max(len(lanes), 1)  # pixels per lane
    title = f"{len(lanes)} worker(s), {len(bars)} attempt(s)"
    if room < MIN_LABEL_PX:
        title += " (worker names in the hover)"
    plot = figure(y_range=FactorRange(factors=lanes or [""]), x_axis_type="datetime", height=height, sizing_mode="stretch_width",
                  title=title, tools="xpan,xwheel_zoom,box_zoom,reset,save", active_scroll="xwheel_zoom",
                  x_axis_label=f"time (UTC) from {_utc(data.created)}")
    plot.xaxis.formatter = DatetimeTickFormatter(  # clock times; the date is in the axis label
        milliseconds="%H:%M:%S.%3N", seconds="%H:%M:%S", minsec="%H:%M:%S", minutes="%H:%M", hourmin="%H:%M",
        hours="%H:%M", days="%b %d", context=None)
    states = sorted({bar.state for bar in bars}) or ["succeeded"]
    fill = factor_cmap("state", [STATE_COLORS.get(s, "#000000") for s in states], states)
    edge = factor_cmap("state", [EDGE_COLORS.get(s, "#000000") for s in states], states)
    renderer = plot.hbar(y="worker", left="left", right="right", height=0.8, source=source, name=TIMELINE_NAME,
                         fill_color=fill, line_color=edge, legend_field="state")
    plot.add_tools(HoverTool(renderers=[renderer], formatters={"@left": "datetime", "@right": "datetime"}, tooltips=[
        ("task", "@task, attempt @attempt"), ("parameters", "@params"), ("state", "@state"),
        ("exit code", "@exit"), ("reason", "@reason"), ("worker", "@worker"),
        ("time", "@left{%F %T} to @right{%T} UTC (@duration{0.00} s)@note"),
    ]))
    if data.running:
        plot.add_layout(Span(location=_ms(data.snapshot_at), dimension="height", line_dash="dashed"))
    plot.yaxis.major_label_text_font_size = f"{min(11, int(room) - 2)}px" if room >= MIN_LABEL_PX else "0px"
    plot.add_layout(plot.legend[0], "right")  # beside the lanes, never over a bar
    plot.ygrid.grid_line_color = None
    return plot


def _note(bar: Bar) -> str:
    notes = []
    if not bar.start_known:
        notes.append("start not recorded: drawn from when its worker was last free")
    if not bar.end_known:
        notes.append("still running: drawn up to the snapshot")
    return "".join(f"; {note}" for note in notes)


def _durations(data: ReportData) -> Any:
    import numpy as np
    from bokeh.plotting import figure

    plot = figure(height=260, sizing_mode="stretch_width", title="task durations (each task's last timed attempt)",
                  x_axis_label="seconds", y_axis_label="tasks", tools="xpan,xwheel_zoom,reset,save")
    values = np.array([seconds for _, seconds in data.task_durations], dtype=float)
    if not len(values):
        return plot
    edges = np.histogram_bin_edges(values, bins=min(40, max(5, int(np.sqrt(len(values))))))
    bottom = np.zeros(len(edges) - 1)
    for state in sorted({state for state, _ in data.task_durations}):  # stacked by the task's state
        counts = np.histogram([seconds for s, seconds in data.task_durations if s == state], bins=edges)[0]
        plot.quad(left=edges[:-1], right=edges[1:], bottom=bottom, top=bottom + counts,
                  fill_color=STATE_COLORS.get(state, "#000000"), line_color="white", legend_label=state)
        bottom = bottom + counts
    plot.add_layout(plot.legend[0], "right")
    return plot


def _page(data: ReportData, js: str, script: str, divs: dict[str, str]) -> str:
    import jinja2
    from markupsafe import Markup

    # What Bokeh made is HTML already (Markup); everything else, from the store, is escaped.
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(PAGE).render(
        d=data, js=Markup(js), script=Markup(script), divs={k: Markup(v) for k, v in divs.items()},
        summary=summary_rows(data), when=_utc, took=_duration, colors=STATE_COLORS, version=__version__,
    )


def summary_rows(data: ReportData) -> list[tuple[str, str]]:
    """The summary table, as (what, value) rows: also what tests read."""
    def by_state(counts: dict[str, int]) -> str:
        return ", ".join(f"{n} {state}" for state, n in counts.items()) or "none"

    ended = "this snapshot" if data.running else "the last attempt ended"
    busy = backend_class(data.backend).busy_time
    rows = [
        ("tasks", f"{data.tasks} ({by_state(data.tasks_by_state)})"),
        ("attempts", f"{data.attempts} ({by_state(data.attempts_by_state)})"),
        ("retries", f"{data.retries} (attempts after a task's first)"),
        ("preemptions", str(data.preemptions)),
        ("workers", str(len(data.lanes))),
        ("wall time", f"{_duration(data.wall_s)} (run created to {ended})"),
        (busy[0], f"{data.busy_s / 3600:.3f} h = {_duration(data.busy_s)} ({busy[1]})"),
    ]
    if data.waiting:
        rows.append(("waiting", data.waiting))
    return rows


def _utc(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} m {secs:02d} s" if hours else f"{minutes} m {secs:02d} s"


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>run {{ d.run_id }}: parallel-engine report</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
.meta { color: #555; margin-top: 0; } .note { background: #fff6d5; padding: 0.3em 0.6em; }
table { border-collapse: collapse; font-size: 0.92em; } td, th { padding: 0.25em 0.8em; text-align: left;
  border-bottom: 1px solid #e4e4e4; vertical-align: top; } th { background: #f4f4f4; }
table.summary th { background: none; font-weight: 600; }
.state { display: inline-block; width: 0.8em; height: 0.8em; border-radius: 2px; margin-right: 0.3em; }
pre { background: #f7f7f7; padding: 0.5em; overflow-x: auto; font-size: 0.85em; max-height: 16em; }
footer { margin-top: 2em; color: #888; font-size: 0.85em; }
</style>
{{ js }}
</head>
<body>
<h1>Run {{ d.run_id }}</h1>
<p class="meta">{{ d.backend }} backend &middot; {{ d.source }} &middot; created {{ when(d.created) }} &middot;
{% if d.running %}<strong>still running: snapshot at {{ when(d.snapshot_at) }}</strong>{% else %}{{ d.run_state }}{% endif %}</p>
{% for note in d.notes %}<p class="note">{{ note }}</p>
{% endfor %}
<table class="summary" id="summary">
{% for what, value in summary %}<tr><th>{{ what }}</th><td>{{ value }}</td></tr>
{% endfor %}</table>

<h2>Timeline: one lane per worker, one bar per attempt</h2>
{{ divs.timeline }}

<h2>Task durations</h2>
{{ divs.durations }}

<h2>Slowest tasks</h2>
{% if d.slowest %}<table id="slowest">
<tr><th>task</th><th>parameters</th><th>longest attempt</th><th>state</th><th>worker</th></tr>
{% for t in d.slowest %}<tr><td>{{ t.task_id }}</td><td>{{ t.params }}</td>
<td>{{ took(t.duration_s) }} (attempt {{ t.attempt }})</td>
<td><span class="state" style="background: {{ colors.get(t.attempt_state, '#000') }}"></span>{{ t.attempt_state }}</td>
<td>{{ t.worker }}</td></tr>
{% endfor %}</table>{% else %}<p>No attempt has a recorded duration yet.</p>{% endif %}

<h2>Failed tasks ({{ d.failed_total }})</h2>
{% if not d.failed %}<p>None.</p>{% endif %}
<div id="failed">
{% for t in d.failed %}<h3>task {{ t.task_id }}</h3>
<p>{{ t.params }}<br>{{ t.attempts }} attempt(s); the last: {{ t.attempt_state }}
{%- if t.exit_code is not none %}, exit code {{ t.exit_code }}{% endif %}
{%- if t.reason and t.reason != "exit code %s" % t.exit_code %}, {{ t.reason }}{% endif %}{% if t.worker %}, on {{ t.worker }}{% endif %}</p>
{% if t.stderr_tail %}<pre>{{ t.stderr_tail }}</pre>{% else %}<p><em>no stderr</em></p>{% endif %}
{% endfor %}
{% if d.failed_total > d.failed|length %}<p>... and {{ d.failed_total - d.failed|length }} more:
<code>parallel-engine status {{ d.run_id }}</code></p>{% endif %}
</div>
<footer>parallel-engine {{ version }}, report written {{ when(d.snapshot_at) }}.</footer>
{{ script }}
</body>
</html>
"""


# -- PNG -----------------------------------------------------------------------------------------

def write_png(data: ReportData, path: Path) -> None:
    """The timeline alone, drawn with matplotlib (no browser involved)."""
    try:
        import matplotlib.dates as mdates
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingExtraError(FEATURE, EXTRA, "matplotlib") from None
    import io

    lanes = {worker: row for row, worker in enumerate(data.lanes)}
    figure = Figure(figsize=(12, min(max(2.0 + 0.3 * len(lanes), 3.0), 20.0)), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    for state in sorted({bar.state for bar in data.bars}):
        bars = [bar for bar in data.bars if bar.state == state]
        axes.barh([lanes[bar.worker] for bar in bars], [bar.duration_s / 86400 for bar in bars],
                  left=_days(mdates, [bar.start for bar in bars]), height=0.8, label=state,
                  color=STATE_COLORS.get(state, "#000000"), edgecolor=EDGE_COLORS.get(state, "#000000"),
                  linewidth=0.5)
    if data.running:
        axes.axvline(_days(mdates, [data.snapshot_at])[0], color="#444444", linestyle="--", linewidth=1)
    axes.set_yticks(range(len(lanes)), labels=list(lanes) if len(lanes) <= PNG_LABELLED_LANES else None,
                    fontsize="small" if len(lanes) > 30 else None)
    if lanes:
        axes.set_ylim(len(lanes) - 0.5, -0.5)  # first worker on top
    axes.xaxis_date()
    axes.xaxis.set_major_formatter(mdates.ConciseDateFormatter(axes.xaxis.get_major_locator()))  # type: ignore[no-untyped-call]  # matplotlib leaves ConciseDateFormatter untyped
    axes.set_xlabel("time (UTC)")
    snapshot = f", snapshot at {_utc(data.snapshot_at)}" if data.running else ""
    axes.set_title(f"run {data.run_id}: {len(lanes)} worker(s), {len(data.bars)} attempt(s){snapshot}")
    if data.bars:
        figure.legend(loc="outside right upper", fontsize="small")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    _write(path, buffer.getvalue())


def _days(mdates: Any, seconds: Sequence[float]) -> list[float]:
    return [float(mdates.date2num(dt.datetime.fromtimestamp(s, dt.UTC))) for s in seconds]


def _write(path: Path, content: bytes) -> None:
    """Whole or not at all; a path that cannot be written is one clear error."""
    try:
        write_atomic(str(path), content)
    except OSError as exc:
        raise ParallelEngineError(f"cannot write {path}: {exc.strerror or exc}",
                                  hint="choose a file in a folder that exists and that you may write") from None
