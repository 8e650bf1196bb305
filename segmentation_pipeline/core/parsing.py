"""How a raw value becomes a number: one rule for the batch cleaning and the served model.

Why shared: a value the batch accepts ("12,000", " 42 ", "1e3") must be accepted online too, and
one it rejects must be refused online with the same reason; two parsers would drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from segmentation_pipeline.core.cleaning_rules import THOUSANDS_SEPARATOR

__all__ = ["ParsedNumbers", "parse_numbers"]


@dataclass(frozen=True)
class ParsedNumbers:
    """float64 values (NaN where missing or unparsable) and which present values did not parse."""

    values: np.ndarray
    non_numeric: np.ndarray
    blank: np.ndarray  # text that is empty once stripped: missing, not non-numeric


def parse_numbers(series: pd.Series, *, copy: bool = True) -> ParsedNumbers:
    """Numbers as they are; text parsed by ``pd.to_numeric``, then again stripped and without
    thousands separators (only the values the fast pass could not read are touched twice).

    Temporal columns are the caller's to refuse. With ``copy=False`` a float64 column is used as
    it is (the caller owns it)."""
    n = len(series)
    if pd.api.types.is_bool_dtype(series) or (
        pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_complex_dtype(series)
    ):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan, copy=copy)
        if not values.flags.writeable:
            values = values.copy()
        return ParsedNumbers(values, np.zeros(n, dtype=bool), np.zeros(n, dtype=bool))
    if isinstance(series.dtype, pd.CategoricalDtype):
        series = series.astype(object)
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    unparsed = np.isnan(values) & series.notna().to_numpy()
    non_numeric = np.zeros(n, dtype=bool)
    blank = np.zeros(n, dtype=bool)
    if unparsed.any():
        text = series[unparsed].astype(str).str.strip()
        where = np.flatnonzero(unparsed)
        blank[where] = (text == "").to_numpy()
        second = pd.to_numeric(text.str.replace(THOUSANDS_SEPARATOR, "", regex=True), errors="coerce")
        second = second.to_numpy(dtype=np.float64, na_value=np.nan)
        values[where] = second
        non_numeric[where] = np.isnan(second) & ~blank[where]
    return ParsedNumbers(values, non_numeric, blank)
