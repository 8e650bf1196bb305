"""Cleaning rules: every input row is either segmentable or rejected with a reason."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segmentation_pipeline.config import PipelineConfig
from segmentation_pipeline.core.cleaning import DataQualityError, build_schema, clean_customers, clean_owned_customers

FEATURES = ["age", "annual_income", "spending_score"]
RANGES = {"age": {"min": 16, "max": 110}, "annual_income": {"min": 0}, "spending_score": {"min": 1, "max": 100}}


def make_config(
    missing: str = "reject",
    updated_at: str | None = None,
    outliers: dict[str, Any] | None = None,
    k_range: tuple[int, int] = (2, 10),
) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "database": {"url": "sqlite://"},
            "source": {"table": "customers", "id_column": "customer_id", "updated_at_column": updated_at},
            "features": FEATURES,
            "k_range": list(k_range),
            "mlflow": {"tracking_uri": "sqlite://"},
            "transform": {"log1p": ["annual_income"]},
            "cleaning": {
                "missing": missing,
                "ranges": RANGES,
                "categorical": {
                    "gender": {"allowed": ["Female", "Male", "Other"]},
                    "country": {"allowed": ["DE", "FR"], "required": True},
                },
                "outliers": {"enabled": False} if outliers is None else outliers,
            },
        }
    )


def customers(n: int, seed: int = 0) -> pd.DataFrame:
    """Plausible, valid customers: ids 1..n, two categorical columns, an update timestamp."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "customer_id": np.arange(1, n + 1),
            "age": rng.integers(18, 80, n).astype(float),
            "annual_income": rng.lognormal(10.8, 0.3, n).round(2),
            "spending_score": rng.integers(1, 101, n).astype(float),
            "gender": rng.choice(["Female", "Male", "Other"], n),
            "country": rng.choice(["DE", "FR"], n),
            "updated_at": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 365, n), unit="D"),
        }
    )


def with_row(frame: pd.DataFrame, **values: Any) -> pd.DataFrame:
    """The frame with its first row's values replaced (object columns so anything fits)."""
    frame = frame.astype({c: object for c in values})
    for column, value in values.items():
        frame.at[frame.index[0], column] = value
    return frame


def assert_accounted(raw: pd.DataFrame, result) -> None:
    assert len(result.clean) + len(result.rejects) == len(raw)
    assert result.report["n_input"] == len(raw)
    assert result.report["n_clean"] == len(result.clean)
    assert result.report["n_rejected"] == len(result.rejects)
    assert (result.rejects["reason"].str.len() > 0).all()
    if raw.index.is_unique:
        assert set(result.clean.index).isdisjoint(result.rejects.index)


# --- one reason per crafted row ---------------------------------------------------------------

REASON_CASES = [
    ({"customer_id": None}, "missing:customer_id", "customer_id is missing"),
    ({"age": "abc"}, "non_numeric:age", "'abc'"),
    ({"annual_income": "n/a"}, "non_numeric:annual_income", "'n/a'"),
    ({"age": None}, "missing:age", "age is missing"),
    ({"age": "   "}, "missing:age", "age is missing"),
    ({"spending_score": np.inf}, "non_finite:spending_score", "spending_score=inf"),
    ({"annual_income": -np.inf}, "non_finite:annual_income", "annual_income=-inf"),
    ({"age": 250}, "out_of_range:age", "age=250"),
    ({"age": 15.5}, "out_of_range:age", "age=15.5"),
    ({"annual_income": -1}, "out_of_range:annual_income", "annual_income=-1"),
    ({"gender": "X"}, "invalid_category:gender", "gender='X'"),
    ({"country": None}, "missing:country", "country is missing"),
    ({"country": "US"}, "invalid_category:country", "'US'"),
]


@pytest.mark.parametrize(("values", "reason", "detail"), REASON_CASES, ids=[c[1] + "-" + str(c[0]) for c in REASON_CASES])
def test_each_reason_is_produced_for_a_crafted_row(values: dict[str, Any], reason: str, detail: str) -> None:
    raw = with_row(customers(30), **values)
    result = clean_customers(raw, make_config())
    assert_accounted(raw, result)
    assert len(result.rejects) == 1
    reject = result.rejects.iloc[0]
    assert reject["reason"] == reason
    assert detail in reject["detail"]
    assert result.rejects.index[0] == raw.index[0]
    assert reject["customer_id"] == ("" if reason == "missing:customer_id" else "1")
    assert result.report["rejected_by_reason"] == {reason: 1}


def test_null_gender_is_allowed_when_not_required() -> None:
    raw = with_row(customers(30), gender=None)
    result = clean_customers(raw, make_config())
    assert len(result.rejects) == 0
    assert pd.isna(result.clean["gender"].iloc[0])


def test_first_reason_by_precedence_and_detail_lists_all() -> None:
    raw = with_row(customers(30), age="abc", annual_income=-5, gender="X")
    reject = clean_customers(raw, make_config()).rejects.iloc[0]
    assert reject["reason"] == "non_numeric:age"
    assert "'abc'" in reject["detail"] and "annual_income=-5" in reject["detail"] and "gender='X'" in reject["detail"]


def test_numeric_strings_parse() -> None:
    raw = customers(6).astype({"annual_income": object, "age": object})
    raw["annual_income"] = ["12,000", " 42 ", "1e3", "1,234,567.5", 5000, "7"]
    raw["age"] = ["30", " 41", "5e1", 60, "70.5", "22"]
    result = clean_customers(raw, make_config())
    assert len(result.rejects) == 0
    assert result.clean["annual_income"].tolist() == [12000.0, 42.0, 1000.0, 1234567.5, 5000.0, 7.0]
    assert result.clean["age"].tolist() == [30.0, 41.0, 50.0, 60.0, 70.5, 22.0]


def test_decimal_comma_is_not_a_thousands_separator() -> None:
    raw = with_row(customers(10), annual_income="1,5")
    assert clean_customers(raw, make_config()).rejects["reason"].tolist() == ["non_numeric:annual_income"]


def test_output_columns_and_dtypes() -> None:
    raw = customers(20)
    raw["extra"] = "dropped"
    clean = clean_customers(raw, make_config()).clean
    assert list(clean.columns) == [
        "customer_id", *FEATURES, "gender", "country", "is_outlier", "outlier_reason", "imputed"
    ]  # fmt: skip
    assert clean["customer_id"].dtype == raw["customer_id"].dtype
    assert all(clean[f].dtype == np.float64 for f in FEATURES)
    assert clean["is_outlier"].dtype == bool
    assert (clean["outlier_reason"] == "").all() and (clean["imputed"] == "").all()


# --- duplicates -------------------------------------------------------------------------------


def test_duplicates_keep_the_first_occurrence() -> None:
    raw = customers(10)
    raw.loc[[3, 7], "customer_id"] = 1  # rows 0, 3, 7 share id 1
    result = clean_customers(raw, make_config())
    assert result.rejects.index.tolist() == [3, 7]
    assert (result.rejects["reason"] == "duplicate_id").all()
    assert (result.rejects["customer_id"] == "1").all()
    assert "duplicate customer_id 1" in result.rejects["detail"].iloc[0]
    assert result.clean.loc[0, "age"] == raw.loc[0, "age"]


def test_duplicates_keep_the_latest_by_updated_at() -> None:
    raw = customers(10)
    raw.loc[[3, 7], "customer_id"] = 1
    raw.loc[[0, 3, 7], "updated_at"] = pd.to_datetime(["2024-01-01", "2024-06-01", "2024-03-01"])
    result = clean_customers(raw, make_config(updated_at="updated_at"))
    assert result.rejects.index.tolist() == [0, 7]
    assert (result.rejects["reason"] == "duplicate_id").all()
    assert 3 in result.clean.index
    assert result.clean.index.tolist() == sorted(result.clean.index)  # input order is kept


def test_updated_at_as_text_and_missing_stamps_lose() -> None:
    raw = customers(6)
    raw["updated_at"] = ["2024-01-05", None, "2024-02-01", "2023-01-01", "not a date", "2024-01-01"]
    raw["customer_id"] = [1, 1, 1, 2, 2, 3]
    result = clean_customers(raw, make_config(updated_at="updated_at"))
    assert sorted(result.clean["customer_id"].tolist()) == [1, 2, 3]
    assert result.clean.index.tolist() == [2, 3, 5]


# --- missing values ---------------------------------------------------------------------------


def test_impute_median_fills_from_valid_rows_and_flags() -> None:
    raw = customers(21)
    raw = raw.astype({"age": object, "annual_income": object})
    raw.loc[0, "age"] = None
    raw.loc[1, ["age", "annual_income"]] = [None, ""]
    raw.loc[2, "age"] = 999  # rejected: its age must not move the median
    raw.loc[3, "annual_income"] = None
    raw.loc[3, "gender"] = "X"  # rejected for another reason: not imputed
    result = clean_customers(raw, make_config(missing="impute_median"))
    assert_accounted(raw, result)
    assert result.rejects["reason"].to_dict() == {2: "out_of_range:age", 3: "invalid_category:gender"}
    age_donors = raw.loc[4:, "age"].astype(float)  # rows 0-3 are missing or rejected
    income_donors = raw.loc[[0, *range(4, 21)], "annual_income"].astype(float)
    clean = result.clean
    assert clean.loc[0, "age"] == pytest.approx(age_donors.median())
    assert clean.loc[1, "annual_income"] == pytest.approx(income_donors.median())
    assert clean.loc[0, "imputed"] == "age"
    assert clean.loc[1, "imputed"] == "age,annual_income"
    assert (clean.drop(index=[0, 1])["imputed"] == "").all()
    assert result.report["imputed_by_feature"] == {"age": 2, "annual_income": 1, "spending_score": 0}


def test_impute_median_does_not_impute_non_numeric_or_required_categories() -> None:
    raw = with_row(customers(10), age="abc", country=None)
    reasons = clean_customers(raw, make_config(missing="impute_median")).rejects["reason"].tolist()
    assert reasons == ["non_numeric:age"]


# --- outliers inside cleaning -----------------------------------------------------------------


def outlier_frame() -> pd.DataFrame:
    raw = customers(200, seed=5)
    raw["age"] = np.random.default_rng(5).normal(40, 3, len(raw)).round(1)
    raw.loc[[10, 20], "age"] = [109.0, 108.0]  # in range, far outside the IQR fences
    return raw


def test_outliers_are_flagged_and_kept_by_default() -> None:
    raw = outlier_frame()
    result = clean_customers(raw, make_config(outliers={"method": "pooled"}))
    assert_accounted(raw, result)
    clean = result.clean
    assert clean.loc[[10, 20], "is_outlier"].all()
    assert (clean.loc[[10, 20], "outlier_reason"] == "outlier:age").all()
    assert result.report["n_outliers"] == int(clean["is_outlier"].sum()) >= 2
    assert result.report["outliers"]["method_used"] == "pooled"


def test_outliers_can_be_rejected() -> None:
    raw = outlier_frame()
    result = clean_customers(raw, make_config(outliers={"method": "pooled", "action": "reject"}))
    assert_accounted(raw, result)
    assert not result.clean["is_outlier"].any()
    rejected = result.rejects.loc[[10, 20]]
    assert (rejected["reason"] == "outlier:age").all()
    assert "age=109.0" in rejected.loc[10, "detail"]
    by_reason = result.report["rejected_by_reason"]
    assert sum(v for k, v in by_reason.items() if k.startswith("outlier:")) == result.report["n_outliers"]


def test_outlier_policy_failure_is_a_data_quality_error_naming_the_table() -> None:
    raw = outlier_frame()
    raw.loc[:29, "age"] = 105.0  # 15% far above the rest
    config = make_config(outliers={"method": "pooled", "on_excess": "fail"})
    with pytest.raises(DataQualityError, match=r"table 'customers'.*exclude 15\.\d% of rows \(cap 5\.0%\): age 15\.0%"):
        clean_customers(raw, config)


# --- structural errors ------------------------------------------------------------------------


def test_missing_feature_column_names_table_and_column() -> None:
    raw = customers(5).drop(columns="annual_income")
    with pytest.raises(DataQualityError) as err:
        clean_customers(raw, make_config(), table="crm.customers")
    assert "table 'crm.customers' has no column 'annual_income'" in str(err.value)
    assert "available: [" in str(err.value) and "'age'" in str(err.value)


def test_missing_id_column_uses_the_configured_table_name() -> None:
    raw = customers(5).drop(columns="customer_id")
    with pytest.raises(DataQualityError, match="table 'customers' has no column 'customer_id'"):
        clean_customers(raw, make_config())


def test_empty_table() -> None:
    with pytest.raises(DataQualityError, match="table 'customers' has 0 rows"):
        clean_customers(customers(0), make_config())


def test_non_numeric_feature_column() -> None:
    raw = customers(5).astype({"age": object})
    raw["age"] = ["abc", "old", None, "", "young"]
    with pytest.raises(DataQualityError, match="column 'age' is not numeric: e.g. 'abc'"):
        clean_customers(raw, make_config())


def test_every_row_rejected() -> None:
    raw = customers(12)
    raw["age"] = None
    with pytest.raises(DataQualityError) as err:
        clean_customers(raw, make_config())
    assert str(err.value) == "all 12 rows of 'customers' were rejected: {'missing:age': 12}"


# --- schema and index -------------------------------------------------------------------------


def test_schema_has_a_check_for_each_configured_range() -> None:
    schema = build_schema(make_config())
    assert isinstance(schema, pa.DataFrameSchema)
    expected = {
        "age": ("in_range", {"min_value": 16, "max_value": 110}),
        "annual_income": ("greater_than_or_equal_to", {"min_value": 0}),
        "spending_score": ("in_range", {"min_value": 1, "max_value": 100}),
    }
    for feature, (name, stats) in expected.items():
        column = schema.columns[feature]
        assert not column.nullable
        [check] = [c for c in column.checks if c.name == name]
        assert {k: check.statistics[k] for k in stats} == stats
    id_column = schema.columns["customer_id"]
    assert id_column.unique and not id_column.nullable
    assert schema.columns["gender"].nullable and not schema.columns["country"].nullable
    assert schema.columns["gender"].checks[0].statistics["allowed_values"] == ["Female", "Male", "Other"]


@pytest.mark.parametrize(
    "index",
    [
        pd.Index([f"row-{i}" for i in range(30)]),
        pd.Index(np.arange(30)[::-1] * 3 + 100),
        pd.Index([5] * 15 + [6] * 15),  # duplicated labels
    ],
    ids=["strings", "shuffled-ints", "duplicate-labels"],
)
def test_non_default_index_maps_failures_to_the_right_rows(index: pd.Index) -> None:
    raw = customers(30)
    raw.loc[4, "age"] = 300
    raw.loc[9, "customer_id"] = 1
    raw.loc[17, "gender"] = "X"
    raw.index = index
    result = clean_customers(raw, make_config())
    assert_accounted(raw, result)
    rejects = result.rejects
    assert rejects["reason"].tolist() == ["out_of_range:age", "duplicate_id", "invalid_category:gender"]
    assert rejects.index.tolist() == [index[4], index[9], index[17]]
    assert rejects["customer_id"].tolist() == ["5", "1", "18"]
    assert result.clean.index.tolist() == [index[i] for i in range(30) if i not in (4, 9, 17)]
    assert result.clean["customer_id"].tolist() == [i + 1 for i in range(30) if i not in (4, 9, 17)]


def test_float_ids_with_a_null_are_written_as_integers() -> None:
    raw = customers(10).astype({"customer_id": float})
    raw.loc[2, "customer_id"] = np.nan
    raw.loc[5, "customer_id"] = 1.0
    rejects = clean_customers(raw, make_config()).rejects
    assert rejects["customer_id"].tolist() == ["", "1"]


# --- the invariant, for any frame -------------------------------------------------------------

def mostly(valid: st.SearchStrategy[Any], dirty: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """About one cell in six dirty, so that frames are neither all clean nor all rejected."""
    return st.integers(0, 5).flatmap(lambda roll: dirty if roll == 0 else valid)


CELL = mostly(
    st.one_of(st.integers(20, 90), st.floats(20, 90), st.sampled_from([" 42 ", "55", "5e1"])),
    st.one_of(
        st.none(),
        st.integers(-5, 500),
        st.floats(allow_nan=True, allow_infinity=True, width=32),
        st.sampled_from(["12,000", "", "n/a", "abc", "inf", "1,5"]),
    ),
)
ROW = st.fixed_dictionaries(
    {
        "customer_id": mostly(st.integers(0, 40), st.none()),
        "age": CELL,
        "annual_income": CELL,
        "spending_score": CELL,
        "gender": mostly(st.sampled_from(["Female", "Male", "Other"]), st.sampled_from(["X", None])),
        "country": mostly(st.sampled_from(["DE", "FR"]), st.sampled_from(["US", None])),
    }
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(ROW, min_size=1, max_size=25),
    missing=st.sampled_from(["reject", "impute_median"]),
    action=st.sampled_from(["flag", "reject"]),
)
def test_every_row_is_kept_or_rejected_with_a_reason(rows: list[dict[str, Any]], missing: str, action: str) -> None:
    raw = pd.DataFrame(rows)
    config = make_config(missing=missing, outliers={"action": action}, k_range=(2, 3))
    try:
        result = clean_customers(raw, config)
    except DataQualityError as err:  # the whole table is unusable (every row rejected, ...)
        assert "'customers'" in str(err)
        return
    assert_accounted(raw, result)
    clean = result.clean
    for feature in FEATURES:
        assert clean[feature].dtype == np.float64
        assert np.isfinite(clean[feature]).all()
    assert clean["customer_id"].notna().all() and clean["customer_id"].is_unique
    assert clean["country"].isin(["DE", "FR"]).all()
    assert (clean["age"].between(16, 110)).all() and (clean["annual_income"] >= 0).all()
    assert sum(result.report["rejected_by_reason"].values()) == len(result.rejects)


def test_all_rejected_is_an_outcome_for_incremental_batches() -> None:
    """Scoring a batch of only bad rows records them; training on such a table stops."""
    from segmentation_pipeline.config import PipelineConfig

    cfg = PipelineConfig.model_validate(
        {"database": {"url": "sqlite://"}, "source": {"table": "t"}, "features": ["age"],
         "mlflow": {"tracking_uri": "x"}, "cleaning": {"ranges": {"age": {"min": 0, "max": 120}}}}
    )
    raw = pd.DataFrame({"customer_id": [1, 2], "age": [250.0, None]})
    with pytest.raises(DataQualityError, match="all 2 rows"):
        clean_customers(raw, cfg)
    result = clean_customers(raw, cfg, allow_all_rejected=True)
    assert result.clean.empty and list(result.rejects["reason"]) == ["out_of_range:age", "missing:age"]


def test_imputation_never_writes_into_the_input_frame() -> None:
    from segmentation_pipeline.config import PipelineConfig

    cfg = PipelineConfig.model_validate(
        {"database": {"url": "sqlite://"}, "source": {"table": "t"}, "features": ["age", "income"],
         "mlflow": {"tracking_uri": "x"}, "cleaning": {"missing": "impute_median"}}
    )
    raw = pd.DataFrame({"customer_id": [1, 2, 3], "age": [30.0, np.nan, 50.0], "income": [1.0, 2.0, 3.0]})
    before = raw.copy()
    result = clean_customers(raw, cfg)
    assert result.clean["age"].tolist() == [30.0, 40.0, 50.0]
    pd.testing.assert_frame_equal(raw, before)


# --- memory-lean paths give the same answer -----------------------------------------------------


def _dirty(n: int = 60, seed: int = 4) -> pd.DataFrame:
    """Valid customers with a bad value of every kind and ids sorted (as a keyset read returns them)."""
    frame = customers(n, seed).astype({"age": object, "gender": object})
    frame.loc[3, "age"] = "abc"
    frame.loc[7, "annual_income"] = -5.0
    frame.loc[11, "gender"] = "X"
    frame.loc[19, "spending_score"] = np.nan
    frame.loc[23, "country"] = None
    return frame


def _by_id(result) -> tuple[pd.DataFrame, pd.DataFrame]:
    clean = result.clean.sort_values("customer_id", ignore_index=True)
    rejects = result.rejects.sort_values("customer_id", ignore_index=True)
    return clean, rejects


@pytest.mark.parametrize("shuffled", [False, True], ids=["sorted ids", "shuffled ids"])
def test_consuming_the_raw_frame_gives_the_same_rows_and_reasons(shuffled: bool) -> None:
    raw = _dirty()
    if shuffled:
        raw = raw.sample(frac=1.0, random_state=1).reset_index(drop=True)
    config = make_config(updated_at="updated_at")
    expected = clean_customers(raw.copy(), config)
    own = raw.copy()
    consumed = clean_owned_customers(own, config)
    for got, want in zip(_by_id(consumed), _by_id(expected), strict=True):
        pd.testing.assert_frame_equal(got, want)
    assert isinstance(consumed.clean.index, pd.RangeIndex) and isinstance(consumed.rejects.index, pd.RangeIndex)
    assert list(own.columns) == []  # every column was handed over or dropped once read


def test_block_wise_validation_equals_one_pass_with_duplicates_across_blocks(monkeypatch) -> None:
    import segmentation_pipeline.core.cleaning as cleaning

    raw = _dirty()
    raw.loc[40, "customer_id"] = raw.loc[2, "customer_id"]  # a duplicate id 38 rows (several blocks) apart
    raw.loc[50, "customer_id"] = None
    config = make_config(updated_at="updated_at")
    expected = clean_customers(raw, config)
    monkeypatch.setattr(cleaning, "VALIDATE_BLOCK_ROWS", 7)  # 9 blocks, the last partial
    got = clean_customers(raw, config)
    pd.testing.assert_frame_equal(got.clean, expected.clean)
    pd.testing.assert_frame_equal(got.rejects, expected.rejects)
    assert {"duplicate_id", "missing:customer_id", "non_numeric:age"} <= set(got.rejects["reason"])


def test_sorted_distinct_ids_skip_the_hash_based_uniqueness_check(monkeypatch) -> None:
    import segmentation_pipeline.core.cleaning as cleaning

    built: list[bool] = []
    real = cleaning.build_schema

    def spy(config, *, ids_known_distinct=False):
        built.append(ids_known_distinct)
        return real(config, ids_known_distinct=ids_known_distinct)

    monkeypatch.setattr(cleaning, "build_schema", spy)
    clean_customers(customers(30), make_config())
    assert built == [True]  # only the row rules: the ids were proved distinct by their order
    built.clear()
    shuffled = customers(30).iloc[::-1].reset_index(drop=True)
    clean_customers(shuffled, make_config())
    assert False in built  # unsorted: the uniqueness rule runs over every id
