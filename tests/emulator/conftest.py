"""Fixtures for the emulated cloud's tests: an emulator at 1/100 time and the real Google clients."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from emulator_helpers import TIME_SCALE, Clients

from parallel_engine.emulator import Emulator


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.emulator)


@pytest.fixture
def cloud() -> Iterator[Emulator]:
    """A fresh emulated cloud per test (starts in a fraction of a second)."""
    with Emulator(time_scale=TIME_SCALE) as emulator:
        yield emulator


@pytest.fixture
def clients(cloud: Emulator) -> Clients:
    return Clients(cloud)


@pytest.fixture(scope="module")
def shared_cloud() -> Iterator[Emulator]:
    """One emulator for tests that only read or are refused (the conformance walk)."""
    with Emulator(time_scale=TIME_SCALE) as emulator:
        yield emulator


@pytest.fixture
def shared(shared_cloud: Emulator) -> Clients:
    return Clients(shared_cloud)
