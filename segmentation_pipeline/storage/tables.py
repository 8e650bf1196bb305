"""Customer tables handed between steps as Parquet files and read a few columns at a time.

A step that needs two columns of the clean table should not hold all eight, and a step that
needs the table only after a long fit should not hold it during the fit. So table hand-offs
(raw, clean and rejected customers) are written once to Parquet and handed on as a
:class:`ParquetTable`: a path, a row count and the column names. Consumers call
:func:`read_columns` for what they need when they need it; given a plain DataFrame (tests,
``dg.materialize`` with the default IO manager) it returns views of that frame instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

#: Rows per Parquet row group: large enough for fast scans, small enough to bound the writer's buffers.
ROW_GROUP_ROWS = 1 << 20


@dataclass(frozen=True)
class ParquetTable:
    """A table on local disk: what a consumer needs to read it, and what metadata code asks (len, columns)."""

    path: Path
    n_rows: int
    columns: tuple[str, ...]

    def __len__(self) -> int:
        return self.n_rows

    def read(self, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """The given columns (all by default) as a frame this caller owns; one column block each,
        so dropping a column frees it.

        One column at a time: reading the whole table into Arrow and then converting it held
        both copies at once (peak 2.6x the frame); this way the peak is the frame plus one column.
        """
        wanted = list(self.columns if columns is None else columns)
        absent = [c for c in wanted if c not in self.columns]
        if absent:
            raise KeyError(f"{self.path.name} has no column(s) {absent}; it has {list(self.columns)}")
        arrays: dict[str, object] = {}
        for name in wanted:
            column = pq.read_table(self.path, columns=[name], use_threads=False, memory_map=True)
            arrays[name] = column.to_pandas(split_blocks=True, self_destruct=True)[name]
            del column
            pa.default_memory_pool().release_unused()
        if not arrays:
            return pd.DataFrame(index=pd.RangeIndex(self.n_rows))
        return pd.DataFrame(arrays, copy=False)

    def head(self, n: int = 5) -> pd.DataFrame:
        """The first ``n`` rows (for metadata samples), reading only the first row group."""
        with pq.ParquetFile(self.path) as file:
            if file.num_row_groups == 0:
                return pd.DataFrame(columns=list(self.columns))
            return file.read_row_group(0).slice(0, n).to_pandas()


def write_table(frame: pd.DataFrame, path: Path) -> ParquetTable:
    """``frame`` (without its index) as Parquet at ``path``, atomically: a crashed step never
    leaves half a file under the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS)
        del table
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return ParquetTable(path=path, n_rows=len(frame), columns=tuple(str(c) for c in frame.columns))


def parquet_table(path: Path) -> ParquetTable:
    """A handle on an existing Parquet file (row count and columns from its footer)."""
    return ParquetTable(path=path, n_rows=pq.read_metadata(path).num_rows, columns=tuple(pq.read_schema(path).names))


def read_columns(value: pd.DataFrame | ParquetTable, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The given columns of a hand-off. From a file: a frame the caller owns. From a frame: a new
    frame over the same column arrays (no copy), which the caller must not modify in place."""
    if isinstance(value, ParquetTable):
        return value.read(columns)
    if columns is None:
        return value
    absent = [c for c in columns if c not in value.columns]
    if absent:
        raise KeyError(f"no column(s) {absent} in the hand-off; it has {[str(c) for c in value.columns]}")
    return pd.DataFrame({c: value[c] for c in columns}, copy=False)


def owns_rows(value: pd.DataFrame | ParquetTable) -> bool:
    """Whether :func:`read_columns` hands the caller a private copy it may consume."""
    return isinstance(value, ParquetTable)
