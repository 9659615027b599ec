"""Benchmark (not a test): how close a gce run on the emulator comes to its ideal makespan.

64 tasks of 2 s on 8 VMs (reused workers) against an emulated cloud at `--time-scale 0.1`, the
image built and pushed by `parallel-engine build` (its Cloud Build) and pulled by digest by
every VM, as a user's run does. Prints:

- makespan: the wall time of `run` (from the call to its return: VMs created, tasks run, VMs gone);
- ideal: boot + pull + ceil(tasks / vms) x task time, where boot is the emulator's insert -> RUNNING
  (15 s x time scale) and pull is one `docker pull` of the image by digest from the emulated
  registry, timed here before the run (the VMs share this machine's Docker engine);
- their ratio (target <= 1.5);
- per attempt, the VM-side overhead: its wall time in status.json (claim won -> record written)
  minus the program's own time (the program prints its start and end, unix time): median and p95,
  for all attempts and for those that were not a VM's first (which also paid the pull);
- between attempts: on one VM, an attempt's record written -> its next claim won (listing, claiming);
- insert -> first attempt running: first VM seen by the emulator -> the earliest program start;
- last program end -> run returned: the tail (workers idle, then delete their VMs; the
  orchestrator sees them gone).

A minute or two on a 2-core machine; figures in README.md ("Benchmarks").

    python bench/makespan.py [--tasks 64] [--vms 8] [--seconds 2] [--time-scale 0.1]
                             [--storage-latency-ms 0] [--baseline REV]

`--storage-latency-ms MS` adds MS to every Storage call of the run (the emulator's latency rule,
set after the build) to stand for a real bucket's round trip; the emulator itself answers in ~2 ms.

`--baseline REV` first runs the same benchmark on the code of git revision REV (a temporary
`git worktree`, removed at the end; its own bench/makespan.py, with `--worker bash` where REV
still had the bash worker), then this code's, and prints the two blocks side by side: "before
and after, in the same session" in one command. A REV whose emulator still stalled each answer
40 ms (before TCP_NODELAY, see bench/emulator_latency.py) runs with its servers' Nagle turned off
too (a sitecustomize on its PYTHONPATH), so both blocks run against the same emulator.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import parallel_engine as pe
from parallel_engine.config import load_config
from parallel_engine.emulator import Emulator
from parallel_engine.emulator.clock import Durations
from parallel_engine.emulator.serve import config_values, render_config

ROOT = Path(__file__).resolve().parent.parent

PROGRAM = """import sys, time
start = time.time()
time.sleep(float(sys.argv[1].split("=")[-1]))  # --seconds=2
print("own", start, time.time(), flush=True)
"""


class FirstSeen(threading.Thread):
    """The wall time the emulator first lists a VM (its insert), sampled every 10 ms."""

    def __init__(self, cloud: Emulator) -> None:
        super().__init__(daemon=True)
        self.cloud = cloud
        self.at: float | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and self.at is None:
            control = self.cloud.control
            assert control is not None, "the emulator is started"
            try:
                listed = control.vms()
            except Exception:  # noqa: BLE001 - a VM went away while it was listed: look again
                listed = []
            if listed:
                self.at = time.time()
            self.stop.wait(0.01)


def cli(*args: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "parallel_engine", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise SystemExit(f"parallel-engine {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def timed_pull(cloud: Emulator, image: str, work: Path) -> float:
    """One `docker pull` of `image` (by digest) from the emulated registry, the local copy removed first."""
    from google.auth.transport.requests import Request
    from google.oauth2.credentials import Credentials

    creds = Credentials.from_authorized_user_file(  # type: ignore[no-untyped-call]
        str(cloud.credentials_file)).with_token_uri(cloud.token_uri)
    creds.refresh(Request())
    env = {**os.environ, "DOCKER_CONFIG": str(work / "docker-config")}
    host = image.split("/", 1)[0]
    subprocess.run(["docker", "login", "-u", "oauth2accesstoken", "--password-stdin", host], input=creds.token,
                   env=env, check=True, capture_output=True, text=True)
    subprocess.run(["docker", "rmi", "-f", image], env=env, check=False, capture_output=True)
    start = time.perf_counter()
    subprocess.run(["docker", "pull", "-q", image], env=env, check=True, capture_output=True)
    took = time.perf_counter() - start
    subprocess.run(["docker", "rmi", "-f", image], env=env, check=False, capture_output=True)  # the VMs pull it
    return took


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--vms", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=2.0, help="each task's own time")
    parser.add_argument("--time-scale", type=float, default=0.1)
    parser.add_argument("--storage-latency-ms", type=float, default=0.0, help="added to every Storage call of the run")
    parser.add_argument("--baseline", metavar="REV", help="also run the benchmark of git revision REV, side by side")
    args = parser.parse_args()
    if args.baseline is None:
        bench(args)
        return
    shared = [f"--tasks={args.tasks}", f"--vms={args.vms}", f"--seconds={args.seconds:g}", f"--time-scale={args.time_scale:g}"]
    if args.storage_latency_ms:
        shared.append(f"--storage-latency-ms={args.storage_latency_ms:g}")
    before = baseline(args.baseline, shared)
    print("this code ...", flush=True)
    after = run_block(ROOT, shared)
    side_by_side(f"{args.baseline}", before, "this code", after)


NODELAY_SHIM = """import socketserver
socketserver.StreamRequestHandler.disable_nagle_algorithm = True  # as the emulator's servers do now
"""


def run_block(tree: Path, args: list[str], shim: Path | None = None) -> list[str]:
    """The output lines of the benchmark of the code in `tree` (its own script and package)."""
    paths = [str(tree), str(shim) if shim else None, os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    done = subprocess.run([sys.executable, str(tree / "bench" / "makespan.py"), *args], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the benchmark in {tree} failed:\n{done.stdout}{done.stderr}")
    return done.stdout.splitlines()


def baseline(rev: str, args: list[str]) -> list[str]:
    """The benchmark's output at git revision `rev`, from a temporary worktree removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="pe-makespan-baseline-")) / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder), rev],
                   check=True, capture_output=True, text=True)
    try:
        script = (folder / "bench" / "makespan.py").read_text()
        if '"--worker"' in script and '"bash"' in script:  # before the switch: its bash worker alone
            args = [*args, "--worker", "bash"]
        if "--storage-latency-ms" not in script and any(a.startswith("--storage-latency-ms") for a in args):
            raise SystemExit(f"{rev}'s bench/makespan.py has no --storage-latency-ms: compare without it")
        shim = None
        if "disable_nagle_algorithm" not in (folder / "parallel_engine" / "emulator" / "httpbase.py").read_text():
            shim = folder.parent / "shim"
            shim.mkdir()
            (shim / "sitecustomize.py").write_text(NODELAY_SHIM)
        print(f"{rev} ({' '.join(args)}{', emulator without the 40 ms stall' if shim else ''}) ...", flush=True)
        return run_block(folder, args, shim)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(folder)], check=False,
                       capture_output=True)
        shutil.rmtree(folder.parent, ignore_errors=True)


def side_by_side(left_title: str, left: list[str], right_title: str, right: list[str]) -> None:
    """Two blocks of lines as two columns, line by line (the same benchmark prints the same lines)."""
    width = max(len(line) for line in [left_title, *left]) + 3
    print(f"{left_title:<{width}}{right_title}")
    for index in range(max(len(left), len(right))):
        print(f"{(left[index] if index < len(left) else ''):<{width}}{right[index] if index < len(right) else ''}")


def bench(args: argparse.Namespace) -> None:

    work = Path(tempfile.mkdtemp(prefix="pe-makespan-"))
    try:
        with Emulator(time_scale=args.time_scale) as cloud:
            if not cloud.registry_host:
                raise SystemExit("the emulated cloud has no registry (apt-get install docker-registry)")
            values = config_values(cloud)
            code = work / "code"
            code.mkdir()
            (code / "main.py").write_text(PROGRAM)
            (code / "Dockerfile").write_text('FROM python:3.11-slim\nCOPY main.py /main.py\nENTRYPOINT ["python", "/main.py"]\n')
            shutil.copy(ROOT / "cloudbuild.yaml", work / "cloudbuild.yaml")
            (work / ".config.yaml").write_text(render_config(values) + f"VM_QUOTAS: {args.vms}\n")
            built = cli("build", cwd=work)
            pinned = values["IMAGE"].rsplit(":", 1)[0] + "@" + built.split("@", 1)[1].split(";")[0].split()[0]
            pull_s = timed_pull(cloud, pinned, work)
            boot_s = Durations().boot_seconds * args.time_scale
            (work / "tasks.csv").write_text("seconds\n" + f"{args.seconds:g}\n" * args.tasks)
            config = load_config(work / ".config.yaml", environ={})
            if args.storage_latency_ms:
                assert cloud.control is not None, "the emulator is started"
                cloud.control.set_latency(args.storage_latency_ms / 1000, service="storage")
            watch = FirstSeen(cloud)
            watch.start()
            start = time.perf_counter()
            run = pe.run(work / "tasks.csv", config=config)
            makespan = time.perf_counter() - start
            returned = time.time()
            watch.stop.set()
            watch.join()

            status = run.status()
            if status.counts != {"succeeded": args.tasks}:
                raise SystemExit(f"the run did not succeed: {status.counts}")
            overheads: list[float] = []
            later: list[float] = []
            first_start, last_end = math.inf, 0.0
            firsts: dict[str, float] = {}
            attempts = [view.result for view in status.tasks]
            for attempt in attempts:
                assert attempt is not None and attempt.started_at is not None
                firsts[attempt.worker] = min(firsts.get(attempt.worker, math.inf), attempt.started_at)
            for view in status.tasks:
                attempt = view.result
                assert attempt is not None and attempt.duration_s is not None
                own = [line.split() for line in run.logs(view.task_id).splitlines() if line.startswith("own ")]
                began, ended = float(own[-1][1]), float(own[-1][2])
                first_start, last_end = min(first_start, began), max(last_end, ended)
                overheads.append(attempt.duration_s - (ended - began))
                if attempt.started_at != firsts[attempt.worker]:
                    later.append(attempt.duration_s - (ended - began))
            ideal = boot_s + pull_s + math.ceil(args.tasks / args.vms) * args.seconds
            print(f"makespan: {args.tasks} tasks x {args.seconds:g} s on {args.vms} VMs, "
                  f"time scale {args.time_scale:g}, Storage calls +{args.storage_latency_ms:g} ms")
            print(f"  makespan              {makespan:6.1f} s")
            print(f"  ideal                 {ideal:6.1f} s  (boot {boot_s:.2f} + pull {pull_s:.2f} + "
                  f"{math.ceil(args.tasks / args.vms)} x {args.seconds:g})")
            print(f"  makespan / ideal      {makespan / ideal:6.2f}  (target <= 1.5)")
            print(f"  VM-side overhead      median {statistics.median(overheads):.2f} s, p95 {p95(overheads):.2f} s"
                  f" (all {len(overheads)} attempts)")
            if later:
                print(f"                        median {statistics.median(later):.2f} s, p95 {p95(later):.2f} s"
                      f" (the {len(later)} that were not a VM's first)")
            by_vm: dict[str, list[tuple[float, float]]] = {}
            for attempt in attempts:
                assert attempt is not None and attempt.started_at is not None and attempt.finished_at is not None
                by_vm.setdefault(attempt.worker, []).append((attempt.started_at, attempt.finished_at))
            gaps = [later_start - end for spans in by_vm.values()
                    for (_, end), (later_start, _) in zip(sorted(spans), sorted(spans)[1:])]
            if gaps:
                print(f"  between attempts      median {statistics.median(gaps):.2f} s, p95 {p95(gaps):.2f} s"
                      f" (a VM's record written -> its next claim won; {len(by_vm)} VMs ran attempts)")
            if watch.at is not None:
                print(f"  insert -> first running {first_start - watch.at:5.1f} s")
            print(f"  last program end -> run returned {returned - last_end:5.1f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
