"""The VM worker booted by emulated VMs, end to end: the Python worker in its image, started by
the start-up script (templates/worker-start.sh.j2).

Each test plays the orchestrator's part of docs/worker-protocol.md with the real Google clients
(google-cloud-storage writes argv/, command/ and open/; google-cloud-compute creates the VMs),
lets the emulated VMs run the rendered script under the COS-like PATH, and reads back what the
workers wrote: claims, status.json, logs, outputs, events. Containers run on the local Docker
engine from a tiny probe image, tagged locally (`pull_policy="if-missing"`); pulls from the
emulated registry are pinned by test_gce_backend.py (build, then run by digest) and by the
"manifest unknown" case here.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from google.api_core.exceptions import NotFound

from parallel_engine.backends.gce.startup import WorkerSettings, render_startup_script
from parallel_engine.model import AttemptState, AttemptStatus
from parallel_engine.protocol import (
    argv_key,
    command_key,
    encode_argv,
    heartbeat_key,
    open_key,
)
from tests.emulator.emulator_helpers import Clients, make_instance, wait_for
from tests.hostile import ARGV

pytestmark = [pytest.mark.emulator, pytest.mark.docker]

PROBE_IMAGE = "parallel-engine-worker-probe:test"
BASE_IMAGE = "python:3.11-slim"
RUN = "20250101-000000-wrkr1"
UNPULLABLE = "127.0.0.1:1/pe/missing@sha256:" + "0" * 64  # nothing listens there: the pull fails

# Writes its argv and PE_* environment to $PE_OUTPUT_DIR/argv.json (plus a file in a folder with
# a space and an accent), prints to both streams, then acts on --print=/--sleep=/--exit= and
# --await=N:URL (until the Storage listing at URL holds N objects, read as the VM's service account).
PROBE = r'''
import json, os, sys, time
out = os.environ["PE_OUTPUT_DIR"]
args = sys.argv[1:]
def listed(url):
    import urllib.request
    md = "http://" + os.environ.get("GCE_METADATA_HOST", "metadata.google.internal") + "/computeMetadata/v1/"
    ask = urllib.request.Request(md + "instance/service-accounts/default/token", headers={"Metadata-Flavor": "Google"})
    token = json.load(urllib.request.urlopen(ask, timeout=10))["access_token"]
    call = urllib.request.Request(url, headers={"Authorization": "Bearer " + token})
    return len(json.load(urllib.request.urlopen(call, timeout=10)).get("items", []))
with open(os.path.join(out, "argv.json"), "w", encoding="utf-8") as f:
    json.dump({"argv": args, "env": {k: v for k, v in os.environ.items() if k.startswith(("PE_", "GCE_"))}}, f)
os.makedirs(os.path.join(out, "sub dir"), exist_ok=True)
with open(os.path.join(out, "sub dir", "r\u00e9sult.txt"), "w", encoding="utf-8") as f:
    f.write("ok\n")
print("probe started", os.environ["PE_TASK_ID"], os.environ["PE_ATTEMPT"], flush=True)
for a in args:
    if a.startswith("--call-google="):  # as the VM's service account, from inside the container
        import urllib.request, urllib.error
        md = "http://" + os.environ.get("GCE_METADATA_HOST", "metadata.google.internal") + "/computeMetadata/v1/"
        ask = urllib.request.Request(md + "instance/service-accounts/default/token", headers={"Metadata-Flavor": "Google"})
        token = json.load(urllib.request.urlopen(ask, timeout=10))
        call = urllib.request.Request(a[len("--call-google="):], headers={"Authorization": "Bearer " + token["access_token"]})
        try:
            status = urllib.request.urlopen(call, timeout=10).status
        except urllib.error.HTTPError as refused:
            status = refused.code
        with open(os.path.join(out, "google.json"), "w") as f:
            json.dump({"token_type": token["token_type"], "status": status}, f)
print("probe stderr line", file=sys.stderr, flush=True)
for a in args:
    if a.startswith("--print="):
        print(a[len("--print="):], flush=True)
    elif a.startswith("--sleep="):
        time.sleep(float(a[len("--sleep="):]))
    elif a == "--odd-outputs":  # entries that are no regular file: never uploaded, listed
        os.symlink("/etc/hostname", os.path.join(out, "host-link"))
        os.symlink("../../../../run.json", os.path.join(out, "sub dir", "climbs"))
        os.mkfifo(os.path.join(out, "pipe"))
    elif a.startswith("--write="):  # an output named by what follows: "--write=line\nbreak.txt"
        with open(os.path.join(out, a[len("--write="):]), "w") as f:
            f.write("lost?\n")
    elif a.startswith("--exit="):
        print("exiting with", a[len("--exit="):], file=sys.stderr, flush=True)
        sys.exit(int(a[len("--exit="):]))
    elif a.startswith("--await="):
        want, _, url = a[len("--await="):].partition(":")
        deadline = time.time() + 60
        while listed(url) < int(want):
            if time.time() > deadline:
                print("gave up: the listing never held", want, "objects", file=sys.stderr, flush=True)
                sys.exit(9)
            time.sleep(0.05)
print("probe done", flush=True)
'''



@pytest.fixture(scope="module")
def probe_image(docker_engine: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The probe image, built offline from python:3.11-slim (made by scripts/ensure-docker.sh)."""
    folder = tmp_path_factory.mktemp("probe-image")
    (folder / "probe.py").write_text(PROBE)
    (folder / "Dockerfile").write_text(f'FROM {BASE_IMAGE}\nCOPY probe.py /probe.py\nENTRYPOINT ["python", "/probe.py"]\n')
    built = subprocess.run(
        ["docker", "build", "-q", "--network", "none", "-t", PROBE_IMAGE, str(folder)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if built.returncode != 0:
        pytest.fail(
            f"building the probe image failed (does {BASE_IMAGE} exist? scripts/ensure-docker.sh makes it):\n"
            f"{built.stderr}"
        )
    return PROBE_IMAGE


class Run:
    """The orchestrator's side of the protocol for one run, through the real Google clients."""

    def __init__(self, clients: Clients, image: str, work_dir: Path, worker_image: str) -> None:
        self.clients = clients
        self.cloud = clients.cloud
        self.bucket = clients.storage.bucket(clients.cloud.bucket)
        self.vms: list[str] = []
        self.settings = WorkerSettings(
            run_id=RUN,
            bucket=clients.cloud.bucket,
            image=image,
            pull_policy="if-missing",
            storage_endpoint=clients.cloud.storage_endpoint,
            compute_endpoint=clients.cloud.compute_endpoint,
            heartbeat_s=0.2,
            log_interval_s=0.2,
            work_dir=str(work_dir),
            poll_s=0.1,
            idle_s=0.4,
            stop_grace_s=1,
            pull_tries=2,
            retry_base_s=0.05,
            retry_max_s=0.4,
            worker_image=worker_image,
        )

    # -- writing what the orchestrator writes ------------------------------------------------
    def publish(self, task_id: str, argv: list[str], attempt: int = 1, command: list[str] | None = None) -> None:
        if command is not None:
            self.bucket.blob(command_key(RUN, task_id)).upload_from_string(encode_argv(command))
        else:
            self.bucket.blob(argv_key(RUN, task_id)).upload_from_string(encode_argv(argv))
        self.bucket.blob(open_key(RUN, task_id, attempt)).upload_from_string(b"")

    def start_vms(self, *names: str, spot: bool = False, **overrides: Any) -> None:
        """Insert VMs concurrently (as the GCE backend does), each booting the rendered script."""
        settings = replace(self.settings, **overrides)
        script = render_startup_script(settings)
        operations = [
            self.clients.insert(make_instance(name, script=script, spot=spot, action="DELETE" if spot else None))
            for name in names
        ]
        for operation in operations:
            assert not self.clients.wait(operation).error.errors
        self.vms.extend(names)

    # -- reading what the workers wrote -------------------------------------------------------
    def read(self, key: str) -> bytes | None:
        try:
            return self.bucket.blob(key).download_as_bytes()
        except NotFound:
            return None

    def names(self, under: str) -> list[str]:
        prefix = f"runs/{RUN}/{under}"
        return sorted(b.name[len(prefix):] for b in self.clients.storage.list_blobs(self.bucket, prefix=prefix))

    def status(self, task_id: str, attempt: int = 1) -> AttemptStatus | None:
        raw = self.read(f"runs/{RUN}/tasks/{task_id}/{attempt}/status.json")
        if raw is None:
            return None
        data = json.loads(raw)
        assert set(data) == {"task_id", "attempt", "state", "exit_code", "started_at", "finished_at", "worker", "reason"}
        return AttemptStatus.from_json(data)

    def wait_status(self, task_id: str, attempt: int = 1, timeout: float = 60) -> AttemptStatus:
        return wait_for(lambda: self.status(task_id, attempt), timeout=timeout, what=f"status of {task_id}.{attempt}")

    def outputs(self, task_id: str, attempt: int = 1) -> dict[str, bytes]:
        prefix = f"runs/{RUN}/tasks/{task_id}/{attempt}/outputs/"
        return {
            b.name[len(prefix):]: b.download_as_bytes()
            for b in self.clients.storage.list_blobs(self.bucket, prefix=prefix)
        }

    def argv_seen(self, task_id: str, attempt: int = 1) -> dict[str, Any]:
        raw = self.read(f"runs/{RUN}/tasks/{task_id}/{attempt}/outputs/argv.json")
        assert raw is not None, f"{task_id}.{attempt} wrote no argv.json"
        return json.loads(raw)

    def log(self, task_id: str, stream: str, attempt: int = 1) -> str:
        return (self.read(f"runs/{RUN}/tasks/{task_id}/{attempt}/{stream}.log") or b"").decode()

    def events(self) -> list[tuple[str, str]]:
        """(task.attempt, state) per event, in name (time) order."""
        found = []
        for name in self.names("events/"):
            stamp, _, attempt = name.partition("-")
            assert len(stamp) == 17 and float(stamp) > 0
            found.append((attempt, (self.read(f"runs/{RUN}/events/{name}") or b"").decode()))
        return found

    def console(self, name: str) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.cloud.workdir.glob(f"vms/{name}-*/console.log"))

    def wait_all_gone(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        for name in self.vms:
            while True:
                try:
                    self.clients.get(name)
                except NotFound:
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"VM {name} still exists; its console:\n{self.console(name)}")
                time.sleep(0.05)

    def self_deletions(self) -> int:
        counts = self.cloud.control.calls()["compute"]["byMethod"]
        return counts.get("compute.instances.delete", {}).get("vm", 0)


@pytest.fixture
def run(clients: Clients, probe_image: str, worker_image: str, tmp_path: Path) -> Iterator[Run]:
    started = Run(clients, probe_image, tmp_path / "vm-work", worker_image)
    yield started
    for name in started.vms:  # a failing test must not leave a worker running
        try:
            clients.instances.delete(project=clients.project, zone=clients.zone, instance=name)
        except NotFound:
            pass


def _ok(status: AttemptStatus, worker: str | Callable[[str], bool]) -> None:
    assert status.state == AttemptState.SUCCEEDED, status
    assert status.exit_code == 0 and status.reason == ""
    assert status.started_at is not None and status.finished_at is not None
    assert status.started_at <= status.finished_at
    assert worker(status.worker) if callable(worker) else status.worker == worker


def test_one_vm_claims_and_runs_five_tasks_one_after_another(run: Run) -> None:
    tasks = [f"t{i}" for i in range(1, 6)]
    for task in tasks:
        run.publish(task, [f"--print=hello from {task}", "--sleep=0.1"])
    run.start_vms("pe-worker-1", list_page_size=2)  # open/ comes in 3 pages
    run.wait_all_gone()

    statuses = [run.status(task) for task in tasks]
    for task, status in zip(tasks, statuses, strict=True):
        assert status is not None, f"{task} has no status; console:\n{run.console('pe-worker-1')}"
        _ok(status, "pe-worker-1")
        assert status.task_id == task and status.attempt == 1
        assert run.read(f"runs/{RUN}/claims/{task}.1") == b"pe-worker-1"
        assert f"hello from {task}" in run.log(task, "stdout")
        assert run.log(task, "stderr") == "probe stderr line\n"
        seen = run.argv_seen(task)
        assert seen["argv"] == [f"--print=hello from {task}", "--sleep=0.1"]
        assert {k: v for k, v in seen["env"].items() if k.startswith("PE_")} == {
            "PE_RUN_ID": RUN, "PE_TASK_ID": task, "PE_ATTEMPT": "1", "PE_OUTPUT_DIR": "/pe/output"}  # fmt: skip
        assert run.outputs(task)["sub dir/résult.txt"] == b"ok\n"
        assert float(run.read(heartbeat_key(RUN, task, 1)) or b"0") >= status.started_at
    ordered = sorted(statuses, key=lambda s: s.started_at or 0)
    for earlier, later in itertools.pairwise(ordered):
        assert earlier.finished_at <= later.started_at  # one after another, never two at once
    assert sorted(run.events()) == [(f"{task}.1", "succeeded") for task in tasks]
    assert run.read(f"runs/{RUN}/workers/pe-worker-1") == b"t5.1"  # claim mode: the last attempt it claimed
    assert run.self_deletions() == 1


def test_two_vms_racing_for_claims_run_each_attempt_exactly_once(run: Run) -> None:
    tasks = [f"race-{i}" for i in range(6)]
    # Claimed by another worker before these boot: each VM's create of it must get 412.
    run.publish("race-taken", ["--print=must not run"])
    run.bucket.blob(f"runs/{RUN}/claims/race-taken.1").upload_from_string(b"pe-someone-else")
    # Each task waits until claims/ holds 3 objects (that one, its own, one more): a VM runs one
    # attempt at a time, so the first task cannot end before the other VM has claimed one too.
    claims = f"{run.cloud.storage_endpoint}/storage/v1/b/{run.cloud.bucket}/o?prefix=" + quote(f"runs/{RUN}/claims/", safe="")
    for task in tasks:
        run.publish(task, [f"--await=3:{claims}", "--sleep=0.2"])
    # Two identical workers booted together (each works in its VM's own TMPDIR, whatever the base
    # says). Nothing deletes open/ markers here, so both sweep the same names.
    run.start_vms("pe-racer-a", "pe-racer-b", work_dir="/proc/parallel-engine-worker")
    run.wait_all_gone()

    events = run.events()
    assert sorted(attempt for attempt, _ in events) == sorted(f"{task}.1" for task in tasks)  # once each
    holders = {}
    for task in tasks:
        status = run.status(task)
        assert status is not None, f"no status for {task}"
        holder = (run.read(f"runs/{RUN}/claims/{task}.1") or b"").decode()
        _ok(status, holder)
        holders[task] = holder
    assert set(holders.values()) == {"pe-racer-a", "pe-racer-b"}  # both won claims
    assert run.read(f"runs/{RUN}/claims/race-taken.1") == b"pe-someone-else"
    assert run.names("tasks/race-taken/") == []  # neither VM ran it: no heartbeat, log or status
    taken = [int(m) for vm in ("pe-racer-a", "pe-racer-b")
             for m in re.findall(r"; (\d+) were taken by other workers first", run.console(vm))]
    assert len(taken) == 2 and min(taken) >= 1, taken  # Storage answered 412 to each VM's create of it
    assert run.self_deletions() == 2  # every VM deleted itself


def test_rendered_tasks_one_vm_per_task_and_a_duplicate_worker_runs_nothing_twice(run: Run) -> None:
    tasks = ["alpha", "beta", "gamma.2"]
    for task in tasks:  # rendered mode reads no open/ marker: publish only the argv
        run.bucket.blob(argv_key(RUN, task)).upload_from_string(encode_argv([f"--print={task}"]))
    for task in tasks:
        run.start_vms(f"pe-one-{task.replace('.', '-')}", tasks=((task, 1),))
    run.start_vms("pe-one-alpha-duplicate", tasks=(("alpha", 1),))
    run.wait_all_gone()

    assert run.names("open/") == []
    assert sorted(run.events()) == [(f"{task}.1", "succeeded") for task in tasks]
    for task in tasks:
        status = run.status(task)
        assert status is not None
        _ok(status, (run.read(f"runs/{RUN}/claims/{task}.1") or b"").decode())
        assert run.log(task, "stdout").splitlines()[1] == task
    assert run.status("alpha").worker in ("pe-one-alpha", "pe-one-alpha-duplicate")
    for vm in run.vms:  # rendered mode: the record is a heartbeat only, never rewritten per claim
        assert run.read(f"runs/{RUN}/workers/{vm}") == b"-", vm
    assert run.self_deletions() == 4


def test_a_failing_task_is_recorded_failed_with_its_exit_code(run: Run) -> None:
    run.publish("bad", ["--exit=3"])
    run.start_vms("pe-failing")
    run.wait_all_gone()
    status = run.status("bad")
    assert status is not None
    assert (status.state, status.exit_code, status.reason) == (AttemptState.FAILED, 3, "exit code 3")
    assert "exiting with 3" in run.log("bad", "stderr")
    assert run.argv_seen("bad")["argv"] == ["--exit=3"]
    assert run.events() == [("bad.1", "failed")]


def test_outputs_that_are_no_regular_file_are_listed_in_skipped_never_uploaded(run: Run) -> None:
    run.publish("odd", ["--odd-outputs"])
    run.start_vms("pe-odd")
    run.wait_all_gone()
    status = run.status("odd")
    assert status is not None, run.console("pe-odd")
    _ok(status, "pe-odd")
    assert sorted(run.outputs("odd")) == ["argv.json", "sub dir/résult.txt"]
    fields = (run.read(f"runs/{RUN}/tasks/odd/1/skipped") or b"").split(b"\0")
    listed = {tuple(fields[i:i + 3]) for i in range(0, len(fields) - 1, 3)}
    assert listed == {
        (b"link", b"host-link", b"/etc/hostname"),
        (b"link", b"sub dir/climbs", b"../../../../run.json"),
        (b"fifo", b"pipe", b""),
    }


def test_an_output_whose_name_storage_refuses_fails_the_attempt_naming_the_file(run: Run) -> None:
    # Cloud Storage refuses a line break in an object name: the file cannot be stored as named.
    run.publish("refused", ["--write=line\nbreak.txt"])
    run.start_vms("pe-refused")
    run.wait_all_gone()
    status = run.status("refused")
    assert status is not None, run.console("pe-refused")
    assert (status.state, status.exit_code) == (AttemptState.FAILED, 0), status
    assert status.reason.startswith("output $'line\\nbreak.txt' could not be stored (HTTP 400)"), status.reason
    assert "Disallowed unicode characters" in status.reason  # Storage's own message
    assert sorted(run.outputs("refused")) == ["argv.json", "sub dir/résult.txt"]  # the others are stored
    assert run.events() == [("refused.1", "failed")]


def test_a_task_over_its_timeout_is_killed_and_recorded_timeout(run: Run) -> None:
    run.publish("slow", ["--sleep=60"])
    run.start_vms("pe-timeout", task_timeout_s=1.0)
    status = run.wait_status("slow", timeout=30)
    assert status.state == AttemptState.TIMEOUT
    assert status.reason == "timed out after 1 s"
    assert status.exit_code == 137  # SIGKILL
    assert status.duration_s is not None and 1.0 <= status.duration_s < 10
    run.wait_all_gone()
    assert "probe started" in run.log("slow", "stdout")
    assert run.events() == [("slow.1", "timeout")]


def test_transient_storage_errors_during_upload_are_retried(run: Run) -> None:
    run.publish("flaky-store", ["--print=survived"])
    control = run.cloud.control
    # 3 failures, each retried with backoff. The worker's uploads name their object in the body:
    # any of its uploads gets them.
    control.fail_next(3, status=503, method="POST", path=r"uploadType=multipart", service="storage", caller="vm")
    # A token refused once (401): the worker fetches a token again and retries.
    control.fail_next(1, status=401, method="POST", path=r"uploadType=multipart", service="storage", caller="vm")
    run.start_vms("pe-flaky")
    run.wait_all_gone()
    status = run.status("flaky-store")
    assert status is not None
    _ok(status, "pe-flaky")
    assert run.log("flaky-store", "stderr") == "probe stderr line\n"
    assert control.calls()["storage"]["injected"] == {"storage.objects.insert": 4}
    assert control.pending_faults()["storage"] == 0


def test_a_claim_whose_answer_was_lost_is_recognised_as_ours_under_a_prefix(run: Run) -> None:
    # The claim is created, but the VM hears 503: its retry gets 412, reads its own name back, runs it.
    run.cloud.control.fail_next(
        1, status=503, method="POST", path=r"uploadType=multipart", service="storage", caller="vm", after=True
    )
    for key, data in ((argv_key(RUN, "lost"), encode_argv(["--print=mine"])), (open_key(RUN, "lost", 1), b"")):
        run.bucket.blob(f"team/pe-store/{key}").upload_from_string(data)
    run.start_vms("pe-lost-answer", prefix="/team/pe-store/")
    run.wait_all_gone()
    assert run.cloud.control.calls()["storage"]["injected"] == {"storage.objects.insert": 1}
    root = f"team/pe-store/runs/{RUN}/"
    assert run.read(f"{root}claims/lost.1") == b"pe-lost-answer"
    status = AttemptStatus.from_json(json.loads(run.read(f"{root}tasks/lost/1/status.json") or b"{}"))
    _ok(status, "pe-lost-answer")
    assert (run.read(f"{root}tasks/lost/1/stdout.log") or b"").decode().splitlines()[1] == "mine"
    assert run.names("") == []  # nothing outside the prefix


def test_an_image_that_cannot_be_pulled_is_recorded_infra_with_the_registry_message(run: Run) -> None:
    for task in ("p1", "p2"):
        run.publish(task, [])
    run.start_vms("pe-no-image", image=UNPULLABLE, pull_policy="always", registry="127.0.0.1:1")
    run.wait_all_gone()
    recorded = [s for s in (run.status("p1"), run.status("p2")) if s is not None]
    assert len(recorded) == 1  # the first claimed attempt is recorded; no other is claimed
    status = recorded[0]
    assert status.state == AttemptState.INFRA and status.exit_code is None
    assert status.reason.startswith("image pull failed: ")
    assert "127.0.0.1:1" in status.reason  # docker's own message about the registry
    assert run.names("claims/") == [f"{status.task_id}.1"]
    assert run.log(status.task_id, "stderr").strip()  # the pull's error output is kept
    assert run.console("pe-no-image").count("pulling ") == 2  # pull_tries
    assert run.self_deletions() == 1


def test_the_task_calls_google_as_the_vms_service_account_from_inside_its_container(run: Run) -> None:
    listing = f"{run.cloud.storage_endpoint}/storage/v1/b/{run.cloud.bucket}/o?maxResults=1"
    run.publish("caller", [f"--call-google={listing}"])
    run.start_vms("pe-caller")
    run.wait_all_gone()
    status = run.status("caller")
    assert status is not None, run.console("pe-caller")
    _ok(status, "pe-caller")
    seen = json.loads(run.read(f"runs/{RUN}/tasks/caller/1/outputs/google.json") or b"{}")
    assert seen == {"token_type": "Bearer", "status": 200}  # a live token of the VM's service account


def test_an_image_missing_from_the_registry_is_infra_with_manifest_unknown(run: Run) -> None:
    assert run.cloud.registry_host, "the emulated cloud has no registry (apt-get install docker-registry)"
    missing = f"{run.cloud.registry_host}/{run.cloud.project}/parallel-engine/nope@sha256:{'1' * 64}"
    run.publish("nothing-to-pull", [])
    run.start_vms("pe-no-manifest", image=missing, pull_policy="always")
    run.wait_all_gone()
    status = run.status("nothing-to-pull")
    assert status is not None, run.console("pe-no-manifest")
    assert status.state == AttemptState.INFRA and status.reason.startswith("image pull failed: ")
    assert "manifest unknown" in status.reason, status.reason


def test_a_task_that_outlives_its_token_keeps_uploading_with_fresh_tokens(run: Run) -> None:
    run.cloud.control.set_clock(token_lifetime_seconds=200)  # 2 s here; the task runs ~6 s
    items = [arg for i in range(12) for arg in (f"--print=line {i}", "--sleep=0.5")]
    run.publish("long-lived", items)
    run.start_vms("pe-tokens")
    run.wait_all_gone()
    status = run.status("long-lived")
    assert status is not None, run.console("pe-tokens")
    _ok(status, "pe-tokens")
    assert status.duration_s is not None and status.duration_s > 3 * 2
    stdout = run.log("long-lived", "stdout").splitlines()
    assert [line for line in stdout if line.startswith("line ")] == [f"line {i}" for i in range(12)]
    beat = float(run.read(heartbeat_key(RUN, "long-lived", 1)) or b"0")
    assert beat > (status.started_at or 0) + 4  # heartbeats well after the first token expired
    console = run.console("pe-tokens")
    assert console.count("service-account token fetched") >= 3, console
    assert "giving up" not in console
    assert run.self_deletions() == 1  # the last call, to Compute, with a token that is still live


def test_a_preemption_mid_task_stops_the_container_and_records_preempted(run: Run) -> None:
    run.cloud.control.set_clock(preemption_notice_seconds=500)  # 5 s here, for the worker's ~2 s of work
    run.publish("long", ["--sleep=120"])
    run.start_vms("pe-spot", spot=True)
    wait_for(lambda: "probe started" in run.log("long", "stdout"), timeout=30, what="the task to start")
    preempted_at = time.time()
    run.cloud.control.preempt("pe-spot")
    status = run.wait_status("long", timeout=30)
    assert status.state == AttemptState.PREEMPTED and status.reason == "the VM was preempted"
    assert status.finished_at is not None and status.finished_at - preempted_at < 5
    run.wait_all_gone()
    assert run.events() == [("long.1", "preempted")]
    assert run.self_deletions() == 0  # Google deletes a preempted Spot VM (terminationAction DELETE)


def test_a_vm_deleted_mid_task_keeps_the_logs_and_writes_no_status(run: Run) -> None:
    run.cloud.control.set_clock(stop_seconds=300)  # 3 s here between SIGTERM and power-off
    run.publish("doomed", ["--sleep=120"])
    run.start_vms("pe-doomed")
    wait_for(lambda: "probe started" in run.log("doomed", "stdout"), timeout=30, what="the task to start")
    run.clients.instances.delete(project=run.clients.project, zone=run.clients.zone, instance="pe-doomed")
    try:
        wait_for(lambda: "no status written" in run.console("pe-doomed"), timeout=30, what="the worker to stop")
    except TimeoutError:
        raise AssertionError(f"the worker did not say it stopped; console:\n{run.console('pe-doomed')}") from None
    run.wait_all_gone()
    assert run.status("doomed") is None and run.events() == []  # the orchestrator calls it lost or cancelled
    assert run.names("claims/") == ["doomed.1"]
    assert "probe started doomed 1" in run.log("doomed", "stdout")
    assert run.self_deletions() == 0
    left = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=parallel-engine-run={RUN}"], capture_output=True, text=True, check=False
    )
    assert left.stdout.split() == []


def test_live_logs_and_heartbeat_are_in_the_bucket_before_the_task_ends(run: Run) -> None:
    run.publish("chatty", ["--print=first line", "--sleep=3", "--print=last line"])
    run.start_vms("pe-live")
    stdout = wait_for(
        lambda: (text := run.log("chatty", "stdout")) and "first line" in text and text, timeout=30, what="live stdout"
    )
    assert run.status("chatty") is None  # still running
    assert "last line" not in stdout
    beats = {run.read(heartbeat_key(RUN, "chatty", 1))}
    wait_for(lambda: beats | {run.read(heartbeat_key(RUN, "chatty", 1))} != beats, timeout=5, what="a new heartbeat")
    status = run.wait_status("chatty", timeout=30)
    _ok(status, "pe-live")
    assert run.log("chatty", "stdout").splitlines() == ["probe started chatty 1", "first line", "last line", "probe done"]
    run.wait_all_gone()


def test_hostile_argv_reaches_the_container_byte_exact(run: Run) -> None:
    run.publish("hostile", ARGV)
    # A full command: item 0 replaces the image's entrypoint, the rest are its arguments.
    run.publish("hostile-command", [], command=["python", "/probe.py", *ARGV])
    run.start_vms("pe-hostile")
    run.wait_all_gone()
    for task in ("hostile", "hostile-command"):
        status = run.status(task)
        assert status is not None, run.console("pe-hostile")
        _ok(status, "pe-hostile")
        assert run.argv_seen(task)["argv"] == ARGV
    assert not Path("/tmp/pe-worker-pwned").exists()
