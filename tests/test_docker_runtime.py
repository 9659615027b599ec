"""DockerRuntime, build_local and select_runtime against a real Docker engine and the example image."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from parallel_engine.errors import BackendError, BuildError, ConfigError
from parallel_engine.protocol import LABEL_RUN
from parallel_engine.runtimes.base import AttemptSpec
from parallel_engine.runtimes.docker import (
    DockerAttempt,
    DockerRuntime,
    container_name,
    image_exists,
    remove_containers,
)
from tests.helpers import BASE_IMAGE, build_with_user, containers_of, wait_for
from tests.hostile import ARGV

pytestmark = pytest.mark.docker

WRITE_ARGV = (
    "import json, sys\n"
    "with open('/pe/output/argv.json', 'w', encoding='utf-8') as f:\n"
    "    json.dump(sys.argv[1:], f)\n"
)


@pytest.fixture()
def run_id(docker_engine: Any) -> Iterator[str]:
    """A run id of its own per test; after the test no container of that run may remain."""
    rid = f"test-{uuid.uuid4().hex[:10]}"
    yield rid
    left = containers_of(docker_engine, rid)
    if left:
        remove_containers({LABEL_RUN: rid})
    assert not left, f"containers left behind: {[c.name for c in left]}"


def make_spec(tmp_path: Path, run_id: str, argv: list[str], *, override: bool = False, task: str = "t1") -> AttemptSpec:
    folder = tmp_path / task / "1"
    outputs = folder / "outputs"
    outputs.mkdir(parents=True)
    return AttemptSpec(
        run_id=run_id,
        task_id=task,
        attempt=1,
        argv=tuple(argv),
        command_override=override,
        env={"PE_RUN_ID": run_id, "PE_TASK_ID": task, "PE_ATTEMPT": "1", "PE_OUTPUT_DIR": str(outputs)},
        output_dir=outputs,
        stdout_path=folder / "stdout.log",
        stderr_path=folder / "stderr.log",
        timeout_s=None,
    )


def python_spec(tmp_path: Path, run_id: str, code: str, *args: str, task: str = "t1") -> AttemptSpec:
    return make_spec(tmp_path, run_id, ["python", "-c", code, *args], override=True, task=task)


def run_to_end(runtime: DockerRuntime, spec: AttemptSpec, timeout: float = 60) -> int:
    attempt = runtime.start(spec)
    code = attempt.wait(timeout)
    if code is None:
        attempt.kill()
        pytest.fail(f"the container did not finish within {timeout} s")
    return code


@pytest.fixture()
def example_runtime(example_image: str) -> Iterator[DockerRuntime]:
    runtime = DockerRuntime(example_image)
    yield runtime
    runtime.close()


@pytest.fixture()
def base_runtime(base_image: str) -> Iterator[DockerRuntime]:
    runtime = DockerRuntime(base_image)
    yield runtime
    runtime.close()


def test_successful_run_writes_output_into_output_dir_and_logs_to_files(
    example_runtime: DockerRuntime, run_id: str, tmp_path: Path, docker_engine: Any
) -> None:
    spec = make_spec(tmp_path, run_id, ["--dataset=sales", "--project=demo", "--var=2"])
    assert run_to_end(example_runtime, spec) == 0
    summary = json.loads((spec.output_dir / "summary.json").read_text())
    assert (summary["dataset"], summary["project"], summary["var"]) == ("sales", "demo", 2)
    assert "[demo] sales: 2 series" in spec.stdout_path.read_text()
    assert spec.stderr_path.read_text() == ""
    assert containers_of(docker_engine, run_id) == []  # removed as soon as wait returned


def test_nonzero_exit_code_is_propagated_and_stderr_kept_apart(
    example_runtime: DockerRuntime, run_id: str, tmp_path: Path
) -> None:
    failing = make_spec(tmp_path, run_id, ["--dataset=x", "--fail"], task="fails")
    assert run_to_end(example_runtime, failing) == 1
    assert "failing on purpose for dataset x" in failing.stderr_path.read_text()
    assert failing.stdout_path.read_text() == ""
    usage = make_spec(tmp_path, run_id, ["--no-such-flag"], task="usage")
    assert run_to_end(example_runtime, usage) == 2  # argparse's usage error


def test_wait_returns_none_on_timeout_and_kill_leaves_no_container(
    base_runtime: DockerRuntime, run_id: str, tmp_path: Path, docker_engine: Any
) -> None:
    spec = python_spec(tmp_path, run_id, "import time; time.sleep(300)")
    attempt = base_runtime.start(spec)
    assert attempt.wait(1.0) is None
    assert len(containers_of(docker_engine, run_id)) == 1
    started = time.monotonic()
    attempt.kill()
    assert time.monotonic() - started < 30
    assert containers_of(docker_engine, run_id) == []
    attempt.kill()  # idempotent
    assert attempt.wait(5) == 137  # 128 + SIGKILL
    assert attempt.exit_reason() is None  # killed by us, not by the kernel: the code says it all


def test_kill_after_normal_exit_is_harmless(base_runtime: DockerRuntime, run_id: str, tmp_path: Path) -> None:
    attempt = base_runtime.start(python_spec(tmp_path, run_id, "pass"))
    assert attempt.wait(60) == 0
    attempt.kill()
    assert attempt.wait(0) == 0


def test_hostile_argv_arrives_byte_exact_with_command_override(
    base_runtime: DockerRuntime, run_id: str, tmp_path: Path
) -> None:
    spec = python_spec(tmp_path, run_id, WRITE_ARGV, *ARGV)
    assert run_to_end(base_runtime, spec) == 0, spec.stderr_path.read_text()
    assert json.loads((spec.output_dir / "argv.json").read_text(encoding="utf-8")) == ARGV


def test_hostile_argv_reaches_the_image_entrypoint_unchanged(
    example_runtime: DockerRuntime, run_id: str, tmp_path: Path
) -> None:
    dataset = "$(id); `id` \"q\" 'q' ü\nx"
    spec = make_spec(tmp_path, run_id, [f"--dataset={dataset}", "--project=-dash"])
    assert run_to_end(example_runtime, spec) == 0, spec.stderr_path.read_text()
    summary = json.loads((spec.output_dir / "summary.json").read_text())
    assert (summary["dataset"], summary["project"]) == (dataset, "-dash")


def test_container_sees_pe_env_with_container_output_dir(base_runtime: DockerRuntime, run_id: str, tmp_path: Path) -> None:
    code = (
        "import json, os\n"
        "json.dump({k: v for k, v in os.environ.items() if k.startswith('PE_')}, open('/pe/output/env.json', 'w'))\n"
    )
    spec = python_spec(tmp_path, run_id, code, task="env-task")
    assert run_to_end(base_runtime, spec) == 0
    env = json.loads((spec.output_dir / "env.json").read_text())
    assert env == {"PE_RUN_ID": run_id, "PE_TASK_ID": "env-task", "PE_ATTEMPT": "1", "PE_OUTPUT_DIR": "/pe/output"}


def test_network_is_none_by_default_only_loopback_visible(base_runtime: DockerRuntime, run_id: str, tmp_path: Path) -> None:
    code = (
        "import json, os\n"
        "dev = [l.split(':')[0].strip() for l in open('/proc/net/dev').read().splitlines()[2:]]\n"
        "json.dump({'proc': sorted(dev), 'sys': sorted(os.listdir('/sys/class/net'))}, open('/pe/output/net.json', 'w'))\n"
    )
    spec = python_spec(tmp_path, run_id, code)
    assert run_to_end(base_runtime, spec) == 0, spec.stderr_path.read_text()
    assert json.loads((spec.output_dir / "net.json").read_text()) == {"proc": ["lo"], "sys": ["lo"]}


def test_host_network_is_opt_in_and_shares_host_interfaces(base_image: str, run_id: str, tmp_path: Path) -> None:
    runtime = DockerRuntime(BASE_IMAGE, network="host")
    code = "import json, os; json.dump(sorted(os.listdir('/sys/class/net')), open('/pe/output/net.json', 'w'))"
    spec = python_spec(tmp_path, run_id, code)
    assert run_to_end(runtime, spec) == 0
    runtime.close()
    assert json.loads((spec.output_dir / "net.json").read_text()) == sorted(os.listdir("/sys/class/net"))


def test_bridge_network_is_refused_as_config_error() -> None:
    with pytest.raises(ConfigError, match="bridge"):
        DockerRuntime(BASE_IMAGE, network="bridge")


def test_logs_stream_live_while_the_container_runs(base_runtime: DockerRuntime, run_id: str, tmp_path: Path) -> None:
    code = (
        "import sys, time\n"
        "print('first line', flush=True)\n"
        "print('to stderr', file=sys.stderr, flush=True)\n"
        "time.sleep(300)\n"
    )
    spec = python_spec(tmp_path, run_id, code)
    attempt = base_runtime.start(spec)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if "first line" in spec.stdout_path.read_text() and "to stderr" in spec.stderr_path.read_text():
                break
            time.sleep(0.2)
        assert spec.stdout_path.read_text() == "first line\n"
        assert spec.stderr_path.read_text() == "to stderr\n"
        assert attempt.wait(0) is None  # still running: the lines arrived live
    finally:
        attempt.kill()


def test_logs_are_complete_when_wait_returns(base_runtime: DockerRuntime, run_id: str, tmp_path: Path) -> None:
    code = "import sys\nfor i in range(5000): print(i)\nsys.stdout.write('no newline at end')"
    spec = python_spec(tmp_path, run_id, code)
    assert run_to_end(base_runtime, spec) == 0
    expected = "".join(f"{i}\n" for i in range(5000)) + "no newline at end"
    assert spec.stdout_path.read_text() == expected


def test_long_quiet_container_outlives_sdk_timeouts_and_keeps_streaming(
    base_image: str, run_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import parallel_engine.runtimes.docker as docker_runtime

    monkeypatch.setattr(docker_runtime, "API_TIMEOUT_S", 1.0)  # the client's request timeout
    monkeypatch.setattr(docker_runtime, "WAIT_CHUNK_S", 0.5)  # one `wait` request times out
    runtime = DockerRuntime(BASE_IMAGE)
    code = "import time\nprint('before', flush=True)\ntime.sleep(4)\nprint('after', flush=True)\n"
    spec = python_spec(tmp_path, run_id, code)
    attempt = runtime.start(spec)
    assert attempt.wait(1.5) is None
    assert attempt.wait(60) == 0
    assert spec.stdout_path.read_text() == "before\nafter\n"
    assert spec.stderr_path.read_text() == ""  # no engine trouble was noted
    runtime.close()


def test_remove_containers_by_label_stops_a_running_attempt(
    base_runtime: DockerRuntime, run_id: str, tmp_path: Path, docker_engine: Any
) -> None:
    attempt = base_runtime.start(python_spec(tmp_path, run_id, "import time; time.sleep(300)"))
    assert remove_containers({LABEL_RUN: run_id}) == 1
    assert attempt.wait(30) == 137
    assert containers_of(docker_engine, run_id) == []
    assert remove_containers({LABEL_RUN: run_id}) == 0


def test_containers_carry_run_task_attempt_and_user_labels_and_limits(
    docker_engine: Any, base_image: str, run_id: str, tmp_path: Path
) -> None:
    runtime = DockerRuntime(BASE_IMAGE, cpus=0.5, memory="64m", labels={"team": "data"})
    attempt = runtime.start(python_spec(tmp_path, run_id, "import time; time.sleep(300)", task="Task 1/ü"))
    try:
        (container,) = containers_of(docker_engine, run_id)
        assert container.labels == {
            "team": "data",
            "parallel-engine-run": run_id,
            "parallel-engine-task": "Task 1/ü",
            "parallel-engine-attempt": "1",
        }
        host = container.attrs["HostConfig"]
        assert (host["NanoCpus"], host["Memory"], host["NetworkMode"]) == (500_000_000, 64 * 2**20, "none")
        assert host["MemorySwap"] == 64 * 2**20  # MEMORY is the whole cap: no swap on top
        assert container.name == container_name(run_id, "Task 1/ü", 1)
    finally:
        attempt.kill()
        runtime.close()


def test_container_names_are_docker_valid_and_distinct() -> None:
    plain = container_name("20240101-abc", "row-1", 2)
    assert plain == "pe-20240101-abc-row-1-2"
    odd = container_name("run", "a b/ü", 1)
    assert odd.startswith("pe-run-a-b-") and odd != container_name("run", "a b/ö", 1)
    long = container_name("r" * 100, "t" * 100, 1)
    assert len(long) <= 120
    for name in (plain, odd, long):
        assert all(c.isalnum() and c.isascii() or c in "_.-" for c in name)


def test_runs_as_the_invoking_user_so_outputs_belong_to_them(
    base_runtime: DockerRuntime, run_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.getuid() != 0:  # a non-root caller is the real case: its own uid is used as it is
        uid, gid = os.getuid(), os.getgid()
    else:  # as root, pretend to be user 4321 (the output folder belongs to them, as it would)
        uid, gid = 4321, 4321
        monkeypatch.setattr(os, "getuid", lambda: uid)
        monkeypatch.setattr(os, "getgid", lambda: gid)
    code = "import os; open('/pe/output/who', 'w').write(f'{os.getuid()}:{os.getgid()}')"
    spec = python_spec(tmp_path, run_id, code)
    os.chown(spec.output_dir, uid, gid) if os.geteuid() == 0 else None
    assert run_to_end(base_runtime, spec) == 0, spec.stderr_path.read_text()
    who = spec.output_dir / "who"
    assert who.read_text() == f"{uid}:{gid}"
    assert (who.stat().st_uid, who.stat().st_gid) == (uid, gid)


def test_missing_image_is_backend_error_with_build_hint(docker_engine: Any, run_id: str, tmp_path: Path) -> None:
    runtime = DockerRuntime("parallel-engine-no-such-image:never")
    with pytest.raises(BackendError, match="parallel-engine-no-such-image:never not found") as caught:
        runtime.start(make_spec(tmp_path, run_id, ["--dataset=x"]))
    assert caught.value.hint and "parallel-engine build" in caught.value.hint
    assert containers_of(docker_engine, run_id) == []


def test_missing_entrypoint_program_is_backend_error_and_leaves_no_container(
    base_runtime: DockerRuntime, run_id: str, tmp_path: Path, docker_engine: Any
) -> None:
    spec = make_spec(tmp_path, run_id, ["/no/such/program", "x"], override=True)
    with pytest.raises(BackendError, match="did not start"):
        base_runtime.start(spec)
    assert containers_of(docker_engine, run_id) == []


def test_build_failure_names_the_failing_step_and_shows_the_log_tail(base_image: str, tmp_path: Path) -> None:
    from parallel_engine.backends.local.build import build_local

    (tmp_path / "Dockerfile").write_text(
        f"FROM {BASE_IMAGE}\nRUN echo preparing-things\nRUN echo about-to-fail && exit 3\nRUN echo never\n"
    )
    lines: list[str] = []
    with pytest.raises(BuildError) as caught:
        build_local(tmp_path, "parallel-engine-test-broken:test", lines.append)
    message = caught.value.message
    assert "Step 3/4 : RUN echo about-to-fail && exit 3" in message
    assert "returned a non-zero code: 3" in message
    assert "about-to-fail" in message.split("--- last")[1]  # the log tail is included
    assert any("preparing-things" in line for line in lines)  # lines were streamed as they came


def test_build_without_dockerfile_is_build_error_naming_the_path(tmp_path: Path) -> None:
    from parallel_engine.backends.local.build import build_local

    with pytest.raises(BuildError, match=str(tmp_path / "Dockerfile")):
        build_local(tmp_path, "x:y", lambda line: None)
    with pytest.raises(BuildError, match="no-such-dir"):
        build_local(tmp_path / "no-such-dir", "x:y", lambda line: None)


def test_build_honours_dockerignore(docker_engine: Any, base_image: str, run_id: str, tmp_path: Path) -> None:
    from parallel_engine.backends.local.build import build_local

    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\nCOPY . /ctx/\n")
    (context / "keep.txt").write_text("kept\n")
    (context / "secret.txt").write_text("must not be sent\n")
    (context / "cache").mkdir()
    (context / "cache" / "big.bin").write_bytes(b"\0" * 1024)
    (context / ".dockerignore").write_text("secret.txt\ncache/\n")
    tag = f"parallel-engine-test-ignore:{run_id}"
    image_id = build_local(context, tag, lambda line: None)
    try:
        assert docker_engine.images.get(tag).id == image_id
        runtime = DockerRuntime(tag)
        spec = python_spec(tmp_path, run_id, "import os, json; json.dump(sorted(os.listdir('/ctx')), open('/pe/output/ls.json', 'w'))")
        assert run_to_end(runtime, spec) == 0
        runtime.close()
        listing = json.loads((spec.output_dir / "ls.json").read_text())
        assert "keep.txt" in listing and "Dockerfile" in listing
        assert "secret.txt" not in listing and "cache" not in listing
    finally:
        docker_engine.images.remove(tag, force=True)


def test_example_image_is_built_from_code_dir(example_image: str) -> None:
    assert image_exists(example_image)
    assert not image_exists("parallel-engine-no-such-image:never")


def test_select_runtime_auto_prefers_docker_when_the_image_exists(example_image: str) -> None:
    from parallel_engine.runtimes.select import select_runtime

    runtime, reason = select_runtime("auto", example_image)
    assert runtime.name == "docker"
    assert reason == f"docker: engine answers and image {example_image} exists"
    runtime.close()


def test_select_runtime_auto_falls_back_to_process_with_a_reason(docker_engine: Any) -> None:
    from parallel_engine.runtimes.select import select_runtime

    runtime, reason = select_runtime("auto", "parallel-engine-no-such-image:never")
    assert (runtime.name, reason) == ("process", "process: image parallel-engine-no-such-image:never not built yet")
    runtime, reason = select_runtime("auto", None)
    assert (runtime.name, reason) == ("process", "process: IMAGE is not set")


def test_select_runtime_docker_without_image_is_config_error(docker_engine: Any) -> None:
    from parallel_engine.runtimes.select import select_runtime

    with pytest.raises(ConfigError, match="IMAGE"):
        select_runtime("docker", None)
    with pytest.raises(BackendError, match="not found"):
        select_runtime("docker", "parallel-engine-no-such-image:never")


def test_without_an_engine_every_entry_point_says_so_with_a_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from parallel_engine.backends.local.build import build_local
    from parallel_engine.runtimes.docker import engine_available
    from parallel_engine.runtimes.select import select_runtime

    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    assert engine_available() is False
    with pytest.raises(BackendError) as caught:
        build_local(Path(__file__).resolve().parent.parent / "code", "x:y", lambda line: None)
    assert caught.value.hint == "start Docker, or set RUNTIME: process"
    with pytest.raises(BackendError, match="no Docker engine answers") as caught:
        select_runtime("docker", "some-image")
    assert caught.value.hint and "RUNTIME: process" in caught.value.hint
    runtime, reason = select_runtime("auto", "some-image")
    assert (runtime.name, reason) == ("process", "process: no Docker engine answers")
    with pytest.raises(BackendError, match="no Docker engine answers"):
        DockerRuntime("some-image").start(make_spec(tmp_path, "r", ["x"]))


ALLOCATE_256M = "x = bytearray(256 * 1024 * 1024); x[::4096] = b'1' * len(x[::4096]); print('allocated')"


def test_memory_limit_is_enforced_and_an_oom_kill_says_so(docker_engine: Any, base_image: str, run_id: str, tmp_path: Path) -> None:
    unlimited = DockerRuntime(base_image)
    fits = python_spec(tmp_path, run_id, ALLOCATE_256M, task="unlimited")
    assert run_to_end(unlimited, fits) == 0, fits.stderr_path.read_text()  # the program itself is fine
    unlimited.close()
    limited = DockerRuntime(base_image, memory="32m")
    spec = python_spec(tmp_path, run_id, ALLOCATE_256M, task="limited")
    attempt = limited.start(spec)
    try:
        assert attempt.wait(120) == 137
        assert attempt.exit_reason() == "killed: out of memory (MEMORY=32m)"
        assert "allocated" not in spec.stdout_path.read_text()
    finally:
        attempt.kill()
        limited.close()


def test_build_log_lines_reach_the_callback_while_a_later_step_still_runs(
    docker_engine: Any, base_image: str, run_id: str, tmp_path: Path
) -> None:
    """Step 2 prints a line; step 3 blocks on a loopback socket this test holds open. The
    callback must see step 2's line before the test lets step 3 finish."""
    import socket
    import threading

    from parallel_engine.backends.local.build import build_local

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))  # the build runs with the host network
    listener.listen(1)
    port = listener.getsockname()[1]
    (tmp_path / "Dockerfile").write_text(
        f"FROM {base_image}\n"
        f"RUN echo first-step {run_id}\n"
        f"RUN python -c \"import socket; s = socket.create_connection(('127.0.0.1', {port})); "
        f"print('released', s.recv(16).decode())\"\n"
    )
    seen = threading.Event()
    lines: list[str] = []

    def on_line(line: str) -> None:
        lines.append(line)
        if line == f"first-step {run_id}":
            seen.set()

    tag = f"parallel-engine-test-stream:{run_id}"
    outcome: list[BaseException | str] = []
    builder = threading.Thread(target=lambda: outcome.append(_build(build_local, tmp_path, tag, on_line)), daemon=True)
    builder.start()
    listener.settimeout(1.0)
    try:
        deadline = time.monotonic() + 300
        while True:  # until step 3 connects (it is then running, blocked on us) or the build ended
            try:
                conn, _ = listener.accept()
                break
            except socket.timeout:
                assert builder.is_alive(), f"the build ended before step 3 connected: {outcome}"
                assert time.monotonic() < deadline, "step 3 never connected"
        try:
            assert seen.is_set(), f"step 2's line had not arrived while step 3 ran; lines so far: {lines}"
            conn.sendall(b"go")
        finally:
            conn.close()
        builder.join(300)
        assert outcome and isinstance(outcome[0], str), outcome
        assert "released go" in lines
    finally:
        listener.close()
        try:
            docker_engine.images.remove(tag, force=True)
        except Exception:
            pass


def _build(build_local: Any, context: Path, tag: str, on_line: Any) -> BaseException | str:
    try:
        return str(build_local(context, tag, on_line))
    except BaseException as exc:  # handed to the test thread
        return exc


def test_as_root_an_image_with_a_non_root_user_can_write_its_outputs(
    docker_engine: Any, base_image: str, run_id: str, tmp_path: Path
) -> None:
    if os.getuid() != 0:
        pytest.skip("as a non-root caller the container runs as the caller, who owns the folder")
    tag = build_with_user(base_image, "1234:1234", tmp_path / "ctx", f"parallel-engine-test-user:{run_id}")
    try:
        runtime = DockerRuntime(tag)
        code = "import os; open('/pe/output/who', 'w').write(str(os.getuid()))"
        spec = python_spec(tmp_path, run_id, code)
        mode = spec.output_dir.stat().st_mode
        assert run_to_end(runtime, spec) == 0, spec.stderr_path.read_text()
        runtime.close()
        assert (spec.output_dir / "who").read_text() == "1234"
        folder = spec.output_dir.stat()  # given to the image's numeric USER, not opened to all
        assert (folder.st_uid, folder.st_gid, folder.st_mode) == (1234, 1234, mode)
        root_image = DockerRuntime(base_image)  # runs as root: its folder stays as it was
        other = python_spec(tmp_path, run_id, "pass", task="t2")
        before = other.output_dir.stat()
        assert run_to_end(root_image, other) == 0
        root_image.close()
        after = other.output_dir.stat()
        assert (after.st_uid, after.st_gid, after.st_mode) == (before.st_uid, before.st_gid, before.st_mode)
    finally:
        docker_engine.images.remove(tag, force=True)


def test_as_root_a_named_image_user_gets_the_outputs_folder_opened_not_chowned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A name cannot be resolved to a uid on this machine (it lives in the image's /etc/passwd).
    if os.getuid() != 0:
        pytest.skip("only root changes the folder: a non-root caller's container runs as the caller")
    runtime = DockerRuntime(BASE_IMAGE)
    monkeypatch.setattr(runtime, "image_user", lambda: "appuser")
    folder = tmp_path / "outputs"
    folder.mkdir(mode=0o755)
    owner = folder.stat().st_uid
    runtime._open_outputs_to_image_user(folder)
    assert (folder.stat().st_mode & 0o777, folder.stat().st_uid) == (0o777, owner)
    runtime.close()


def test_container_that_exited_before_the_kill_reached_it_was_not_killed(
    base_runtime: DockerRuntime, run_id: str, tmp_path: Path, docker_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Hold the waiter between the engine's answer and its publication: the container has exited
    # by itself and is gone, but nobody above the runtime knows yet when the kill is sent.
    gate = threading.Event()
    publish = DockerAttempt._finish
    monkeypatch.setattr(DockerAttempt, "_finish", lambda self, code: (gate.wait(30), publish(self, code)))
    attempt = base_runtime.start(python_spec(tmp_path, run_id, "pass"))
    wait_for(lambda: containers_of(docker_engine, run_id) == [], 30, "the container to exit and be removed")
    killer = threading.Thread(target=attempt.kill)
    killer.start()
    wait_for(lambda: attempt._kill_sent, 30, "the kill to be sent")
    gate.set()
    killer.join(30)
    assert attempt.wait(30) == 0 and not attempt.killed()


def test_container_killed_while_running_was_killed(base_runtime: DockerRuntime, run_id: str, tmp_path: Path) -> None:
    attempt = base_runtime.start(python_spec(tmp_path, run_id, "import time; time.sleep(300)"))
    assert attempt.wait(1.0) is None
    attempt.kill()
    assert attempt.wait(30) == 137 and attempt.killed()
