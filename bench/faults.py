"""Every fault scenario of tests/faults, many times at random moments: prints `tries / ended right`.

    python bench/faults.py [--tries 200] [--only NAME] [--no-status]

A benchmark, not a test: it prints figures (README "Failure model" holds the table). The seed
of each failure is printed so it can be replayed with PE_FAULT_SEED (see tests/faults/harness.py).
Then the figures of reading a big run (bench/status_scale.py), unless --no-status.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.status_scale import main as status_scale  # noqa: E402
from tests.faults.harness import load_all, repeat  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tries", type=int, default=200, help="runs per scenario (default 200)")
    parser.add_argument("--only", action="append", default=[], help="scenario name (repeatable)")
    parser.add_argument("--no-status", action="store_true", help="skip the status figures of a 50,000-task run")
    args = parser.parse_args()
    scenarios = load_all()
    chosen = [scenarios[name] for name in args.only] if args.only else list(scenarios.values())
    failed = 0
    for item in chosen:
        tally = repeat(item, args.tries)
        print(tally.line(), flush=True)
        for _, failure in tally.failures:
            failed += 1
            print(f"  FAILED {failure}", flush=True)
    status_missed = not args.no_status and status_scale([]) != 0
    return 1 if failed or status_missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
