"""Small helpers that turn core results into Dagster metadata people can look at.

Table assets report their size and columns under Dagster's own keys (``dagster/row_count``,
``dagster/column_schema``): the UI shows those in the asset's overview and plots the row count
over time, which it does not do for a key of our own.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from segmentation_pipeline.core.segment_tables import SEGMENT_COLUMNS

ROW_COUNT = "dagster/row_count"
COLUMN_SCHEMA = "dagster/column_schema"


def image(png: bytes, alt: str) -> dg.MetadataValue:
    """An inline PNG: the Dagster UI renders markdown images with data URIs."""
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


def table(frame: pd.DataFrame, max_rows: int = 50, floatfmt: str = ".4g") -> dg.MetadataValue:
    shown = frame.head(max_rows)
    return dg.MetadataValue.md(shown.to_markdown(index=False, floatfmt=floatfmt))


def jsonable(value: Any) -> Any:
    """Numpy scalars and arrays into plain JSON for MetadataValue.json."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def plain_metadata(**values: Any) -> dict[str, dg.MetadataValue]:
    """Dagster metadata from plain values: ints, bools and text as such, anything else as JSON."""
    out: dict[str, dg.MetadataValue] = {}
    for key, value in values.items():
        if isinstance(value, dg.MetadataValue):
            out[key] = value
        elif isinstance(value, (bool, np.bool_)):
            out[key] = dg.MetadataValue.bool(bool(value))
        elif isinstance(value, (int, np.integer)):
            out[key] = dg.MetadataValue.int(int(value))
        elif isinstance(value, str):
            out[key] = dg.MetadataValue.text(value)
        else:
            out[key] = dg.MetadataValue.json(jsonable(value))
    return out


def table_facts(row_count: int, columns: Mapping[str, str] | None = None) -> dict[str, dg.MetadataValue]:
    """Dagster's row count and (when given: name -> type) column schema of a table asset."""
    out: dict[str, dg.MetadataValue] = {ROW_COUNT: dg.MetadataValue.int(int(row_count))}
    if columns is not None:
        schema = dg.TableSchema(columns=[dg.TableColumn(name, str(kind)) for name, kind in columns.items()])
        out[COLUMN_SCHEMA] = dg.MetadataValue.table_schema(schema)
    return out


def frame_columns(frame: Any) -> dict[str, str]:
    """An engine table's columns and types, for :func:`table_facts`: a pandas frame's dtypes, a
    distributed frame's ``(name, type)`` pairs, or just the names of anything else with ``columns``."""
    dtypes = getattr(frame, "dtypes", None)
    if isinstance(dtypes, pd.Series):
        return {str(c): str(t) for c, t in dtypes.items()}
    if isinstance(dtypes, list):
        return {str(c): str(t) for c, t in dtypes}
    return {str(c): "" for c in getattr(frame, "columns", [])}


_SEGMENT_TYPES = {
    "customer_id": "as in the source", "segment_id": "int64", "segment_name": "text", "is_outlier": "bool",
    "outlier_reason": "text", "model_name": "text", "model_version": "text", "mlflow_run_id": "text",
    "dagster_run_id": "text", "scored_at": "datetime (UTC)",
}
#: The columns of the published segments table (the write-back contract), with their types.
SEGMENT_TABLE_COLUMNS = {c: _SEGMENT_TYPES[c] for c in SEGMENT_COLUMNS}
