"""Small helpers that turn core results into Dagster metadata people can look at."""

from __future__ import annotations

import base64
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd


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
