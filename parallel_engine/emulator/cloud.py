"""`Emulator`: the emulated Google cloud on loopback, in this process.

It wires the pieces together: the OAuth token endpoint and the credentials files it serves,
fake-gcs-server behind the counting Storage proxy, the Compute REST server with its engine and
control API, the VMs' hypervisor (bin folder, metadata servers, Docker sockets, container
cleanup), the image registry behind its gate, Cloud Build, IAM / Resource Manager / Service Usage,
one clock, one token registry, one IAM model and access policy, one set of timers and a watchdog.
`stop()` leaves no process behind; the watchdog sees to it when this process dies without stopping.
"""

from __future__ import annotations

import atexit
import json
import random
import secrets
import shutil
import tempfile
import threading
import urllib.request
import zlib
from pathlib import Path
from typing import Any

from parallel_engine.emulator.access import AccessPolicy
from parallel_engine.emulator.clock import Clock, Durations
from parallel_engine.emulator.cloudbuild import CloudBuildServer
from parallel_engine.emulator.cloudbuild_runner import LABEL_SERVER
from parallel_engine.emulator.compute.catalog import known_zones, region_of
from parallel_engine.emulator.compute.engine import ComputeEngine
from parallel_engine.emulator.compute.exhaustion import ControlError
from parallel_engine.emulator.compute.quotas import QuotaLedger
from parallel_engine.emulator.compute.ratelimit import RateLimiter
from parallel_engine.emulator.compute.server import ComputeServer
from parallel_engine.emulator.control import ControlClient
from parallel_engine.emulator.control_api import ControlApi
from parallel_engine.emulator.gcs import FakeGcs
from parallel_engine.emulator.guest.containers import LABEL_EMULATOR
from parallel_engine.emulator.guest.hypervisor import Hypervisor
from parallel_engine.emulator.iam import Iam, compute_account
from parallel_engine.emulator.identity import TokenRegistry
from parallel_engine.emulator.oauth import USER_EMAIL, CredentialsFiles, OAuthServer, key_account, write_credentials
from parallel_engine.emulator.project_apis import PROJECT_APIS, ProjectApis
from parallel_engine.emulator.registry import Registry, RegistryUnavailable
from parallel_engine.emulator.storage_buckets import Buckets
from parallel_engine.emulator.storage_proxy import StorageProxy
from parallel_engine.emulator.timers import Timers
from parallel_engine.emulator.traffic import Traffic
from parallel_engine.emulator.watchdog import Watchdog

DEFAULT_PROJECT = "emulated-project"
DEFAULT_ZONE = "us-central1-a"


def project_number_of(project: str) -> int:
    """A stable 12-digit project number for a project id (Google's are 12 digits too)."""
    return 100000000000 + zlib.crc32(project.encode()) % 900000000000


class Emulator:
    """The emulated cloud. Use as a context manager, or call `start()` and `stop()`."""

    def __init__(
        self,
        project: str = DEFAULT_PROJECT,
        zone: str = DEFAULT_ZONE,
        bucket: str | None = None,
        time_scale: float = 1.0,
        workdir: Path | None = None,
        storage_dir: Path | None = None,
        quotas: dict[str, float] | None = None,
        durations: Durations | None = None,
        docker_host: str | None = None,
        seed: int | None = None,
    ) -> None:
        self.project = project
        self.project_number = project_number_of(project)
        self.zone = zone
        self.region = region_of(zone)
        self.bucket = bucket or f"{project}-bucket"
        self.clock = Clock(time_scale, durations)
        self.emulator_id = secrets.token_hex(6)
        self._workdir_arg = workdir
        self._storage_dir = storage_dir
        self._quota_limits = quotas
        self._docker_host = docker_host
        self._seed = seed  # makes the emulator's random choices (how late maxRunDuration acts) repeatable
        self._lock = threading.Lock()
        self._running = False
        self.workdir: Path | None = None
        self.compute_endpoint = ""
        self.storage_endpoint = ""
        self.control: ControlClient | None = None
        self.tokens = TokenRegistry(self.clock)
        self.iam = Iam(project, self.project_number, USER_EMAIL, {
            compute_account(self.project_number): "Compute Engine default service account",
            key_account(project): "parallel-engine",
        })  # fmt: skip
        self.access = AccessPolicy(project, self.project_number, self.iam)
        self.buckets = Buckets(self.project_number)
        self.traffic = {name: Traffic(name) for name in ("compute", "storage", "cloudbuild", "oauth", *PROJECT_APIS)}
        self.iam_endpoint = self.resourcemanager_endpoint = self.serviceusage_endpoint = ""
        self._project_apis: ProjectApis | None = None
        self._oauth: OAuthServer | None = None
        self._credentials: CredentialsFiles | None = None
        self.cloudbuild_endpoint = ""
        self.registry_host = ""
        self._registry: Registry | None = None
        self._cloudbuild: CloudBuildServer | None = None
        self._timers: Timers | None = None
        self._gcs: FakeGcs | None = None
        self._proxy: StorageProxy | None = None
        self._compute: ComputeServer | None = None
        self._hypervisor: Hypervisor | None = None
        self._watchdog: Watchdog | None = None

    # -- life -----------------------------------------------------------------------------
    def start(self) -> Emulator:
        with self._lock:
            if self._running:
                return self
            self._running = True
        atexit.register(self.stop)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        if self._workdir_arg is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="pe-emulator-"))
        else:
            self.workdir = self._workdir_arg
            self.workdir.mkdir(parents=True, exist_ok=True)
        watchdog = self._watchdog = Watchdog(self._docker_host)  # cleans up even if this process is killed
        self.tokens.guests.notify = watchdog.tell
        watchdog.tell("label", f"{LABEL_EMULATOR}={self.emulator_id}")
        if self._workdir_arg is None:
            watchdog.tell("dir", self.workdir)
        self._timers = Timers()
        self._oauth = OAuthServer(self.tokens, self.traffic["oauth"]).start()
        self._credentials = write_credentials(
            self.tokens, self._oauth.token_uri, self.project, self.project_number, self.workdir / "credentials"
        )
        self._proxy = StorageProxy(self.traffic["storage"], self.tokens, self.buckets)
        self._proxy.access = self.access
        self._gcs = FakeGcs(self._proxy.url, self.workdir / "fake-gcs-server.log", self._storage_dir)
        self._gcs.start()
        watchdog.tell("pid", self._gcs.pid)
        self._proxy.start(self._gcs.port)
        self.storage_endpoint = self._proxy.url
        self._hypervisor = Hypervisor(self.workdir, self.emulator_id, self._docker_host)
        if self._hypervisor.docker.temporary_folder is not None:  # VMs' sockets, when the workdir is too deep
            watchdog.tell("dir", self._hypervisor.docker.temporary_folder)
        limiter = RateLimiter(self.clock)
        zones = known_zones(self.zone)
        timers, hypervisor = self._timers, self._hypervisor

        def engine(base_url: str) -> ComputeEngine:
            return ComputeEngine(
                self.project, self.project_number, base_url, self.clock, timers,
                QuotaLedger(self._quota_limits), hypervisor, self.tokens, zones, random.Random(self._seed),
            )  # fmt: skip

        self._compute = ComputeServer(engine, self.traffic["compute"], self.tokens, limiter)
        self._compute.access = self.access
        self._compute.engine.account_exists = lambda email: self.iam.account(email) is not None
        self._compute.control = ControlApi(
            self._compute.engine, self.clock, self.traffic, limiter, self.describe, self._fail_builds,
            self.tokens, self.access, self.buckets, self._delete_image,
        )
        self._compute.start()
        self.compute_endpoint = self._compute.url
        self.control = ControlClient(self.compute_endpoint, self.zone)
        self._project_apis = ProjectApis(self.project, self.project_number, self.iam, self.access, self.tokens,
                                         self.traffic).start()  # fmt: skip
        self.iam_endpoint = self._project_apis.url("iam")
        self.resourcemanager_endpoint = self._project_apis.url("cloudresourcemanager")
        self.serviceusage_endpoint = self._project_apis.url("serviceusage")
        self.buckets.set_location(self.bucket, self.region)  # in the zone's region, as a user would make it
        self._create_bucket(self.bucket)
        self._registry = Registry(self.workdir / "registry", tokens=self.tokens)
        try:
            self.registry_host = self._registry.start().host
            watchdog.tell("pid", self._registry.pid)
        except RegistryUnavailable:  # builds still run; pushes fail saying where to push
            self._registry = None
        self._cloudbuild = CloudBuildServer(
            self._gcs.url, self.registry_host or None, project=self.project, project_number=self.project_number,
            workdir=self.workdir / "cloudbuild", docker_host=self._docker_host,
            traffic=self.traffic["cloudbuild"], tokens=self.tokens,
        )
        self._cloudbuild.access = self.access
        self._cloudbuild.start()
        watchdog.tell("label", f"{LABEL_SERVER}={self._cloudbuild.server_id}")
        self.cloudbuild_endpoint = self._cloudbuild.url

    def _delete_image(self, image: str) -> str:
        if self._registry is None:
            raise ControlError("the emulator has no registry (apt-get install docker-registry)")
        return self._registry.delete_image(image)

    def _fail_builds(self, count: int, status: str) -> None:
        if self._cloudbuild is None:  # the control API answers from before Cloud Build starts (after the registry)
            raise ControlError("Cloud Build is not running")
        self._cloudbuild.fail_next_builds(count, status)

    def _create_bucket(self, name: str) -> None:
        """Create a bucket directly on fake-gcs-server (not a counted call)."""
        assert self._gcs is not None
        request = urllib.request.Request(
            f"{self._gcs.url}/storage/v1/b?project={self.project}",
            data=json.dumps({"name": name}).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            urllib.request.urlopen(request, timeout=10).close()
        except urllib.error.HTTPError as exc:
            if exc.code != 409:
                raise

    def stop(self) -> None:
        """Kill every VM (process trees and containers), then every server; idempotent."""
        with self._lock:
            if not self._running:
                return
            self._running = False
        atexit.unregister(self.stop)
        if self._compute is not None:
            self._compute.engine.shutdown()
        if self._timers is not None:
            self._timers.stop()
        if self._compute is not None:
            self._compute.engine.shutdown()  # VMs a late timer booted while stopping
            self._compute.stop()
        if self._cloudbuild is not None:  # before Storage goes: it uploads its logs there
            self._cloudbuild.stop()
        if self._registry is not None:
            self._registry.stop()
        if self._hypervisor is not None:
            self._hypervisor.stop()
        if self._proxy is not None:
            self._proxy.stop()
        if self._project_apis is not None:
            self._project_apis.stop()
        if self._oauth is not None:
            self._oauth.stop()
        if self._gcs is not None:
            self._gcs.stop()
        if self._workdir_arg is None and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if self._watchdog is not None:
            self._watchdog.close()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what clients need ----------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._running

    @property
    def time_scale(self) -> float:
        return self.clock.time_scale

    @property
    def engine(self) -> ComputeEngine:
        """The compute engine (for in-process tests that need more than HTTP shows)."""
        assert self._compute is not None, "emulator not started"
        return self._compute.engine

    @property
    def credentials_file(self) -> Path:
        """The user's `authorized_user` file (as `gcloud auth application-default login` writes
        it) whose token_uri is this emulator's: what CREDENTIALS_FILE names in the config it writes."""
        assert self._credentials is not None, "emulator not started"
        return self._credentials.user

    @property
    def service_account_file(self) -> Path:
        """A service-account key (project_id included) whose token_uri is this emulator's."""
        assert self._credentials is not None, "emulator not started"
        return self._credentials.service_account

    @property
    def token_uri(self) -> str:
        assert self._oauth is not None, "emulator not started"
        return self._oauth.token_uri

    @property
    def fake_gcs_pid(self) -> int | None:
        return self._gcs.pid if self._gcs else None

    def client_options(self, service: str = "compute") -> dict[str, str]:
        """`client_options` for google-cloud clients: {"api_endpoint": ...}."""
        endpoints = {"compute": self.compute_endpoint, "storage": self.storage_endpoint,
                     "cloudbuild": self.cloudbuild_endpoint, "iam": self.iam_endpoint,
                     "cloudresourcemanager": self.resourcemanager_endpoint,
                     "serviceusage": self.serviceusage_endpoint}  # fmt: skip
        return {"api_endpoint": endpoints[service]}

    def describe(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "projectNumber": self.project_number,
            "zone": self.zone,
            "region": self.region,
            "bucket": self.bucket,
            "computeEndpoint": self.compute_endpoint,
            "storageEndpoint": self.storage_endpoint,
            "cloudbuildEndpoint": self.cloudbuild_endpoint,
            "iamEndpoint": self.iam_endpoint,
            "resourcemanagerEndpoint": self.resourcemanager_endpoint,
            "serviceusageEndpoint": self.serviceusage_endpoint,
            "userAccount": USER_EMAIL,
            "keyServiceAccount": key_account(self.project),
            "computeServiceAccount": compute_account(self.project_number),
            "registryHost": self.registry_host,
            "tokenUri": self._oauth.token_uri if self._oauth else None,
            "credentialsFile": str(self._credentials.user) if self._credentials else None,
            "serviceAccountFile": str(self._credentials.service_account) if self._credentials else None,
            "emulatorId": self.emulator_id,
            "pids": {"fakeGcs": self.fake_gcs_pid, "registry": self._registry.pid if self._registry else None,
                     "watchdog": self._watchdog.pid if self._watchdog else None},  # fmt: skip
            "workdir": str(self.workdir) if self.workdir else None,
            "binDir": str(self._hypervisor.bin_dir) if self._hypervisor else None,
        }
