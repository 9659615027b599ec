"""scripts/ensure-docker.sh and scripts/test.sh: shellcheck-clean, and the script's bootstrap
steps driven for real with stand-in `debootstrap`, `apt-get` and `docker` programs on PATH
(so no package, engine or image of this machine is touched)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ROOT, fake_program, script_env

SCRIPT = ROOT / "scripts" / "ensure-docker.sh"
SHELL_SCRIPTS = [SCRIPT, ROOT / "scripts" / "test.sh", ROOT / ".ci" / "run", ROOT / "scripts" / "ensure-browser.sh",
                 ROOT / "scripts" / "ensure-kernel.sh"]


def source_and_call(tmp_path: Path, call: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """Source the script (which defines its functions without running main) and call one."""
    return subprocess.run(
        ["bash", "-c", f'source "$1"; {call}', "bash", str(SCRIPT)],
        env=script_env(tmp_path, **extra), capture_output=True, text=True, timeout=120,
    )


@pytest.fixture()
def bin_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    return folder


def flaky_debootstrap(bin_dir: Path, counter: Path, fail_times: int) -> None:
    """Fails `fail_times` times (leaving a partial rootfs and a cached download), then succeeds."""
    fake_program(bin_dir, "debootstrap", f'''
count=$(( $(cat "{counter}" 2>/dev/null || echo 0) + 1 )); echo "$count" >"{counter}"
target="${{@: -1}}"
cache=""; for a in "$@"; do case "$a" in --cache-dir=*) cache="${{a#--cache-dir=}}";; esac; done
mkdir -p "$target/usr/lib/python3.11"
echo "attempt $count" >"$target/partial-$count"
echo "downloaded in attempt $count" >"$cache/pkg-$count.deb"
if (( count <= {fail_times} )); then echo "E: mirror hiccup $count" >&2; exit 1; fi
touch "$target/usr/lib/python3.11/EXTERNALLY-MANAGED"
''')


def test_shell_scripts_pass_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck is not on PATH: it comes with the test extra (pip install -e '.[test]')")
    done = subprocess.run([shellcheck, *map(str, SHELL_SCRIPTS)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_debootstrap_is_retried_with_backoff_keeping_its_download_cache(tmp_path: Path, bin_dir: Path) -> None:
    counter = tmp_path / "calls"
    flaky_debootstrap(bin_dir, counter, fail_times=2)
    done = source_and_call(tmp_path, "build_rootfs")
    assert done.returncode == 0, done.stdout + done.stderr
    assert counter.read_text().strip() == "3"
    assert "debootstrap attempt 1 failed; retrying in 0s" in done.stdout
    assert "attempt 3/3" in done.stdout
    state = tmp_path / "state"
    rootfs = state / "rootfs-bookworm"
    assert sorted(p.name for p in rootfs.iterdir()) == ["partial-3", "usr"]  # failed attempts' leftovers removed
    assert sorted(p.name for p in (state / "debootstrap-cache").iterdir()) == ["pkg-1.deb", "pkg-2.deb", "pkg-3.deb"]
    assert not (rootfs / "usr/lib/python3.11/EXTERNALLY-MANAGED").exists()  # pip works in a Dockerfile
    assert (state / "rootfs-bookworm.complete").exists()
    assert "E: mirror hiccup 2" in (state / "debootstrap.log").read_text()


def test_debootstrap_gives_up_after_three_attempts_with_the_log_named(tmp_path: Path, bin_dir: Path) -> None:
    counter = tmp_path / "calls"
    flaky_debootstrap(bin_dir, counter, fail_times=99)
    done = source_and_call(tmp_path, "build_rootfs")
    assert done.returncode == 1
    assert counter.read_text().strip() == "3"
    assert "debootstrap failed 3 times" in done.stderr and "debootstrap.log" in done.stderr
    assert not (tmp_path / "state" / "rootfs-bookworm").exists()
    assert not (tmp_path / "state" / "rootfs-bookworm.complete").exists()


def test_apt_get_retries_downloads_and_waits_for_the_dpkg_lock(tmp_path: Path, bin_dir: Path) -> None:
    calls = tmp_path / "apt-calls"
    fake_program(bin_dir, "apt-get", f'printf "%s\\n" "$*" >>"{calls}"\n')
    done = source_and_call(tmp_path, "apt_install docker.io debootstrap")
    assert done.returncode == 0, done.stdout + done.stderr
    update, install = calls.read_text().splitlines()
    for line in (update, install):
        assert "-o Acquire::Retries=5" in line and "-o DPkg::Lock::Timeout=300" in line
    assert update.endswith("update -q")
    assert install.endswith("install -y -q --no-install-recommends docker.io debootstrap")
    assert not (tmp_path / "policy-rc.d").exists()  # only there while apt runs


@pytest.mark.parametrize("value", ["true", "TRUE", "1", "yes"])
def test_ci_true_one_or_yes_lets_root_change_the_machine(tmp_path: Path, bin_dir: Path, value: str) -> None:
    fake_program(bin_dir, "id", 'echo 0\n')  # root, wherever the test runs
    assert source_and_call(tmp_path, "may_change_machine", CI=value).returncode == 0
    assert source_and_call(tmp_path, "may_change_machine", CI="false").returncode == 1


def test_a_failed_pull_of_the_base_image_warns_loudly_and_lets_the_tests_run(tmp_path: Path, bin_dir: Path) -> None:
    # An engine answers, the base image is missing, nothing may change the machine, the pull fails.
    calls = tmp_path / "docker-calls"
    fake_program(bin_dir, "docker", f'''
printf "%s\\n" "$*" >>"{calls}"
case "$1 ${{2:-}}" in
  "info "*|"info") echo "fake engine"; exit 0 ;;
  "image inspect") exit 1 ;;
  "pull "*) echo "Error response from daemon: no registry reachable" >&2; exit 1 ;;
esac
exit 0
''')
    fake_program(bin_dir, "docker-registry", "exit 0\n")
    done = subprocess.run(["bash", str(SCRIPT)], env=script_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "BASE IMAGE python:3.11-slim IS MISSING and could not be pulled." in done.stderr
    assert "WILL BE SKIPPED" in done.stderr
    assert "pull python:3.11-slim" in calls.read_text()
    assert "changes made to this machine: none" in done.stdout
