"""The cleaning rules of :mod:`segmentation_pipeline.core.cleaning_rules`, expressed in Spark SQL.

Same contract as the local engine: every input row ends up in ``clean`` or in ``rejects`` with the
first applicable reason (``ReasonKind`` precedence, then column rank), every failing rule's detail
joined with ``"; "``, and ``n_input == n_clean + n_rejected`` is checked before anything is
returned. Reasons and details come from the same core definitions. Duplicate ids keep the latest
``updated_at`` (undated last), then the row read first.

Outliers are decided by :mod:`segmentation_pipeline.core.outlier_guard`; this module only supplies
its numbers (:class:`SparkOutlierBackend`: quartiles, counts, a provisional MLlib KMeans) and turns
the final fences into flag columns.

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

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from segmentation_pipeline.config import PipelineConfig
from segmentation_pipeline.core.cleaning_rules import (
    EXACT_INTEGER_FLOAT,
    MONETARY_COLUMN,
    THOUSANDS_SEPARATOR,
    DataQualityError,
    ReasonKind,
    all_rejected_error,
    allowed_texts,
    check_structure,
    checked_columns,
    checks_monetary,
    detail_parts,
    no_rows_error,
    not_numeric_error,
    outlier_detail_parts,
    outlier_policy_error,
    reason_labels,
    rule_code,
    too_large_to_scale_error,
)
from segmentation_pipeline.core.outlier_guard import (
    PROVISIONAL_FIT_ROWS,
    PROVISIONAL_K_SAMPLE,
    ClusterCounts,
    Fences,
    OutlierPolicyError,
    OutsideCounts,
    choose_provisional_k,
    decide_outliers,
    dissolved_clusters,
    idle_report,
    outlier_features,
    provisional_facts,
)
from segmentation_pipeline.core.skew import log1p_choice, log1p_facts, with_log1p

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import Column, DataFrame

__all__ = [
    "DEFAULT_QUANTILE_ACCURACY",
    "EXACT_QUANTILE_MAX_ROWS",
    "SparkCleaningResult",
    "SparkOutlierBackend",
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


def _category_text(column: "Column", data_type: Any) -> "Column":
    """core's ``category_text`` as a Spark expression: integers as their digits, floats holding an
    integer as that integer ("1", not "1.0"), other values as text."""
    from pyspark.sql import types as T

    F = _F()
    if isinstance(data_type, T.FloatType | T.DoubleType | T.DecimalType):
        number = column.cast("double")
        integral = (F.floor(number) == number) & (F.abs(number) < F.lit(float(EXACT_INTEGER_FLOAT)))
        return F.when(integral, number.cast("long").cast("string")).otherwise(number.cast("string"))
    return column.cast("string")


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


def _raise_temporal(raw: "DataFrame", column: str, table: str, data_type: Any) -> None:
    example = raw.select(column).where(_F().col(column).isNotNull()).first()
    raise not_numeric_error(table, column, example[0] if example is not None else None, data_type.simpleString())


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
    check_structure(list(raw.columns), config, table)
    id_col, features = config.source.id_column, list(config.features)
    types = {field.name: field.dataType for field in raw.schema.fields}
    columns = checked_columns(config, list(types))
    categorical = columns[1 + len(features):]
    labels = reason_labels(columns)  # the reason of every rule_code
    updated = config.source.updated_at_column
    updated = updated if updated and updated in types and updated not in columns else None

    for feature in features:
        if _is_temporal_type(types[feature]):
            _raise_temporal(raw, feature, table, types[feature])

    # -- one pass over the source: typed values, parse flags, duplicate rank; persisted
    selected = [F.col(c) for c in columns] + ([F.col(updated)] if updated else [])
    if checks_monetary(config, list(types)) and MONETARY_COLUMN not in columns:
        selected.append(F.col(MONETARY_COLUMN))
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
            second = F.regexp_replace(trimmed, THOUSANDS_SEPARATOR, "").try_cast("double")
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
    """(code, condition, detail) of every rule of core's cleaning_rules, sorted by rule_code."""
    F = _F()
    id_col = config.source.id_column

    def rule(kind: ReasonKind, column: str, condition: "Column", value: "Column | None" = None) -> None:
        prefix, suffix = detail_parts(kind, column, config)
        detail = F.lit(prefix + suffix) if value is None else F.concat(F.lit(prefix), value, F.lit(suffix))
        rules.append((rule_code(kind, columns.index(column), len(columns)), condition, detail))

    rules: list[tuple[int, Column, Column]] = []
    ident = F.col(id_col)
    rule(ReasonKind.MISSING_ID, id_col, ident.isNull())
    rule(ReasonKind.DUPLICATE, id_col, ident.isNotNull() & (F.col(_RANK) > 1), _id_text(ident, types[id_col]))
    if checks_monetary(config, list(types)):
        money = F.col(MONETARY_COLUMN).cast("double")
        rule(ReasonKind.NON_POSITIVE_MONETARY, id_col, money.isNotNull() & (money <= 0), _py_float_str(money))
    for feature in features:
        value = F.col(_v(feature))
        non_numeric = F.col(f"_seg_nn_{feature}")
        rule(ReasonKind.NON_NUMERIC, feature, non_numeric, _repr_text(F.col(feature)))
        rule(ReasonKind.MISSING, feature, F.col(f"_seg_miss_{feature}") & ~non_numeric)
        infinite = value.isNotNull() & ((value == F.lit(float("inf"))) | (value == F.lit(float("-inf"))))
        rule(ReasonKind.NON_FINITE, feature, infinite, F.when(value > 0, F.lit("inf")).otherwise(F.lit("-inf")))
        bounds = config.cleaning.ranges.get(feature)
        if bounds is not None and (bounds.min is not None or bounds.max is not None):
            outside = F.lit(False)
            if bounds.min is not None:
                outside = outside | (value < F.lit(float(bounds.min)))
            if bounds.max is not None:
                outside = outside | (value > F.lit(float(bounds.max)))
            rule(ReasonKind.OUT_OF_RANGE, feature, value.isNotNull() & outside, _py_float_str(value))
    for name in categorical:
        allowed = config.cleaning.categorical[name]
        column = F.col(name)
        if allowed.required:
            rule(ReasonKind.MISSING, name, column.isNull())
        invalid = column.isNotNull() & ~_category_text(column, types[name]).isin(allowed_texts(allowed))
        rule(ReasonKind.INVALID_CATEGORY, name, invalid, column.cast("string"))
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
        F.col(_POS),  # input order: the provisional k is chosen on rows in the local engine's order
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
    # explicit list: no variance of a logged column is needed; auto: the choice comes after this job
    log_scale = set() if config.transform.log1p_auto else set(config.transform.log1p_columns)
    for f in features:  # per reason group; the valid rows' group feeds the "too large to scale" check
        if f not in log_scale:
            value = F.col(_v(f))  # classified's column: imputed values included, as locally
            stats_aggs += [F.var_pop(value).alias(f"var_{f}"), F.max_by(value, F.abs(value)).alias(f"worst_{f}")]
    stats_aggs.append(F.sum((F.col("imputed") != F.lit("")).cast("int")).alias("imp_any"))
    stats = [row.asDict() for row in classified.groupBy(_REASON).agg(*stats_aggs).collect()]
    n = int(sum(r["n"] for r in stats))
    if n == 0:
        raise no_rows_error(table)
    for f in features:
        non_numeric = sum(int(r[f"nn_{f}"] or 0) for r in stats)
        present = sum(int(r[f"present_{f}"] or 0) for r in stats)
        if present and non_numeric == present:
            example = classified.where(F.col(f"_seg_nn_{f}")).select(F.col(f).cast("string")).first()
            shown = example[0].strip() if example is not None and example[0] is not None else ""
            raise not_numeric_error(table, f, shown)
    by_reason = {str(r[_REASON]): int(r["n"]) for r in stats if r[_REASON] is not None}
    n_valid = n - sum(by_reason.values())
    if n_valid == 0 and not allow_all_rejected:
        raise _all_rejected(n, by_reason, table)
    imputed_by_feature = {f: int(sum(int(r.get(f"imp_{f}") or 0) for r in stats)) for f in features}
    n_imputed = int(sum(int(r["imp_any"] or 0) for r in stats))

    valid = classified.where(F.col(_REASON).isNull())
    # the run's one log1p decision, on the valid rows, before the fences that live on its log scale
    config, transform_facts = resolve_log1p(config, valid, features, n_valid)
    log_scale = set(config.transform.log1p_columns)
    valid_stats = next((r for r in stats if r[_REASON] is None), None)
    if valid_stats is not None:
        _check_scalable(valid_stats, [f for f in features if f not in log_scale], table)
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
        first_reason = F.lit(None).cast("string")
        for f in reversed(outlier_features(config)):  # the reason of the first flagged feature's rule
            first_value = F.when(F.col(_FIRST) == F.lit(f), F.col(_v(f))).otherwise(first_value)
            code = rule_code(ReasonKind.OUTLIER, columns.index(f), n_columns)
            first_reason = F.when(F.col(_FIRST) == F.lit(f), F.lit(labels[code])).otherwise(first_reason)
        equals, middle, end = outlier_detail_parts(method)
        outliers = flagged.where(F.col("is_outlier")).select(
            _id_text(F.col(id_col), types[id_col]).alias("customer_id"),
            first_reason.alias("reason"),
            F.concat(
                F.col(_FIRST), F.lit(equals), _py_float_str(first_value),
                F.lit(middle), F.col("outlier_reason"), F.lit(end),
            ).alias("detail"),
        )
        rejects = rejects.unionByName(outliers)
        outlier_by_reason = {
            str(r["reason"]): int(r["count"]) for r in outliers.groupBy("reason").count().collect()
        }
    rejects = rejects.persist(StorageLevel.MEMORY_AND_DISK)
    n_clean, n_rejected = clean.count(), rejects.count()  # materialise both before the source cache goes
    if n_clean + n_rejected != n:
        clean.unpersist()
        rejects.unpersist()
        raise RuntimeError(f"row accounting broken: {n_clean} clean + {n_rejected} rejected != {n} input rows")
    if n_clean == 0 and not allow_all_rejected:
        clean.unpersist()
        rejects.unpersist()
        raise _all_rejected(n, {**by_reason, **outlier_by_reason}, table)
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
        "transform": transform_facts,
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
    fillable = {rule_code(ReasonKind.MISSING, rank, n_columns): f for rank, f in enumerate(features, start=1)}
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
            raise too_large_to_scale_error(table, name, stats[f"worst_{name}"])


def _all_rejected(n: int, by_reason: dict[str, int], table: str) -> DataQualityError:
    return all_rejected_error(n, dict(sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0]))), table)


def skewness_table(valid: "DataFrame", features: list[str], value_column: Any = _v) -> pd.DataFrame:
    """:func:`core.skew.column_skewness` over every valid row, in one Spark job: min, and the
    adjusted Fisher-Pearson skewness (pandas' ``Series.skew``) raw and after log1p. Spark's
    ``skewness`` is the population g1; G1 = g1 * sqrt(n (n - 1)) / (n - 2) for n > 2."""
    F = _F()
    aggs = [F.count(F.lit(1)).alias("n")]
    for f in features:
        value = F.col(value_column(f))
        aggs += [F.min(value).alias(f"min_{f}"), F.skewness(value).alias(f"skew_{f}"),
                 F.skewness(F.log1p(value)).alias(f"logskew_{f}")]
    row = valid.agg(*aggs).first().asDict()
    n = int(row["n"])
    adjust = float(np.sqrt(n * (n - 1)) / (n - 2)) if n > 2 else float("nan")

    def number(value: Any) -> float:
        return float("nan") if value is None else float(value)

    rows = []
    for f in features:
        minimum = number(row[f"min_{f}"])
        raw = number(row[f"skew_{f}"]) * adjust
        logged = number(row[f"logskew_{f}"]) * adjust if minimum >= 0 else float("nan")
        rows.append({"column": f, "min": minimum, "skew": raw, "skew_log1p": logged})
    return pd.DataFrame(rows, columns=["column", "min", "skew", "skew_log1p"]).set_index("column")


def resolve_log1p(
    config: PipelineConfig, valid: "DataFrame", features: list[str], n_valid: int, value_column: Any = _v
) -> tuple[PipelineConfig, dict[str, Any]]:
    """As :func:`core.skew.resolve_log1p`, the table computed by Spark on every valid row (the local
    engine samples at most SKEW_SAMPLE_ROWS; up to that many rows both decide on the same numbers)."""
    if not config.transform.log1p_auto:
        return config, log1p_facts(config, config.transform.log1p_columns)
    table = (
        skewness_table(valid, features, value_column) if n_valid else
        pd.DataFrame({"min": np.nan, "skew": np.nan, "skew_log1p": np.nan}, index=pd.Index(features, name="column"))
    )
    chosen = log1p_choice(table, config.transform.log1p_skew_threshold)
    return with_log1p(config, chosen), log1p_facts(config, chosen, table)


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
    (default: the feature's own column). The guard of :mod:`segmentation_pipeline.core.outlier_guard`
    decides; :class:`SparkOutlierBackend` supplies its numbers. The report has the local engine's keys.
    A config still at ``transform.log1p: auto`` (a direct call) is resolved on ``frame``.
    """
    if config.transform.log1p_auto:
        config, _ = resolve_log1p(config, frame, list(config.features), n, value_column)
    exact = n <= EXACT_QUANTILE_MAX_ROWS if exact_quantiles is None else exact_quantiles
    quantiles = "exact" if exact else f"percentile_approx(accuracy={quantile_accuracy})"
    idle = idle_report(config, n)
    if idle is not None:
        columns = outlier_features(config)
        return _with_flags(frame, columns, {c: _F().lit(False) for c in columns}), {**idle, "quantiles": quantiles}
    backend = SparkOutlierBackend(frame, config, n, value_column, exact=exact, accuracy=quantile_accuracy)
    try:
        decision = decide_outliers(backend, config, n)
    except OutlierPolicyError as exc:
        raise outlier_policy_error(table, exc) from exc
    assert decision.fences is not None  # enabled, with rows: the guard always settles on fences
    return backend.flagged(decision.fences), {**decision.report, "quantiles": quantiles}


def _with_flags(frame: "DataFrame", columns: list[str], flags: dict[str, "Column"]) -> "DataFrame":
    """``is_outlier``, ``outlier_reason`` ("outlier:a,b" or "") and the first flagged feature."""
    F = _F()
    any_flag = _any(flags)
    first = F.lit(None).cast("string")
    for c in reversed(columns):
        first = F.when(flags[c], F.lit(c)).otherwise(first)
    reason = F.when(
        any_flag, F.concat(F.lit("outlier:"), F.concat_ws(",", *[F.when(flags[c], F.lit(c)) for c in columns]))
    ).otherwise(F.lit(""))
    return frame.withColumns({"is_outlier": any_flag, "outlier_reason": reason, _FIRST: first})


def _any(flags: dict[str, "Column"]) -> "Column":
    out = _F().lit(False)
    for flag in flags.values():
        out = out | flag
    return out


class SparkOutlierBackend:
    """The outlier guard's numbers as Spark jobs (``outlier_guard.OutlierBackend``).

    Construction runs one job: the pooled quartiles, the finiteness check and the mean/std the
    provisional clustering standardises with.
    """

    def __init__(
        self, frame: "DataFrame", config: PipelineConfig, n: int, value_column: Any, *, exact: bool, accuracy: int
    ) -> None:
        F = _F()
        self.config, self.n, self.exact, self.accuracy = config, n, exact, accuracy
        self.features = list(config.features)
        self.columns = outlier_features(config)
        log1p = set(config.transform.log1p_columns)
        self.z = frame.withColumns({
            _z(f): (F.log1p(F.col(value_column(f))) if f in log1p else F.col(value_column(f)).cast("double"))
            for f in self.features
        })
        self.zc = {f: F.col(_z(f)) for f in self.features}
        self.k = 1
        self.labelled = False
        aggs = []
        for f in self.features:
            zc = self.zc[f]
            bad = zc.isNull() | F.isnan(zc) | (F.abs(zc) == F.lit(float("inf")))
            aggs += [F.sum(bad.cast("int")).alias(f"bad_{f}"), F.avg(zc).alias(f"mean_{f}"),
                     F.stddev_pop(zc).alias(f"std_{f}")]
        aggs += [self._quartiles(c).alias(f"q_{c}") for c in self.columns]
        stats = self.z.agg(*aggs).first().asDict()
        for f in self.features:
            if stats[f"bad_{f}"]:
                scale = "log1p scale" if f in log1p else "raw scale"
                raise ValueError(
                    f"column {f!r} has {int(stats[f'bad_{f}'])} value(s) that are not finite on the {scale}; "
                    "clean the data first"
                )
        self.q1 = np.array([stats[f"q_{c}"][0] for c in self.columns], dtype=np.float64)
        self.q3 = np.array([stats[f"q_{c}"][1] for c in self.columns], dtype=np.float64)
        self.means = np.array([stats[f"mean_{f}"] for f in self.features], dtype=np.float64)
        self.stds = np.array([stats[f"std_{f}"] or 0.0 for f in self.features], dtype=np.float64)

    def _quartiles(self, column: str) -> "Column":
        return _quantiles(self.zc[column], [0.25, 0.75], self.exact, self.accuracy)

    def flags(self, fences: Fences) -> dict[str, "Column"]:
        """One boolean Column per outlier feature: outside its (own cluster's) fences."""
        F = _F()
        if not fences.per_cluster:
            return {
                c: (self.zc[c] < F.lit(float(fences.low[j]))) | (self.zc[c] > F.lit(float(fences.high[j])))
                for j, c in enumerate(self.columns)
            }
        position = F.col(_LABEL) + F.lit(1)
        out = {}
        for j, c in enumerate(self.columns):
            lows = F.array(*[F.lit(None if np.isnan(v) else float(v)).cast("double") for v in fences.low[:, j]])
            highs = F.array(*[F.lit(None if np.isnan(v) else float(v)).cast("double") for v in fences.high[:, j]])
            outside = (self.zc[c] < F.element_at(lows, position)) | (self.zc[c] > F.element_at(highs, position))
            out[c] = F.coalesce(outside, F.lit(False))
        return out

    def quartiles(self) -> tuple[np.ndarray, np.ndarray]:
        return self.q1, self.q3

    def count_outside(self, fences: Fences) -> OutsideCounts:
        F = _F()
        flags = self.flags(fences)
        row = self.z.agg(
            F.sum(_any(flags).cast("int")).alias("any"), *[F.sum(flags[c].cast("int")).alias(c) for c in self.columns]
        ).first()
        return OutsideCounts(int(row["any"] or 0), np.array([int(row[c] or 0) for c in self.columns]))

    def provisional_clusters(self) -> dict[str, Any]:
        label, facts = _provisional_labels(self.z, self.config, self.n, self.means, self.stds)
        self.z = self.z.withColumn(_LABEL, label)
        self.k, self.labelled = facts["provisional_k"], True
        return facts

    def cluster_counts(self, fences: Fences) -> ClusterCounts:
        F = _F()
        flags = self.flags(fences)
        rows = self.z.groupBy(_LABEL).agg(
            F.count(F.lit(1)).alias("size"),
            F.sum(_any(flags).cast("int")).alias("flagged"),
            *[F.sum(flags[c].cast("int")).alias(f"f_{c}") for c in self.columns],
        ).collect()
        sizes = np.zeros(self.k, dtype=np.int64)
        flagged = np.zeros(self.k, dtype=np.int64)
        for r in rows:
            sizes[int(r[_LABEL])] = int(r["size"])
            flagged[int(r[_LABEL])] = int(r["flagged"] or 0)
        by_feature = np.array([sum(int(r[f"f_{c}"] or 0) for r in rows) for c in self.columns])
        return ClusterCounts(sizes, flagged, by_feature)

    def cluster_quartiles(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self.z.groupBy(_LABEL).agg(*[self._quartiles(c).alias(f"q_{c}") for c in self.columns]).collect()
        q1 = np.full((k, len(self.columns)), np.nan)
        q3 = np.full((k, len(self.columns)), np.nan)
        for r in rows:
            for j, c in enumerate(self.columns):
                q1[int(r[_LABEL]), j], q3[int(r[_LABEL]), j] = r[f"q_{c}"]
        return q1, q3

    def flagged(self, fences: Fences) -> "DataFrame":
        """The rows with the flags of ``fences`` (module docstring), without the backend's columns."""
        out = _with_flags(self.z, self.columns, self.flags(fences))
        return out.drop(*[_z(f) for f in self.features], *([_LABEL] if self.labelled else []))


def _provisional_labels(
    z: "DataFrame", config: PipelineConfig, n: int, means: np.ndarray, stds: np.ndarray
) -> tuple["Column", dict[str, Any]]:
    """Provisional clusters for segment-aware fences: a Column of cluster ids, and the facts.

    As in the local engine: standardise (population std), choose k on a driver sample of
    PROVISIONAL_K_SAMPLE rows (``choose_provisional_k``), fit k centres -- here MLlib KMeans
    (k-means||) on a Spark sample of about PROVISIONAL_FIT_ROWS rows -- and dissolve clusters
    holding under MIN_CLUSTER_SHARE of the fitted rows into their nearest neighbours.
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
    small = np.empty((0, 0))
    if config.k is None:  # KMeans depends on row order: sample in input order when it is known
        fraction = min(1.0, 1.2 * PROVISIONAL_K_SAMPLE / max(n, 1))
        source = z.select(
            *[col.alias(name) for col, name in zip(scaled, names)],
            (F.col(_POS) if _POS in z.columns else F.monotonically_increasing_id()).alias(_POS),
        )
        rows = source.sample(False, fraction, seed) if fraction < 1 else source
        small = np.asarray(rows.orderBy(_POS).drop(_POS).collect(), dtype=np.float64)
        if len(small) > PROVISIONAL_K_SAMPLE:
            rng = np.random.default_rng(seed)
            small = small[np.sort(rng.choice(len(small), PROVISIONAL_K_SAMPLE, replace=False))]
    k, silhouettes = choose_provisional_k(small, config, n)
    if k == 1:
        return F.lit(0), provisional_facts(k, silhouettes)
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
    k = min(k, len(centers))  # MLlib returns fewer centres when the sample has fewer distinct points
    dissolved = dissolved_clusters(sizes[:k])
    keep = [c for c in range(k) if c not in set(dissolved.tolist())]
    if not keep:  # nothing is a real cluster: keep them all, as the local engine does
        keep = list(range(k))
    return _nearest(scaled, centers[keep], keep), provisional_facts(k, silhouettes, dissolved.tolist())
