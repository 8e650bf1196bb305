"""The published segments as a file (CSV or Parquet) and as a summary table.

Why streamed: a marketing export of millions of customers must not hold the table in memory; rows
come from a server-side cursor in chunks and each chunk is appended to the file, so the peak stays
at a few chunks whatever the table size. The file is written next to its destination and renamed
into place, so a failed export never leaves half a file under the requested name.

Columns: ``customer_id`` (exactly as stored: integers stay integers, text ids are kept verbatim),
``segment_id``, ``segment_name``, ``is_outlier`` (``true``/``false`` in CSV, boolean in Parquet),
and ``tier`` when tiers are configured. CSV is UTF-8 without a byte-order mark, comma-separated,
quoted where needed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Literal

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from segmentation_pipeline.core.naming import SEPARATOR
from segmentation_pipeline.storage.connection import quote_identifier, table_exists
from segmentation_pipeline.storage.errors import SourceError

__all__ = ["EXPORT_COLUMNS", "EXPORT_CHUNK_ROWS", "ExportFormat", "export_segments", "read_segment_chunks",
           "segment_summary", "tier_of"]

EXPORT_COLUMNS = ["customer_id", "segment_id", "segment_name", "is_outlier"]
#: Rows fetched and written per step: a few MB of Python objects.
EXPORT_CHUNK_ROWS = 50_000
ExportFormat = Literal["csv", "parquet"]


def tier_of(names: pd.Series, tiers: Sequence[str]) -> pd.Series:
    """The tier a segment name starts with ("VIP · High income" -> "VIP"); None without one."""
    known = set(tiers)
    first = names.astype(str).str.split(SEPARATOR, n=1, regex=False).str[0]
    return first.where(first.isin(known), None)


def _missing(table: str) -> SourceError:
    return SourceError(f"no {table!r} table yet: run the pipeline first (`segmentation run`)")


def read_segment_chunks(
    engine: sa.Engine, table: str, segments: Sequence[int] = (), *, chunk_rows: int = EXPORT_CHUNK_ROWS
) -> Iterator[pd.DataFrame]:
    """The export columns of ``table`` in chunks from a server-side cursor, optionally of some segments."""
    if not table_exists(engine, table):
        raise _missing(table)
    columns = ", ".join(quote_identifier(engine, c) for c in EXPORT_COLUMNS)
    sql = f"SELECT {columns} FROM {quote_identifier(engine, table, 'table')}"
    params: dict[str, int] = {}
    if segments:
        params = {f"s{i}": int(s) for i, s in enumerate(segments)}
        sql += f" WHERE {quote_identifier(engine, 'segment_id')} IN ({', '.join(':' + k for k in params)})"
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True).execute(sa.text(sql), params)
        for rows in result.partitions(chunk_rows):
            chunk = pd.DataFrame(rows, columns=EXPORT_COLUMNS)
            chunk["segment_id"] = chunk["segment_id"].astype("int64")
            chunk["is_outlier"] = chunk["is_outlier"].astype(bool)
            yield chunk


def export_segments(
    engine: sa.Engine,
    table: str,
    output: str | Path,
    *,
    fmt: ExportFormat = "csv",
    segments: Sequence[int] = (),
    tiers: Sequence[str] = (),
    chunk_rows: int = EXPORT_CHUNK_ROWS,
) -> int:
    """Write the segmented customers to ``output``; returns the number of rows written."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial")
    written = 0
    writer: pq.ParquetWriter | None = None
    try:
        with ExitStack() as stack:
            text = stack.enter_context(open(partial, "w", encoding="utf-8", newline="")) if fmt == "csv" else None
            for chunk in read_segment_chunks(engine, table, segments, chunk_rows=chunk_rows):
                if tiers:
                    chunk["tier"] = tier_of(chunk["segment_name"], tiers).astype("string")
                if fmt == "csv":
                    chunk["is_outlier"] = chunk["is_outlier"].map({True: "true", False: "false"})
                    chunk.to_csv(text, index=False, header=written == 0, lineterminator="\n")
                else:
                    batch = pa.Table.from_pandas(chunk, preserve_index=False)
                    if writer is None:
                        writer = pq.ParquetWriter(partial, batch.schema)
                    writer.write_table(batch.cast(writer.schema))
                written += len(chunk)
            if text is not None and written == 0:
                text.write(",".join(EXPORT_COLUMNS + (["tier"] if tiers else [])) + "\n")
        if fmt == "parquet":
            if writer is None:
                fields = [("customer_id", pa.string()), ("segment_id", pa.int64()), ("segment_name", pa.string()),
                          ("is_outlier", pa.bool_())] + ([("tier", pa.string())] if tiers else [])
                writer = pq.ParquetWriter(partial, pa.schema(fields))
            writer.close()
            writer = None
        os.replace(partial, output)
    finally:
        if writer is not None:
            writer.close()
        partial.unlink(missing_ok=True)
    return written


def segment_summary(engine: sa.Engine, table: str, tiers: Sequence[str] = ()) -> pd.DataFrame:
    """One row per published segment: segment_id, segment_name, customers, share_pct, outliers, model."""
    if not table_exists(engine, table):
        raise _missing(table)
    q = lambda name: quote_identifier(engine, name)  # noqa: E731 - local shorthand
    sql = (
        f"SELECT {q('segment_id')}, {q('segment_name')}, COUNT(*) AS customers, "
        f"SUM(CASE WHEN {q('is_outlier')} THEN 1 ELSE 0 END) AS outliers, "
        f"MAX({q('model_name')}) AS model_name, MAX({q('model_version')}) AS model_version "
        f"FROM {quote_identifier(engine, table, 'table')} GROUP BY {q('segment_id')}, {q('segment_name')} "
        f"ORDER BY {q('segment_id')}"
    )
    with engine.connect() as conn:
        summary = pd.read_sql(sa.text(sql), conn)
    summary["customers"] = summary["customers"].astype("int64")
    summary["outliers"] = summary["outliers"].astype("int64")
    total = summary["customers"].sum()
    summary.insert(3, "share_pct", 100.0 * summary["customers"] / total if total else 0.0)
    if tiers:
        summary.insert(2, "tier", tier_of(summary["segment_name"], tiers))
    return summary
