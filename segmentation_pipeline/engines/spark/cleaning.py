"""The cleaning rules of :mod:`segmentation_pipeline.core.cleaning`, expressed in Spark SQL.

Same contract as the local engine: every input row ends up in ``clean`` or in ``rejects`` with the
first applicable reason (precedence: missing id, duplicate id, non-numeric, missing, non-finite,
out of range, invalid category; within a kind, the id, then features in config order, then
categorical columns), every failing rule's detail joined with ``"; "``, and
``n_input == n_clean + n_rejected`` is checked before anything is returned. Reason strings are
identical (``missing:<col>``, ``non_numeric:<col>``, ``non_finite:<col>``, ``out_of_range:<col>``,
``invalid_category:<col>``, ``duplicate_id``, ``outlier:<col>``). Duplicate ids keep the latest
``updated_at`` (undated last), then the row read first.

Outliers follow :mod:`segmentation_pipeline.core.outliers`: Tukey fences from the quartiles
(log1p scale for ``transform.log1p`` features), the share guard (pooled share above
``max_share``, or pooled fences flagging most of a real provisional cluster) with the same
``on_excess`` policies, and segment-aware fences per cluster of a provisional MLlib KMeans.

Known differences from the local engine (documented, measured in the tests):

* quartiles and ``impute_median`` medians are exact (numpy's linear interpolation) up to
  EXACT_QUANTILE_MAX_ROWS rows; above that they are ``percentile_approx`` (rank error at most
  n / ``quantile_accuracy``), so a value within a few neighbours of a fence can be flagged
  differently from the local engine;
* the provisional clustering picks k on the same-sized driver sample with the same rule, but its
  centres come from MLlib KMeans (k-means||) fitted on a Spark sample;
* details render floats like Python's ``str(float)`` for integral values and for values in
  [1e-4, 1e16); outside that range the JVM's notation (``1.0E-5``) is used;
  non-numeric values are quoted like ``repr`` for strings without quotes or backslashes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.cluster import KMeans as SkKMeans
from sklearn.metrics import silhouette_score
from threadpoolctl import threadpool_limits

from segmentation_pipeline.config import PipelineConfig
from segmentation_pipeline.core.cleaning import (  # the single source of the rules' names and order
    _CATEGORY,
    _DUPLICATE,
    _KIND_NAMES,
    _MISSING,
    _MISSING_ID,
    _NON_FINITE,
    _NON_NUMERIC,
    _OUT_OF_RANGE,
    _OUTLIER,
    _THOUSANDS,
    DataQualityError,
)
from segmentation_pipeline.core.outliers import (
    base_report,
    ERASED_CLUSTER_SHARE,
    MIN_CLUSTER_SHARE,
    MIN_SEGMENT_ROWS,
    PROVISIONAL_FIT_ROWS,
    PROVISIONAL_K_SAMPLE,
    PROVISIONAL_MAX_K,
    PROVISIONAL_N_INIT,
    PROVISIONAL_SILHOUETTE_SAMPLE,
    WIDEN_FACTOR,
    WIDEN_MAX_STEPS,
    OutlierPolicyError,
    _describe_erasure,
    _describe_excess,
)

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import Column, DataFrame

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_QUANTILE_ACCURACY",
    "EXACT_QUANTILE_MAX_ROWS",
    "SparkCleaningResult",
    "clean_customers",
    "detect_outliers",
]

#: Up to this many rows, quartiles and medians are exact (Spark ``percentile``: numpy's linear
#: interpolation, so the fences equal the local engine's); above it ``percentile_approx``, whose
#: memory does not grow with the number of distinct values.
EXACT_QUANTILE_MAX_ROWS = 1_000_000
#: percentile_approx accuracy: rank error at most n / accuracy (10M rows: 100 rows).
DEFAULT_QUANTILE_ACCURACY = 100_000
#: MLlib iterations for the provisional clustering (it only needs the obvious groups).
PROVISIONAL_MAX_ITER = 100

_POS = "_seg_pos"
_RANK = "_seg_rank"
_REASON = "_seg_reason"
_DETAIL = "_seg_detail"
_LABEL = "_seg_plabel"
_ANY = "_seg_any_flag"
_FIRST = "_seg_first_flag"


def _v(feature: str) -> str:
    return f"_seg_v_{feature}"


def _z(feature: str) -> str:
    return f"_seg_z_{feature}"


def _flag(feature: str) -> str:
    return f"_seg_flag_{feature}"


@dataclass
class SparkCleaningResult:
    """``clean`` and ``rejects`` are persisted (MEMORY_AND_DISK) and already materialised."""

    clean: "DataFrame"  # id, features (double), categorical columns, is_outlier, outlier_reason, imputed
    rejects: "DataFrame"  # customer_id (string), reason, detail
    report: dict[str, Any]

    def unpersist(self) -> None:
        self.clean.unpersist()
        self.rejects.unpersist()


# --------------------------------------------------------------------------- SQL helpers


def _F():  # noqa: N802 - lazy import keeps this module importable for documentation without pyspark
    from pyspark.sql import functions

    return functions


def _py_float_str(value: "Column") -> "Column":
    """Python's ``str(float)`` for the values customer data holds (see module docstring)."""
    F = _F()
    integral = (value == F.floor(value)) & (F.abs(value) < F.lit(1e16))
    plain = (F.abs(value) >= F.lit(1e-4)) & (F.abs(value) < F.lit(1e16))
    as_decimal = value.try_cast("decimal(38,18)").cast("string")
    stripped = F.regexp_replace(F.regexp_replace(as_decimal, "0+$", ""), r"\.$", ".0")
    return (
        F.when(F.isnan(value), F.lit("nan"))
        .when(value == F.lit(float("inf")), F.lit("inf"))
        .when(value == F.lit(float("-inf")), F.lit("-inf"))
        .when(integral, F.concat(value.try_cast("decimal(17,0)").cast("string"), F.lit(".0")))
        .when(plain, stripped)
        .otherwise(value.cast("string"))
    )


def _id_text(column: "Column", data_type: Any) -> "Column":
    """Ids as the local engine writes them to rejects: text, "" when missing, no ".0" on integral floats."""
    F = _F()
    from pyspark.sql import types as T

    if isinstance(data_type, (T.FloatType, T.DoubleType)):
        whole = (column == F.floor(column)) & (F.abs(column) < F.lit(2.0**63))
        text = F.when(whole, column.try_cast("bigint").cast("string")).otherwise(_py_float_str(column))
    else:
        text = column.cast("string")
    return F.coalesce(text, F.lit(""))


def _repr_text(column: "Column") -> "Column":
    """``repr(str)`` for ordinary strings: single quotes, backslashes doubled."""
    F = _F()
    return F.concat(F.lit("'"), F.regexp_replace(column.cast("string"), r"\\", r"\\\\"), F.lit("'"))


def _is_numeric_type(data_type: Any) -> bool:
    from pyspark.sql import types as T

    return isinstance(data_type, (T.NumericType, T.BooleanType))


def _is_temporal_type(data_type: Any) -> bool:
    from pyspark.sql import types as T

    return isinstance(data_type, (T.DateType, T.TimestampType, T.TimestampNTZType, T.DayTimeIntervalType))


def _quantiles(column: "Column", probabilities: Any, exact: bool, accuracy: int) -> "Column":
    """Exact (linear interpolation, like numpy) or approximate percentiles of ``column``."""
    F = _F()
    if exact:
        return F.percentile(column, probabilities)
    return F.percentile_approx(column, probabilities, accuracy)


def _nearest(columns: list["Column"], centers: np.ndarray, ids: list[int]) -> "Column":
    """Id (from ``ids``) of the nearest of ``centers`` (squared Euclidean; first on ties)."""
    F = _F()
    distances = [
        sum(((col - F.lit(float(c))) * (col - F.lit(float(c))) for col, c in zip(columns, center)), F.lit(0.0))
        for center in centers
    ]
    values = F.array(*distances)
    position = F.array_position(values, F.array_min(values)).cast("int")
    return F.element_at(F.array(*[F.lit(int(i)) for i in ids]), position)


# --------------------------------------------------------------------------- structure


def _check_structure(raw: "DataFrame", config: PipelineConfig, table: str) -> None:
    needed = [config.source.id_column, *config.features]
    names = list(raw.columns)
    absent = [c for c in needed if c not in names]
    if absent:
        listed = ", ".join(repr(c) for c in absent)
        noun = "column" if len(absent) == 1 else "columns"
        raise DataQualityError(f"table {table!r} has no {noun} {listed}; available: {names}")
    twice = sorted({c for c in names if names.count(c) > 1 and c in needed})
    if twice:
        raise DataQualityError(f"table {table!r} has the column(s) {twice} more than once")


def _raise_temporal(raw: "DataFrame", column: str, table: str, data_type: Any) -> None:
    example = raw.select(column).where(_F().col(column).isNotNull()).first()
    shown = example[0] if example is not None else None
    raise DataQualityError(
        f"table {table!r}: column {column!r} is not numeric: e.g. {shown!r} ({data_type.simpleString()})"
    )


# --------------------------------------------------------------------------- cleaning


def clean_customers(
    raw: "DataFrame",
    config: PipelineConfig,
    table: str | None = None,
    *,
    allow_all_rejected: bool = False,
    quantile_accuracy: int = DEFAULT_QUANTILE_ACCURACY,
    exact_quantiles: bool | None = None,
) -> SparkCleaningResult:
    """Validate, coerce, impute and outlier-flag ``raw``; account for every row (module docstring).

    ``exact_quantiles``: None (default) means exact up to EXACT_QUANTILE_MAX_ROWS input rows and
    ``percentile_approx(accuracy=quantile_accuracy)`` above.

    Raises DataQualityError exactly where the local engine does: a missing column, no rows, a
    feature with no numeric value at all, every row rejected (unless ``allow_all_rejected``),
    outlier policy ``fail``.
    """
    from pyspark import StorageLevel
    from pyspark.sql import Window

    F = _F()
    table = table or config.source.table
    _check_structure(raw, config, table)
    id_col, features = config.source.id_column, list(config.features)
    types = {field.name: field.dataType for field in raw.schema.fields}
    categorical = [c for c in config.cleaning.categorical if c in types and c != id_col and c not in features]
    columns = [id_col, *features, *categorical]
    labels = [  # the reason of every code = kind * len(columns) + column rank
        name if kind == _DUPLICATE else f"{name}:{col}" for kind, name in enumerate(_KIND_NAMES) for col in columns
    ]
    updated = config.source.updated_at_column
    updated = updated if updated and updated in types and updated not in columns else None

    for feature in features:
        if _is_temporal_type(types[feature]):
            _raise_temporal(raw, feature, table, types[feature])

    # -- one pass over the source: typed values, parse flags, duplicate rank; persisted
    selected = [F.col(c) for c in columns] + ([F.col(updated)] if updated else [])
    base = raw.select(*selected).withColumn(_POS, F.monotonically_increasing_id())
    typed_columns: list[Column] = [F.col(c) for c in base.columns]
    for feature in features:
        source = F.col(feature)
        if _is_numeric_type(types[feature]):
            value = source.cast("double")
            non_numeric = F.lit(False)
            missing = source.isNull() | F.isnan(value)
            present = source.isNotNull()
        else:
            text = source.cast("string")
            trimmed = F.regexp_replace(text, r"^\s+|\s+$", "")
            blank = trimmed == F.lit("")
            first = text.try_cast("double")
            second = F.regexp_replace(trimmed, _THOUSANDS, "").try_cast("double")
            value = F.coalesce(first, second)
            # pandas: "nan" parses to NaN, which the second pass counts as not numeric
            non_numeric = text.isNotNull() & ~blank & (value.isNull() | F.isnan(value))
            missing = text.isNull() | blank
            present = text.isNotNull() & ~blank
        typed_columns += [
            F.when(missing | non_numeric, F.lit(None).cast("double")).otherwise(value).alias(_v(feature)),
            F.coalesce(non_numeric, F.lit(False)).alias(f"_seg_nn_{feature}"),
            F.coalesce(missing, F.lit(False)).alias(f"_seg_miss_{feature}"),
            F.coalesce(present, F.lit(False)).alias(f"_seg_present_{feature}"),
        ]
    order: list[Column] = []
    if updated:
        stamp = F.col(updated)
        if not (_is_temporal_type(types[updated]) or _is_numeric_type(types[updated])):
            stamp = F.try_to_timestamp(stamp.cast("string"))
        order.append(stamp.desc_nulls_last())
    order.append(F.col(_POS).asc())
    typed_columns.append(F.row_number().over(Window.partitionBy(F.col(id_col)).orderBy(*order)).alias(_RANK))
    typed = base.select(*typed_columns).persist(StorageLevel.MEMORY_AND_DISK)

    try:
        return _classify(
            typed, config, table, types, features, categorical, columns, labels,
            allow_all_rejected=allow_all_rejected, quantile_accuracy=quantile_accuracy,
            exact_quantiles=exact_quantiles,
        )
    finally:
        typed.unpersist()


def _rules(
    config: PipelineConfig, types: dict[str, Any], features: list[str], categorical: list[str], columns: list[str]
) -> list[tuple[int, "Column", "Column"]]:
    """(code, condition, detail) of every rule, sorted by code = kind * n_columns + column rank."""
    F = _F()
    id_col = config.source.id_column
    n_columns = len(columns)
    ident = F.col(id_col)
    rules: list[tuple[int, Column, Column]] = [
        (_MISSING_ID * n_columns, ident.isNull(), F.lit(f"{id_col} is missing")),
        (
            _DUPLICATE * n_columns,
            ident.isNotNull() & (F.col(_RANK) > 1),
            F.concat(
                F.lit(f"duplicate {id_col} "),
                _id_text(ident, types[id_col]),
                F.lit(" (the first, or latest updated, row with this id is kept)"),
            ),
        ),
    ]
    for rank, feature in enumerate(features, start=1):
        value = F.col(_v(feature))
        non_numeric = F.col(f"_seg_nn_{feature}")
        rules.append((
            _NON_NUMERIC * n_columns + rank,
            non_numeric,
            F.concat(F.lit(f"{feature}="), _repr_text(F.col(feature)), F.lit(" is not numeric")),
        ))
        rules.append((_MISSING * n_columns + rank, F.col(f"_seg_miss_{feature}") & ~non_numeric,
                      F.lit(f"{feature} is missing")))
        infinite = value.isNotNull() & ((value == F.lit(float("inf"))) | (value == F.lit(float("-inf"))))
        rules.append((
            _NON_FINITE * n_columns + rank,
            infinite,
            F.concat(F.lit(f"{feature}="), F.when(value > 0, F.lit("inf")).otherwise(F.lit("-inf")),
                     F.lit(" is not finite")),
        ))
        bounds = config.cleaning.ranges.get(feature)
        if bounds is not None and (bounds.min is not None or bounds.max is not None):
            outside = F.lit(False)
            if bounds.min is not None:
                outside = outside | (value < F.lit(float(bounds.min)))
            if bounds.max is not None:
                outside = outside | (value > F.lit(float(bounds.max)))
            allowed = " and ".join(
                f"{op} {bound:g}" for op, bound in ((">=", bounds.min), ("<=", bounds.max)) if bound is not None
            )
            rules.append((
                _OUT_OF_RANGE * n_columns + rank,
                value.isNotNull() & outside,
                F.concat(F.lit(f"{feature}="), _py_float_str(value), F.lit(f" is out of range (must be {allowed})")),
            ))
    for rank, name in enumerate(categorical, start=1 + len(features)):
        rule = config.cleaning.categorical[name]
        column = F.col(name)
        if rule.required:
            rules.append((_MISSING * n_columns + rank, column.isNull(), F.lit(f"{name} is missing (required)")))
        rules.append((
            _CATEGORY * n_columns + rank,
            column.isNotNull() & ~column.cast("string").isin(list(rule.allowed)),
            F.concat(F.lit(f"{name}='"), column.cast("string"), F.lit(f"' not in {rule.allowed}")),
        ))
    return sorted(rules, key=lambda item: item[0])


def _classify(
    typed: "DataFrame",
    config: PipelineConfig,
    table: str,
    types: dict[str, Any],
    features: list[str],
    categorical: list[str],
    columns: list[str],
    labels: list[str],
    *,
    allow_all_rejected: bool,
    quantile_accuracy: int,
    exact_quantiles: bool | None,
) -> SparkCleaningResult:
    from pyspark import StorageLevel

    F = _F()
    id_col = config.source.id_column
    n_columns = len(columns)
    rules = _rules(config, types, features, categorical, columns)
    imputed_flags: dict[str, Column] = {}
    values = {f: F.col(_v(f)) for f in features}
    if exact_quantiles is None:
        exact_quantiles = typed.count() <= EXACT_QUANTILE_MAX_ROWS  # first job: reads and caches the source
    if config.cleaning.missing == "impute_median":
        rules, values, imputed_flags = _impute(typed, rules, features, n_columns, exact_quantiles, quantile_accuracy)

    def code_of(condition_code: int) -> str:
        return labels[condition_code]

    reason = F.lit(None).cast("string")
    for code, condition, _ in reversed(rules):  # CASE WHEN in precedence order, built inside out
        reason = F.when(F.coalesce(condition, F.lit(False)), F.lit(code_of(code))).otherwise(reason)
    detail = F.concat_ws("; ", *[F.when(F.coalesce(c, F.lit(False)), d) for _, c, d in rules])
    imputed = (
        F.concat_ws(",", *[F.when(flag, F.lit(f)) for f, flag in imputed_flags.items()])
        if imputed_flags else F.lit("")
    )
    classified = typed.select(
        F.col(id_col),
        *[values[f].alias(_v(f)) for f in features],
        *[F.col(c) for c in categorical],
        *[F.col(f) for f in features],  # raw text, for the reject-on-outlier detail
        reason.alias(_REASON),
        detail.alias(_DETAIL),
        imputed.alias("imputed"),
        *[F.col(f"_seg_{kind}_{f}") for f in features for kind in ("nn", "present")],
        *[F.coalesce(flag, F.lit(False)).cast("int").alias(f"_seg_imp_{f}") for f, flag in imputed_flags.items()],
    )

    # -- one job: rows per reason, plus what the "not numeric at all" and imputation reports need
    stats_aggs = [F.count(F.lit(1)).alias("n")]
    for f in features:
        stats_aggs += [F.sum(F.col(f"_seg_nn_{f}").cast("int")).alias(f"nn_{f}"),
                       F.sum(F.col(f"_seg_present_{f}").cast("int")).alias(f"present_{f}")]
    stats_aggs += [F.sum(F.col(f"_seg_imp_{f}")).alias(f"imp_{f}") for f in imputed_flags]
    log_scale = set(config.transform.log1p)
    for f in features:  # per reason group; the valid rows' group feeds the "too large to scale" check
        if f not in log_scale:
            value = F.col(_v(f))  # classified's column: imputed values included, as locally
            stats_aggs += [F.var_pop(value).alias(f"var_{f}"), F.max_by(value, F.abs(value)).alias(f"worst_{f}")]
    stats_aggs.append(F.sum((F.col("imputed") != F.lit("")).cast("int")).alias("imp_any"))
    stats = [row.asDict() for row in classified.groupBy(_REASON).agg(*stats_aggs).collect()]
    n = int(sum(r["n"] for r in stats))
    if n == 0:
        raise DataQualityError(f"table {table!r} has 0 rows")
    for f in features:
        non_numeric = sum(int(r[f"nn_{f}"] or 0) for r in stats)
        present = sum(int(r[f"present_{f}"] or 0) for r in stats)
        if present and non_numeric == present:
            example = classified.where(F.col(f"_seg_nn_{f}")).select(F.col(f).cast("string")).first()
            shown = example[0].strip() if example is not None and example[0] is not None else ""
            raise DataQualityError(f"table {table!r}: column {f!r} is not numeric: e.g. {shown!r}")
    by_reason = {str(r[_REASON]): int(r["n"]) for r in stats if r[_REASON] is not None}
    n_valid = n - sum(by_reason.values())
    if n_valid == 0 and not allow_all_rejected:
        _raise_all_rejected(n, by_reason, table)
    valid_stats = next((r for r in stats if r[_REASON] is None), None)
    if valid_stats is not None:
        _check_scalable(valid_stats, [f for f in features if f not in log_scale], table)
    imputed_by_feature = {f: int(sum(int(r.get(f"imp_{f}") or 0) for r in stats)) for f in features}
    n_imputed = int(sum(int(r["imp_any"] or 0) for r in stats))

    valid = classified.where(F.col(_REASON).isNull())
    flagged, outlier_report = detect_outliers(
        valid, config, n=n_valid, value_column=_v, quantile_accuracy=quantile_accuracy,
        exact_quantiles=exact_quantiles, table=table,
    )
    n_outliers = int(outlier_report.get("n_outliers", 0))
    reject_outliers = config.cleaning.outliers.action == "reject" and n_outliers > 0
    kept = flagged.where(~F.col("is_outlier")) if reject_outliers else flagged
    clean = kept.select(
        F.col(id_col),
        *[F.col(_v(f)).alias(f) for f in features],
        *[F.col(c) for c in categorical],
        F.col("is_outlier"),
        F.col("outlier_reason"),
        F.col("imputed"),
    ).persist(StorageLevel.MEMORY_AND_DISK)
    rejects = classified.where(F.col(_REASON).isNotNull()).select(
        _id_text(F.col(id_col), types[id_col]).alias("customer_id"),
        F.col(_REASON).alias("reason"),
        F.col(_DETAIL).alias("detail"),
    )
    outlier_by_reason: dict[str, int] = {}
    if reject_outliers:
        method = outlier_report["method_used"]
        first_value = F.lit(None).cast("double")
        for f in reversed(config.cleaning.outliers.features or features):
            first_value = F.when(F.col(_FIRST) == F.lit(f), F.col(_v(f))).otherwise(first_value)
        outliers = flagged.where(F.col("is_outlier")).select(
            _id_text(F.col(id_col), types[id_col]).alias("customer_id"),
            F.concat(F.lit("outlier:"), F.col(_FIRST)).alias("reason"),
            F.concat(
                F.col(_FIRST), F.lit("="), _py_float_str(first_value),
                F.lit(f" outside the {method} IQR fences ("), F.col("outlier_reason"), F.lit(")"),
            ).alias("detail"),
        )
        rejects = rejects.unionByName(outliers)
        outlier_by_reason = {
            str(r["reason"]): int(r["count"]) for r in outliers.groupBy("reason").count().collect()
        }
        # the local engine labels outlier rejects by the first flagged feature's column rank
        assert all(reason in labels[_OUTLIER * n_columns:] for reason in outlier_by_reason), outlier_by_reason
    rejects = rejects.persist(StorageLevel.MEMORY_AND_DISK)
    n_clean, n_rejected = clean.count(), rejects.count()  # materialise both before the source cache goes
    if n_clean + n_rejected != n:
        clean.unpersist()
        rejects.unpersist()
        raise RuntimeError(f"row accounting broken: {n_clean} clean + {n_rejected} rejected != {n} input rows")
    if n_clean == 0 and not allow_all_rejected:
        clean.unpersist()
        rejects.unpersist()
        _raise_all_rejected(n, {**by_reason, **outlier_by_reason}, table)
    rejected_by_reason = dict(
        sorted({**by_reason, **outlier_by_reason}.items(), key=lambda kv: (-kv[1], kv[0]))
    )
    report: dict[str, Any] = {
        "table": table,
        "engine": "spark",
        "n_input": n,
        "n_clean": n_clean,
        "n_outliers": n_outliers,
        "n_rejected": n_rejected,
        "rejected_by_reason": rejected_by_reason,
        "n_imputed": n_imputed,
        "imputed_by_feature": imputed_by_feature,
        "outliers": outlier_report,
        # rows the model is fitted on (non-outliers among the clean rows): train(n_fit=...) skips a count
        "n_fit": n_clean - (0 if reject_outliers else n_outliers),
    }
    return SparkCleaningResult(clean=clean, rejects=rejects, report=report)


def _impute(
    typed: "DataFrame",
    rules: list[tuple[int, "Column", "Column"]],
    features: list[str],
    n_columns: int,
    exact: bool,
    quantile_accuracy: int,
) -> tuple[list[tuple[int, "Column", "Column"]], dict[str, "Column"], dict[str, "Column"]]:
    """``missing: impute_median``: medians of the rows no other rule rejects fill missing features.

    As in the local engine, a missing feature then never rejects a row unless the feature has no
    valid value at all; rows rejected for another reason are not imputed (and their detail no
    longer mentions the missing value).
    """
    F = _F()
    fillable = {_MISSING * n_columns + rank: f for rank, f in enumerate(features, start=1)}
    hard = F.lit(False)
    for code, condition, _ in rules:
        if code not in fillable:
            hard = hard | F.coalesce(condition, F.lit(False))
    row = typed.where(~hard).agg(
        *[_quantiles(F.col(_v(f)), 0.5, exact, quantile_accuracy).alias(f) for f in features]
    ).first()
    medians = {f: row[f] for f in features if row is not None and row[f] is not None}
    kept_rules = [r for r in rules if not (r[0] in fillable and fillable[r[0]] in medians)]
    # rows failing an unfillable missing feature are hard too
    for code, condition, _ in rules:
        if code in fillable and fillable[code] not in medians:
            hard = hard | F.coalesce(condition, F.lit(False))
    values: dict[str, Column] = {}
    flags: dict[str, Column] = {}
    for f in features:
        column = F.col(_v(f))
        if f in medians:
            fill = F.col(f"_seg_miss_{f}") & ~F.col(f"_seg_nn_{f}") & ~hard
            values[f] = F.when(fill, F.lit(float(medians[f]))).otherwise(column)
            flags[f] = fill
        else:
            values[f] = column
    return kept_rules, values, flags


def _check_scalable(stats: dict[str, Any], features: list[str], table: str) -> None:
    """As the local engine: finite but huge values (1e300 without a range) overflow every scaler's
    variance; name the column and value instead of failing deep in the model."""
    for name in features:
        variance = stats.get(f"var_{name}")
        if variance is not None and not np.isfinite(variance):
            raise DataQualityError(
                f"table {table!r}: column {name!r} has values too large to scale (e.g. {stats[f'worst_{name}']:g}); "
                "give it a plausible range in cleaning.ranges"
            )


def _raise_all_rejected(n: int, by_reason: dict[str, int], table: str) -> None:
    ordered = dict(sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0])))
    raise DataQualityError(f"all {n} rows of {table!r} were rejected: {ordered}")


# --------------------------------------------------------------------------- outliers


def detect_outliers(
    frame: "DataFrame",
    config: PipelineConfig,
    *,
    n: int,
    value_column: Any = str,
    quantile_accuracy: int = DEFAULT_QUANTILE_ACCURACY,
    exact_quantiles: bool | None = None,
    table: str | None = None,
) -> tuple["DataFrame", dict[str, Any]]:
    """Add ``is_outlier`` and ``outlier_reason`` (and the first flagged feature) to ``frame``.

    ``frame`` holds ``n`` cleaned rows whose feature values live in ``value_column(feature)``
    (default: the feature's own column). The report has the local engine's keys.
    """
    F = _F()
    ocfg = config.cleaning.outliers
    features = list(config.features)
    columns = list(ocfg.features or features)
    exact = n <= EXACT_QUANTILE_MAX_ROWS if exact_quantiles is None else exact_quantiles
    log1p = set(config.transform.log1p)
    report: dict[str, Any] = {
        **base_report(config, columns),
        "quantiles": "exact" if exact else f"percentile_approx(accuracy={quantile_accuracy})",
    }

    def finish(out: "DataFrame", flags: dict[str, "Column"]) -> "DataFrame":
        any_flag = F.lit(False)
        for c in columns:
            any_flag = any_flag | flags[c]
        first = F.lit(None).cast("string")
        for c in reversed(columns):
            first = F.when(flags[c], F.lit(c)).otherwise(first)
        reason = F.when(
            any_flag, F.concat(F.lit("outlier:"), F.concat_ws(",", *[F.when(flags[c], F.lit(c)) for c in columns]))
        ).otherwise(F.lit(""))
        return out.withColumns({"is_outlier": any_flag, "outlier_reason": reason, _FIRST: first})

    if not ocfg.enabled or n == 0:
        if ocfg.enabled:
            report["method_used"] = "pooled"
        return finish(frame, {c: F.lit(False) for c in columns}), report

    z = frame.withColumns({
        _z(f): (F.log1p(F.col(value_column(f))) if f in log1p else F.col(value_column(f)).cast("double"))
        for f in features
    })
    zc = {f: F.col(_z(f)) for f in features}

    # -- one job: quartiles of the fence features, finiteness, mean/std for the provisional scaler
    aggs = []
    for f in features:
        bad = zc[f].isNull() | F.isnan(zc[f]) | (F.abs(zc[f]) == F.lit(float("inf")))
        aggs += [F.sum(bad.cast("int")).alias(f"bad_{f}"), F.avg(zc[f]).alias(f"mean_{f}"),
                 F.stddev_pop(zc[f]).alias(f"std_{f}")]
    aggs += [_quantiles(zc[c], [0.25, 0.75], exact, quantile_accuracy).alias(f"q_{c}") for c in columns]
    stats = z.agg(*aggs).first().asDict()
    for f in features:
        if stats[f"bad_{f}"]:
            scale = "log1p scale" if f in log1p else "raw scale"
            raise ValueError(
                f"column {f!r} has {int(stats[f'bad_{f}'])} value(s) that are not finite on the {scale}; "
                "clean the data first"
            )
    q1 = np.array([stats[f"q_{c}"][0] for c in columns], dtype=np.float64)
    q3 = np.array([stats[f"q_{c}"][1] for c in columns], dtype=np.float64)
    means = np.array([stats[f"mean_{f}"] for f in features], dtype=np.float64)
    stds = np.array([stats[f"std_{f}"] or 0.0 for f in features], dtype=np.float64)

    def back(values: np.ndarray) -> np.ndarray:
        out = np.array(values, dtype=np.float64, copy=True)
        for j, c in enumerate(columns):
            if c in log1p:
                out[..., j] = np.expm1(out[..., j])
        return out

    def fences_report(low: np.ndarray, high: np.ndarray) -> dict[str, list[float]]:
        lo, hi = back(low), back(high)
        return {c: [float(lo[j]), float(hi[j])] for j, c in enumerate(columns)}

    def pooled(multiplier: float) -> tuple[dict[str, "Column"], np.ndarray, np.ndarray]:
        low, high = q1 - multiplier * (q3 - q1), q3 + multiplier * (q3 - q1)
        flags = {
            c: (zc[c] < F.lit(float(low[j]))) | (zc[c] > F.lit(float(high[j]))) for j, c in enumerate(columns)
        }
        return flags, low, high

    last_counts: dict[str, int] = {}  # counts of the flags shares() saw last

    def shares(flags: dict[str, "Column"]) -> tuple[float, dict[str, float], int]:
        any_flag = F.lit(False)
        for c in columns:
            any_flag = any_flag | flags[c]
        row = z.agg(
            F.sum(any_flag.cast("int")).alias("any"), *[F.sum(flags[c].cast("int")).alias(c) for c in columns]
        ).first()
        flagged = int(row["any"] or 0)
        last_counts.clear()
        last_counts.update({"any": flagged, **{c: int(row[c] or 0) for c in columns}})
        return flagged / n, {c: int(row[c] or 0) / n for c in columns}, flagged

    multiplier = ocfg.iqr_multiplier
    flags, low, high = pooled(multiplier)
    pooled_share, by_feature, n_flagged = shares(flags)
    report.update(pooled_share=pooled_share, share_by_feature=by_feature, fences=fences_report(low, high))

    method = "pooled"
    provisional: tuple["Column", dict[str, Any]] | None = None
    message: str | None = None
    erased: dict[int, tuple[float, int]] = {}

    def erased_clusters(current: dict[str, "Column"], label: "Column") -> dict[int, tuple[float, int]]:
        any_flag = F.lit(False)
        for c in columns:
            any_flag = any_flag | current[c]
        rows = z.groupBy(label.alias(_LABEL)).agg(
            F.count(F.lit(1)).alias("size"), F.sum(any_flag.cast("int")).alias("flagged")
        ).collect()
        floor = max(MIN_CLUSTER_SHARE * n, MIN_SEGMENT_ROWS)
        return {
            int(r[_LABEL]): (float(r["flagged"] / r["size"]), int(r["size"]))
            for r in rows
            if r["size"] >= floor and r["flagged"] > ERASED_CLUSTER_SHARE * r["size"]
        }

    if ocfg.method == "segment_aware":
        method = "segment_aware"
    elif pooled_share > ocfg.max_share:
        message = _describe_excess(pooled_share, ocfg.max_share, by_feature)
    elif n_flagged:
        provisional = _provisional_labels(z, config, n, means, stds)
        erased = erased_clusters(flags, provisional[0])
        if erased:
            message = _describe_erasure(erased, n)
    if message is not None:
        report["guard_tripped"] = True
        report["erased_clusters"] = {c: {"flagged_share": v[0], "size": v[1]} for c, v in erased.items()}
        if ocfg.on_excess == "fail":
            where = f"table {table!r}: " if table else ""
            raise DataQualityError(where + str(OutlierPolicyError(message + "; outliers.on_excess is 'fail'")))
        if ocfg.on_excess == "segment_aware":
            method = "segment_aware"
            message += "; using segment-aware fences instead"
        else:  # widen until under the cap and no provisional cluster is erased
            steps = 0
            while True:
                share_now, _, _ = shares(flags)
                bad = share_now > ocfg.max_share or bool(provisional and erased_clusters(flags, provisional[0]))
                if not bad:
                    break
                if steps == WIDEN_MAX_STEPS:
                    where = f"table {table!r}: " if table else ""
                    raise DataQualityError(
                        f"{where}{message}; widening the IQR multiplier to {multiplier:g} still excludes "
                        f"{share_now:.1%} (a feature with IQR 0 cannot be widened: IQR by feature "
                        f"{dict(zip(columns, (q3 - q1).round(6).tolist()))})"
                    )
                multiplier *= WIDEN_FACTOR
                flags, low, high = pooled(multiplier)
                steps += 1
            method = "widened"
            report["fences"] = fences_report(low, high)
            message += f"; widened the IQR multiplier to {multiplier:g}"
        report["warning"] = message
        log.warning("%s", message)

    report["multiplier_used"] = multiplier
    label_column: Column | None = None
    if method == "segment_aware":
        if provisional is None:
            provisional = _provisional_labels(z, config, n, means, stds)
        label_column, info = provisional
        k = info["provisional_k"]
        z = z.withColumn(_LABEL, label_column)
        rows = z.groupBy(_LABEL).agg(
            *[_quantiles(zc[c], [0.25, 0.75], exact, quantile_accuracy).alias(f"q_{c}") for c in columns]
        ).collect()
        low_k = np.full((k, len(columns)), np.nan)
        high_k = np.full((k, len(columns)), np.nan)
        for r in rows:
            c_id = int(r[_LABEL])
            for j, c in enumerate(columns):
                lo_q, hi_q = r[f"q_{c}"]
                low_k[c_id, j] = lo_q - multiplier * (hi_q - lo_q)
                high_k[c_id, j] = hi_q + multiplier * (hi_q - lo_q)
        label_index = F.col(_LABEL) + F.lit(1)
        flags = {}
        for j, c in enumerate(columns):
            lows = F.array(*[F.lit(None if np.isnan(v) else float(v)).cast("double") for v in low_k[:, j]])
            highs = F.array(*[F.lit(None if np.isnan(v) else float(v)).cast("double") for v in high_k[:, j]])
            flags[c] = F.coalesce(
                (zc[c] < F.element_at(lows, label_index)) | (zc[c] > F.element_at(highs, label_index)), F.lit(False)
            )
        report.update(info)
        report["_cluster_low_high"] = (low_k, high_k)

    out = finish(z, flags)
    if label_column is None:  # pooled or widened: shares() already counted exactly these flags
        rows = [{"size": n, "outliers": last_counts["any"], **{f"f_{c}": last_counts[c] for c in columns}}]
    else:  # -- one job: final counts per provisional cluster
        rows = out.groupBy(F.col(_LABEL)).agg(
            F.count(F.lit(1)).alias("size"),
            F.sum(F.col("is_outlier").cast("int")).alias("outliers"),
            *[F.sum(flags[c].cast("int")).alias(f"f_{c}") for c in columns],
        ).collect()
    n_outliers = int(sum(int(r["outliers"] or 0) for r in rows))
    if label_column is not None:
        low_k, high_k = report.pop("_cluster_low_high")
        k = report["provisional_k"]
        sizes = np.zeros(k, dtype=np.int64)
        outlier_counts = np.zeros(k, dtype=np.int64)
        for r in rows:
            sizes[int(r[_LABEL])] = int(r["size"])
            outlier_counts[int(r[_LABEL])] = int(r["outliers"] or 0)
        lo_k, hi_k = back(low_k), back(high_k)
        report.update(
            cluster_sizes={c: int(v) for c, v in enumerate(sizes)},
            outliers_by_cluster={c: int(v) for c, v in enumerate(outlier_counts)},
            cluster_fences={
                c: {col: [float(lo_k[c, j]), float(hi_k[c, j])] for j, col in enumerate(columns)}
                for c in range(k)
                if sizes[c]
            },
        )
    final_share = n_outliers / n
    if final_share > ocfg.max_share and method == "segment_aware":
        extra = f"segment-aware fences still exclude {final_share:.1%} of rows (cap {ocfg.max_share:.1%})"
        report["warning"] = f"{report['warning']}; {extra}" if report["warning"] else extra
        log.warning("%s", extra)
    report.update(
        method_used=method,
        final_share=final_share,
        n_outliers=n_outliers,
        outliers_by_feature={c: int(sum(int(r[f"f_{c}"] or 0) for r in rows)) for c in columns},
    )
    drop = [_z(f) for f in features] + ([_LABEL] if label_column is not None else [])
    return out.drop(*drop), report


def _provisional_labels(
    z: "DataFrame", config: PipelineConfig, n: int, means: np.ndarray, stds: np.ndarray
) -> tuple["Column", dict[str, Any]]:
    """Provisional clusters for segment-aware fences: a Column of cluster ids, and the facts.

    As in the local engine: standardise (population std), choose k by silhouette on a driver
    sample of PROVISIONAL_K_SAMPLE rows (k fixed in the config wins), fit k centres -- here MLlib
    KMeans (k-means||) on a Spark sample of about PROVISIONAL_FIT_ROWS rows -- and dissolve
    clusters holding under MIN_CLUSTER_SHARE of the fitted rows into their nearest neighbours.
    """
    from pyspark import StorageLevel
    from pyspark.ml.clustering import KMeans
    from pyspark.ml.feature import VectorAssembler

    F = _F()
    features = list(config.features)
    seed = config.model.random_state
    safe = np.where(stds > 0, stds, 1.0)
    scaled = [(F.col(_z(f)) - F.lit(float(means[j]))) / F.lit(float(safe[j])) for j, f in enumerate(features)]
    names = [f"_seg_x_{f}" for f in features]
    x = z.select(*[col.alias(name) for col, name in zip(scaled, names)])
    silhouettes: dict[int, float] = {}
    if config.k is not None:
        k = config.k
    else:
        fraction = min(1.0, 1.2 * PROVISIONAL_K_SAMPLE / max(n, 1))
        small = np.asarray(x.sample(False, fraction, seed).collect(), dtype=np.float64) if fraction < 1 else \
            np.asarray(x.collect(), dtype=np.float64)
        if len(small) > PROVISIONAL_K_SAMPLE:
            rng = np.random.default_rng(seed)
            small = small[np.sort(rng.choice(len(small), PROVISIONAL_K_SAMPLE, replace=False))]
        with threadpool_limits(1):
            ceiling = min(PROVISIONAL_MAX_K, small.shape[0] // MIN_SEGMENT_ROWS)
            for cand in config.k_candidates:
                if not 2 <= cand <= ceiling:
                    continue
                labels = SkKMeans(cand, n_init=PROVISIONAL_N_INIT, random_state=seed).fit_predict(small)
                if len(np.unique(labels)) < 2:
                    continue
                size = min(PROVISIONAL_SILHOUETTE_SAMPLE, len(small))
                silhouettes[cand] = float(silhouette_score(small, labels, sample_size=size, random_state=seed))
        k = max(silhouettes, key=lambda c: silhouettes[c]) if silhouettes else 1
    k = max(1, min(k, n))
    facts: dict[str, Any] = {"provisional_k": k, "provisional_silhouette": silhouettes, "provisional_dissolved": []}
    if k == 1:
        return F.lit(0), facts
    fraction = min(1.0, PROVISIONAL_FIT_ROWS / max(n, 1))
    fit_rows = x.sample(False, fraction, seed) if fraction < 1 else x
    # ~100k rows of a few doubles: one cached partition; more would only add scheduling per iteration
    vectors = VectorAssembler(inputCols=names, outputCol="_seg_xv").transform(fit_rows).select("_seg_xv")
    vectors = vectors.coalesce(1).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        model = KMeans(
            k=k, seed=seed, initMode="k-means||", maxIter=PROVISIONAL_MAX_ITER, featuresCol="_seg_xv"
        ).fit(vectors)
        centers = np.asarray(model.clusterCenters(), dtype=np.float64)
        sizes = np.asarray(model.summary.clusterSizes, dtype=np.int64)  # lazy: a job over the cached sample
    finally:
        vectors.unpersist()
    if len(centers) < k:  # MLlib returns fewer centres when the sample has fewer distinct points
        k = len(centers)
        facts["provisional_k"] = k
    dissolved = np.flatnonzero(sizes[:k] < MIN_CLUSTER_SHARE * sizes.sum())
    keep = [c for c in range(k) if c not in set(dissolved.tolist())]
    if not keep:  # nothing is a real cluster: keep them all, as the local engine does
        keep = list(range(k))
    facts["provisional_dissolved"] = dissolved.tolist()
    label = _nearest(scaled, centers[keep], keep)
    return label, facts
