"""The emulated cloud's image registry: Debian's `docker-registry` (distribution 2.8) on 127.0.0.1.

It stands in for Artifact Registry: the Cloud Build fake pushes to it, VMs pull from it by digest.
The Docker engine trusts registries on 127.0.0.0/8 without TLS, so no certificate and no daemon
setting is needed. Images are named `127.0.0.1:PORT/PROJECT/REPO/NAME:TAG`, the same shape as
`REGION-docker.pkg.dev/PROJECT/REPO/NAME:TAG`. PORT is its gate's (registry_gate.py): every call
needs a token the emulator minted, as Artifact Registry needs one; distribution itself listens on
another port that only the emulator uses (`upstream_url`).

The binary is not vendored: install it with `apt-get install -y docker-registry` (CI's setup script
does) and keep the package's own service stopped (`systemctl disable --now docker-registry` where
systemd runs; it would listen on :5000 on every interface). `ensure_registry_binary()` says so when
the binary is missing.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from parallel_engine.emulator.identity import TokenRegistry
from parallel_engine.emulator.netutil import LOOPBACK, free_port, wait_http
from parallel_engine.emulator.registry_gate import RegistryGate

APT_PACKAGE = "docker-registry"
#: Debian names the binary `docker-registry`; upstream builds of distribution name it `registry`.
BINARY_NAMES = ("docker-registry", "registry")
#: Set to a path to use another distribution 2.x binary.
BINARY_ENV = "PE_REGISTRY_BINARY"
_MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"
)


class RegistryUnavailable(RuntimeError):
    """The registry binary is missing or the registry would not start."""


def ensure_registry_binary() -> Path:
    """The registry binary to run, or a RegistryUnavailable saying what to install."""
    override = os.environ.get(BINARY_ENV)
    if override:
        path = Path(override)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise RegistryUnavailable(f"{BINARY_ENV}={override} is not an executable file")
    for name in BINARY_NAMES:
        found = shutil.which(name)
        if found:
            return Path(found)
    raise RegistryUnavailable(
        "the emulated image registry needs Debian's docker-registry package (distribution 2.8): "
        f"run `apt-get install -y {APT_PACKAGE}` as root (it installs /usr/bin/docker-registry), then "
        f"`systemctl disable --now {APT_PACKAGE}` where systemd runs: the emulator starts its own registry on "
        "127.0.0.1, the package's service would listen on port 5000 of every interface; "
        f"or set {BINARY_ENV} to a distribution 2.x `registry` binary"
    )


def registry_config(port: int, storage_dir: Path) -> dict[str, object]:
    """distribution's configuration: loopback only, filesystem storage, deletes allowed, quiet logs."""
    return {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}, "fields": {"service": "registry"}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage_dir)},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {
            "addr": f"{LOOPBACK}:{port}",
            "secret": secrets.token_hex(16),
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        },
    }


class Registry:
    """Start and stop one distribution registry on 127.0.0.1:<free port>.

    `storage_dir` keeps the blobs (pass a stable folder to reuse pushed layers across runs: a push
    then only sends what changed); by default they live in a temporary folder removed by `stop()`.
    """

    def __init__(self, workdir: Path | None = None, storage_dir: Path | None = None,
                 tokens: TokenRegistry | None = None) -> None:  # fmt: skip
        self._workdir_arg = workdir
        self._storage_arg = storage_dir
        self.workdir: Path | None = None
        self.storage_dir: Path | None = None
        self.port = 0  # distribution's own
        self._process: subprocess.Popen[bytes] | None = None
        self.gate = RegistryGate(tokens or TokenRegistry())

    # -- what clients need ----------------------------------------------------------------
    @property
    def host(self) -> str:
        """`127.0.0.1:PORT`: the registry part of an image name (its gate: a token is needed)."""
        return self.gate.host

    @property
    def upstream_url(self) -> str:
        """distribution itself, without the gate: for the emulator's own look-ups."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def repository(self, project: str, repo: str) -> str:
        """Where a project's images go: `127.0.0.1:PORT/PROJECT/REPO` (Artifact Registry's shape)."""
        return f"{self.host}/{project}/{repo}"

    def manifest_digest(self, repository: str, reference: str) -> str | None:
        """The digest the registry serves for `repository:reference` (path without host), or None."""
        request = urllib.request.Request(
            f"{self.upstream_url}/v2/{repository}/manifests/{reference}", method="HEAD", headers={"Accept": _MANIFEST_TYPES}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                digest: str | None = response.headers.get("Docker-Content-Digest")
                return digest
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def delete_image(self, image: str) -> str:
        """Delete `HOST/REPOSITORY:TAG` or `HOST/REPOSITORY@DIGEST` (HOST: this registry's) from the
        registry, as deleting an image from Artifact Registry does: its digest, which pulls no longer find.
        KeyError when the registry does not have it."""
        host, _, rest = image.partition("/")
        if host != self.host or not rest:
            raise KeyError(f"{image} is not an image of this registry ({self.host})")
        repository, at, digest = rest.partition("@")
        if not at:
            name, colon, tag = repository.rpartition(":")
            repository, tag = (name, tag) if colon and "/" not in tag else (repository, "latest")
            digest = self.manifest_digest(repository, tag) or ""
        if not digest or self.manifest_digest(repository, digest) is None:
            raise KeyError(f"the registry has no image {image}")
        request = urllib.request.Request(f"{self.upstream_url}/v2/{repository}/manifests/{digest}", method="DELETE")
        urllib.request.urlopen(request, timeout=10).close()
        return digest

    def catalog(self) -> list[str]:
        with urllib.request.urlopen(f"{self.upstream_url}/v2/_catalog?n=1000", timeout=10) as response:
            return list(json.load(response).get("repositories") or [])

    # -- life -----------------------------------------------------------------------------
    def start(self) -> Registry:
        if self.running:
            return self
        binary = ensure_registry_binary()
        if self._workdir_arg is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="pe-registry-"))
        else:
            self.workdir = self._workdir_arg
            self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage_dir = self._storage_arg or self.workdir / "storage"
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        # REGISTRY_* variables override the config file: none of the caller's may leak in.
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("REGISTRY_")}
        last_error: Exception | None = None
        for _ in range(3):  # the free port may be taken before the registry binds it
            self.port = free_port()
            config = self.workdir / "config.yml"
            config.write_text(json.dumps(registry_config(self.port, self.storage_dir), indent=2))  # JSON is YAML
            log_path = self.workdir / "registry.log"
            log = log_path.open("ab")
            try:
                self._process = subprocess.Popen(
                    [str(binary), "serve", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            finally:
                log.close()
            try:
                wait_http(f"{self.upstream_url}/v2/", timeout=20, alive=self._alive)
                self.gate.start(self.port)
                return self
            except (RuntimeError, TimeoutError) as exc:
                last_error = exc
                self._kill()
                time.sleep(0.1)
        tail = ""
        if self.workdir is not None and (self.workdir / "registry.log").exists():
            tail = (self.workdir / "registry.log").read_text(errors="replace")[-2000:]
        self.stop()
        raise RegistryUnavailable(f"the image registry did not start: {last_error}\n{tail}")

    def _alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _kill(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def stop(self) -> None:
        """Stop the registry; remove its folder when it was a temporary one. Idempotent."""
        self.gate.stop()
        self._kill()
        if self._workdir_arg is None and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
