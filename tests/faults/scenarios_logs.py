"""A gce worker's live log under Storage faults (parallel_engine/worker/logs.py).

The log grows by random chunks of random bytes; before some syncs, drawn at random, a fault is
set: composes answered 503 (retried by the client, or not), a compose carried out whose answer
is lost (the client retries it: on the emulator it lands twice), tail deletes failing, or the log
object rewritten by someone else. After every sync the object must be exactly the file (each
fault is repaired in the sync that meets it: a whole upload), and after the final sync no tail
may be left.
"""

from __future__ import annotations

import random
from pathlib import Path

from parallel_engine.emulator import Emulator
from parallel_engine.protocol import attempt_prefix, tail_key
from parallel_engine.worker.bucket import WorkerBucket
from parallel_engine.worker.logs import LiveLog
from tests.emulator.emulator_helpers import Clients
from tests.faults.harness import scenario

RUN = "20250101-000000-flaky"
SYNCS = 12


@scenario("live log appends under storage faults at random syncs", ci_tries=2)
def log_appends_under_faults(rng: random.Random, tmp: Path) -> None:
    with Emulator(time_scale=0.01, workdir=tmp / "emulator") as cloud:
        clients = Clients(cloud)
        bucket = WorkerBucket(clients.storage, cloud.bucket, "", tries=2, retry_base_s=0.01, retry_max_s=0.05)
        key = attempt_prefix(RUN, "t", 1) + "stdout.log"
        path = tmp / "stdout.log"
        path.write_bytes(b"")
        seen: list[str] = []
        live = LiveLog(bucket, key, tail_key(RUN, "t", 1, "stdout"), path, seen.append, whole_below=rng.choice([1, 4096]))
        control = cloud.control
        done: list[str] = []
        for n in range(SYNCS):
            with open(path, "ab") as f:
                f.write(rng.randbytes(rng.randrange(1, 6000)))
            fault = rng.choice(["none", "none", "compose 503", "compose lost answer", "delete 503", "foreign write"])
            if fault == "compose 503":
                control.fail_next(rng.randrange(1, 6), status=503, method="POST", path=r"/compose", service="storage")
            elif fault == "compose lost answer":
                control.fail_next(1, status=503, method="POST", path=r"/compose", service="storage", after=True)
            elif fault == "delete 503":
                control.fail_next(rng.randrange(1, 4), status=503, method="DELETE", path=r"tails", service="storage")
            elif fault == "foreign write" and n:
                bucket.bucket.blob(key).upload_from_string(rng.randbytes(rng.randrange(0, 100)))
            done.append(fault)
            live.sync()
            control.clear_faults("storage")
            stored = bucket.bucket.blob(key).download_as_bytes()
            assert stored == path.read_bytes(), f"after sync {n} ({' / '.join(done)}): the object is not the file; {seen}"
        live.final()
        assert bucket.bucket.blob(key).download_as_bytes() == path.read_bytes(), f"after final ({done}): {seen}"
        tails = [b.name for b in clients.storage.list_blobs(bucket.bucket, prefix=f"runs/{RUN}/tails/")]
        assert tails == [], f"tails left after final ({done}): {tails}"
