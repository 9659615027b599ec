"""`parallel-engine debug SOURCE --task ID`: one task in the foreground, as a worker runs it —
its argv byte-exact, its PE_* variables, its outputs in ./debug/<task>/, its limits, its exit code
as debug's own, the `--print` line that does the same when pasted, and no container left behind."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from parallel_engine.errors import BackendError
from parallel_engine.protocol import LABEL_RUN
from tests.helpers import BASE_IMAGE, build_with_user, cli, cli_env, wait_for
from tests.hostile import ARGV

#: Writes its argv, PE_* variables and memory limit to $PE_OUTPUT_DIR/seen.json, prints a line on
#: each stream, then exits with the code its first argument names (when it is a number).
DUMP = (
    "import json, os, sys, glob\n"
    "limit = [open(p).read().strip() for p in ('/sys/fs/cgroup/memory.max', "
    "'/sys/fs/cgroup/memory/memory.limit_in_bytes') if os.path.exists(p)]\n"
    "json.dump({'argv': sys.argv[1:], 'env': {k: v for k, v in os.environ.items() if k.startswith('PE_')},"
    " 'memory': limit[:1]}, open(os.path.join(os.environ['PE_OUTPUT_DIR'], 'seen.json'), 'w'))\n"
    "print('to stdout'); print('to stderr', file=sys.stderr)\n"
    "sys.exit(int(sys.argv[1]) if sys.argv[1:] and sys.argv[1].isdigit() else 0)\n"
)


def label_of(root: Path) -> str:
    """The label of the containers a test starts from `root`, which no other test's carry."""
    return f"petest={hashlib.sha256(str(root).encode()).hexdigest()[:12]}"


def own_labels(root: Path) -> None:
    """A .config.yaml in `root` giving its containers `label_of(root)`: debug runs of other tests (or
    other checkouts) on the same engine never count as ours."""
    (root / ".config.yaml").write_text(f"LABELS: {label_of(root)}\n")


def project(tmp_path: Path, python: str) -> Path:
    """A task file: `hostile` (every hostile argv item), `exits-5` (exits 5), `sleeps` (a long sleep)."""
    own_labels(tmp_path)
    (tmp_path / "dump.py").write_text(DUMP)
    script = "/work/dump.py" if python == "python" else str(tmp_path / "dump.py")
    (tmp_path / "tasks.yaml").write_text(yaml.safe_dump({"tasks": [
        {"id": "hostile", "command": [python, script, *ARGV]},
        {"id": "exits-5", "command": [python, script, "5"]},
        {"id": "sleeps", "command": [python, "-c", "import time; time.sleep(600)"]},
        *({"id": f"t{n}", "argv": []} for n in range(20)),
    ]}, allow_unicode=True), encoding="utf-8")
    return tmp_path


def in_container(task: str, image: str, *args: str) -> list[str]:
    """The `parallel-engine debug` command line running `task` of tasks.yaml in `image`."""
    return [sys.executable, "-m", "parallel_engine", "debug", "tasks.yaml", "--task", task, "--image", image,
            "--runtime", "docker", *args]


def printed_line(root: Path, *args: str) -> str:
    """The line `debug --print` wrote, read as bytes (text mode would turn a CR LF into LF)."""
    done = subprocess.run([sys.executable, "-m", "parallel_engine", "debug", *args, "--print"],
                          cwd=root, env=cli_env(), capture_output=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert not (root / "debug").exists()  # --print runs nothing
    assert done.stdout.count(b"\n") == 1 and b"\r" not in done.stdout  # one line, safe to paste
    return done.stdout.decode("utf-8").rstrip("\n")


def paste(root: Path, line: str) -> subprocess.CompletedProcess[bytes]:
    (root / "debug" / "hostile").mkdir(parents=True)
    return subprocess.run(["bash", "-c", line], cwd=root, capture_output=True, timeout=120)


def seen(folder: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((folder / "seen.json").read_text(encoding="utf-8"))
    return result


# -- errors ----------------------------------------------------------------------------------------
def test_an_unknown_task_id_is_an_error_naming_the_file_and_some_ids(tmp_path: Path) -> None:
    project(tmp_path, sys.executable)
    done = cli("debug", "tasks.yaml", "--task", "nope", "--runtime", "process", cwd=tmp_path)
    assert done.returncode == 2
    assert "tasks.yaml has no task 'nope' (23 tasks)" in done.stderr
    assert "hostile, exits-5, sleeps, t0, t1, t2, t3, t4, t5, t6, ..." in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "debug").exists()


@pytest.mark.parametrize("outputs", ["a-file", "a-file/below"])
def test_an_outputs_folder_that_cannot_be_made_is_one_error_naming_it(tmp_path: Path, outputs: str) -> None:
    project(tmp_path, sys.executable)
    (tmp_path / "a-file").write_text("not a folder")
    done = cli("debug", "tasks.yaml", "--task", "exits-5", "--runtime", "process", "--outputs", outputs, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert f"cannot make the outputs folder {tmp_path / outputs}" in done.stderr and "--outputs" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "debug").exists()


def test_a_program_that_cannot_start_leaves_no_outputs_folder_behind(tmp_path: Path) -> None:
    (tmp_path / "tasks.yaml").write_text(yaml.safe_dump({"tasks": [{"id": "gone", "command": ["/nonexistent/prog"]}]}))
    done = cli("debug", "tasks.yaml", "--task", "gone", "--runtime", "process", cwd=tmp_path)
    assert done.returncode == 3, done.stderr
    assert "cannot start '/nonexistent/prog'" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "debug").exists()


def test_a_create_argument_debug_cannot_say_as_docker_run_is_refused_not_dropped() -> None:
    from parallel_engine.debug import docker_run_argv

    with pytest.raises(BackendError, match="cpu_shares"):
        docker_run_argv({"image": "x", "cpu_shares": 512})


# -- the process runtime ---------------------------------------------------------------------------
def test_process_runtime_passes_hostile_argv_byte_exact_and_its_pe_variables(tmp_path: Path) -> None:
    project(tmp_path, sys.executable)
    done = cli("debug", "tasks.yaml", "--task", "hostile", "--runtime", "process", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "to stdout\n" and "to stderr\n" in done.stderr  # on the terminal, not in a log
    got = seen(tmp_path / "debug" / "hostile")
    assert got["argv"] == ARGV
    assert got["env"]["PE_TASK_ID"] == "hostile" and got["env"]["PE_ATTEMPT"] == "1"
    assert got["env"]["PE_OUTPUT_DIR"] == str(tmp_path / "debug" / "hostile")


def test_process_runtime_returns_the_programs_exit_code_and_honours_outputs(tmp_path: Path) -> None:
    project(tmp_path, sys.executable)
    done = cli("debug", "tasks.yaml", "--task", "exits-5", "--runtime", "process", "--outputs", "elsewhere", cwd=tmp_path)
    assert done.returncode == 5, done.stderr
    assert seen(tmp_path / "elsewhere")["argv"] == ["5"]


def test_process_print_line_pasted_into_a_shell_does_the_same(tmp_path: Path) -> None:
    project(tmp_path, sys.executable)
    line = printed_line(tmp_path, "tasks.yaml", "--task", "hostile", "--runtime", "process")
    pasted = paste(tmp_path, line)
    assert pasted.returncode == 0, pasted.stderr
    assert seen(tmp_path / "debug" / "hostile")["argv"] == ARGV


# -- containers ------------------------------------------------------------------------------------
def debug_containers(client: Any, root: Path) -> list[Any]:
    """Containers of the debug runs started from `root` (its own label, and a run label `debug-...`)."""
    found = client.containers.list(all=True, filters={"label": [LABEL_RUN, label_of(root)]}, ignore_removed=True)
    return [c for c in found if c.labels.get(LABEL_RUN, "").startswith("debug-")]


@pytest.mark.docker
def test_docker_passes_hostile_argv_byte_exact_with_limits_and_leaves_no_container(
        tmp_path: Path, base_image: str, docker_engine: Any) -> None:
    root = project(tmp_path, "python")
    image = build_with_script(docker_engine, root)
    done = cli("debug", "tasks.yaml", "--task", "hostile", "--image", image, "--runtime", "docker",
               "--set", "MEMORY=64m", cwd=root, timeout=180)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "to stdout\n" and "to stderr" in done.stderr
    got = seen(root / "debug" / "hostile")
    assert got["argv"] == ARGV
    assert got["env"]["PE_OUTPUT_DIR"] == "/pe/output" and got["env"]["PE_TASK_ID"] == "hostile"
    assert got["memory"] == [str(64 * 1024 * 1024)]
    assert debug_containers(docker_engine, root) == []


@pytest.mark.docker
def test_docker_returns_the_programs_exit_code(tmp_path: Path, base_image: str, docker_engine: Any) -> None:
    root = project(tmp_path, "python")
    image = build_with_script(docker_engine, root)
    done = cli("debug", "tasks.yaml", "--task", "exits-5", "--image", image, "--runtime", "docker", cwd=root, timeout=180)
    assert done.returncode == 5, done.stderr
    assert seen(root / "debug" / "exits-5")["argv"] == ["5"]
    assert debug_containers(docker_engine, root) == []


@pytest.mark.docker
def test_docker_print_line_pasted_into_a_shell_runs_the_same_container(
        tmp_path: Path, base_image: str, docker_engine: Any) -> None:
    root = project(tmp_path, "python")
    image = build_with_script(docker_engine, root)
    line = printed_line(root, "tasks.yaml", "--task", "hostile", "--image", image, "--runtime", "docker")
    assert line.startswith("docker run --rm ") and "--network none" in line
    pasted = paste(root, line)
    assert pasted.returncode == 0, pasted.stderr
    assert seen(root / "debug" / "hostile")["argv"] == ARGV
    assert debug_containers(docker_engine, root) == []


@pytest.mark.docker
def test_docker_shell_opens_a_shell_in_the_tasks_container(tmp_path: Path, base_image: str, docker_engine: Any) -> None:
    root = project(tmp_path, "python")
    done = subprocess.run(
        in_container("exits-5", base_image, "--shell"),
        input='echo "task=$PE_TASK_ID out=$PE_OUTPUT_DIR"; touch "$PE_OUTPUT_DIR/made"; exit 3\n',
        cwd=root, env=cli_env(), capture_output=True, text=True, timeout=180)
    assert done.returncode == 3, done.stderr
    assert "task=exits-5 out=/pe/output" in done.stdout
    assert (root / "debug" / "exits-5" / "made").exists()
    assert debug_containers(docker_engine, root) == []


@pytest.mark.docker
def test_ctrl_c_stops_debug_with_130_and_removes_its_container(tmp_path: Path, base_image: str, docker_engine: Any) -> None:
    root = project(tmp_path, "python")
    proc = subprocess.Popen(
        in_container("sleeps", base_image), cwd=root, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any(c.status == "running" for c in debug_containers(docker_engine, root)), 120, "the container to run")
        proc.send_signal(signal.SIGINT)  # to debug alone: the container must not depend on docker's own relay
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr
    assert "interrupted; its container was removed" in stderr
    assert debug_containers(docker_engine, root) == []


def build_with_script(client: Any, root: Path) -> str:
    """An image with dump.py at /work/dump.py (FROM the base image; cached after the first build)."""
    from parallel_engine.backends.local.build import build_local

    context = root / "image"
    context.mkdir(exist_ok=True)
    (context / "dump.py").write_text(DUMP)
    (context / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\nCOPY dump.py /work/dump.py\n")
    tag = "parallel-engine-debug-test:latest"
    build_local(context, tag, lambda line: None)
    return tag


@pytest.mark.docker
def test_on_a_terminal_the_program_gets_a_tty(tmp_path: Path, base_image: str, docker_engine: Any) -> None:
    import os

    own_labels(tmp_path)
    (tmp_path / "tty.yaml").write_text(yaml.safe_dump({"tasks": [
        {"id": "tty", "command": ["python", "-c", "import sys; print('isatty', sys.stdin.isatty(), sys.stdout.isatty())"]},
    ]}))
    controller, terminal = os.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "parallel_engine", "debug", "tty.yaml", "--task", "tty", "--image", base_image,
             "--runtime", "docker"], cwd=tmp_path, env=cli_env(), stdin=terminal, stdout=terminal, stderr=subprocess.PIPE)
        os.close(terminal)
        output = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not chunk:
                break
            output += chunk
        assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        os.close(controller)
    assert b"isatty True True" in output
    assert debug_containers(docker_engine, tmp_path) == []


def test_process_shell_opens_a_shell_with_the_tasks_pe_variables(tmp_path: Path) -> None:
    project(tmp_path, sys.executable)
    done = subprocess.run(
        [sys.executable, "-m", "parallel_engine", "debug", "tasks.yaml", "--task", "exits-5", "--runtime", "process",
         "--shell"], input='echo "task=$PE_TASK_ID out=$PE_OUTPUT_DIR"; exit 4\n',
        cwd=tmp_path, env={**cli_env(), "SHELL": "/bin/sh"}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 4, done.stderr
    assert f"task=exits-5 out={tmp_path / 'debug' / 'exits-5'}" in done.stdout


@pytest.mark.docker
@pytest.mark.parametrize("user", ["1234:1234", "nobody"])
def test_as_root_an_image_with_a_non_root_user_can_write_its_debug_outputs(
        tmp_path: Path, base_image: str, docker_engine: Any, user: str) -> None:
    # A worker's container gets its outputs folder opened to the image's USER (the docker
    # runtime does it); debug runs the same container, so the folder must be opened the same way.
    import os

    if os.getuid() != 0:
        pytest.skip("as a non-root caller the container runs as the caller, who owns the folder")
    tag = build_with_user(base_image, user, tmp_path / "ctx", f"parallel-engine-debug-user:{user.replace(':', '-')}")
    own_labels(tmp_path)
    (tmp_path / "tasks.yaml").write_text(yaml.safe_dump({"tasks": [{"id": "writes", "command": [
        "python", "-c", "import os; open(os.environ['PE_OUTPUT_DIR'] + '/who', 'w').write(str(os.getuid()))"]}]}))
    try:
        done = cli("debug", "tasks.yaml", "--task", "writes", "--image", tag, "--runtime", "docker",
                   cwd=tmp_path, timeout=180)
    finally:
        docker_engine.images.remove(tag, force=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "debug" / "writes" / "who").read_text() != "0"
    assert debug_containers(docker_engine, tmp_path) == []
