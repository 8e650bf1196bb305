"""Which columns to log1p automatically (for ``transform.log1p: auto``).

Why: money columns (income, spend, order values) are log-normal-like; left raw, StandardScaler lets
their long right tail dominate the distances, so KMeans spends segments on the tail and merges the
bulk. log1p is only defined and meaningful for non-negative values.

The test: a numeric column is transformed when its minimum is >= 0 and its sample skewness
(adjusted Fisher-Pearson, pandas' ``Series.skew``) exceeds ``threshold`` (default 1.0: Bulmer's
1979 reading of |skewness| > 1 as "highly skewed"), and log1p lowers the absolute skewness (a
column that log1p makes *more* skewed, e.g. mass at 0 plus a bounded tail, is left alone).
Skewness is computed on a seeded sample of at most ``sample_rows`` rows, so the check is O(1) in n.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from segmentation_pipeline.core.modeling import sample_indices

__all__ = ["SKEW_THRESHOLD", "auto_log1p_columns", "column_skewness"]

SKEW_THRESHOLD = 1.0


def column_skewness(frame: pd.DataFrame, *, sample_rows: int = 100_000, seed: int = 0) -> pd.DataFrame:
    """Per numeric column: min, skewness raw and after log1p (NaN where log1p is undefined)."""
    numeric = frame.select_dtypes(include="number")
    sample = numeric.iloc[sample_indices(len(numeric), sample_rows, seed)].astype(np.float64)
    rows = []
    for column in sample.columns:
        values = sample[column].dropna()
        minimum = float(values.min()) if len(values) else float("nan")
        raw = float(values.skew()) if len(values) > 2 else float("nan")
        logged = float(np.log1p(values).skew()) if len(values) > 2 and minimum >= 0 else float("nan")
        rows.append({"column": column, "min": minimum, "skew": raw, "skew_log1p": logged})
    return pd.DataFrame(rows, columns=["column", "min", "skew", "skew_log1p"]).set_index("column")


def auto_log1p_columns(
    frame: pd.DataFrame, *, threshold: float = SKEW_THRESHOLD, sample_rows: int = 100_000, seed: int = 0
) -> list[str]:
    """Columns to log1p: min >= 0, skewness > ``threshold`` and |skew| reduced by log1p (module docstring)."""
    table = column_skewness(frame, sample_rows=sample_rows, seed=seed)
    chosen = table[(table["min"] >= 0) & (table["skew"] > threshold) & (table["skew_log1p"].abs() < table["skew"].abs())]
    return [str(c) for c in chosen.index]
