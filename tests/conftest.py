"""Shared fixtures and the rules that keep CI from going green without the Docker tests.

Tests marked `docker` need a Docker engine (and most the base image python:3.11-slim). Without
them they are skipped LOUDLY. In CI (CI=true, 1 or yes) the session fails when any `docker` test
was skipped, and when none passed at all (e.g. `-m "not docker"`), so CI never goes green by
skipping or deselecting them. Tests marked `browser` need headless Chromium and its driver
(scripts/ensure-browser.sh installs them): skipped as loudly, and in CI a skip fails the session too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import BASE_IMAGE, ROOT, chromium_paths

EXAMPLE_IMAGE_TAG = "parallel-engine-example:test"
CI_VALUES = ("true", "1", "yes")
ENGINE_WAIT_S = 30.0  # a busy dockerd on a loaded machine can miss one short ping
DOCKER_SKIP_REASON = (
    "DOCKER TESTS SKIPPED: no Docker engine answers; "
    "run scripts/ensure-docker.sh with PE_START_DOCKER=1 (as root), or start Docker yourself"
)
BASE_IMAGE_SKIP_REASON = (
    f"DOCKER TESTS SKIPPED: the engine answers but the base image {BASE_IMAGE} is missing; "
    "as root, PE_START_DOCKER=1 bash scripts/ensure-docker.sh builds it offline (or docker pull it)"
)

BROWSER_SKIP_REASON = (
    "BROWSER TESTS SKIPPED: no chromium and chromedriver (PE_CHROMIUM, PE_CHROMEDRIVER); as root, "
    "PE_START_DOCKER=1 bash scripts/ensure-browser.sh installs Debian's chromium and chromium-driver"
)

_docker_skips: dict[str, str] = {}  # node id -> skip reason
_docker_passes: list[str] = []
_browser_skips: dict[str, str] = {}


#: Google's libraries look for a GCE metadata server at 169.254.169.254 when they find no
#: credentials: tests (and the commands they start) must never send traffic off this machine.
NO_REAL_METADATA = {"NO_GCE_CHECK": "true", "GCE_METADATA_HOST": "127.0.0.1:9", "GCE_METADATA_IP": "127.0.0.1:9"}


def pytest_configure(config: pytest.Config) -> None:
    for key, value in NO_REAL_METADATA.items():
        os.environ.setdefault(key, value)
    config.addinivalue_line("markers", "docker: needs a Docker engine (skipped loudly without one; CI fails if any were skipped)")
    config.addinivalue_line("markers", "emulator: needs the emulated Google cloud")
    config.addinivalue_line("markers", "browser: needs headless Chromium (skipped loudly without it; CI fails if any were skipped)")


#: Folders whose every test needs the emulated cloud: its own tests, and the gce backend's.
EMULATOR_FOLDERS = (Path(__file__).parent / "emulator", Path(__file__).parent / "gce")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(folder in Path(str(item.fspath)).parents for folder in EMULATOR_FOLDERS):
            item.add_marker(pytest.mark.emulator)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and "browser" in report.keywords:
        _browser_skips[report.nodeid] = _skip_reason(report)
    if "docker" not in report.keywords:
        return
    if report.skipped:
        _docker_skips[report.nodeid] = _skip_reason(report)
    elif report.when == "call" and report.passed:
        _docker_passes.append(report.nodeid)


def _skip_reason(report: pytest.TestReport) -> str:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return str(reason).removeprefix("Skipped: ")


def in_ci() -> bool:
    """CI as CI services say it: CI=true (GitHub, GitLab), 1 or yes (others), any case."""
    return os.environ.get("CI", "").strip().lower() in CI_VALUES


def ci_failure() -> str | None:
    """Why this session must fail in CI, or None."""
    if not in_ci():
        return None
    if _docker_skips:
        return f"{len(_docker_skips)} test(s) marked docker were skipped"
    if _browser_skips:
        return f"{len(_browser_skips)} test(s) marked browser were skipped"
    if not _docker_passes:
        return "no test marked docker passed (none selected, or none ran)"
    return None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if ci_failure() and session.exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    failure = ci_failure()
    if not _docker_skips and not _browser_skips and not failure:
        return
    banner = "!" * 100
    terminalreporter.write_line(banner, red=True, bold=True)
    for marker, skips in (("docker", _docker_skips), ("browser", _browser_skips)):
        if skips:
            terminalreporter.write_line(f"{len(skips)} test(s) marked {marker} were skipped:", red=True, bold=True)
            for reason in sorted(set(skips.values())):
                terminalreporter.write_line(f"  {reason}", red=True, bold=True)
    if failure:
        terminalreporter.write_line(f"CI={os.environ.get('CI')}: {failure}: this session FAILS (exit status 1)",
                                    red=True, bold=True)
    terminalreporter.write_line(banner, red=True, bold=True)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Any]:
    """A docker client for the engine that answers, or a loud skip.

    Where an engine is expected (DOCKER_HOST, or the default socket exists) it gets
    ENGINE_WAIT_S to answer; elsewhere one quick probe decides, so machines without Docker
    are not slowed down.
    """
    from parallel_engine.runtimes.docker import engine_available, make_client

    if not engine_available(wait_s=ENGINE_WAIT_S):
        pytest.skip(DOCKER_SKIP_REASON)
    client = make_client()
    yield client
    client.close()


@pytest.fixture(scope="session")
def base_image(docker_engine: Any) -> str:
    """The base image the example's Dockerfile and most docker tests use, or a loud skip."""
    from parallel_engine.runtimes.docker import image_exists

    if not image_exists(BASE_IMAGE, docker_engine):
        pytest.skip(BASE_IMAGE_SKIP_REASON)
    return BASE_IMAGE


@pytest.fixture(scope="session")
def example_image(base_image: str) -> str:
    """code/ built once per session as `parallel-engine-example:test`."""
    from parallel_engine.backends.local.build import build_local
    from parallel_engine.errors import BuildError

    lines: list[str] = []
    try:
        build_local(ROOT / "code", EXAMPLE_IMAGE_TAG, lines.append)
    except BuildError as exc:
        pytest.fail(f"building the example image failed:\n{exc}" + (f"\nhint: {exc.hint}" if exc.hint else ""))
    return EXAMPLE_IMAGE_TAG


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    """(chromium, chromedriver) paths for headless browser tests, or a loud skip."""
    found = chromium_paths()
    if found is None:
        pytest.skip(BROWSER_SKIP_REASON)
    return found


# -- the emulated cloud (tests/emulator: its own tests; tests/gce: the gce backend's) ------------
@pytest.fixture
def cloud() -> Iterator[Any]:
    """A fresh emulated cloud per test, at 1/100 time (starts in a fraction of a second)."""
    from parallel_engine.emulator import Emulator
    from tests.emulator.emulator_helpers import TIME_SCALE

    with Emulator(time_scale=TIME_SCALE) as emulator:
        yield emulator


@pytest.fixture
def clients(cloud: Any) -> Any:
    """The real Google clients pointed at `cloud`."""
    from tests.emulator.emulator_helpers import Clients

    return Clients(cloud)


@pytest.fixture(scope="module")
def shared_cloud() -> Iterator[Any]:
    """One emulator for tests that only read or are refused (the conformance walk)."""
    from parallel_engine.emulator import Emulator
    from tests.emulator.emulator_helpers import TIME_SCALE

    with Emulator(time_scale=TIME_SCALE) as emulator:
        yield emulator


@pytest.fixture
def shared(shared_cloud: Any) -> Any:
    from tests.emulator.emulator_helpers import Clients

    return Clients(shared_cloud)
