"""scripts/ensure-browser.sh, driven for real with stand-in `apt-get` and `id` programs on PATH and
browser names that are not installed (so no package of this machine is touched)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import ROOT, fake_program, script_env

SCRIPT = ROOT / "scripts" / "ensure-browser.sh"
NAMES = {"PE_CHROMIUM": "pe-test-chromium", "PE_CHROMEDRIVER": "pe-test-chromedriver"}


@pytest.fixture()
def bin_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    fake_program(folder, "id", "echo 0\n")  # root, wherever the test runs
    return folder


def installing_apt(bin_dir: Path, calls: Path) -> None:
    """An apt-get that records its calls and, on install, puts the two programs on PATH."""
    fake_program(bin_dir, "apt-get", f'''printf "%s\\n" "$*" >>"{calls}"
case "$*" in *" install "*)
  for name in {NAMES["PE_CHROMIUM"]} {NAMES["PE_CHROMEDRIVER"]}; do
    printf '#!/bin/sh\\nexit 0\\n' >"{bin_dir}/$name"; chmod 755 "{bin_dir}/$name"; done ;;
esac
''')


def ensure(tmp_path: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT)], check=False, env=script_env(tmp_path, **NAMES, **extra),
                          capture_output=True, text=True, timeout=120)


def test_where_the_machine_may_change_a_missing_browser_is_installed_from_debian(tmp_path: Path, bin_dir: Path) -> None:
    calls = tmp_path / "apt-calls"
    installing_apt(bin_dir, calls)
    done = ensure(tmp_path, CI="true")
    assert done.returncode == 0, done.stdout + done.stderr
    update, install = calls.read_text().splitlines()
    assert update.endswith("update -q")
    assert install.endswith("install -y -q --no-install-recommends chromium chromium-driver")
    assert "installed Debian packages: chromium chromium-driver" in done.stdout
    assert (bin_dir / NAMES["PE_CHROMIUM"]).exists()


def test_elsewhere_a_missing_browser_is_a_loud_banner_and_nothing_is_installed(tmp_path: Path, bin_dir: Path) -> None:
    calls = tmp_path / "apt-calls"
    installing_apt(bin_dir, calls)
    done = ensure(tmp_path)  # root, but neither CI nor PE_START_DOCKER=1
    assert done.returncode == 0, done.stdout + done.stderr
    assert "CHROMIUM OR CHROMEDRIVER IS MISSING" in done.stderr and "WILL BE SKIPPED" in done.stderr
    assert not calls.exists()
    assert "changes made to this machine: none" in done.stdout


def test_a_browser_that_is_there_changes_nothing(tmp_path: Path, bin_dir: Path) -> None:
    calls = tmp_path / "apt-calls"
    installing_apt(bin_dir, calls)
    for name in NAMES.values():
        fake_program(bin_dir, name, "exit 0\n")
    done = ensure(tmp_path, CI="true")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not calls.exists() and "changes made to this machine: none" in done.stdout
