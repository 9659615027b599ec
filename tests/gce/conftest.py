"""Every gce test runs the Python worker, pinned as `parallel-engine build` pins it.

Once per session the worker image is built from this checkout (its tag is a hash of its content,
so an unchanged worker is not rebuilt) and pushed to a throw-away registry on 127.0.0.1: that
gives the local image a digest name (`127.0.0.1:PORT/pe/parallel-engine-worker@sha256:...`),
which the emulated VMs find locally (`PULL_POLICY if-missing` never pulls it again). The gce
configs of tests/gce/gce_helpers.py name that repository as REGISTRY, and each test's emulated
bucket gets the build record `build` would leave (the worker image and its digest).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.gce import gce_helpers
from tests.helpers import ROOT


def _docker(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="session")
def worker_image(docker_engine: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The Python worker's image, built offline from this checkout (tagged by its content hash)."""
    from parallel_engine.worker import image

    tag = f"parallel-engine-worker:{image.tag()}"
    if _docker("image", "inspect", tag).returncode == 0:
        return tag
    context = image.make_context(tmp_path_factory.mktemp("worker-image") / "context")
    built = _docker("build", "-q", "--network", "none", "-t", tag, str(context))
    if built.returncode != 0:
        pytest.fail(f"building the worker image failed:\n{built.stderr}")
    return tag


@pytest.fixture(scope="session", autouse=True)
def pinned_worker(worker_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[gce_helpers.PinnedWorker]:
    """The worker image under a digest name: pushed once to a registry that lives for the push."""
    from parallel_engine.emulator.registry import Registry

    with Registry(workdir=tmp_path_factory.mktemp("worker-registry")) as registry:
        repository = f"127.0.0.1:{registry.port}/pe"  # distribution itself: no token needed
        name = f"{repository}/{gce_helpers.WORKER_NAME}:{worker_image.split(':', 1)[1]}"
        for args in (("tag", worker_image, name), ("push", "-q", name)):
            done = _docker(*args)
            if done.returncode != 0:
                pytest.fail(f"docker {' '.join(args)} failed:\n{done.stderr}")
        digests = _docker("image", "inspect", "-f", "{{json .RepoDigests}}", name).stdout
    digest = next(d.split("@", 1)[1] for d in json.loads(digests) if d.startswith(f"{repository}/"))
    gce_helpers.PINNED.registry, gce_helpers.PINNED.digest = repository, digest
    yield gce_helpers.PINNED
    _docker("rmi", name)  # the pushed name (and with it its digest name), never the image itself


@pytest.fixture(autouse=True)
def worker_build_recorded(request: pytest.FixtureRequest, pinned_worker: gce_helpers.PinnedWorker) -> None:
    """The build record `build` leaves in a test's emulated bucket: its worker image. The calls
    that wrote it are forgotten: a test counts its own calls (and token grants) from zero."""
    if "cloud" in request.fixturenames:
        cloud = request.getfixturevalue("cloud")
        gce_helpers.save_build(cloud, {})
        cloud.control.reset_calls()


@pytest.fixture(scope="session")
def example_run_on_reuse_vms(example_image: str, pinned_worker: gce_helpers.PinnedWorker,
                             tmp_path_factory: pytest.TempPathFactory) -> Iterator[gce_helpers.ExampleRun]:
    """One run (~10 s) for the tests that only read it back: collect (test_gce_backend.py) and
    report (test_report_gce.py). Its emulator holds no other run; nothing writes to it after."""
    import parallel_engine as pe
    from parallel_engine.emulator import Emulator
    from tests.emulator.emulator_helpers import TIME_SCALE

    with Emulator(time_scale=TIME_SCALE) as cloud:
        gce_helpers.save_build(cloud, {})
        folder = tmp_path_factory.mktemp("example-run")
        shutil.copytree(ROOT / "code", folder / "code")
        config = gce_helpers.config_for(cloud, example_image, VM_QUOTAS=3)
        yield gce_helpers.ExampleRun(cloud, example_image, pe.run(folder / "code" / "params.csv", config=config))
