"""Benchmark (not a test): live logs sent whole at each interval vs appended (compose), side by side.

A "task" prints N MB over M intervals: the log file grows by N/M MB, then the worker's log sync
runs (parallel_engine/worker/logs.py), M times, then the attempt's final sync. Both ways run in
the same session against the emulator's Storage (fake-gcs-server behind its proxy, on this
machine): whole = `LiveLog` with `whole_below` above any size (the file re-sent whole each time,
what the worker did before), append = the worker's default. Printed per way: payload bytes sent,
Storage calls, wall time of the syncs (the printing itself is not timed), and whether the object
ended byte-exact. `--latency-ms` adds that much to every Storage call (the emulator's latency
rule) to stand for a real bucket's round trip, where the three calls of an append cost more.

Then the crossover: one sync of a log of S bytes that grew by 1 KiB, whole (one call of S bytes)
vs append (three small calls), for a few S: below the size where append wins, whole is kept
(`WHOLE_BELOW`).

    python bench/log_append.py [--mb 32] [--intervals 32] [--latency-ms 0,20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from parallel_engine.emulator import Emulator  # noqa: E402
from parallel_engine.worker.bucket import WorkerBucket  # noqa: E402
from parallel_engine.worker.logs import WHOLE_BELOW, LiveLog  # noqa: E402
from tests.emulator.emulator_helpers import Clients  # noqa: E402

NEVER = 1 << 62  # a `whole_below` no log reaches: every sync re-sends the file whole
MB = 1024 * 1024
CROSSOVER_SIZES = (64 * 1024, 1 * MB, 4 * MB, 8 * MB, 16 * MB)


def chunk(size: int, seed: int) -> bytes:
    """Log-like bytes (not all UTF-8), cheap to make."""
    line = f"step {seed}: loss=0.{seed:06d} \xe9\n".encode("latin-1")
    return (line * (size // len(line) + 1))[:size]


def one_way(bucket: WorkerBucket, folder: Path, key: str, whole_below: int, mb: float, intervals: int) -> tuple[int, int, float, bool]:
    path = folder / key.replace("/", "_")
    live = LiveLog(bucket, key, f"tails/{key}.", path, lambda _line: None, whole_below=whole_below)
    step = int(mb * MB / intervals)
    spent = 0.0
    for n in range(intervals):
        with open(path, "ab") as f:
            f.write(chunk(step, n))
        began = time.perf_counter()
        live.sync()
        spent += time.perf_counter() - began
    began = time.perf_counter()
    live.final()
    spent += time.perf_counter() - began
    exact = bucket.bucket.blob(key).download_as_bytes() == path.read_bytes()
    return live.bytes_sent, live.calls, spent, exact


def crossover(bucket: WorkerBucket, folder: Path, size: int, whole_below: int, tag: str) -> float:
    """Seconds of one sync of a `size`-byte log that grew by 1 KiB (best of 3)."""
    best = float("inf")
    for n in range(3):
        key = f"cross/{tag}-{size}-{n}"
        path = folder / key.replace("/", "_")
        path.write_bytes(chunk(size, n))
        live = LiveLog(bucket, key, f"tails/{key}.", path, lambda _line: None, whole_below=whole_below)
        live.sync()
        with open(path, "ab") as f:
            f.write(chunk(1024, n))
        began = time.perf_counter()
        live.sync()
        best = min(best, time.perf_counter() - began)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=32)
    parser.add_argument("--intervals", type=int, default=32)
    parser.add_argument("--latency-ms", default="0,20", help="comma-separated per-call latencies to add")
    args = parser.parse_args()
    latencies = [float(x) for x in args.latency_ms.split(",")]
    with Emulator(time_scale=1.0) as cloud, tempfile.TemporaryDirectory() as tmp:
        clients = Clients(cloud)
        bucket = WorkerBucket(clients.storage, cloud.bucket, "")
        folder = Path(tmp)
        print(f"a task printing {args.mb:g} MB over {args.intervals} intervals ({args.mb / args.intervals:.2f} MB each)")
        print(f"{'latency':>8}  {'way':<7}{'bytes sent':>14}{'calls':>7}{'wall s':>9}  byte-exact")
        for latency in latencies:
            cloud.control.set_latency(latency / 1000, service="storage")
            for way, below in (("whole", NEVER), ("append", 0)):
                sent, calls, spent, exact = one_way(bucket, folder, f"{way}-{latency:g}/stdout.log", below,
                                                    args.mb, args.intervals)
                print(f"{latency:>6g}ms  {way:<7}{sent:>14,}{calls:>7}{spent:>9.2f}  {exact}")
        print(f"\none sync of a log of S bytes grown by 1 KiB (best of 3); WHOLE_BELOW = {WHOLE_BELOW:,}")
        print(f"{'latency':>8}  {'S':>10}  {'whole s':>8}  {'append s':>8}")
        for latency in latencies:
            cloud.control.set_latency(latency / 1000, service="storage")
            for size in CROSSOVER_SIZES:
                whole = crossover(bucket, folder, size, NEVER, f"w{latency:g}")
                append = crossover(bucket, folder, size, 0, f"a{latency:g}")
                print(f"{latency:>6g}ms  {size:>10,}  {whole:>8.3f}  {append:>8.3f}")
        cloud.control.set_latency(0, service="storage")


if __name__ == "__main__":
    main()
