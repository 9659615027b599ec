"""Benchmark (not a test): parallel-engine's local overhead against `xargs -P 2`, same tasks, same run.

2,000 tasks of /bin/true and 2,000 of `python3 -c pass`, 2 at a time, through
`parallel-engine run` (the real command line, store writes and all) and through xargs.
Prints each wall time and, last, `local_overhead: <ratio for /bin/true> (target <= 1.5)`.
A few minutes with the defaults on a 2-core machine; figures in README.md ("Benchmarks").

    python bench/local_overhead.py [--tasks 2000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(cmd: list[str], **kwargs: object) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)  # type: ignore[arg-type]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3, help="best of N for each side")
    args = parser.parse_args()

    # Bytecode first, as `pip install` leaves it: where PYTHONDONTWRITEBYTECODE is set (this
    # project's sandboxes set it) an editable install would recompile the package on every
    # command, ~0.1 s that no installed copy pays.
    package = Path(__file__).resolve().parent.parent / "parallel_engine"
    if package.is_dir():
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], check=True, stdout=subprocess.DEVNULL)
        print(f"bytecode compiled for {package}")
    work = Path(tempfile.mkdtemp(prefix="pe-bench-"))
    stores: list[Path] = []
    try:
        params = work / "params.csv"
        params.write_text("n\n" + "".join(f"{i}\n" for i in range(args.tasks)))
        arglist = "".join(f"--n={i}\n" for i in range(args.tasks)).encode()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PARALLEL_ENGINE_")}
        python3 = sys.executable  # the interpreter itself: a pyenv `python3` shim is a bash script
        ratios: dict[str, float] = {}
        shm = Path("/dev/shm")
        cases = [("/bin/true", ["/bin/true"], work), ("python3 -c pass", [python3, "-c", "pass"], work)]
        if shm.is_dir() and os.access(shm, os.W_OK):
            # Same run with the store on tmpfs: separates our per-attempt file writes from the rest.
            cases.append(("/bin/true, store on tmpfs", ["/bin/true"], shm))
        for label, command, store_root in cases:
            pe_times, xargs_times = [], []
            for attempt in range(args.repeat):
                store = store_root / f"pe-bench-store-{os.getpid()}-{len(ratios)}-{attempt}"
                pe_times.append(timed(
                    [sys.executable, "-m", "parallel_engine", "run", str(params), "-j", "2", "-q",
                     "--runtime", "process", "--command", " ".join(command), "--store", str(store)],
                    cwd=work, env=env,
                ))
                stores.append(store)  # removed at the end: a fresh delete of 16,000 files slows
                # ext4's next inode allocations (recently_deleted scans), which would bill us for it
                xargs_times.append(timed(["xargs", "-P", "2", "-n", "1", *command], input=arglist))
            best_pe, best_x = min(pe_times), min(xargs_times)
            ratios[label] = best_pe / best_x
            print(f"{label:>26}: parallel-engine {best_pe:6.2f} s ({best_pe / args.tasks * 1000:.2f} ms/task)"
                  f"  xargs -P 2 {best_x:6.2f} s  ratio {ratios[label]:.2f}  (best of {args.repeat}, {args.tasks} tasks)")
        print(f"local_overhead: {ratios['/bin/true']:.2f} (target <= 1.5)")
    finally:
        for store in stores:
            shutil.rmtree(store, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
