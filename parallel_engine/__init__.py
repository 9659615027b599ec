"""parallel-engine: one task per parameter set, fanned out over many workers.

    import parallel_engine as pe
    run = pe.run("code/params.csv", jobs=4)
"""

from __future__ import annotations

from typing import Any

from parallel_engine.errors import ParallelEngineError

__version__ = "0.1.0"

_API = ("Run", "attach", "build", "cancel", "get_run", "list_runs", "resume", "run")
__all__ = ["ParallelEngineError", "__version__", *_API]


def __getattr__(name: str) -> Any:
    # Lazy, so `import parallel_engine.errors` (and the emulator) stay light.
    if name in _API:
        from parallel_engine import api

        return getattr(api, name)
    raise AttributeError(name)
