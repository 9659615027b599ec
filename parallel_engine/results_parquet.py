"""`collect --format parquet`: results.csv's table as Parquet, typed (numbers as numbers, times as
UTC timestamps). Needs pyarrow (the `parquet` extra), imported only here."""

from __future__ import annotations

from typing import Any

from parallel_engine.errors import MissingExtraError
from parallel_engine.model import RESULT_COLUMNS
from parallel_engine.results import RunStatus, result_columns, result_fields


def require_pyarrow() -> None:
    """Say which extra is missing before anything is collected."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise MissingExtraError("collect --format parquet", "parquet", "pyarrow") from None


def parquet_bytes(status: RunStatus) -> bytes:
    """The parameters (text), task_id, then RESULT_COLUMNS, one row per task, as a Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = result_columns(status.record)
    data: dict[str, Any] = {name: pa.array([view.params.get(name, "") for view in status.tasks], pa.string())
                            for name in columns}
    if "task_id" not in data:
        data["task_id"] = pa.array([view.task_id for view in status.tasks], pa.string())
    fields = [result_fields(view) for view in status.tasks]
    results = [view.result for view in status.tasks]
    types = {"exit_code": pa.int64(), "attempts": pa.int64(), "duration_s": pa.float64()}
    for name in RESULT_COLUMNS:
        if name in ("started_at", "finished_at"):
            seconds = [getattr(result, name) if result else None for result in results]
            data[name] = pa.array([None if at is None else round(at * 1_000_000) for at in seconds],
                                  pa.timestamp("us", tz="UTC"))
        else:
            data[name] = pa.array([row[name] for row in fields], types.get(name, pa.string()))
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(data), sink)
    return bytes(sink.getvalue().to_pybytes())
