"""Example user program: the seed's argparse interface, a little real work, a result file.

parallel-engine runs it once per row of params.csv, e.g.
    python code/main.py --dataset=sales --project=demo --var=3
and collects whatever it writes into $PE_OUTPUT_DIR.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Summarise a synthetic dataset.")
    parser.add_argument("--dataset", required=True, help="name of the dataset to summarise")
    parser.add_argument("--project", default="demo", help="project the results belong to")
    parser.add_argument("--var", type=int, default=1, help="how many series to generate")
    parser.add_argument("--fail", action="store_true", help="exit 1 on purpose (for demos)")
    return parser.parse_args(argv)


def synthetic_series(dataset: str, index: int, length: int = 1000) -> list[float]:
    """A deterministic pseudo-random series derived from the dataset name."""
    seed = hashlib.sha256(f"{dataset}/{index}".encode()).digest()
    values: list[float] = []
    state = int.from_bytes(seed[:8], "big")
    for _ in range(length):
        state = (6364136223846793005 * state + 1442695040888963407) % 2**64
        values.append((state >> 11) / 2**53)
    return values


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.fail:
        print(f"failing on purpose for dataset {args.dataset}", file=sys.stderr)
        return 1
    series = [synthetic_series(args.dataset, i) for i in range(max(args.var, 1))]
    summary = {
        "dataset": args.dataset,
        "project": args.project,
        "var": args.var,
        "means": [round(statistics.fmean(s), 6) for s in series],
        "stdevs": [round(statistics.pstdev(s), 6) for s in series],
    }
    print(f"[{args.project}] {args.dataset}: {args.var} series, mean of means "
          f"{statistics.fmean(summary['means']):.4f}")
    out_dir = Path(os.environ.get("PE_OUTPUT_DIR", "."))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
