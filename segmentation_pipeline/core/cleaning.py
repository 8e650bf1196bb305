"""Turn the raw customer table into segmentable rows plus an account of every rejected row.

Nothing is dropped silently: each input row ends up either in ``clean`` or in ``rejects`` with
the first applicable reason, so ``n_input == n_clean + n_rejected`` always holds. The rules
live in a pandera schema built from the config; its lazy failure cases become the reasons.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from segmentation_pipeline.config import PipelineConfig
from segmentation_pipeline.core.cleaning_rules import (
    EXACT_INTEGER_FLOAT,
    MONETARY_COLUMN,
    DataQualityError,
    ReasonKind,
    all_rejected_error,
    allowed_texts,
    category_text,
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
from segmentation_pipeline.core.outliers import OutlierPolicyError, OutlierResult, detect_outliers, flag_labels
from segmentation_pipeline.core.parsing import parse_numbers
from segmentation_pipeline.core.rows import ROW_BLOCK
from segmentation_pipeline.core.skew import resolve_log1p

__all__ = [
    "FINITE_CHECK",
    "VALIDATE_BLOCK_ROWS",
    "CleaningResult",
    "DataQualityError",
    "build_schema",
    "clean_customers",
    "clean_owned_customers",
]

#: Name of the pandera check that rejects +-inf in a feature.
FINITE_CHECK = "finite"


MAX_DETAIL_VALUE = 200  # characters of an offending value kept in a reject's detail


def _cut_note(value: str) -> str:
    """A 10-million-character value is not stored whole in a reject: its length is noted instead."""
    return f"… ({len(value)} characters)" if len(value) > MAX_DETAIL_VALUE else ""


@dataclass(frozen=True)
class CleaningResult:
    clean: pd.DataFrame  # id, features (float64), categorical columns, is_outlier, outlier_reason + imputed (categoricals)
    rejects: pd.DataFrame  # one row per rejected input row: customer_id, reason, detail
    report: dict[str, Any]


def _is_finite(series: pd.Series) -> pd.Series:
    return pd.Series(np.isfinite(series.to_numpy(dtype=np.float64)), index=series.index)


def build_schema(config: PipelineConfig, *, ids_known_distinct: bool = False) -> pa.DataFrameSchema:
    """The row rules as a pandera schema over the coerced frame (features already float64).

    ``ids_known_distinct`` drops the uniqueness check (a hash table of every id) when the
    caller has already proved the ids distinct more cheaply (:func:`_strictly_increasing`).
    """
    cleaning = config.cleaning
    columns: dict[str, pa.Column] = {
        config.source.id_column: pa.Column(
            None, nullable=False, unique=not ids_known_distinct, report_duplicates="exclude_first"
        )
    }
    for feature in config.features:
        checks = [pa.Check(_is_finite, name=FINITE_CHECK)]
        bounds = cleaning.ranges.get(feature)
        if bounds is not None and bounds.min is not None and bounds.max is not None:
            checks.append(pa.Check.in_range(bounds.min, bounds.max))
        elif bounds is not None and bounds.min is not None:
            checks.append(pa.Check.ge(bounds.min))
        elif bounds is not None and bounds.max is not None:
            checks.append(pa.Check.le(bounds.max))
        columns[feature] = pa.Column("float64", checks=checks, nullable=False)
    for name, rule in cleaning.categorical.items():
        if name in columns:
            continue
        columns[name] = pa.Column(None, _allowed_check(allowed_texts(rule)), nullable=not rule.required, required=False)
    return pa.DataFrameSchema(columns, name=config.source.table)


def _category_texts(series: pd.Series) -> pd.Series:
    """:func:`~segmentation_pipeline.core.cleaning_rules.category_text` of every value, vectorised
    for the common column types (text, integers, floats); per value only for mixed objects."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        texts = np.array([category_text(c) for c in series.cat.categories] + [None], dtype=object)
        return pd.Series(texts[series.cat.codes.to_numpy()], index=series.index)  # code -1 (missing): None
    if pd.api.types.is_integer_dtype(series.dtype):
        return series.astype("string")
    if pd.api.types.is_float_dtype(series.dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        text = series.astype(object).map(repr).to_numpy(dtype=object)
        with np.errstate(invalid="ignore"):
            integral = np.isfinite(values) & (np.floor(values) == values) & (np.abs(values) < EXACT_INTEGER_FLOAT)
        text[integral] = values[integral].astype(np.int64).astype(str)
        return pd.Series(text, index=series.index)
    if pd.api.types.infer_dtype(series, skipna=True) in ("string", "empty"):
        return series
    return series.map(category_text, na_action="ignore")


def _allowed_check(texts: list[str]) -> pa.Check:
    """``isin`` on the canonical text, so 1, "1" and 1.0 match an allowed 1 (missing values pass:
    ``required`` decides about those)."""
    allowed = set(texts)
    return pa.Check(
        lambda series: _category_texts(series).isin(allowed), name="isin", ignore_na=True,
        statistics={"allowed_values": list(texts)},
    )


def _check_structure(raw: pd.DataFrame, config: PipelineConfig, table: str) -> None:
    check_structure(list(raw.columns), config, table)
    if len(raw) == 0:
        raise no_rows_error(table)


def _to_float(series: pd.Series, column: str, table: str, *, owned: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(float64 values with NaN for missing/unparsable, mask of unparsable) -- parsed by the rule
    the served model shares (:func:`~segmentation_pipeline.core.parsing.parse_numbers`).

    Imputation and compaction write into the result, so it is a copy unless the caller owns
    ``series`` (``owned``): then a float64 column is used as it is."""
    if pd.api.types.is_datetime64_any_dtype(series) or pd.api.types.is_timedelta64_dtype(series):
        raise not_numeric_error(table, column, series.dropna().iloc[0], str(series.dtype))
    parsed = parse_numbers(series, copy=not owned)
    non_numeric = parsed.non_numeric
    if non_numeric.any():
        present = int(series.notna().to_numpy().sum() - parsed.blank.sum())
        if present and int(non_numeric.sum()) == present:
            example = str(series[non_numeric].iloc[0]).strip()
            raise not_numeric_error(table, column, example)
    return parsed.values, non_numeric


#: Rows validated per pandera call: each check's boolean scratch is a block's, not the table's.
VALIDATE_BLOCK_ROWS = 1 << 20


def _failure_cases(work: pd.DataFrame, config: PipelineConfig, *, ids_known_distinct: bool) -> pd.DataFrame | None:
    """pandera's lazy failure cases for ``work``, or None when every row passes.

    The row rules run block by block (pandera's scratch per check is then a block's); only
    the id uniqueness rule needs all ids at once, and it is skipped when they are known distinct.
    """
    found: list[pd.DataFrame] = []
    rows = build_schema(config, ids_known_distinct=True)
    for start in range(0, len(work), VALIDATE_BLOCK_ROWS):
        try:
            rows.validate(work.iloc[start : start + VALIDATE_BLOCK_ROWS], lazy=True, inplace=True)
        except SchemaErrors as exc:
            found.append(exc.failure_cases)
    if not ids_known_distinct:
        id_col = config.source.id_column
        unique = pa.DataFrameSchema({id_col: build_schema(config).columns[id_col]}, name=config.source.table)
        try:
            unique.validate(work[[id_col]], lazy=True, inplace=True)
        except SchemaErrors as exc:
            found.append(exc.failure_cases)
    if not found:
        return None
    # a rule failing for the whole frame (a missing column) is reported once per block, and the
    # id rules twice: once is enough
    cases = found[0] if len(found) == 1 else pd.concat([f.astype(object) for f in found], ignore_index=True)
    return cases.drop_duplicates(subset=["column", "check", "index"], ignore_index=True)


def _strictly_increasing(ids: pd.Series) -> bool:
    """Whether integer ids are sorted and distinct, checked block by block in O(1) memory.

    Keyset-paginated reads return the ids in key order, so this usually holds, and then they
    are unique without hashing every one of them (which costs ~40 B a row at peak).
    """
    if ids.dtype.kind not in "iu":
        return False
    values = ids.to_numpy()
    for start in range(0, len(values) - 1, ROW_BLOCK):
        stop = min(start + ROW_BLOCK + 1, len(values))
        if not (values[start + 1 : stop] > values[start : stop - 1]).all():
            return False
    return True


def _latest_first(raw: pd.DataFrame, id_col: str, column: str | None) -> np.ndarray | None:
    """Row positions in which, among rows sharing an id, the latest updated comes first (stable,
    undated last), so pandera's "keep first" keeps the latest. Only those rows are sorted."""
    if column is None or column not in raw.columns:
        return None
    shared = np.flatnonzero(raw[id_col].duplicated(keep=False).to_numpy())
    if len(shared) == 0:
        return None
    stamp = raw[column].iloc[shared].reset_index(drop=True)
    if not (pd.api.types.is_datetime64_any_dtype(stamp) or pd.api.types.is_numeric_dtype(stamp)):
        stamp = pd.to_datetime(stamp, errors="coerce", utc=True)
    order = np.arange(len(raw))
    order[shared] = shared[stamp.sort_values(ascending=False, kind="stable", na_position="last").index.to_numpy()]
    return order


def _id_strings(ids: pd.Series) -> np.ndarray:
    """Ids as text, "" when missing; integral floats (ints that met a NULL) lose their ".0"."""
    if pd.api.types.is_float_dtype(ids):
        values = ids.to_numpy(dtype=np.float64, na_value=np.nan)
        finite = values[np.isfinite(values)]
        if np.array_equal(finite, np.round(finite)) and (np.abs(finite) < 2**63).all():
            ids = ids.astype("Int64")
    return ids.astype("string").fillna("").to_numpy(dtype=object)


def _failure_frame(
    fc: pd.DataFrame, config: PipelineConfig, columns: list[str], ids: pd.Series, table: str
) -> pd.DataFrame:
    """pandera failure cases -> (pos, code, detail) with code = kind * n_columns + column rank.

    ``ids`` is the id column by position; the failure cases' index holds positions.
    """
    unexpected = fc[fc["index"].isna() | ~fc["column"].isin(columns)]
    if len(unexpected):
        raise DataQualityError(
            f"table {table!r} failed validation: "
            f"{unexpected[['column', 'check', 'failure_case']].head(5).to_dict('records')}"
        )
    pairs = fc[["column", "check"]].drop_duplicates()
    kinds, prefixes, suffixes = [], [], []
    for column, check in pairs.itertuples(index=False):
        kind = _kind_of(column, check, config)
        prefix, suffix = detail_parts(kind, column, config)
        kinds.append(rule_code(kind, columns.index(column), len(columns)))
        prefixes.append(prefix)
        suffixes.append(suffix)
    pairs = pairs.assign(code=kinds, prefix=prefixes, suffix=suffixes)
    merged = fc[["column", "check", "index", "failure_case"]].merge(pairs, on=["column", "check"], how="left")
    kind = merged["code"].to_numpy() // len(columns)
    pos = merged["index"].to_numpy(dtype=np.int64)
    value = merged["failure_case"].astype(str).where(~np.isin(kind, [ReasonKind.MISSING_ID, ReasonKind.MISSING]), "")
    duplicate = kind == ReasonKind.DUPLICATE
    if duplicate.any():  # the id as written back, not pandera's upcast (3.0 for 3)
        value[duplicate] = _id_strings(ids.iloc[pos[duplicate]])
    value = value.map(lambda v: v[:MAX_DETAIL_VALUE] + _cut_note(v))
    return pd.DataFrame(
        {
            "pos": pos,
            "code": merged["code"].to_numpy(dtype=np.int64),
            "detail": (merged["prefix"] + value + merged["suffix"]).to_numpy(dtype=object),
        }
    )


def _kind_of(column: str, check: str, config: PipelineConfig) -> ReasonKind:
    """The rule a pandera failure case stands for (categorical columns are non-nullable only when required)."""
    if column == config.source.id_column:
        return ReasonKind.MISSING_ID if check == "not_nullable" else ReasonKind.DUPLICATE
    if check == "not_nullable":
        return ReasonKind.MISSING
    if column not in config.features:
        return ReasonKind.INVALID_CATEGORY
    return ReasonKind.NON_FINITE if check == FINITE_CHECK else ReasonKind.OUT_OF_RANGE


def _reasons(failures: pd.DataFrame, labels: np.ndarray) -> pd.DataFrame:
    """One row per failing position: the first reason by precedence, every detail joined."""
    failures = failures.sort_values(["pos", "code"], kind="stable")
    pos = failures["pos"].to_numpy()
    unique, first, counts = np.unique(pos, return_index=True, return_counts=True)
    detail = failures["detail"].to_numpy()[first]
    many = counts > 1
    if many.any():
        several = failures[np.isin(pos, unique[many])]
        detail[many] = several.groupby("pos", sort=True)["detail"].agg("; ".join).to_numpy()
    return pd.DataFrame(
        {"pos": unique, "reason": labels[failures["code"].to_numpy()[first]], "detail": detail}
    )


def _impute_medians(
    failures: pd.DataFrame, numeric: dict[str, np.ndarray], imputed: np.ndarray, n: int, n_columns: int
) -> pd.DataFrame:
    """Fill missing features with the median of the rows that are not rejected (in place) and
    drop those failures: a missing value is then never the reason a row is rejected, unless the
    feature has no valid value at all to take a median of."""
    pos, code = failures["pos"].to_numpy(), failures["code"].to_numpy()
    column = code % n_columns
    fillable = (code // n_columns == ReasonKind.MISSING) & (column >= 1) & (column <= len(numeric))
    hard = np.zeros(n, dtype=bool)
    hard[pos[~fillable]] = True
    medians: dict[int, float] = {}
    for j, values in enumerate(numeric.values()):
        donors = values[~hard]
        donors = donors[~np.isnan(donors)]
        if donors.size:
            medians[j] = float(np.median(donors))
    unfillable = fillable & ~np.isin(column - 1, list(medians))
    fillable &= ~unfillable
    hard[pos[unfillable]] = True
    for j, values in enumerate(numeric.values()):
        rows = pos[fillable & (column == j + 1) & ~hard[pos]]
        values[rows] = medians.get(j, np.nan)
        imputed[rows, j] = True
    return failures[~fillable]


def clean_customers(
    raw: pd.DataFrame, config: PipelineConfig, table: str | None = None, *, allow_all_rejected: bool = False
) -> CleaningResult:
    """Validate, coerce, impute and outlier-flag the raw table; account for every row.

    ``raw`` is only read. Raises DataQualityError when the table as a whole cannot be segmented
    (missing column, no rows, a feature with no numeric value, every row rejected, outlier
    policy "fail"). ``allow_all_rejected`` is for incremental scoring, where a small batch of only
    bad rows is a normal outcome to record, not a reason to stop.
    """
    return _clean(_RawTable(raw, owned=False), config, table, allow_all_rejected=allow_all_rejected)


def clean_owned_customers(
    raw: pd.DataFrame, config: PipelineConfig, table: str | None = None, *, allow_all_rejected: bool = False
) -> CleaningResult:
    """:func:`clean_customers` for a caller that hands ``raw`` over and never reads it again.

    Its columns are reused or deleted as soon as they have been read (``raw`` ends up with no
    columns), so the raw and clean tables are never both in memory; ``clean``/``rejects`` get a
    plain RangeIndex instead of the raw row labels.
    """
    return _clean(_RawTable(raw, owned=True), config, table, allow_all_rejected=allow_all_rejected)


class _RawTable:
    """The raw frame and whether cleaning owns it: an owned frame's columns are released once read."""

    def __init__(self, frame: pd.DataFrame, *, owned: bool) -> None:
        self.frame = frame
        self.owned = owned

    def release(self, column: str) -> None:
        if self.owned:
            del self.frame[column]

    def labels_at(self, positions: np.ndarray) -> pd.Index | None:
        """Row labels of ``positions`` for the output frames; None (a RangeIndex) when owned."""
        return None if self.owned else _labels_at(self.frame.index, positions)


def _clean(source: _RawTable, config: PipelineConfig, table: str | None, *, allow_all_rejected: bool) -> CleaningResult:
    raw = source.frame
    table = table or config.source.table
    _check_structure(raw, config, table)
    id_col, features = config.source.id_column, list(config.features)
    columns = checked_columns(config, list(raw.columns))
    categorical = columns[1 + len(features):]
    labels = np.array(reason_labels(columns), dtype=object)  # reason label of every code

    n, n_columns = len(raw), len(columns)

    check_money = checks_monetary(config, list(raw.columns))  # before the parsed columns are released
    numeric: dict[str, np.ndarray] = {}
    parts: list[pd.DataFrame] = []  # failures as (pos, code, detail), code = kind * n_columns + column rank
    non_numeric_keys: list[np.ndarray] = []  # pos * n_columns + column rank
    for rank, feature in enumerate(features, start=1):
        numeric[feature], bad = _to_float(raw[feature], feature, table, owned=source.owned)
        if bad.any():
            where = np.flatnonzero(bad)
            shown = raw[feature].iloc[where].astype(str).map(lambda v: repr(v[:MAX_DETAIL_VALUE]) + _cut_note(v))
            detail = (f"{feature}=" + shown + " is not numeric").to_numpy(dtype=object)
            parts.append(pd.DataFrame({"pos": where, "code": rule_code(ReasonKind.NON_NUMERIC, rank, n_columns), "detail": detail}))
            non_numeric_keys.append(where * n_columns + rank)
        source.release(feature)  # parsed (or reused as is): the raw column is not read again

    if check_money:
        money = numeric.get(MONETARY_COLUMN)
        if money is None:
            money = parse_numbers(raw[MONETARY_COLUMN]).values
        with np.errstate(invalid="ignore"):
            where = np.flatnonzero(money <= 0)
        if len(where):
            prefix, suffix = detail_parts(ReasonKind.NON_POSITIVE_MONETARY, id_col, config)
            detail = (prefix + pd.Series(money[where]).astype(str) + suffix).to_numpy(dtype=object)
            code = rule_code(ReasonKind.NON_POSITIVE_MONETARY, 0, n_columns)
            parts.append(pd.DataFrame({"pos": where, "code": code, "detail": detail}))

    # arrays, not Series: no index alignment and, with copy=False, no copy of the table to validate
    work = pd.DataFrame({id_col: raw[id_col].array, **numeric, **{c: raw[c].array for c in categorical}}, copy=False)
    distinct_ids = _strictly_increasing(raw[id_col])
    order = None if distinct_ids else _latest_first(raw, id_col, config.source.updated_at_column)
    if config.source.updated_at_column in raw.columns and config.source.updated_at_column not in columns:
        source.release(config.source.updated_at_column)
    if order is not None:
        work = work.take(order)  # index labels stay the original positions
    cases = _failure_cases(work, config, ids_known_distinct=distinct_ids)
    if cases is not None:
        found = _failure_frame(cases, config, columns, raw[id_col].reset_index(drop=True), table)
        key = found["pos"].to_numpy() * n_columns + found["code"].to_numpy() % n_columns
        is_missing = found["code"].to_numpy() // n_columns == ReasonKind.MISSING
        unparsed = np.isin(key, np.concatenate(non_numeric_keys)) if non_numeric_keys else False
        parts.append(found[~(is_missing & unparsed)])  # an unparsable value is non_numeric, not missing
    failures = (
        pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({"pos": [], "code": [], "detail": []})
    ).astype({"pos": np.int64, "code": np.int64})

    imputed = np.zeros((n, len(features)), dtype=bool)
    if config.cleaning.missing == "impute_median" and len(failures):
        failures = _impute_medians(failures, numeric, imputed, n, n_columns)
    rejected = _reasons(failures, labels)
    valid = np.ones(n, dtype=bool)
    valid[rejected["pos"].to_numpy()] = False
    if not valid.any() and not allow_all_rejected:
        raise _all_rejected(n, rejected, table)

    del work
    valid_pos = _positions(valid)
    if len(valid_pos) < n:  # compact each parsed array in place: the valid rows, no second copy
        for feature in features:
            values = numeric[feature]
            values[: len(valid_pos)] = values[valid_pos]
            numeric[feature] = values[: len(valid_pos)]
    frame = pd.DataFrame({f: numeric[f] for f in features}, copy=False)
    # the run's one log1p decision (transform.log1p: auto), on the valid rows: the outlier fences
    # below already live on its log scale, and every later stage is handed this choice
    config, transform_facts = resolve_log1p(config, frame)
    _check_scalable(frame, set(config.transform.log1p_columns), table)
    try:
        found = (
            detect_outliers(frame, config)
            if len(frame)
            else OutlierResult(np.zeros(0, dtype=bool), pd.Series([], dtype=object), {"method_used": "none"})
        )
    except OutlierPolicyError as exc:
        raise outlier_policy_error(table, exc) from exc
    outlier_reason = found.reasons.array  # categorical: a code per row
    is_outlier = np.asarray(found.mask, dtype=bool)
    n_outliers = int(is_outlier.sum())
    keep = np.ones(len(valid_pos), dtype=bool)
    if config.cleaning.outliers.action == "reject" and n_outliers:
        keep = ~is_outlier
        outliers = _outlier_rejects(
            valid_pos, is_outlier, outlier_reason, frame, columns, labels, found.report["method_used"]
        )
        rejected = pd.concat([rejected, outliers], ignore_index=True).sort_values("pos", ignore_index=True)
        if not keep.any():
            raise _all_rejected(n, rejected, table)

    clean_pos = valid_pos if keep.all() else valid_pos[keep]
    del frame
    reject_pos = rejected["pos"].to_numpy()
    rejects = pd.DataFrame(
        {
            "customer_id": _id_strings(raw[id_col].iloc[reject_pos].reset_index(drop=True)),
            "reason": rejected["reason"].to_numpy(dtype=object),
            "detail": rejected["detail"].to_numpy(dtype=object),
        },
        index=source.labels_at(reject_pos),
    )
    # one column at a time, each parsed array dropped once copied: no second copy of the features
    columns_out: dict[str, Any] = {id_col: raw[id_col].array.take(clean_pos)}
    source.release(id_col)
    for feature in features:
        values = numeric.pop(feature)
        columns_out[feature] = values if keep.all() else values[keep]
    for column in categorical:
        columns_out[column] = raw[column].array.take(clean_pos)
        source.release(column)
    columns_out["is_outlier"] = is_outlier[keep]
    columns_out["outlier_reason"] = outlier_reason[keep]
    columns_out["imputed"] = flag_labels(imputed[clean_pos], features)
    clean = pd.DataFrame(columns_out, index=source.labels_at(clean_pos), copy=False)
    assert len(clean) + len(rejects) == n, f"{len(clean)} clean + {len(rejects)} rejected != {n} input rows"
    assert (rejects["reason"].str.len() > 0).all(), "a reject without a reason"

    report: dict[str, Any] = {
        "table": table,
        "n_input": n,
        "n_clean": len(clean),
        "n_outliers": n_outliers,
        "n_rejected": len(rejects),
        "rejected_by_reason": {str(k): int(v) for k, v in rejects["reason"].value_counts().items()},
        "n_imputed": int(imputed.any(axis=1).sum()),
        "imputed_by_feature": {f: int(imputed[:, j].sum()) for j, f in enumerate(features)},
        "outliers": found.report,
        "transform": transform_facts,
    }
    return CleaningResult(clean=clean, rejects=rejects, report=report)


def _positions(mask: np.ndarray) -> np.ndarray:
    """``np.flatnonzero(mask)``, as int32 when it fits: half the memory for tens of millions of rows."""
    where = np.flatnonzero(mask)
    return where.astype(np.int32) if len(mask) < np.iinfo(np.int32).max else where


def _labels_at(index: pd.Index, positions: np.ndarray) -> pd.Index:
    """``index[positions]``; for a default RangeIndex the positions themselves (indexing a
    RangeIndex would materialise and cache all of it: 8 B per input row for the run)."""
    if isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1:
        return pd.Index(positions, copy=False)
    return index[positions]


def _check_scalable(frame: pd.DataFrame, log1p: set[str], table: str) -> None:
    """Finite but huge values (1e300 in a feature without a range) overflow the variance every
    scaler computes: name the column and value instead of a NaN error deep in scikit-learn."""
    for name in frame.columns:
        values = frame[name].to_numpy(dtype=np.float64)
        if name in log1p or not len(values):
            continue
        with np.errstate(over="ignore", invalid="ignore"):
            scalable = bool(np.isfinite(np.var(values)))
        if not scalable:
            worst = values[np.abs(values).argmax()]
            raise too_large_to_scale_error(table, name, worst)


def _outlier_rejects(
    valid_pos: np.ndarray,
    is_outlier: np.ndarray,
    reasons: pd.Categorical,
    frame: pd.DataFrame,
    columns: list[str],
    labels: np.ndarray,
    method: str,
) -> pd.DataFrame:
    """Rejects for ``action: reject``: the first flagged feature is the reason, all go in detail."""
    rows = np.flatnonzero(is_outlier)
    flagged = pd.Series(np.asarray(reasons[rows], dtype=object))
    first = flagged.str.slice(len("outlier:")).str.split(",").str[0]
    rank = first.map({c: i for i, c in enumerate(columns)}).to_numpy(dtype=np.int64)
    values = frame.to_numpy()[rows, rank - 1]  # frame holds the features, columns[0] is the id
    equals, middle, end = outlier_detail_parts(method)
    detail = first + equals + pd.Series(values).astype(str) + middle + flagged + end
    return pd.DataFrame(
        {
            "pos": valid_pos[rows],
            "reason": labels[rule_code(ReasonKind.OUTLIER, rank, len(columns))],
            "detail": detail.to_numpy(dtype=object),
        }
    )


def _all_rejected(n: int, rejected: pd.DataFrame, table: str) -> DataQualityError:
    return all_rejected_error(n, {str(k): int(v) for k, v in rejected["reason"].value_counts().items()}, table)
