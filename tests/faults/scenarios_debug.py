"""Ctrl-C during `parallel-engine debug` in a container, at a moment drawn from the seed: before
the container exists, while it starts, while it runs, and (pressed again) while it is removed.

The task is `sleep` as the container's PID 1, which ignores SIGINT: only debug's removal ends it.
Each try checks that debug ended within a bound with an honest code (130, or Python's own death
by SIGINT when it came before debug's code ran), that no container carrying this try's label is
left, and that no process of the try (the `docker run` client) outlives it.
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import docker
import yaml

from tests.faults.harness import scenario
from tests.helpers import BASE_IMAGE, cli_env

BOUND_S = 60.0  # debug's stop: removal of the container, then `docker run` ends
LATEST_S = 4.0  # the latest first Ctrl-C: by then the container runs, even on a loaded machine


def _left(engine: docker.DockerClient, label: str) -> list[str]:
    return [c.name for c in engine.containers.list(all=True, filters={"label": label})]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@scenario("debug: ctrl-c at random", ci_tries=2, marks=("docker",))  # ~2.5 s a try
def debug_ctrl_c(rng: random.Random, tmp: Path) -> None:
    (tmp / "tasks.yaml").write_text(yaml.safe_dump({"tasks": [{"id": "sleeps", "command": ["sleep", "600"]}]}))
    tag = secrets.token_hex(4)
    engine = docker.from_env()
    # A new session, as a terminal's job: Ctrl-C reaches debug alone, or its whole group as a
    # terminal sends it (then `docker run` gets it too).
    proc = subprocess.Popen(
        [sys.executable, "-m", "parallel_engine", "debug", "tasks.yaml", "--task", "sleeps", "--image", BASE_IMAGE,
         "--runtime", "docker", "--set", f"LABELS=pefault={tag}"],
        cwd=tmp, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    started = time.monotonic()
    to_group = rng.random() < 0.5
    presses = [rng.uniform(0.0, LATEST_S)] + ([rng.uniform(0.0, 0.5)] if rng.random() < 0.3 else [])
    try:
        for delay in presses:
            time.sleep(delay)
            if proc.poll() is not None:
                break
            if to_group:
                os.killpg(proc.pid, signal.SIGINT)
            else:
                proc.send_signal(signal.SIGINT)
        try:
            _, stderr = proc.communicate(timeout=BOUND_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"debug still running {BOUND_S} s after Ctrl-C (presses {presses}, group {to_group})")
        took = time.monotonic() - started
        what = f"presses at {presses} s (to the group: {to_group}), exit {proc.returncode} after {took:.1f} s:\n{stderr}"
        if "# task" in stderr:  # debug's code ran: it says so, and ends as Ctrl-C ends a program
            assert "interrupted" in stderr and "Traceback" not in stderr, what
            # 130, or died of the second press after saying so: a shell shows 130 for both
            assert proc.returncode in (130, -signal.SIGINT), what
        elif proc.returncode != 130:  # Python's start-up, before debug's code: it dies of SIGINT as any Python program
            assert proc.returncode == -signal.SIGINT or "KeyboardInterrupt" in stderr, what
        assert not _group_alive(proc.pid), f"a process of debug outlived it; {what}"
        left = _left(engine, f"pefault={tag}")
        assert left == [], f"containers left behind: {left}; {what}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        for container in engine.containers.list(all=True, filters={"label": f"pefault={tag}"}):
            container.remove(force=True)
        engine.close()
