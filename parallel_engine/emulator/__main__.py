"""`python -m parallel_engine.emulator [--time-scale S] [--config PATH]`: run the emulated cloud."""

from __future__ import annotations

import argparse
from pathlib import Path

from parallel_engine.emulator.serve import serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m parallel_engine.emulator", description=__doc__)
    parser.add_argument("--time-scale", type=float, default=1.0, help="emulated seconds × scale = real seconds")
    parser.add_argument("--config", type=Path, default=None, help="config file to write (never overwritten)")
    parser.add_argument("--project", default="emulated-project")
    parser.add_argument("--zone", default="us-central1-a")
    parser.add_argument("--bucket", default=None)
    parser.add_argument("--workdir", type=Path, default=None, help="keep VM consoles and scripts here")
    parser.add_argument("--storage-dir", type=Path, default=None, help="keep Storage objects here (default: memory)")
    args = parser.parse_args(argv)
    return serve(args.config, args.time_scale, project=args.project, zone=args.zone, bucket=args.bucket,
                 workdir=args.workdir, storage_dir=args.storage_dir)  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
