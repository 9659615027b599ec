"""Make docs/notebook.png, README's picture of notebooks/runner.ipynb: the notebook executed by the
project's kernel (scripts/ensure-kernel.sh) on a copy of the example, converted to HTML by
nbconvert, and photographed by headless Chromium (no network: the page needs none).

    python scripts/notebook_png.py [--output docs/notebook.png] [--width 1100]

Needs the test extra plus nbconvert (`pip install nbconvert`), and Debian's chromium and chromium-driver
(scripts/ensure-browser.sh; PE_CHROMIUM / PE_CHROMEDRIVER name others).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
         "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>", "--host-resolver-rules=MAP * ~NOTFOUND")


def executed_html(project: Path) -> Path:
    shutil.copytree(ROOT / "code", project / "code")
    subprocess.run(["bash", str(ROOT / "scripts" / "ensure-kernel.sh")], check=True,
                   env={**os.environ, "PYTHON": sys.executable})
    os.environ["PE_ROOT"] = str(project)
    notebook = nbformat.read(ROOT / "notebooks" / "runner.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="parallel-engine",
                   resources={"metadata": {"path": str(project)}}).execute()
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(notebook)
    page = project / "runner.html"
    page.write_text(body, encoding="utf-8")
    return page


def photograph(page: Path, output: Path, width: int, profile: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which(os.environ.get("PE_CHROMIUM", "chromium")) or "chromium"
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which(os.environ.get("PE_CHROMEDRIVER", "chromedriver"))),
                              options=options)
    try:
        driver.get(page.as_uri())
        deadline = time.monotonic() + 60
        while driver.execute_script("return document.readyState") != "complete" and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)  # the report's plots draw in their iframe after the page has loaded
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(width, height)
        shot = Path(profile) / "shot.png"
        driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    from PIL import Image  # matplotlib's dependency: 256 colours are plenty for a page, a third of the bytes

    Image.open(shot).convert("RGB").quantize(256).save(output, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "notebook.png")
    parser.add_argument("--width", type=int, default=1100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        page = executed_html(Path(folder) / "project")
        photograph(page, args.output.resolve(), args.width, Path(folder) / "profile")
    print(f"{args.output}: {args.output.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
