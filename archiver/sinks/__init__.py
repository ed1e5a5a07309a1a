"""Sinks: the output formats a window's rows are archived in, behind one interface.

`parquet` (FileSink, files.py): loose Parquet files, one object per window. `delta`
(DeltaSink, the `[delta]` extra): each kind one Delta Lake table, one commit per window.
Both publish the Parquet files that `parquet.py` writes.
"""

from __future__ import annotations

from archiver.errors import UsageError
from archiver.sinks.base import DELTA, FORMATS, INSTALL_DELTA, PARQUET, Problem, Published, Sink
from archiver.sinks.files import FileSink
from archiver.store import Store

__all__ = [
    "DELTA",
    "FORMATS",
    "INSTALL_DELTA",
    "PARQUET",
    "FileSink",
    "Problem",
    "Published",
    "Sink",
    "open_sink",
]


def open_sink(table_format: str, store: Store) -> Sink:
    """The sink for `table_format` on `store`; UsageError when its library is missing."""
    if table_format == PARQUET:
        return FileSink(store)
    if table_format == DELTA:
        try:
            from archiver.sinks.delta import DeltaSink
        except ModuleNotFoundError as exc:
            if not (exc.name or "").startswith("deltalake"):
                raise
            raise UsageError(
                f"table_format delta needs the deltalake package: {INSTALL_DELTA}"
            ) from exc
        return DeltaSink(store)
    raise UsageError(f"table_format: expected parquet or delta, not {table_format!r}")
