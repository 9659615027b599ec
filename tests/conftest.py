"""Shared fixtures and the rule that makes skipped Docker tests fail CI.

Tests marked `docker` need a Docker engine. Without one they are skipped LOUDLY; when
CI=true a skipped `docker` test fails the whole session, so CI never goes green by skipping.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_IMAGE_TAG = "parallel-engine-example:test"
DOCKER_SKIP_REASON = (
    "DOCKER TESTS SKIPPED: no Docker engine answers; "
    "run scripts/ensure-docker.sh with PE_START_DOCKER=1 (as root), or start Docker yourself"
)

_docker_skips: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "docker: needs a Docker engine (skipped loudly without one; CI fails if any were skipped)")
    config.addinivalue_line("markers", "emulator: needs the emulated Google cloud")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and "docker" in report.keywords:
        _docker_skips.append(report.nodeid)


def _ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _docker_skips and _ci() and session.exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not _docker_skips:
        return
    banner = "!" * 100
    terminalreporter.write_line(banner, red=True, bold=True)
    terminalreporter.write_line(f"{len(_docker_skips)} test(s) marked docker were skipped. {DOCKER_SKIP_REASON}", red=True, bold=True)
    if _ci():
        terminalreporter.write_line("CI=true: skipped docker tests FAIL this session (exit status 1)", red=True, bold=True)
    terminalreporter.write_line(banner, red=True, bold=True)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Any]:
    """A docker client for the engine that answers, or a loud skip."""
    from parallel_engine.runtimes.docker import engine_available, make_client

    if not engine_available():
        pytest.skip(DOCKER_SKIP_REASON)
    client = make_client()
    yield client
    client.close()


@pytest.fixture(scope="session")
def example_image(docker_engine: Any) -> str:
    """code/ built once per session as `parallel-engine-example:test`."""
    from parallel_engine.build import build_local
    from parallel_engine.errors import BuildError

    lines: list[str] = []
    try:
        build_local(ROOT / "code", EXAMPLE_IMAGE_TAG, lines.append)
    except BuildError as exc:
        pytest.fail(f"building the example image failed (did scripts/ensure-docker.sh make python:3.11-slim?):\n{exc}")
    return EXAMPLE_IMAGE_TAG
