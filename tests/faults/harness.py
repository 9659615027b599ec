"""Fault scenarios repeated at random moments, seeded: the seed of a failure is printed so it
can be replayed with `PE_FAULT_SEED=<seed> pytest tests/faults -k <name>`.

A scenario is a function `(rng, tmp) -> None` that provokes one fault at a moment drawn from
`rng` and raises AssertionError when the run did not end right (a bound on the time, the exit
code, every recorded state equal to what really happened, nothing left running or written
where it must not be). Modules `tests/faults/scenarios_*.py` register theirs with `@scenario`;
`test_faults.py` runs each a few times in CI, `bench/faults.py` many times and prints the table.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

Body = Callable[[random.Random, Path], None]
TRIES_ENV = "PE_FAULT_TRIES"  # overrides every scenario's CI count
SEED_ENV = "PE_FAULT_SEED"  # replays one seed


@dataclass(frozen=True)
class Scenario:
    name: str  # what bench/faults.py prints: "ctrl-c at random"
    body: Body
    ci_tries: int  # repetitions per CI run: keep the suite well under 20 minutes
    marks: tuple[str, ...] = ()  # pytest marks by name, e.g. ("docker",)


SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str, ci_tries: int, marks: tuple[str, ...] = ()) -> Callable[[Body], Body]:
    def register(body: Body) -> Body:
        if name in SCENARIOS:
            raise ValueError(f"two fault scenarios named {name!r}")
        SCENARIOS[name] = Scenario(name, body, ci_tries, marks)
        return body

    return register


def load_all() -> dict[str, Scenario]:
    """Import every tests/faults/scenarios_*.py so its scenarios register."""
    package = Path(__file__).parent
    for info in pkgutil.iter_modules([str(package)]):
        if info.name.startswith("scenarios_"):
            importlib.import_module(f"tests.faults.{info.name}")
    return SCENARIOS


@dataclass
class Tally:
    name: str
    tries: int = 0
    right: int = 0
    seconds: float = 0.0
    failures: list[tuple[int, str]] = field(default_factory=list)  # (seed, what went wrong)

    def line(self) -> str:
        return f"{self.name}: {self.right}/{self.tries} ended right ({self.seconds / max(self.tries, 1):.2f} s each)"


def seeds(tries: int) -> list[int]:
    """`tries` fresh seeds, or only the one named by PE_FAULT_SEED (a replay)."""
    replay = os.environ.get(SEED_ENV)
    if replay:
        return [int(replay)]
    return [random.SystemRandom().randrange(2**32) for _ in range(tries)]


def run_once(item: Scenario, seed: int) -> str | None:
    """One try in a fresh folder: None if the run ended right, else what went wrong (with the seed)."""
    folder = Path(tempfile.mkdtemp(prefix="pe-fault-"))
    try:
        item.body(random.Random(seed), folder)
    except AssertionError as exc:
        return f"{item.name} (replay: {SEED_ENV}={seed}): {exc}"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return None


def repeat(item: Scenario, tries: int) -> Tally:
    """`tries` runs of `item`, each with its own seed; every failure is kept with its seed."""
    tally = Tally(item.name)
    for seed in seeds(tries):
        started = time.monotonic()
        failure = run_once(item, seed)
        tally.seconds += time.monotonic() - started
        tally.tries += 1
        if failure is None:
            tally.right += 1
        else:
            tally.failures.append((seed, failure))
    return tally
