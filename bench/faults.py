"""Every fault scenario of tests/faults, many times at random moments: prints `tries / ended right`.

    python bench/faults.py [--tries 200] [--only NAME]

A benchmark, not a test: it prints figures (README "Failure model" holds the table). The seed
of each failure is printed so it can be replayed with PE_FAULT_SEED (see tests/faults/harness.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.faults.harness import load_all, repeat  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tries", type=int, default=200, help="runs per scenario (default 200)")
    parser.add_argument("--only", action="append", default=[], help="scenario name (repeatable)")
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
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
