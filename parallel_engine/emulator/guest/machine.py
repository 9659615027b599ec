"""One emulated VM's guest: its startup script run as a real process tree, its serial console.

The script runs with `bash` in a clean environment (PATH = the COS-like bin folder,
GCE_METADATA_HOST/GCE_METADATA_IP = this VM's metadata server, DOCKER_HOST = this VM's Docker
socket), in its own session so that the whole tree can be signalled. Power-off closes the VM's
Docker socket (creates in flight finish), kills the process group, every descendant, and any
process still carrying this VM's metadata address in its environment (one that escaped with
setsid, or a container's), then removes the VM's containers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil

from parallel_engine.emulator import peers
from parallel_engine.emulator.guest.containers import Containers
from parallel_engine.emulator.guest.docker_proxy import DockerEndpoints
from parallel_engine.emulator.guest.metadata import GuestInfo, MetadataService
from parallel_engine.emulator.netutil import LOOPBACK


class Machine:
    def __init__(
        self,
        info: GuestInfo,
        folder: Path,
        bin_dir: Path,
        metadata: MetadataService,
        docker: DockerEndpoints,
        containers: Containers,
    ) -> None:
        self.info = info
        self.folder = folder
        self.bin_dir = bin_dir
        self.metadata = metadata
        self.docker = docker
        self.containers = containers
        self.console = folder / "console.log"
        self.port: int | None = None
        self.docker_socket: str | None = None  # while powered on
        self._lock = threading.Lock()
        self._processes: list[subprocess.Popen[bytes]] = []
        self._known: set[psutil.Process] = set()
        folder.mkdir(parents=True, exist_ok=True)
        self.console.touch()

    @property
    def metadata_host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def log(self, line: str) -> None:
        """A line on the serial console, as the guest agent would print it."""
        stamp = datetime.now(UTC).strftime("%b %d %H:%M:%S")
        try:
            with self.console.open("a") as out:
                out.write(f"{stamp} {self.info.name} {line}\n")
        except OSError:  # the emulator's work folder is already gone (stopping)
            pass

    def _environment(self) -> dict[str, str]:
        home = self.folder / "home"
        tmp = self.folder / "tmp"
        home.mkdir(exist_ok=True)
        tmp.mkdir(exist_ok=True)
        environment = {
            "PATH": str(self.bin_dir),
            "HOME": str(home),
            "TMPDIR": str(tmp),
            "LANG": "C.UTF-8",
            "GCE_METADATA_HOST": self.metadata_host,
            "GCE_METADATA_IP": self.metadata_host,
        }
        if self.docker_socket is not None:
            environment["DOCKER_HOST"] = f"unix://{self.docker_socket}"
        return environment

    def power_on(self) -> None:
        """Boot: open the metadata server and run `startup-script`, if any."""
        with self._lock:
            if self.port is None:
                self.info.update(closed=False)
                self.port = self.metadata.open(self.info)
                self.docker_socket = self.docker.open(self.info.instance_id, self.info.name, self.metadata_host)
                self.info.tokens.guests.add_host(self.info.name, self.metadata_host)
        self.log("Booting (emulated Container-Optimized OS)")
        self._run_script("startup-script")

    def _run_script(self, key: str) -> subprocess.Popen[bytes] | None:
        script = self.info.attributes.get(key)
        if script is None:
            self.log(f"google_metadata_script_runner: No {key} to run.")
            return None
        path = self.folder / f"{key}.sh"
        path.write_text(script)
        self.log(f"google_metadata_script_runner: {key}: Found {key} in metadata.")
        with self.console.open("ab") as out:
            process = subprocess.Popen(
                ["bash", str(path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._environment(),
                cwd=self.folder,
                start_new_session=True,
                executable=str(self.bin_dir / "bash"),
            )
        with self._lock:
            self._processes.append(process)
        self.info.tokens.guests.add_root(self.info.name, process.pid)
        threading.Thread(target=self._report_exit, args=(process, key), daemon=True).start()
        return process

    def _report_exit(self, process: subprocess.Popen[bytes], key: str) -> None:
        code = process.wait()
        self.log(f"google_metadata_script_runner: {key}: Script finished with exit status {code}.")

    def pids(self) -> list[int]:
        """Every live process of this VM (for tests and for power-off)."""
        return sorted(p.pid for p in self._tree())

    def _tree(self) -> set[psutil.Process]:
        """The VM's live processes: its running scripts and their descendants, and every process whose
        environment names its metadata address (one that escaped with setsid)."""
        with self._lock:
            scripts = list(self._processes)
        name, port = self.info.name, self.port
        roots = {process.pid: name for process in scripts if process.poll() is None}
        hosts = {f"{LOOPBACK}:{port}".encode(): name} if port is not None else {}
        found: set[psutil.Process] = set()
        for pid, _ in peers.vm_processes(hosts, roots):
            try:
                found.add(psutil.Process(pid))
            except psutil.Error:  # gone meanwhile
                pass
        return {p for p in found if _alive(p)}

    def signal_shutdown(self) -> None:
        """ACPI soft-off: run `shutdown-script` and send SIGTERM to the startup script's tree."""
        self.log("Stopping: received a shutdown request.")
        with self._lock:
            roots = list(self._processes)
        targets = self._tree()
        for process in roots:
            _killpg(process.pid, signal.SIGTERM)
        for proc in targets:
            try:
                proc.send_signal(signal.SIGTERM)
            except psutil.Error:
                pass
        self._run_script("shutdown-script")

    def power_off(self) -> None:
        """Hard off: close its Docker socket, kill every process of the VM, remove its containers, close
        its metadata server."""
        with self._lock:
            socket_path, self.docker_socket = self.docker_socket, None
        if socket_path is not None:  # first: no container is made after the removal below
            self.docker.close(socket_path)
        for _ in range(3):
            with self._lock:
                roots = list(self._processes)
            targets = self._tree()
            for process in roots:
                _killpg(process.pid, signal.SIGKILL)
            for proc in targets:
                try:
                    proc.kill()
                except psutil.Error:
                    pass
            _wait_dead(targets, timeout=2)
            if not self._tree():
                break
            time.sleep(0.05)
        for process in roots:
            try:
                process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
        self.containers.remove(self.info.name)
        self.info.tokens.guests.remove(self.info.name)
        with self._lock:
            self._processes.clear()
            port, self.port = self.port, None
        if port is not None:
            self.metadata.close(port, self.info)
        self.log("Powered off.")


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_dead(procs: set[psutil.Process], timeout: float) -> None:
    """Until every process is dead or `timeout` passed. A zombie is dead: psutil.wait_procs
    waits until its parent reaps it, and an orphan's parent is this machine's init, which here
    reaps them about every 2 s (1.4 s of each VM's power-off in bench/makespan.py)."""
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.01)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
