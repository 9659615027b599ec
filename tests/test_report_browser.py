"""The report of the README's example run, opened in a real headless Chromium with no network:
the timeline is drawn with one bar per attempt, its hover names the task and its parameters."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from parallel_engine.report import STATE_COLORS, TIMELINE_NAME
from tests.helpers import ROOT, cli, colour_pixels

pytestmark = pytest.mark.browser

# As /work's machine notes say Chromium runs here: headless, as root, and nothing phoning home.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")
# No network at all: every host resolves to nothing, and any request goes to a closed local port.
OFFLINE = ("--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
           "--host-resolver-rules=MAP * ~NOTFOUND")

# The timeline's bars as Bokeh drew them: its renderer's view, once it has finished rendering.
DRAWN = """
const doc = window.Bokeh && Bokeh.documents[0];
const renderer = doc && doc.get_model_by_name(arguments[0]);
const view = renderer && Bokeh.index.find_one(renderer);
if (!view || !view.has_finished()) return null;
const glyph = view.glyph;
return {n: glyph.data_size, left: Array.from(glyph.sleft), right: Array.from(glyph.sright), y: Array.from(glyph.sy),
        task: renderer.data_source.data.task, params: renderer.data_source.data.params,
        box: view.parent.el.getBoundingClientRect().toJSON()};
"""

# All the text on the page, shadow roots included (Bokeh draws its tooltips in one).
DEEP_TEXT = """
const text = (node) => (node.nodeType === 3 ? node.textContent : "")
    + (node.shadowRoot ? text(node.shadowRoot) : "") + Array.from(node.childNodes).map(text).join("");
return text(document.body);
"""


@pytest.fixture()
def browser(chromium: tuple[str, str], tmp_path: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = chromium
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*FLAGS, *OFFLINE, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1300,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def until(driver: Any, script: str, *args: Any, timeout: float = 60, what: str = "") -> Any:
    """The script's result once it is truthy, polled with a deadline."""
    deadline = time.monotonic() + timeout
    while not (found := driver.execute_script(script, *args)):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or script}")
        time.sleep(0.1)
    return found


def test_the_example_runs_report_opens_offline_with_one_drawn_bar_per_attempt(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionBuilder

    shutil.copytree(ROOT / "code", tmp_path / "code")
    ran = cli("run", "code/params.csv", cwd=tmp_path)  # the README's example, on the local backend
    assert ran.returncode == 0, ran.stdout + ran.stderr
    (run_id,) = [p.name for p in (tmp_path / ".parallel-engine" / "runs").iterdir()]
    made = cli("report", run_id, "--png", "timeline.png", cwd=tmp_path)
    assert made.returncode == 0, made.stdout + made.stderr
    tasks = json.loads(cli("status", run_id, "--json", cwd=tmp_path).stdout)["tasks"]
    attempts = sum(task["attempts"] for task in tasks)
    assert attempts == 12

    browser.get((tmp_path / "report.html").as_uri())
    drawn = until(browser, DRAWN, TIMELINE_NAME, what="the timeline to be drawn")
    assert drawn["n"] == attempts and sorted(drawn["task"]) == sorted(task["task_id"] for task in tasks)
    box = drawn["box"]
    for left, right, y in zip(drawn["left"], drawn["right"], drawn["y"]):
        assert 0 <= left < right <= box["width"] and 0 < y < box["height"]  # on screen, in the plot

    browser.save_screenshot(str(tmp_path / "page.png"))  # the canvas really shows them
    assert colour_pixels(tmp_path / "page.png", STATE_COLORS["succeeded"]) > 50 * attempts

    # Hovering a bar shows its task and parameters.
    action = ActionBuilder(browser)
    action.pointer_action.move_to_location(int(box["x"] + (drawn["left"][0] + drawn["right"][0]) / 2),
                                           int(box["y"] + drawn["y"][0]))
    action.perform()
    hover = f"{drawn['task'][0]}, attempt 1"
    text = until(browser, f"const t = (() => {{{DEEP_TEXT}}})(); return t.includes({json.dumps(hover)}) && t;",
                 what=f"a tooltip saying {hover!r}")
    assert drawn["params"][0] in text and "exit code" in text

    assert browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)") == []
    assert colour_pixels(tmp_path / "timeline.png", STATE_COLORS["succeeded"]) > 1000  # --png: the timeline
