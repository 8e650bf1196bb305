"""One set of cleaning rules and one outlier guard: both engines clean a planted table identically.

The table plants every kind of bad row (missing and duplicate ids, unparsable, missing and
out-of-range values, an unknown category), a small distinct VIP group that pooled IQR fences
would erase, and a few far-off noise rows. Each engine must reject exactly the planted rows for
the planted reasons, keep the VIPs, flag the noise, and (Spark) match the local engine's rejects,
flags and report. Without Java or pyspark the Spark case skips with the reason (fails under CI=true).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytest

from segmentation_pipeline.config import PipelineConfig
from segmentation_pipeline.core.cleaning import clean_customers as local_clean

FEATURES = ["age", "annual_income", "spending_score"]
SCHEMA = "customer_id long, age string, annual_income double, spending_score double, gender string, updated_at timestamp"
N_ORDINARY, N_VIP, N_NOISE = 560, 24, 3

# planted bad rows: customer_id -> expected reason
PLANTED_REJECTS = {
    "": "missing:customer_id",
    "7": "duplicate_id",  # the older of two rows with id 7
    "11": "non_numeric:age",
    "12": "missing:age",
    "13": "out_of_range:age",
    "14": "out_of_range:spending_score",
    "15": "invalid_category:gender",
    "16": "non_finite:annual_income",
}


def _config(**outliers: Any) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "database": {"url": "sqlite://"},
            "source": {"table": "customers", "id_column": "customer_id", "updated_at_column": "updated_at"},
            "features": FEATURES,
            "k_range": [2, 6],
            "cleaning": {
                "ranges": {"age": {"min": 16, "max": 110}, "spending_score": {"min": 0, "max": 100}},
                "categorical": {"gender": {"allowed": ["Female", "Male"], "required": False}},
                "outliers": outliers,
            },
            "transform": {"log1p": ["annual_income"]},
            "mlflow": {"tracking_uri": "sqlite://"},
        }
    )


def planted_table() -> tuple[pd.DataFrame, set[str], set[str]]:
    """(raw table, VIP ids, noise ids): two ordinary groups, a rich compact VIP group, far noise."""
    rng = np.random.default_rng(11)
    half = N_ORDINARY // 2
    age = np.concatenate([rng.normal(30, 3, half), rng.normal(55, 3, half), rng.normal(45, 2, N_VIP)])
    income = np.concatenate([rng.lognormal(np.log(35_000), 0.15, half), rng.lognormal(np.log(60_000), 0.15, half),
                             rng.lognormal(np.log(900_000), 0.05, N_VIP)])
    score = np.concatenate([rng.normal(30, 4, half), rng.normal(60, 4, half), rng.normal(95, 1, N_VIP)])
    noise = np.array([[40.0, 5e7, 50.0], [70.0, 4e4, 0.5], [20.0, 150.0, 45.0]])
    values = np.vstack([np.column_stack([age.round(1), income.round(2), score.clip(0, 99).round(1)]), noise])
    ids = np.arange(100, 100 + len(values))
    frame = pd.DataFrame({
        "customer_id": ids, "age": [str(a) for a in values[:, 0]], "annual_income": values[:, 1],
        "spending_score": values[:, 2], "gender": np.where(ids % 2 == 0, "Female", "Male"),
        "updated_at": pd.Timestamp("2024-01-01"),
    })
    dirty = pd.DataFrame({
        "customer_id": [None, 7, 7, 11, 12, 13, 14, 15, 16],
        "age": ["40", "41", "42", "abc", None, "200", "33", "35", "36"],
        "annual_income": [5e4, 5e4, 5.1e4, 5e4, 5e4, 5e4, 5e4, 5e4, np.inf],
        "spending_score": [40.0, 41.0, 42.0, 43.0, 44.0, 45.0, 250.0, 46.0, 47.0],
        "gender": ["Male", "Male", "Male", "Male", "Male", "Male", "Male", "X", "Male"],
        "updated_at": pd.to_datetime(["2024-01-01", "2023-01-01", "2024-06-01"] + ["2024-01-01"] * 6),
    })
    raw = pd.concat([dirty, frame], ignore_index=True).astype({"customer_id": "Int64"})
    vips = {str(i) for i in ids[N_ORDINARY:N_ORDINARY + N_VIP]}
    return raw, vips, {str(i) for i in ids[-N_NOISE:]}


@dataclass(frozen=True)
class Outcome:
    rejects: pd.DataFrame  # customer_id, reason, detail (sorted)
    flags: pd.DataFrame  # customer_id -> is_outlier, outlier_reason
    report: dict[str, Any]


def _outcome(rejects: pd.DataFrame, clean: pd.DataFrame, report: dict[str, Any]) -> Outcome:
    keyed = rejects[["customer_id", "reason", "detail"]].astype(str)
    flags = clean.assign(customer_id=clean["customer_id"].astype("int64").astype(str))
    flags = flags.set_index("customer_id")[["is_outlier", "outlier_reason"]].astype({"outlier_reason": str})
    return Outcome(keyed.sort_values(list(keyed.columns), ignore_index=True), flags.sort_index(), report)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture(scope="module")
def spark_session() -> Iterator[Any]:
    from segmentation_pipeline.engines.spark import SparkSettings, SparkUnavailableError, build_session

    settings = SparkSettings(
        master="local[2]", app_name="segmentation-cleaning-parity", num_partitions=2,
        extra_conf={"spark.sql.shuffle.partitions": "2", "spark.default.parallelism": "2"},
    )
    try:
        session = build_session(settings)
    except SparkUnavailableError as exc:
        if _in_ci():
            pytest.fail(f"Spark unavailable under CI=true (Spark tests must not skip): {exc}")
        pytest.skip(f"Spark unavailable: {exc}")
    try:
        yield session
    finally:
        session.stop()


def run(engine: str, config: PipelineConfig, request: pytest.FixtureRequest, raw: pd.DataFrame | None = None) -> Outcome:
    raw = planted_table()[0] if raw is None else raw
    if engine == "local":
        result = local_clean(raw, config)
        return _outcome(result.rejects, result.clean, result.report)
    from segmentation_pipeline.engines.spark.cleaning import clean_customers as spark_clean

    spark = request.getfixturevalue("spark_session")
    rows = raw.astype(object).where(raw.notna(), None)
    result = spark_clean(spark.createDataFrame(rows, SCHEMA), config)
    try:
        return _outcome(result.rejects.toPandas(), result.clean.toPandas(), result.report)
    finally:
        result.unpersist()


ENGINES = ["local", pytest.param("spark", marks=pytest.mark.spark)]


def _comparable(report: dict[str, Any]) -> dict[str, Any]:
    """The outlier report without engine-only keys and with provisional cluster ids (which each
    engine's KMeans numbers its own way) replaced by the clusters' sorted contents."""
    out = {k: v for k, v in report.items() if k not in {"quantiles", "provisional_silhouette"}}
    for key in ("cluster_sizes", "outliers_by_cluster"):
        if key in out:
            out[key] = sorted(out[key].values())
    if "cluster_fences" in out:
        out["cluster_fences"] = sorted(out["cluster_fences"].values(), key=lambda f: sorted(f.items()))
    if "erased_clusters" in out:
        out["erased_clusters"] = sorted((v["size"], v["flagged_share"]) for v in out["erased_clusters"].values())
    if out.get("warning"):
        out["warning"] = re.sub(r"provisional cluster \d+", "provisional cluster #", out["warning"])
    return out


#: Report keys decided before the provisional clustering's centres matter: equal in every engine.
DECISION_KEYS = ("method_requested", "method_used", "guard_tripped", "pooled_share", "share_by_feature", "fences",
                 "erased_clusters", "multiplier_used", "provisional_k", "fence_scale", "features")


def _assert_same_as_local(outcome: Outcome, local: Outcome) -> None:
    """Rejects for the cleaning rules, and the guard's decision, are identical. Segment-aware
    flags depend on the provisional centres (MLlib k-means|| on Spark, scikit-learn locally: the
    documented difference), so there the flags must agree on nearly every row; otherwise exactly."""
    report, want = _comparable(outcome.report["outliers"]), _comparable(local.report["outliers"])
    rules = ~local.rejects["reason"].str.startswith("outlier:")
    pd.testing.assert_frame_equal(
        outcome.rejects[~outcome.rejects["reason"].str.startswith("outlier:")].reset_index(drop=True),
        local.rejects[rules].reset_index(drop=True),
    )
    if want["method_used"] != "segment_aware":
        pd.testing.assert_frame_equal(outcome.rejects, local.rejects)
        pd.testing.assert_frame_equal(outcome.flags, local.flags)
        _assert_same(report, want)
        return
    _assert_same({k: report.get(k) for k in DECISION_KEYS}, {k: want.get(k) for k in DECISION_KEYS})
    if want["guard_tripped"]:  # why it tripped; a "still exclude" tail depends on the final counts
        assert report["warning"].split(";")[0] == want["warning"].split(";")[0]
    ids = local.flags.index.union(outcome.flags.index)
    flagged = outcome.flags["is_outlier"].reindex(ids, fill_value=True)  # rejected as outlier = flagged
    expected = local.flags["is_outlier"].reindex(ids, fill_value=True)
    assert (flagged == expected).mean() >= 0.97, f"segment-aware flags agree on {(flagged == expected).mean():.1%}"


def _assert_same(got: Any, want: Any, path: str = "report") -> None:
    """Equal, floats to 1e-9 relative (Spark's exact percentile and numpy's may differ in the last bit)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), (path, got, want)
        for key in want:
            _assert_same(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list | tuple):
        assert isinstance(got, list | tuple) and len(got) == len(want), (path, got, want)
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _assert_same(g, w, f"{path}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-9), path
    else:
        assert got == want, path


@pytest.mark.parametrize("engine", ENGINES)
def test_planted_rejects_vips_and_noise_are_the_same_in_every_engine(
    engine: str, request: pytest.FixtureRequest
) -> None:
    raw, vips, noise = planted_table()
    outcome = run(engine, _config(), request)

    assert dict(zip(outcome.rejects["customer_id"], outcome.rejects["reason"], strict=True)) == PLANTED_REJECTS
    duplicate = outcome.rejects.loc[outcome.rejects["customer_id"] == "7", "detail"].item()
    assert duplicate == "duplicate customer_id 7 (the first, or latest updated, row with this id is kept)"
    assert len(outcome.rejects) + len(outcome.flags) == len(raw)

    report = outcome.report["outliers"]
    assert report["guard_tripped"] and report["method_used"] == "segment_aware"
    assert "a real segment, not noise" in report["warning"]
    assert report["pooled_share"] < report["max_share"]  # the erased-cluster test, not the share cap, tripped
    flagged = set(outcome.flags.index[outcome.flags["is_outlier"]])
    assert noise <= flagged and len(flagged & vips) < 0.2 * len(vips)  # pooled fences flag them all
    assert report["n_outliers"] == len(flagged) == outcome.report["n_outliers"]
    assert (outcome.flags.loc[sorted(flagged), "outlier_reason"].str.startswith("outlier:")).all()

    if engine != "local":
        local = run("local", _config(), request)
        _assert_same_as_local(outcome, local)
        for key in ("n_input", "n_clean", "n_rejected", "rejected_by_reason", "n_imputed"):
            assert outcome.report[key] == local.report[key], key


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    "policy",
    [
        {"method": "segment_aware"},
        {"on_excess": "widen"},
        {"on_excess": "segment_aware", "action": "reject"},
    ],
    ids=["segment_aware", "widen", "reject"],
)
def test_outlier_policies_give_the_same_flags_and_report_in_every_engine(
    engine: str, policy: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    _, vips, _ = planted_table()
    config = _config(**policy)
    outcome = run(engine, config, request)
    report = outcome.report["outliers"]
    flagged = set(outcome.flags.index[outcome.flags["is_outlier"]])
    if policy.get("method") == "segment_aware":  # asked for: no guard needed
        assert not report["guard_tripped"] and report["method_used"] == "segment_aware"
        assert len(flagged & vips) < 0.2 * len(vips)
    elif policy.get("on_excess") == "widen":
        assert report["method_used"] == "widened" and report["multiplier_used"] > config.cleaning.outliers.iqr_multiplier
        assert len(flagged & vips) < 0.2 * len(vips)
    else:
        assert not flagged and len(set(outcome.rejects["customer_id"]) & vips) < 0.2 * len(vips)
        outliers = outcome.rejects[outcome.rejects["reason"].str.startswith("outlier:")]
        assert len(outliers) == report["n_outliers"] > 0
        assert outliers["detail"].str.contains(" outside the segment_aware IQR fences (outlier:", regex=False).all()
    if engine != "local":
        _assert_same_as_local(outcome, run("local", config, request))


@pytest.mark.parametrize("engine", ENGINES)
def test_fail_policy_raises_the_same_error_in_every_engine(engine: str, request: pytest.FixtureRequest) -> None:
    from segmentation_pipeline.core.cleaning import DataQualityError

    with pytest.raises(DataQualityError) as error:
        run(engine, _config(on_excess="fail"), request)
    message = str(error.value)
    assert message.startswith("table 'customers': pooled IQR fences would flag ")
    assert message.endswith(": a real segment, not noise; outliers.on_excess is 'fail'")


def _clean_with(engine: str, raw: pd.DataFrame, schema: str, config: PipelineConfig, request: pytest.FixtureRequest) -> Outcome:
    """Clean ``raw`` with one engine's cleaning (Spark from ``schema``)."""
    if engine == "local":
        result = local_clean(raw, config)
        return _outcome(result.rejects, result.clean, result.report)
    from segmentation_pipeline.engines.spark.cleaning import clean_customers as spark_clean

    spark = request.getfixturevalue("spark_session")
    result = spark_clean(spark.createDataFrame(raw.astype(object).where(raw.notna(), None), schema), config)
    try:
        return _outcome(result.rejects.toPandas(), result.clean.toPandas(), result.report)
    finally:
        result.unpersist()


@pytest.mark.parametrize("engine", ENGINES)
def test_auto_log1p_is_decided_the_same_in_every_engine(engine: str, request: pytest.FixtureRequest) -> None:
    config = _config().model_copy(update={"transform": _config().transform.model_copy(update={"log1p": "auto"})})
    outcome = run(engine, config, request)
    transform = outcome.report["transform"]
    assert transform["log1p_mode"] == "auto" and transform["log1p"] == ["annual_income"]
    assert outcome.report["outliers"]["fence_scale"]["annual_income"] == "log1p"
    if engine != "local":  # every valid row on both sides (< SKEW_SAMPLE_ROWS): the same numbers
        local = run("local", config, request).report["transform"]
        for column, numbers in local["skewness"].items():
            for key, value in numbers.items():
                got = transform["skewness"][column][key]
                assert (got is None and value is None) or got == pytest.approx(value, rel=1e-4, abs=1e-6), (column, key)
        _assert_same_as_local(outcome, run("local", config, request))


CATEGORY_SCHEMA = "customer_id long, x double, y double, channel long, region double, code string"


def _coded_table() -> pd.DataFrame:
    """Integer-coded categories as ints, as floats that met a NULL, and as text; one bad value each."""
    rng = np.random.default_rng(4)
    n = 40
    frame = pd.DataFrame({
        "customer_id": np.arange(1, n + 1), "x": rng.normal(size=n), "y": rng.normal(size=n),
        "channel": np.where(np.arange(n) % 2 == 0, 1, 2),
        "region": np.where(np.arange(n) % 3 == 0, 3.0, np.where(np.arange(n) % 5 == 0, np.nan, 1.0)),
        "code": np.where(np.arange(n) % 2 == 0, "1", "2").astype(object),
    })
    frame.loc[3, "channel"] = 3  # not allowed
    frame.loc[4, "region"] = 2.5  # not allowed
    frame.loc[7, "code"] = "x"  # not allowed
    return frame


def _coded_config() -> PipelineConfig:
    return PipelineConfig.model_validate({
        "database": {"url": "sqlite://"}, "source": {"table": "customers"}, "features": ["x", "y"], "k_range": [2, 4],
        "cleaning": {"outliers": {"enabled": False}, "categorical": {
            "channel": {"allowed": [1, 2]}, "region": {"allowed": ["1", 3]}, "code": {"allowed": [1, "2"]}}},
        "transform": {"log1p": []}, "mlflow": {"tracking_uri": "sqlite://"},
    })


@pytest.mark.parametrize("engine", ENGINES)
def test_integer_coded_categories_match_ints_text_and_floats_in_every_engine(
    engine: str, request: pytest.FixtureRequest
) -> None:
    outcome = _clean_with(engine, _coded_table(), CATEGORY_SCHEMA, _coded_config(), request)
    reasons = dict(zip(outcome.rejects["customer_id"], outcome.rejects["reason"], strict=True))
    assert reasons == {"4": "invalid_category:channel", "5": "invalid_category:region", "8": "invalid_category:code"}
    details = dict(zip(outcome.rejects["customer_id"], outcome.rejects["detail"], strict=True))
    assert details["4"] == "channel='3' not in [1, 2]"
    assert details["5"] == "region='2.5' not in ['1', 3]"
    if engine != "local":
        local = _clean_with("local", _coded_table(), CATEGORY_SCHEMA, _coded_config(), request)
        pd.testing.assert_frame_equal(outcome.rejects, local.rejects)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"k_range": (2, 6)}, r"k_range \[2, 6\] is outside the allowed range \[2, 2\]"),
        ({"k": 4}, r"k=4 is larger than the 3 distinct customers after cleaning; allowed: 1 <= k <= 3"),
    ],
)
def test_k_the_clean_rows_cannot_hold_stops_right_after_cleaning(
    engine: str, change: dict[str, Any], message: str, request: pytest.FixtureRequest
) -> None:
    table = _coded_table().head(30).assign(x=1.0, y=2.0)
    table.loc[:1, "x"] = [5.0, 9.0]  # three distinct customers among 30 clean rows
    config = _coded_config().model_copy(update=change)
    if engine == "local":
        from segmentation_pipeline.engines.local import LocalEngine

        compute: Any = LocalEngine()
        raw: Any = table
    else:
        from segmentation_pipeline.engines.spark.engine import SparkEngine
        from segmentation_pipeline.engines.spark.handoff import SparkFrame

        spark = request.getfixturevalue("spark_session")
        compute = SparkEngine(spark)
        raw = SparkFrame(spark.createDataFrame(table.astype(object).where(table.notna(), None), CATEGORY_SCHEMA), len(table))
    with pytest.raises(ValueError, match=message):
        compute.clean(raw, config)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_mostly_zero_feature_is_left_unfenced_in_every_engine(engine: str, request: pytest.FixtureRequest) -> None:
    """80% of spending scores 0 (quartiles 0 and 0): Tukey's fences would flag every other score."""
    raw = planted_table()[0]
    ids = pd.to_numeric(raw["customer_id"], errors="coerce")
    raw.loc[(ids % 10 < 8).fillna(False).to_numpy(dtype=bool), "spending_score"] = 0.0
    config = _config()
    outcome = run(engine, config, request, raw)
    report = outcome.report["outliers"]
    assert report["open_fences"] == ["spending_score"]
    assert report["fences"]["spending_score"] == [-np.inf, np.inf]  # pooled: open, flags nobody
    assert report["share_by_feature"]["spending_score"] == 0
    assert report["share_by_feature"]["annual_income"] > 0  # the other features are still fenced
    if engine != "local":
        _assert_same_as_local(outcome, run("local", config, request, raw))
