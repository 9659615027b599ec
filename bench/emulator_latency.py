"""Benchmark (not a test): what one small Storage call costs through the emulator's endpoint.

Every Storage call of a run on the emulated cloud goes through its Storage proxy (calls counted,
tokens and names checked, faults injected on demand) in front of fake-gcs-server. Side by side,
in the same session: a 100-byte object created (`ifGenerationMatch=0`, as a claim) and read back,
through the proxy and straight to fake-gcs-server; median and p90 of `--calls` each, in ms.

Until the emulator's HTTP servers set TCP_NODELAY, every answer through the proxy (or any other
emulated API) waited ~40 ms: its body, sent after its headers, waited for their ACK, which the
client delays (Nagle's algorithm against delayed ACKs).

    python bench/emulator_latency.py [--calls 100]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from google.auth.credentials import AnonymousCredentials  # noqa: E402
from google.cloud import storage  # type: ignore[attr-defined]  # noqa: E402 - google-cloud-storage ships no stubs

from parallel_engine.emulator import Emulator  # noqa: E402
from tests.emulator.emulator_helpers import user_credentials  # noqa: E402


def timed(calls: int, call: Callable[[int], object]) -> list[float]:
    spent = []
    for index in range(calls):
        start = time.perf_counter()
        call(index)
        spent.append(time.perf_counter() - start)
    return spent


def figures(spent: list[float]) -> str:
    ordered = sorted(spent)
    return f"median {statistics.median(ordered) * 1000:6.1f}  p90 {ordered[int(0.9 * (len(ordered) - 1))] * 1000:6.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=100)
    args = parser.parse_args()
    with Emulator() as cloud:
        assert cloud._gcs is not None, "the emulator is started"
        gcs_url = cloud._gcs.url  # the emulator's own fake-gcs-server, behind the proxy
        ways = {
            "through the proxy": storage.Client(project=cloud.project, credentials=user_credentials(cloud),
                                                client_options={"api_endpoint": cloud.storage_endpoint}),
            "fake-gcs-server": storage.Client(project=cloud.project, credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                                              client_options={"api_endpoint": gcs_url}),
        }
        print(f"{'way':<20}{'create (ms)':>28}{'read (ms)':>28}")
        for name, client in ways.items():
            bucket = client.bucket(cloud.bucket)
            prefix = f"latency/{uuid.uuid4().hex}/"
            bucket.blob(prefix + "warm").upload_from_string(b"x")  # the connection and the token, once
            created = timed(args.calls, lambda i: bucket.blob(f"{prefix}{i}").upload_from_string(
                b"x" * 100, if_generation_match=0))
            read = timed(args.calls, lambda i: bucket.blob(f"{prefix}{i}").download_as_bytes())
            print(f"{name:<20}{figures(created):>28}{figures(read):>28}")


if __name__ == "__main__":
    main()
