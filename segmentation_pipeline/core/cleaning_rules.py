"""The cleaning rules both engines apply: which checks, in which order, and how a failure reads.

Every engine must reject the same rows for the same reason with the same detail, so the reason
vocabulary (``missing:<col>``, ``duplicate_id``, ``non_numeric:<col>``, ...), its precedence and
the texts of details and table-level errors are defined once here; an engine only decides *how*
to evaluate a rule (pandera over pandas, or Spark SQL expressions).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from decimal import Decimal
from enum import IntEnum

from segmentation_pipeline.config import CategoricalRule, PipelineConfig, Range

#: A comma between a digit and exactly three digits is a thousands separator ("12,000"); "1,5" is not.
THOUSANDS_SEPARATOR = r"(?<=\d),(?=\d{3}(?!\d))"

#: Appended to a duplicate's detail: which of the rows sharing an id survives.
DUPLICATE_KEPT = " (the first, or latest updated, row with this id is kept)"


class DataQualityError(ValueError):
    """The input cannot be segmented at all; the message names the table, column and values."""


class ReasonKind(IntEnum):
    """Reason kinds in precedence order: a row's reason is its failure of the earliest kind,
    then of the earliest column (id, features in config order, categorical columns)."""

    MISSING_ID = 0
    DUPLICATE = 1
    NON_POSITIVE_MONETARY = 2
    NON_NUMERIC = 3
    MISSING = 4
    NON_FINITE = 5
    OUT_OF_RANGE = 6
    INVALID_CATEGORY = 7
    OUTLIER = 8


#: The reason name of each kind (a missing id is reported as ``missing:<id column>``).
KIND_NAMES: dict[ReasonKind, str] = {
    ReasonKind.MISSING_ID: "missing",
    ReasonKind.DUPLICATE: "duplicate_id",
    ReasonKind.NON_POSITIVE_MONETARY: "non_positive_monetary",
    ReasonKind.NON_NUMERIC: "non_numeric",
    ReasonKind.MISSING: "missing",
    ReasonKind.NON_FINITE: "non_finite",
    ReasonKind.OUT_OF_RANGE: "out_of_range",
    ReasonKind.INVALID_CATEGORY: "invalid_category",
    ReasonKind.OUTLIER: "outlier",
}


#: Integral floats up to this magnitude are exact integers, written without ".0" in category text.
EXACT_INTEGER_FLOAT = 2**53


def category_text(value: object) -> str | None:
    """The canonical text a category value is compared on (None for a missing value).

    Why: integer-coded categories (channel 1/2) arrive as ints, as text, or as floats once a
    column met a NULL; configs list them as ints or strings. Integers, and floats holding an
    integer, read as the integer's digits ("1"); other floats as Python writes them ("2.5");
    text as it is. So 1, "1" and 1.0 all match an allowed 1 or "1"."""
    if value is None or isinstance(value, bool):
        return None if value is None else str(value)
    if isinstance(value, int) or (hasattr(value, "dtype") and getattr(value.dtype, "kind", "") in "iu"):
        return str(int(value))  # type: ignore[call-overload]
    if isinstance(value, float | Decimal) or (hasattr(value, "dtype") and getattr(value.dtype, "kind", "") == "f"):
        number = float(value)  # type: ignore[arg-type]
        if math.isnan(number):
            return None
        if number.is_integer() and abs(number) < EXACT_INTEGER_FLOAT:
            return str(int(number))
        return repr(number)
    return str(value)


def allowed_texts(rule: CategoricalRule) -> list[str]:
    """The canonical texts of a rule's allowed values (:func:`category_text`)."""
    return [str(category_text(value)) for value in rule.allowed]


#: Kinds whose reason names no column.
COLUMNLESS_KINDS = frozenset({ReasonKind.DUPLICATE, ReasonKind.NON_POSITIVE_MONETARY})

#: The per-customer net amount a transactions source carries (``source.kind: transactions``).
MONETARY_COLUMN = "monetary"


def reason_label(kind: ReasonKind, column: str) -> str:
    """The reason a reject carries: ``<kind>:<column>``, except column-less kinds (``duplicate_id``)."""
    return KIND_NAMES[kind] if kind in COLUMNLESS_KINDS else f"{KIND_NAMES[kind]}:{column}"


def checks_monetary(config: PipelineConfig, available: Sequence[str]) -> bool:
    """Whether rows are checked for a net amount <= 0: customers built from orders whose returns
    cancel their purchases bought nothing, so they are rejected, not segmented."""
    return config.source.kind == "transactions" and MONETARY_COLUMN in available


def checked_columns(config: PipelineConfig, available: Sequence[str]) -> list[str]:
    """The columns the rules look at, in precedence order: id, features, present categorical columns."""
    id_col, features = config.source.id_column, list(config.features)
    categorical = [c for c in config.cleaning.categorical if c in available and c != id_col and c not in features]
    return [id_col, *features, *categorical]


def rule_code(kind: ReasonKind, rank: int, n_columns: int) -> int:
    """One integer per (kind, column) that sorts in precedence order: kind, then column rank."""
    return int(kind) * n_columns + rank


def code_kind(code: int, n_columns: int) -> ReasonKind:
    return ReasonKind(code // n_columns)


def reason_labels(columns: Sequence[str]) -> list[str]:
    """The reason of every :func:`rule_code` over ``columns`` (index = code)."""
    return [reason_label(kind, column) for kind in ReasonKind for column in columns]


def allowed_range(bounds: Range) -> str:
    """``">= 0 and <= 100"``: the range an out-of-range detail quotes."""
    return " and ".join(f"{op} {bound:g}" for op, bound in ((">=", bounds.min), ("<=", bounds.max)) if bound is not None)


def detail_parts(kind: ReasonKind, column: str, config: PipelineConfig) -> tuple[str, str]:
    """(prefix, suffix) around the offending value in a failure's detail; kinds whose detail shows
    no value (missing) have the whole text as prefix. Engines render the value themselves."""
    if kind == ReasonKind.MISSING_ID:
        return f"{column} is missing", ""
    if kind == ReasonKind.DUPLICATE:
        return f"duplicate {column} ", DUPLICATE_KEPT
    if kind == ReasonKind.NON_POSITIVE_MONETARY:
        return f"{MONETARY_COLUMN}=", " is not positive (net amount after returns)"
    if kind == ReasonKind.NON_NUMERIC:
        return f"{column}=", " is not numeric"
    if kind == ReasonKind.MISSING:
        required = "" if column in config.features else " (required)"  # categorical: only when required
        return f"{column} is missing{required}", ""
    if kind == ReasonKind.NON_FINITE:
        return f"{column}=", " is not finite"
    if kind == ReasonKind.OUT_OF_RANGE:
        return f"{column}=", f" is out of range (must be {allowed_range(config.cleaning.ranges[column])})"
    if kind == ReasonKind.INVALID_CATEGORY:
        return f"{column}='", f"' not in {config.cleaning.categorical[column].allowed}"
    raise ValueError(f"{kind!r} details are built by the outlier rule (outlier_detail)")


def outlier_detail(feature: str, value: str, method: str, flagged: str) -> str:
    """Detail of a row rejected as an outlier (``action: reject``): the first flagged feature's value."""
    return f"{feature}={value} outside the {method} IQR fences ({flagged})"


def outlier_detail_parts(method: str) -> tuple[str, str, str]:
    """The literal pieces of :func:`outlier_detail` between its values, for engines that concatenate."""
    return "=", f" outside the {method} IQR fences (", ")"


def check_structure(names: Sequence[str], config: PipelineConfig, table: str) -> None:
    """The id and every feature exist exactly once: otherwise nothing can be segmented."""
    needed = [config.source.id_column, *config.features]
    names = [str(c) for c in names]
    absent = [c for c in needed if c not in names]
    if absent:
        listed = ", ".join(repr(c) for c in absent)
        noun = "column" if len(absent) == 1 else "columns"
        raise DataQualityError(f"table {table!r} has no {noun} {listed}; available: {names}")
    twice = sorted({c for c in names if names.count(c) > 1 and c in needed})
    if twice:
        raise DataQualityError(f"table {table!r} has the column(s) {twice} more than once")


def no_rows_error(table: str) -> DataQualityError:
    return DataQualityError(f"table {table!r} has 0 rows")


def not_numeric_error(table: str, column: str, example: object, dtype: str | None = None) -> DataQualityError:
    """A feature none of whose present values parses as a number (or of a temporal type)."""
    typed = f" ({dtype})" if dtype is not None else ""
    return DataQualityError(f"table {table!r}: column {column!r} is not numeric: e.g. {example!r}{typed}")


def too_large_to_scale_error(table: str, column: str, worst: float) -> DataQualityError:
    """Finite but huge values overflow every scaler's variance: name the column and value instead."""
    return DataQualityError(
        f"table {table!r}: column {column!r} has values too large to scale (e.g. {worst:g}); "
        "give it a plausible range in cleaning.ranges"
    )


def all_rejected_error(n: int, by_reason: Mapping[str, int], table: str) -> DataQualityError:
    """Every row rejected: the counts per reason say why (in the order given)."""
    return DataQualityError(f"all {n} rows of {table!r} were rejected: {dict(by_reason)}")


def outlier_policy_error(table: str | None, exc: Exception) -> DataQualityError:
    """The outlier guard's ``fail`` (or an impossible widening), as a table-level data error."""
    where = f"table {table!r}: " if table else ""
    return DataQualityError(f"{where}{exc}")
