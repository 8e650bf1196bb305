"""Which columns to log1p automatically (for ``transform.log1p: auto``).

Why: money columns (income, spend, order values) are log-normal-like; left raw, StandardScaler lets
their long right tail dominate the distances, so KMeans spends segments on the tail and merges the
bulk. log1p is only defined and meaningful for non-negative values.

The test: a numeric column is transformed when its minimum is >= 0 and its sample skewness
(adjusted Fisher-Pearson, pandas' ``Series.skew``) exceeds ``threshold`` (default 1.0: Bulmer's
1979 reading of |skewness| > 1 as "highly skewed"), and log1p lowers the absolute skewness (a
column that log1p makes *more* skewed, e.g. mass at 0 plus a bounded tail, is left alone).
Skewness is computed on a seeded sample of at most ``sample_rows`` rows, so the check is O(1) in n.

Once per training run: the cleaning step resolves ``auto`` on the valid rows (after validation and
imputation, before the outlier fences, which live on the log scale of the chosen columns), records
the choice in its report (``transform``), and every later stage gets a config with that explicit
list (:func:`with_log1p`): the fences, the fitted preprocessor (so the registered model logs the
same columns when scoring), naming, and the Spark engine, which computes the same table with Spark
aggregates over every valid row (:func:`log1p_choice` decides for both engines).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from segmentation_pipeline.config import PipelineConfig
from segmentation_pipeline.core.modeling import sample_indices

__all__ = [
    "SKEW_SAMPLE_ROWS",
    "SKEW_THRESHOLD",
    "auto_log1p_columns",
    "column_skewness",
    "log1p_choice",
    "log1p_facts",
    "resolve_log1p",
    "resolved_from_report",
    "with_log1p",
]

#: Rows the local engine samples for the skewness (seeded); Spark aggregates every valid row.
SKEW_SAMPLE_ROWS = 100_000

SKEW_THRESHOLD = 1.0


def column_skewness(
    frame: pd.DataFrame, columns: list[str] | None = None, *, sample_rows: int = 100_000, seed: int = 0
) -> pd.DataFrame:
    """Per numeric column (of ``columns``, default all): min, skewness raw and after log1p (NaN
    where log1p is undefined), on a seeded sample of rows. Only the sample is copied: selecting
    the columns of a multi-million-row frame first would copy every row (~50 B/row at 3 columns)."""
    names = list(frame.columns) if columns is None else list(columns)
    picks = sample_indices(len(frame), sample_rows, seed)
    rows = []
    for column in names:
        series = frame[column]
        if not pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype):
            continue
        values = pd.Series(series.iloc[picks].to_numpy(dtype=np.float64, na_value=np.nan)).dropna()
        minimum = float(values.min()) if len(values) else float("nan")
        raw = float(values.skew()) if len(values) > 2 else float("nan")
        logged = float(np.log1p(values).skew()) if len(values) > 2 and minimum >= 0 else float("nan")
        rows.append({"column": column, "min": minimum, "skew": raw, "skew_log1p": logged})
    return pd.DataFrame(rows, columns=["column", "min", "skew", "skew_log1p"]).set_index("column")


def log1p_choice(table: pd.DataFrame, threshold: float = SKEW_THRESHOLD) -> list[str]:
    """The decision on a :func:`column_skewness`-shaped table (whichever engine computed it):
    min >= 0, skewness > ``threshold`` and |skew| reduced by log1p; NaN never qualifies."""
    chosen = table[(table["min"] >= 0) & (table["skew"] > threshold) & (table["skew_log1p"].abs() < table["skew"].abs())]
    return [str(c) for c in chosen.index]


def auto_log1p_columns(
    frame: pd.DataFrame, *, threshold: float = SKEW_THRESHOLD, sample_rows: int = SKEW_SAMPLE_ROWS, seed: int = 0
) -> list[str]:
    """Columns to log1p: min >= 0, skewness > ``threshold`` and |skew| reduced by log1p (module docstring)."""
    return log1p_choice(column_skewness(frame, sample_rows=sample_rows, seed=seed), threshold)


def with_log1p(config: PipelineConfig, columns: list[str]) -> PipelineConfig:
    """``config`` with ``transform.log1p`` set to the explicit ``columns`` (the resolved choice)."""
    return config.model_copy(update={"transform": config.transform.model_copy(update={"log1p": list(columns)})})


def _number(value: float) -> float | None:
    return None if not np.isfinite(value) else round(float(value), 6)


def log1p_facts(config: PipelineConfig, columns: list[str], table: pd.DataFrame | None = None) -> dict[str, Any]:
    """The report entry that records the choice: mode, columns, and (auto) the test and its numbers."""
    facts: dict[str, Any] = {"log1p_mode": "auto" if table is not None else "list", "log1p": list(columns)}
    if table is not None:
        facts["skew_threshold"] = config.transform.log1p_skew_threshold
        facts["skewness"] = {
            str(c): {k: _number(float(row[k])) for k in ("min", "skew", "skew_log1p")} for c, row in table.iterrows()
        }
    return facts


def resolve_log1p(
    config: PipelineConfig, frame: pd.DataFrame, *, sample_rows: int = SKEW_SAMPLE_ROWS, seed: int = 0
) -> tuple[PipelineConfig, dict[str, Any]]:
    """(config with an explicit ``transform.log1p``, the report entry). An explicit list is kept as
    it is; ``auto`` is decided on the features of ``frame`` (the clean rows of this run)."""
    if not config.transform.log1p_auto:
        return config, log1p_facts(config, config.transform.log1p_columns)
    table = column_skewness(frame, list(config.features), sample_rows=sample_rows, seed=seed)
    chosen = log1p_choice(table, config.transform.log1p_skew_threshold)
    return with_log1p(config, chosen), log1p_facts(config, chosen, table)


def resolved_from_report(config: PipelineConfig, report: dict[str, Any] | None) -> PipelineConfig | None:
    """``config`` with the choice a cleaning report recorded; None when ``auto`` and nothing is recorded."""
    if not config.transform.log1p_auto:
        return config
    recorded = (report or {}).get("transform", {}).get("log1p")
    return None if recorded is None else with_log1p(config, [str(c) for c in recorded])
