"""``index.parquet``: one row per sample (key, split, shard, byte offset, label, patient, source, dataset columns)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from .manifest import INDEX_PARQUET

__all__ = ["read_sample_index", "sample_index_bytes", "write_sample_index"]


def sample_index_bytes(rows: Sequence[dict[str, Any]]) -> bytes:
    """The parquet bytes for ``rows`` (zstd); an empty dataset still has a ``key`` column."""
    import pyarrow as pa  # imported here: worker processes never need it
    import pyarrow.parquet as pq

    columns = list(dict.fromkeys(name for row in rows for name in row))  # from_pylist reads the first row's keys
    table = (
        pa.Table.from_pylist([{name: row.get(name) for name in columns} for row in rows])
        if rows
        else pa.table({"key": pa.array([], pa.string())})
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def write_sample_index(location: Any, rows: Sequence[dict[str, Any]]) -> None:
    location.write_bytes(INDEX_PARQUET, sample_index_bytes(rows))


def read_sample_index(location: Any) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(location.read_bytes(INDEX_PARQUET))).to_pylist()
