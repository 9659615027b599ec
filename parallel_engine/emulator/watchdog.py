"""Cleans up after an emulator that did not stop itself (SIGKILL, a crash, a closed terminal).

fake-gcs-server, the registry and the VMs' scripts run in their own sessions, and containers
belong to dockerd: none of them dies with the emulator. So the emulator starts this watchdog (a
separate process, in its own session, stdlib only) with a pipe on its stdin and tells it, one line
at a time, what must not outlive it:

    pid N       a server to stop              group N    a VM script's process group
    host H      a VM's metadata address: any process whose environment names it is the VM's
    label K=V   containers to remove          dir P      a temporary folder to delete, last
    -VERB X     forget (the thing ended)      stopped    the emulator stopped everything itself

When the pipe closes - the emulator stopped, or died however it died - the watchdog kills what is
still registered and removes the labelled containers, then exits. After a normal stop (`stopped`)
there is nothing left for it to do, so it exits at once.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO

VERBS = ("pid", "group", "host", "label", "dir")


class Watchdog:
    """The emulator's side: start the watchdog, tell it what to clean, `close()` at the very end."""

    def __init__(self, docker_host: str | None = None) -> None:
        env = dict(os.environ)
        if docker_host:
            env["DOCKER_HOST"] = docker_host
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, "-I", str(Path(__file__).resolve())],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=env, start_new_session=True,
        )  # fmt: skip

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def tell(self, verb: str, value: object, forget: bool = False) -> None:
        """Register (or with `forget`, unregister) one thing to clean if the emulator dies."""
        line = f"{'-' if forget else ''}{verb} {value}\n".encode()
        with self._lock:
            stdin = self._process.stdin if self._process else None
            if stdin is None:
                return
            try:
                stdin.write(line)
                stdin.flush()
            except (OSError, ValueError):  # the watchdog is gone: nothing to tell
                pass

    def close(self, timeout: float = 30) -> None:
        """The emulator has stopped everything: the watchdog may exit."""
        self.tell("stopped", "all")
        with self._lock:
            process, self._process = self._process, None
        if process is None:
            return
        try:
            if process.stdin is not None:
                process.stdin.close()
        except OSError:
            pass
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- the watchdog process ------------------------------------------------------------------------
def read_orders(stream: IO[str]) -> dict[str, set[str]]:
    """What is still registered when `stream` ends."""
    registered: dict[str, set[str]] = {verb: set() for verb in VERBS}
    for line in stream:
        verb, _, value = line.strip().partition(" ")
        if verb == "stopped":
            registered = {verb: set() for verb in VERBS}
            continue
        forget = verb.startswith("-")
        verb = verb.lstrip("-")
        if verb in registered and value:
            (registered[verb].discard if forget else registered[verb].add)(value)
    return registered


def _kill(pids: set[int], groups: set[int]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for group in groups:
            try:
                os.killpg(group, sig)
            except OSError:
                pass
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def _holders(hosts: set[str]) -> set[int]:
    """Processes whose environment names one of the VMs' metadata addresses."""
    wanted = {f"GCE_METADATA_HOST={host}".encode() for host in hosts}
    found: set[int] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as handle:
                entries = set(handle.read().split(b"\0"))
        except OSError:
            continue
        if entries & wanted:
            found.add(int(name))
    return found


def remove_labelled(
    labels: Iterable[str],
    env: Mapping[str, str] | None = None,
    also: Iterable[str] = (),
    docker: str | None = None,
    timeouts: tuple[float, float] = (30, 120),
) -> list[str]:
    """Force-remove the containers that carry every label in `labels` (K=V), and the containers `also` names.

    The ids listed by label; [] when Docker is absent, does not answer or has none. `env` is the
    docker CLI's environment (DOCKER_HOST; default: this process's), `docker` its path (default: on
    PATH), `timeouts` the seconds `docker ps` and `docker rm` may take (a caller that must not block
    long, a VM's power-off, gives shorter ones). Shared by the watchdog, a VM's power-off
    (guest/containers.py) and Cloud Build (cloudbuild_runner.py); stdlib only, as the watchdog runs
    standalone.
    """
    docker = docker or shutil.which("docker")
    if docker is None:
        return []
    filters = [arg for label in labels for arg in ("--filter", f"label={label}")]
    ids: list[str] = []
    if filters:  # no label: never `docker ps -a` (every container)
        try:
            listed = subprocess.run(
                [docker, "ps", "-aq", *filters], capture_output=True, text=True, timeout=timeouts[0], env=env
            )
            if listed.returncode == 0:
                ids = listed.stdout.split()
        except (OSError, subprocess.SubprocessError):
            pass
    targets = [*ids, *also]
    if targets:
        try:
            subprocess.run([docker, "rm", "-f", *targets], capture_output=True, timeout=timeouts[1], env=env)
        except (OSError, subprocess.SubprocessError):
            pass
    return ids


def clean(registered: dict[str, set[str]]) -> None:
    groups = {int(g) for g in registered["group"]}
    servers = {int(p) for p in registered["pid"]}
    for _ in range(3):  # a dying script may start one more process: look again
        strays = _holders(registered["host"]) if registered["host"] else set()
        if not strays and not any(_alive(p) for p in servers) and not groups:
            break
        _kill(servers | strays, groups)
        groups = set()
    for label in registered["label"]:  # each label on its own: a container carrying any of them goes
        remove_labelled([label])
    for folder in registered["dir"]:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    for sig in (signal.SIGINT, signal.SIGHUP):  # a terminal's signals end the emulator, not its watchdog
        signal.signal(sig, signal.SIG_IGN)
    clean(read_orders(sys.stdin))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
