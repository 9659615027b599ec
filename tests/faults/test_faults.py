"""Every registered fault scenario, a few times each at random moments (tests/faults/harness.py).

The seed of any failure is in the message: `PE_FAULT_SEED=<seed> pytest tests/faults -k '<name>'`
replays it. `PE_FAULT_TRIES=N` runs each N times; bench/faults.py runs them many more.
"""

from __future__ import annotations

import os

import pytest

from tests.faults.harness import TRIES_ENV, Scenario, load_all, repeat

SCENARIOS = load_all()


def _params() -> list[object]:
    return [
        pytest.param(item, id=name, marks=[getattr(pytest.mark, mark) for mark in item.marks])
        for name, item in sorted(SCENARIOS.items())
    ]


@pytest.mark.parametrize("item", _params())
def test_fault_scenario_ends_right_every_time(item: Scenario, request: pytest.FixtureRequest) -> None:
    for mark in item.marks:  # e.g. "docker": the engine (and its CI rule) as for any docker test
        if mark == "docker":
            request.getfixturevalue("base_image")
    tries = int(os.environ.get(TRIES_ENV, item.ci_tries))
    tally = repeat(item, tries)
    assert not tally.failures, "\n".join(failure for _, failure in tally.failures)
