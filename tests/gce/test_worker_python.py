"""The Python VM worker (parallel_engine.worker) in-process: the emulator's Storage (fake-gcs-server
behind its proxy) as the bucket, the local Docker engine for the task containers, no VM.

Each test plays the orchestrator's part of docs/worker-protocol.md with google-cloud-storage and
reads back what the worker wrote. The task image is the base image itself, each task a full
command (`python -c ...`), so nothing is built.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from parallel_engine.backends.gce.startup import WorkerSettings
from parallel_engine.model import AttemptState
from parallel_engine.protocol import LABEL_RUN, argv_key, heartbeat_key
from parallel_engine.worker.__main__ import load_settings
from parallel_engine.worker.loop import Signals, Worker, shown
from tests.emulator.emulator_helpers import Clients, wait_for
from tests.gce.worker_side import IMAGE, RUN, WORKER_IMAGE, Side

pytestmark = [pytest.mark.emulator, pytest.mark.docker]


@pytest.fixture
def side(clients: Clients, docker_engine: Any, base_image: str, tmp_path: Path) -> Iterator[Side]:
    yield Side(clients, tmp_path)


def test_the_worker_claims_runs_and_records_every_open_attempt_then_deletes_its_vm(side: Side) -> None:
    for task in ("a", "b", "c"):
        side.publish(task, "--link")
    side.worker(list_page_size=2).run()
    for task in ("a", "b", "c"):
        status = side.status(task)
        assert status is not None, side.lines
        assert (status.state, status.exit_code, status.reason, status.worker) == (AttemptState.SUCCEEDED, 0, "", "w1")
        assert status.started_at is not None and status.finished_at is not None and status.started_at <= status.finished_at
        assert side.read(f"runs/{RUN}/claims/{task}.1") == b"w1"
        assert side.log(task).splitlines() == [f"started {task} 1", "done"]
        assert side.log(task, "stderr") == "to stderr\n"
        assert side.outputs(task) == {"out.txt": task.encode()}
        assert side.read(f"runs/{RUN}/tasks/{task}/1/skipped") == b"link\0host-link\0/etc/hostname\0"
        assert float(side.read(heartbeat_key(RUN, task, 1)) or 0) >= status.started_at
    assert sorted(name.split("-", 1)[1] for name in side.names("events/")) == ["a.1", "b.1", "c.1"]
    assert side.read(f"runs/{RUN}/workers/w1") == b"c.1"  # the attempt it claimed last
    assert side.deleted == ["w1"]


def test_containers_are_removed_while_ends_are_written_and_none_is_left_at_exit(
        side: Side, monkeypatch: pytest.MonkeyPatch) -> None:
    """The exit code is published before the container's removal (the end is written meanwhile);
    the worker still waits for the last removal before it exits, however slow the engine is."""
    from parallel_engine.runtimes.docker import DockerAttempt

    removing = DockerAttempt._remove
    order: list[str] = []

    def slow_remove(self: DockerAttempt, note: bool = True) -> None:
        order.append(f"remove {self.spec.task_id} after its code: {self._done.is_set()}")
        threading.Event().wait(1.0)  # an engine slow to remove: the worker must not exit first
        removing(self, note)

    monkeypatch.setattr(DockerAttempt, "_remove", slow_remove)
    for task in ("a", "b"):
        side.publish(task, "--link")
    side.worker().run()
    assert [side.status(task).state for task in ("a", "b")] == [AttemptState.SUCCEEDED] * 2  # type: ignore[union-attr]
    assert order == ["remove a after its code: True", "remove b after its code: True"]
    assert docker.from_env().containers.list(all=True, filters={"label": f"{LABEL_RUN}={RUN}"}) == []


def test_rendered_attempts_are_claimed_first_and_one_claimed_elsewhere_is_not_run(side: Side) -> None:
    side.publish("mine", claimable=False)
    side.publish("theirs", claimable=False)
    side.bucket.blob(f"runs/{RUN}/claims/theirs.1").upload_from_string(b"someone-else")
    side.worker(tasks=(("theirs", 1), ("mine", 1))).run()
    assert side.status("mine") is not None and side.status("theirs") is None
    assert side.names("tasks/theirs/") == []
    assert side.read(f"runs/{RUN}/workers/w1") == b"-"


def test_attempts_already_claimed_elsewhere_are_skipped_without_a_claim_try(side: Side) -> None:
    # A worker behind the others finds their claims in claims/ and tries only what is free: no
    # record write and refused claim per attempt another VM holds.
    for task in ("a", "b", "c", "d"):
        side.publish(task)
    for task in ("a", "c"):
        side.bucket.blob(f"runs/{RUN}/claims/{task}.1").upload_from_string(b"someone-else")
    worker = side.worker(list_page_size=1)  # both listings come one name per page
    tried: list[str] = []
    real_claim = worker.bucket.claim

    def counted(run_id: str, task_id: str, attempt: int, name: str) -> bool:
        tried.append(task_id)
        return real_claim(run_id, task_id, attempt, name)

    worker.bucket.claim = counted  # type: ignore[method-assign]
    worker.run()
    assert tried == ["b", "d"], side.lines
    assert [side.status(task) is not None for task in ("a", "b", "c", "d")] == [False, True, False, True]
    assert "claimed 2 attempt(s); 2 were taken by other workers first" in side.lines


def test_after_a_refused_claim_the_next_try_is_drawn_from_the_next_free_attempts(side: Side) -> None:
    # Workers whose attempts ended together all go after the same next name: one wins, and the
    # others, once refused, spread over the next free names instead of all trying the next one.
    tasks = [f"t{n}" for n in range(6)]
    for task in tasks:
        side.publish(task)
    worker = side.worker()
    worker.rng = random.Random(3)  # its first draw among the 5 names left is not the first of them
    assert random.Random(3).randrange(5) != 0
    tried: list[str] = []
    real_claim = worker.bucket.claim

    def raced(run_id: str, task_id: str, attempt: int, name: str) -> bool:
        tried.append(task_id)
        if len(tried) == 1:  # another worker claims t0 between our listing and our claim
            side.bucket.blob(f"runs/{RUN}/claims/{task_id}.1").upload_from_string(b"someone-else")
        return real_claim(run_id, task_id, attempt, name)

    worker.bucket.claim = raced  # type: ignore[method-assign]
    worker.run()
    assert tried[0] == "t0" and tried[1] != "t1", tried
    assert sorted(tried) == tasks  # every attempt still tried once
    assert [side.status(task) is not None for task in tasks] == [False] + [True] * 5


def test_a_heartbeat_that_cannot_be_written_as_an_attempt_starts_does_not_stop_it(side: Side) -> None:
    # The first beat goes out beside the container's start; its failure is the beater's to retry.
    from google.api_core.exceptions import ServiceUnavailable

    side.publish("beat")
    worker = side.worker(heartbeat_s=30)  # no beat from the beater during this short attempt
    real_put = worker.bucket.put

    def put(key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        if key.endswith("/heartbeat"):
            raise ServiceUnavailable("Backend Error")
        real_put(key, data, content_type)

    worker.bucket.put = put  # type: ignore[method-assign]
    worker.run()
    status = side.status("beat")
    assert status is not None and status.state == AttemptState.SUCCEEDED, side.lines
    assert "heartbeat failed: 503 Backend Error" in side.lines


def test_a_claim_of_this_vms_name_from_before_is_not_taken_as_ours(side: Side) -> None:
    # A 412 on the first try is never ours, even holding our name (the VM booted again).
    side.publish("again", claimable=False)
    side.bucket.blob(f"runs/{RUN}/claims/again.1").upload_from_string(b"w1")
    side.worker(tasks=(("again", 1),)).run()
    assert side.status("again") is None


def test_a_failing_task_is_failed_with_its_exit_code(side: Side) -> None:
    side.publish("bad", "--exit=3")
    side.worker().run()
    status = side.status("bad")
    assert status is not None
    assert (status.state, status.exit_code, status.reason) == (AttemptState.FAILED, 3, "exit code 3")


def test_a_task_over_its_timeout_is_killed_and_recorded_timeout(side: Side) -> None:
    side.publish("slow", "--sleep=60")
    side.worker(task_timeout_s=1.0).run()
    status = side.status("slow")
    assert status is not None
    assert (status.state, status.exit_code, status.reason) == (AttemptState.TIMEOUT, 137, "timed out after 1 s")
    assert status.duration_s is not None and status.duration_s < 30


def test_live_logs_and_heartbeat_reach_the_bucket_while_the_task_runs(side: Side) -> None:
    side.publish("chatty", "--sleep=3")
    worker = side.worker()
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        wait_for(lambda: "started chatty 1" in side.log("chatty"), timeout=30, what="live stdout")
        assert side.status("chatty") is None
        beat = side.read(heartbeat_key(RUN, "chatty", 1))
        wait_for(lambda: side.read(heartbeat_key(RUN, "chatty", 1)) != beat, timeout=10, what="a new heartbeat")
    finally:
        thread.join(60)
    assert side.log("chatty").splitlines() == ["started chatty 1", "done"]


def test_a_preemption_stops_the_container_and_records_preempted(side: Side) -> None:
    side.publish("long", "--sleep=120", "--exit=0")
    signals = Signals()
    worker = side.worker(signals=signals)
    thread = threading.Thread(target=worker.run)
    thread.start()
    wait_for(lambda: "started long 1" in side.log("long"), timeout=30, what="the task to start")
    signals.preempted.set()
    thread.join(30)
    assert not thread.is_alive()
    status = side.status("long")
    assert status is not None and (status.state, status.reason) == (AttemptState.PREEMPTED, "the VM was preempted")
    assert side.deleted == ["w1"]  # the worker ends; Google deletes a preempted VM, this one asks too


def test_a_shutdown_without_preemption_keeps_the_logs_and_writes_no_status(side: Side) -> None:
    side.publish("doomed", "--sleep=120")
    signals = Signals()
    thread = threading.Thread(target=side.worker(signals=signals).run)
    thread.start()
    wait_for(lambda: "started doomed 1" in side.log("doomed"), timeout=30, what="the task to start")
    signals.terminating.set()
    thread.join(30)
    assert not thread.is_alive()
    assert side.status("doomed") is None and side.names("events/") == []
    assert "started doomed 1" in side.log("doomed")
    assert side.deleted == []  # the VM is going away already


# -- never lose an output silently ------------------------------------------------------------
def test_an_output_whose_name_storage_refuses_fails_the_attempt_naming_the_file(side: Side) -> None:
    side.publish("refused", "--write=line\nbreak.txt")
    side.worker().run()
    status = side.status("refused")
    assert status is not None
    assert (status.state, status.exit_code) == (AttemptState.FAILED, 0)
    assert status.reason == "output $'line\\nbreak.txt' could not be stored (HTTP 400): " \
        "Disallowed unicode characters present in object name", status.reason
    assert side.outputs("refused") == {"out.txt": b"refused"}  # the others are stored


def test_an_output_whose_upload_keeps_failing_fails_the_attempt_naming_the_file(side: Side) -> None:
    # The emulator can fail a call by its URL only, and an upload of a small file names its object in
    # the body: here that one file's upload fails as google-cloud-storage raises it once its retries
    # are spent.
    from google.api_core.exceptions import ServiceUnavailable

    side.publish("unlucky", "--write=keep.txt")
    worker = side.worker()
    real_blob = worker.bucket._blob

    def failing_blob(key: str) -> Any:
        blob = real_blob(key)
        if key.endswith("/keep.txt"):
            def unavailable(*args: Any, **kwargs: Any) -> None:
                raise ServiceUnavailable("Backend Error")
            blob._handle_filename_and_upload = unavailable  # what transfer_manager calls per file
        return blob

    worker.bucket._blob = failing_blob  # type: ignore[method-assign]
    worker.run()
    status = side.status("unlucky")
    assert status is not None
    assert (status.state, status.exit_code) == (AttemptState.FAILED, 0)
    assert status.reason == "output keep.txt could not be stored (HTTP 503): Backend Error", status.reason
    assert side.outputs("unlucky") == {"out.txt": b"unlucky"}


def test_an_output_that_vanishes_before_its_upload_fails_the_attempt_naming_the_file(side: Side) -> None:
    side.publish("vanish", "--write=gone.txt")
    worker = side.worker()
    upload = worker.bucket.put_files

    def removing_first(pairs: list[tuple[str, Path]]) -> list[BaseException | None]:
        for key, path in pairs:
            if key.endswith("/gone.txt"):
                path.unlink()  # gone between the listing of the outputs and their upload
        return upload(pairs)

    worker.bucket.put_files = removing_first  # type: ignore[method-assign]
    worker.run()
    status = side.status("vanish")
    assert status is not None
    assert status.state == AttemptState.FAILED and status.reason.startswith("output gone.txt could not be stored")


def test_file_names_are_shown_as_one_printable_token() -> None:
    assert shown("plain.txt") == "plain.txt"
    assert shown("a b") == "'a b'"
    assert shown("line\nbreak") == "$'line\\nbreak'"
    assert shown("it's\r") == "$'it\\'s\\r'"


def test_settings_arrive_as_json_and_unknown_keys_are_refused() -> None:
    settings = load_settings(json.dumps({"run_id": RUN, "bucket": "pe-bucket", "image": IMAGE, "worker_image": WORKER_IMAGE,
                                       "tasks": [["t", 2]]}))
    assert settings.tasks == (("t", 2),)
    with pytest.raises(ValueError, match="unknown worker settings: nope"):
        load_settings(json.dumps({"run_id": RUN, "bucket": "pe-bucket", "image": IMAGE, "worker_image": WORKER_IMAGE,
                                       "nope": 1}))
    assert argv_key(RUN, "t")  # the protocol's keys, never retyped here


class _Images:
    """A Docker engine's images that holds every image asked about and counts pulls."""

    def __init__(self) -> None:
        self.pulled: list[str] = []

    def get(self, image: str) -> Any:
        return type("Image", (), {"attrs": {"Config": {}}})()

    def pull(self, image: str, **_: Any) -> None:
        self.pulled.append(image)


@pytest.mark.parametrize(("image", "pulls"), [
    ("registry.example/p/app@sha256:" + "a" * 64, 0),  # pinned and present: that content is here
    ("registry.example/p/app:latest", 1),  # a tag may have moved: `always` still asks the registry
])
def test_pull_always_skips_the_registry_only_for_a_digest_already_present(tmp_path: Path, image: str, pulls: int) -> None:
    settings = WorkerSettings(run_id=RUN, bucket="pe-bucket", image=image, worker_image=WORKER_IMAGE, pull_policy="always")
    worker = Worker(settings, Any, "w1", tmp_path)  # type: ignore[arg-type]  # no bucket call here
    images = _Images()
    worker.runtime._client = type("Client", (), {"images": images})()  # type: ignore[assignment]
    assert worker.ensure_image()
    assert images.pulled == [image] * pulls
