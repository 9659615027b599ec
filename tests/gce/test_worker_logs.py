"""Live logs sent by appends (parallel_engine/worker/logs.py), in-process against the emulator's
Storage (fake-gcs-server behind its proxy): the file grows, `sync` runs at each "interval", and
the object must always be a byte-exact prefix of the file and, after `final`, the file itself.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from parallel_engine.protocol import attempt_prefix, tail_key
from parallel_engine.worker.bucket import WorkerBucket
from parallel_engine.worker.logs import LiveLog
from tests.emulator.emulator_helpers import Clients

pytestmark = [pytest.mark.emulator]

RUN = "20250101-000000-logs1"
KEY = attempt_prefix(RUN, "t1", 1) + "stdout.log"
TAIL = tail_key(RUN, "t1", 1, "stdout")


class Side:
    def __init__(self, clients: Clients, tmp_path: Path, prefix: str = "") -> None:
        self.clients = clients
        self.path = tmp_path / "stdout.log"
        self.bucket = WorkerBucket(clients.storage, clients.cloud.bucket, prefix, tries=2,
                                   retry_base_s=0.02, retry_max_s=0.1)
        self.lines: list[str] = []

    def live(self, whole_below: int = 1) -> LiveLog:
        return LiveLog(self.bucket, KEY, TAIL, self.path, self.lines.append, whole_below=whole_below)

    def grow(self, data: bytes) -> None:
        with open(self.path, "ab") as f:
            f.write(data)

    def stored(self) -> bytes:
        return bytes(self.bucket.bucket.blob(self.bucket.root + KEY).download_as_bytes())

    def tails(self) -> list[str]:
        return [b.name for b in self.clients.storage.list_blobs(self.bucket.bucket, prefix=f"runs/{RUN}/tails/")]

    def overwrite(self, data: bytes) -> None:
        """Something else writes the log object (a new generation)."""
        self.bucket.bucket.blob(KEY).upload_from_string(data)


@pytest.fixture
def side(clients: Clients, tmp_path: Path) -> Side:
    return Side(clients, tmp_path)


def binary_chunk(rng: random.Random, size: int) -> bytes:
    """Bytes that are not UTF-8: NULs, 0xff, lone continuation bytes, CRs."""
    return bytes(rng.choice(b"\x00\xff\x80\r\nab\xc3") for _ in range(size))


def test_a_growing_log_is_sent_once_by_appends_and_the_object_is_the_file_at_every_interval(side: Side) -> None:
    rng = random.Random(13)
    live = side.live()
    side.grow(b"first line\n")
    live.sync()
    for interval in range(12):
        side.grow(binary_chunk(rng, rng.randrange(1, 40_000)))
        live.sync()
        assert side.stored() == side.path.read_bytes(), f"interval {interval}"
    assert side.tails() == [TAIL]  # one tail per log, overwritten by each append
    live.sync()  # nothing new: nothing sent
    live.final()
    whole = side.path.read_bytes()
    assert side.stored() == whole
    assert live.bytes_sent == len(whole), "every byte went over the wire exactly once"
    assert side.tails() == []
    assert side.lines == []


def test_a_log_far_larger_than_one_append_reaches_the_object_byte_exact(side: Side, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("parallel_engine.worker.logs.TAIL_MAX", 4096)
    rng = random.Random(7)
    live = side.live()
    side.grow(b"x")
    live.sync()
    side.grow(binary_chunk(rng, 50_000))  # one interval's growth: 13 appends of at most 4 KiB
    live.final()
    assert side.stored() == side.path.read_bytes()
    assert live.bytes_sent == side.path.stat().st_size
    assert side.tails() == []


def test_an_object_written_by_something_else_is_replaced_by_a_whole_upload_of_the_file(side: Side) -> None:
    live = side.live()
    side.grow(b"mine 1\n")
    live.sync()
    side.overwrite(b"someone else's bytes\n")
    side.grow(b"mine 2\n")
    live.sync()
    assert side.stored() == b"mine 1\nmine 2\n"
    assert any("append failed (412" in line for line in side.lines), side.lines  # the generation precondition
    live.final()
    assert side.tails() == []


def test_final_uploads_the_file_whole_when_the_object_differs_even_without_growth(side: Side) -> None:
    live = side.live()
    side.grow(b"all of it\n")
    live.sync()
    side.overwrite(b"all of it\n but changed")
    live.final()
    assert side.stored() == b"all of it\n"
    assert any("differs from the file" in line for line in side.lines), side.lines


def test_a_failing_compose_falls_back_to_a_whole_upload_and_final_leaves_no_tail(side: Side, clients: Clients) -> None:
    live = side.live()
    side.grow(b"before\n")
    live.sync()
    clients.cloud.control.fail_next(10, status=503, method="POST", path=r"/compose", service="storage")
    side.grow(b"\xff\xfe during the outage\n")
    live.sync()
    clients.cloud.control.clear_faults("storage")
    assert side.stored() == b"before\n\xff\xfe during the outage\n"
    assert any("append failed" in line for line in side.lines), side.lines
    live.final()
    assert side.tails() == []


def test_a_bucket_that_keeps_refusing_composes_gets_whole_uploads_without_trying_again(side: Side, clients: Clients) -> None:
    live = side.live()
    side.grow(b"0\n")
    live.sync()
    clients.cloud.control.fail_next(100, status=403, method="POST", path=r"/compose", service="storage")
    for n in range(1, 6):
        side.grow(b"%d\n" % n)
        live.sync()
        assert side.stored() == side.path.read_bytes()
    clients.cloud.control.clear_faults("storage")
    assert clients.cloud.control.calls()["storage"]["injected"] == {"storage.objects.compose": 3}
    assert sum("3 appends in a row failed" in line for line in side.lines) == 1, side.lines


def test_a_compose_whose_answer_was_lost_and_that_landed_twice_is_repaired(side: Side, clients: Clients) -> None:
    live = side.live()
    side.grow(b"head\n")
    live.sync()
    # The compose is carried out but answered 503: the client retries it. On Google the retry
    # fails its generation precondition; fake-gcs-server keeps the generation and appends twice.
    # Either way the object is not the file's bytes until the worker uploads it whole.
    clients.cloud.control.fail_next(1, status=503, method="POST", path=r"/compose", service="storage", after=True)
    side.grow(b"tail\n")
    live.sync()
    assert side.stored() == b"head\ntail\n"
    assert any("uploading it whole" in line for line in side.lines), side.lines
    side.grow(b"more\n")
    live.final()
    assert side.stored() == b"head\ntail\nmore\n"
    assert side.tails() == []


def test_a_tail_that_cannot_be_deleted_is_reported_and_stays_out_of_the_attempts_folder(side: Side, clients: Clients) -> None:
    live = side.live()
    side.grow(b"a\n")
    live.sync()
    side.grow(b"b\n")
    live.sync()
    clients.cloud.control.fail_next(10, status=503, method="DELETE", path=r"tails", service="storage")
    live.final()
    clients.cloud.control.clear_faults("storage")
    assert side.stored() == b"a\nb\n"
    assert side.tails() == [TAIL]
    assert not TAIL.startswith(attempt_prefix(RUN, "t1", 1).rsplit("/tasks/", 1)[0] + "/tasks/")
    assert any("could not delete the temporary" in line for line in side.lines), side.lines


def test_a_small_log_goes_up_whole_in_one_call_per_interval_and_makes_no_tail(side: Side) -> None:
    live = side.live(whole_below=1024 * 1024)
    for n in range(3):
        side.grow(f"line {n}\n".encode())
        live.sync()
        assert side.stored() == side.path.read_bytes()
    assert live.calls == 3
    assert live.appends == 0 and side.tails() == []  # no append, so no tail was ever made


def test_a_log_the_container_never_wrote_is_an_empty_object(side: Side) -> None:
    live = side.live()
    live.final()
    assert side.stored() == b""


# A task printing 64 blocks of every byte value (not UTF-8) to stdout, a little at a time.
BINARY_TASK = r"""
import sys, time
block = bytes(range(256)) * 256
for i in range(64):
    sys.stdout.buffer.write(b"%d:" % i + block)
    sys.stdout.buffer.flush()
    sys.stderr.buffer.write(b"\xff%d\n" % i)
    sys.stderr.buffer.flush()
    time.sleep(0.02)
"""


@pytest.mark.docker
def test_a_worker_attempt_printing_binary_over_many_intervals_leaves_exactly_those_bytes(
        clients: Clients, docker_engine: object, base_image: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from parallel_engine.backends.gce.startup import WorkerSettings
    from parallel_engine.protocol import command_key, encode_argv, open_key
    from parallel_engine.worker.loop import Worker

    monkeypatch.setattr("parallel_engine.worker.logs.WHOLE_BELOW", 1)  # append from the second sync on
    bucket = clients.storage.bucket(clients.cloud.bucket)
    bucket.blob(command_key(RUN, "bin")).upload_from_string(encode_argv(["python", "-c", BINARY_TASK]))
    bucket.blob(open_key(RUN, "bin", 1)).upload_from_string(b"")
    settings = WorkerSettings(
        run_id=RUN, bucket=clients.cloud.bucket, image=base_image, worker_image="parallel-engine-worker:unused", pull_policy="never",
        storage_endpoint=clients.cloud.storage_endpoint, heartbeat_s=0.2, log_interval_s=0.1,
        poll_s=0.1, idle_s=0.3, stop_grace_s=1, http_tries=3, retry_base_s=0.05, retry_max_s=0.4)
    lines: list[str] = []
    clients.cloud.control.reset_calls()
    Worker(settings, WorkerBucket(clients.storage, settings.bucket, "", 3, 0.05, 0.4), "w1", tmp_path / "w1",
           log=lines.append).run()
    logs = attempt_prefix(RUN, "bin", 1)
    block = bytes(range(256)) * 256
    assert bucket.blob(logs + "stdout.log").download_as_bytes() == b"".join(b"%d:" % i + block for i in range(64)), lines
    assert bucket.blob(logs + "stderr.log").download_as_bytes() == b"".join(b"\xff%d\n" % i for i in range(64))
    composes = clients.cloud.control.calls()["storage"]["byMethod"].get("storage.objects.compose", {})
    assert sum(composes.values()) >= 1, "the log was appended, not only uploaded whole"
    assert list(clients.storage.list_blobs(bucket, prefix=f"runs/{RUN}/tails/")) == []
    assert not [line for line in lines if "upload" in line and "whole" in line], lines

def test_logs_follow_on_a_bucket_shows_every_appended_byte_once(clients: Clients, tmp_path: Path) -> None:
    import dataclasses
    import threading

    from parallel_engine.api import open_store
    from parallel_engine.follow import tail_log
    from parallel_engine.model import AttemptState, AttemptStatus
    from parallel_engine.processes import this_orchestrator
    from tests.emulator.emulator_helpers import wait_for
    from tests.gce.gce_helpers import config_for
    from tests.helpers import record_run

    store = open_store(config_for(clients.cloud, "unused"))
    record = record_run(store, RUN, {"t1": [None]}, ended=None)
    store.save_run(dataclasses.replace(record, spec={**record.spec, "orchestrator": this_orchestrator()}))
    written: list[bytes] = []
    starts: list[int] = []
    read_from = store.blobs.read_from

    def recorded(key: str, start: int) -> bytes | None:
        starts.append(start)
        return read_from(key, start)

    store.blobs.read_from = recorded  # type: ignore[method-assign]
    follower = threading.Thread(target=tail_log, args=(store, RUN, "t1", 1, "stdout", written.append, 0.01))
    follower.start()
    side = Side(clients, tmp_path, prefix=store.blobs.prefix)  # type: ignore[attr-defined]
    live = side.live()
    rng = random.Random(3)
    try:
        for _ in range(15):
            # Counted before the sync: the follower (every 10 ms) may print the new bytes before
            # sync() returns (CI's red run: counted after, it waited for bytes that never came).
            seen = len(b"".join(written))
            side.grow(binary_chunk(rng, rng.randrange(1, 20_000)))
            live.sync()
            wait_for(lambda: len(b"".join(written)) > seen, 10, "the follower to print what was appended")
        live.final()
    finally:
        store.record_end(RUN, AttemptStatus("t1", 1, AttemptState.SUCCEEDED, 0, 1.0, 2.0, "worker-t1"))
        follower.join(timeout=20)
    assert not follower.is_alive()
    assert b"".join(written) == side.path.read_bytes()
    assert live.appends >= 14
    assert starts == sorted(starts) and starts[-1] == side.path.stat().st_size  # only what is new was read


def test_a_bucket_log_is_read_from_an_offset(clients: Clients) -> None:
    from parallel_engine.api import open_store
    from tests.gce.gce_helpers import config_for

    blobs = open_store(config_for(clients.cloud, "unused")).blobs
    blobs.write("runs/r/tasks/t/1/stdout.log", b"0123\xff56789")
    assert blobs.read_from("runs/r/tasks/t/1/stdout.log", 0) == b"0123\xff56789"
    assert blobs.read_from("runs/r/tasks/t/1/stdout.log", 4) == b"\xff56789"
    assert blobs.read_from("runs/r/tasks/t/1/stdout.log", 10) == b""  # nothing new: Storage says 416
    assert blobs.read_from("runs/r/tasks/t/1/stdout.log", 11) == b""
    assert blobs.read_from("runs/r/tasks/t/1/stderr.log", 3) is None
