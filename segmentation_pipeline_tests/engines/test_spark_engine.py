"""The Spark engine against the real MariaDB: same rows, reasons, segments and write-back as local.

One module-scoped ``local[2]`` session and one run of extract -> clean -> sweep/fit on 5,000 demo
customers (planted segments, dirty rows, outliers); the local engine's core functions run on the
same table, and every test compares against the plants or the local result. Without Java, pyspark
or the JDBC jar the tests skip with the reason, and fail under ``CI=true``.
"""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from sklearn.metrics import adjusted_rand_score

from segmentation_pipeline.config import PipelineConfig
from segmentation_pipeline.core.cleaning import clean_customers as local_clean
from segmentation_pipeline.core.demo_data import generate_customers
from segmentation_pipeline.core.features import build_features
from segmentation_pipeline.core.k_evidence import select_k
from segmentation_pipeline.core.modeling import canonical_relabel, fit_kmeans
from segmentation_pipeline.engines.spark import SparkSettings, SparkUnavailableError, build_session
from segmentation_pipeline.storage.connection import create_db_engine
from segmentation_pipeline.storage.reads import read_table
from segmentation_pipeline.storage.bulk_load import load_frame
from segmentation_pipeline.storage.errors import WriteError

pytestmark = [pytest.mark.mysql, pytest.mark.spark]

TABLE = "customers_spark"
N_ROWS = 5_000
COLUMNS = ["customer_id", "gender", "age", "annual_income", "spending_score", "updated_at"]


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _config(url: str) -> PipelineConfig:
    """The shipped defaults (configs/mysql.yaml), written out so the test does not follow YAML edits;
    k_range is narrowed to keep the sweep quick (both engines sweep the same candidates) and the
    output tables are the test's own."""
    return PipelineConfig.model_validate(
        {
            "database": {"url": url},
            "source": {"table": TABLE, "id_column": "customer_id", "updated_at_column": "updated_at"},
            "features": ["age", "annual_income", "spending_score"],
            "k_range": [2, 8],
            "cleaning": {
                "missing": "reject",
                "ranges": {
                    "age": {"min": 16, "max": 110},
                    "annual_income": {"min": 0, "max": 10_000_000},
                    "spending_score": {"min": 1, "max": 100},
                },
                "categorical": {"gender": {"allowed": ["Female", "Male", "Other"], "required": False}},
            },
            "transform": {"log1p": ["annual_income"], "pca_components": 0.95, "float32": True},
            "mlflow": {"tracking_uri": "sqlite:///unused.db"},
            # the session database is shared with other suites: never touch the default table names
            "output": {
                "segments_table": "spark_customer_segments",
                "rejects_table": "spark_customer_rejects",
                "history_table": "spark_segment_assignments",
            },
        }
    )


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    settings = SparkSettings(
        master="local[2]", app_name="segmentation-tests", num_partitions=4,
        extra_conf={"spark.sql.shuffle.partitions": "4", "spark.default.parallelism": "2"},
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


@pytest.fixture(scope="module")
def engine(mysql_database_url: str) -> Iterator[sa.Engine]:
    db = create_db_engine(mysql_database_url)
    yield db
    db.dispose()


@pytest.fixture(scope="module")
def config(mysql_database_url: str) -> PipelineConfig:
    return _config(mysql_database_url)


@pytest.fixture(scope="module")
def demo(engine: sa.Engine) -> tuple[pd.DataFrame, np.ndarray]:
    """5,000 customers in MariaDB; no primary key, because the demo's stale duplicates share ids."""
    frame, planted = generate_customers(N_ROWS, seed=3)
    load_frame(engine, TABLE, frame, if_exists="replace")
    return frame, planted


@pytest.fixture(scope="module")
def spark_run(spark: Any, engine: sa.Engine, config: PipelineConfig, demo: Any) -> dict[str, Any]:
    from segmentation_pipeline.engines.spark import cleaning, extract, model

    seconds: dict[str, float] = {}
    started = time.perf_counter()
    ex = extract.read_customers(spark, engine, TABLE, COLUMNS, id_column="customer_id", num_partitions=4)
    seconds["extract_plan"] = time.perf_counter() - started
    started = time.perf_counter()
    result = cleaning.clean_customers(ex.frame, config)
    seconds["extract_and_clean"] = time.perf_counter() - started
    started = time.perf_counter()
    training = model.train(result.clean, config, n_fit=result.report["n_fit"])
    seconds["train"] = time.perf_counter() - started
    assigned = training.assign(result.clean).select("customer_id", "segment_id", "is_outlier").toPandas()
    print(f"\nSpark engine on {N_ROWS} rows: {({k: round(v, 1) for k, v in seconds.items()})}, "
          f"training {({k: round(v, 1) for k, v in training.seconds.items()})}")
    return {
        "extract": ex,
        "result": result,
        "training": training,
        "clean": result.clean.toPandas(),
        "rejects": result.rejects.toPandas(),
        "assigned": assigned.set_index("customer_id"),
    }


@pytest.fixture(scope="module")
def local_run(engine: sa.Engine, config: PipelineConfig, demo: Any) -> dict[str, Any]:
    raw = read_table(engine, TABLE, COLUMNS, id_column="customer_id", chunk_size=config.database.chunk_size)
    result = local_clean(raw, config)
    clean = result.clean
    matrix = build_features(clean, config, "customer_id", fit_mask=~clean["is_outlier"].to_numpy(dtype=bool))
    selection = select_k(matrix.X_fit, config)
    kmeans = fit_kmeans(
        matrix.X_fit, selection.k, n_init=config.model.n_init, max_iter=config.model.max_iter,
        random_state=config.model.random_state,
    )
    labels = canonical_relabel(kmeans)[kmeans.predict(matrix.X)]
    return {"result": result, "selection": selection, "segments": pd.Series(labels, index=clean["customer_id"])}


# --------------------------------------------------------------------------- session and extraction


def test_missing_jdbc_jar_is_reported_before_the_jvm_starts(tmp_path: Any) -> None:
    with pytest.raises(SparkUnavailableError, match="JDBC driver jar not found"):
        build_session(SparkSettings(jdbc_driver_jar=str(tmp_path / "absent.jar")))


def test_credentials_stay_out_of_the_jdbc_url_and_errors(spark: Any, engine: sa.Engine, demo: Any) -> None:
    from segmentation_pipeline.engines.spark.extract import SparkJdbcError, jdbc_target, read_customers

    secret = "not-the-s3cret"
    url = engine.url.set(password=secret)
    target = jdbc_target(url)
    assert secret not in target.url and secret not in repr(target) and secret not in str(target)
    assert target.url.startswith("jdbc:mysql://127.0.0.1:3306/") and target.properties()["password"] == secret
    with pytest.raises(SparkJdbcError) as failure:  # root has no password: the server refuses this one
        read_customers(spark, engine, TABLE, COLUMNS, id_column="customer_id", num_partitions=2, target=target)
    assert secret not in str(failure.value) and "***" in str(failure.value)


def test_read_is_partitioned_on_the_id_range(spark_run: dict[str, Any]) -> None:
    ex = spark_run["extract"]
    assert (ex.partitioning, ex.num_partitions, ex.row_count) == ("range", 4, N_ROWS)
    assert ex.frame.rdd.getNumPartitions() == 4
    assert ex.min_id == 1 and ex.max_id == N_ROWS


# --------------------------------------------------------------------------- cleaning


def test_every_row_is_accounted_for_with_the_local_reasons(
    spark_run: dict[str, Any], local_run: dict[str, Any]
) -> None:
    report = spark_run["result"].report
    local = local_run["result"]
    assert report["n_input"] == N_ROWS == report["n_clean"] + report["n_rejected"]
    assert len(spark_run["clean"]) == report["n_clean"] and len(spark_run["rejects"]) == report["n_rejected"]
    assert report["rejected_by_reason"] == local.report["rejected_by_reason"]
    assert set(report["rejected_by_reason"]) == {"missing:annual_income", "out_of_range:age", "duplicate_id"}

    pd.testing.assert_frame_equal(_keyed(spark_run["rejects"]), _keyed(local.rejects))
    # the same rows survive (duplicates keep the latest updated row in both engines)
    assert sorted(spark_run["clean"]["customer_id"]) == sorted(local.clean["customer_id"])


def test_outlier_flags_match_the_local_engine(spark_run: dict[str, Any], local_run: dict[str, Any]) -> None:
    spark_report = spark_run["result"].report["outliers"]
    local_report = local_run["result"].report["outliers"]
    assert spark_report["method_used"] == local_report["method_used"]
    assert spark_report["guard_tripped"] == local_report["guard_tripped"]
    spark_flags = spark_run["clean"].set_index("customer_id")["is_outlier"]
    local_flags = local_run["result"].clean.set_index("customer_id")["is_outlier"]
    agreement = (spark_flags.loc[local_flags.index].to_numpy() == local_flags.to_numpy()).mean()
    assert agreement >= 0.999, f"outlier flags agree on {agreement:.4%} of rows"
    assert abs(spark_report["n_outliers"] - local_report["n_outliers"]) <= max(2, local_report["n_outliers"] // 50)
    reasons = spark_run["clean"].loc[spark_run["clean"]["is_outlier"], "outlier_reason"]
    assert len(reasons) and reasons.str.startswith("outlier:").all()


def _variant(config: PipelineConfig, **changes: Any) -> PipelineConfig:
    data = config.model_dump()
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return PipelineConfig.model_validate(data)


def _keyed(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[["customer_id", "reason", "detail"]].astype(str).sort_values(
        ["customer_id", "reason", "detail"], ignore_index=True
    )


EDGE_ROWS = pd.DataFrame(
    {
        "customer_id": [1, None, None, 2, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17],
        "age": ["30", "40", "50", " 41 ", "x", "1,000", "nan", "", "inf", "30", "25", "33", "44", "55", "66", None,
                "12,5", "1e1", "-inf", "45"],
        "annual_income": [1e4, 2e4, np.nan, 3e4, 4e4, 5e4, 6e4, 7e4, 8e4, 2e7, 1e4, np.inf, 5e4, 6e4, 7e4, 1e4, 1e4,
                          12345678.5, 1e4, np.nan],
        "spending_score": [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 500, 20, 21, 22, 23, 24],
        "gender": ["Male", "Female", "X", None, "Male", "Male", "Male", "Male", "Male", "Male", "Male", "Male", "Male",
                   "Male", "Male", "Male", "it's", "Male", "Male", "Male"],
        "updated_at": pd.to_datetime(["2024-01-01"] * 3 + ["2023-01-01", "2024-06-01"] + ["2024-01-01"] * 15),
    }
)
EDGE_SCHEMA = (
    "customer_id long, age string, annual_income double, spending_score long, gender string, updated_at timestamp"
)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"cleaning.missing": "impute_median"},
        {"cleaning.categorical": {"gender": {"allowed": ["Female", "Male", "Other"], "required": True}}},
    ],
    ids=["reject", "impute_median", "required_category"],
)
def test_cleaning_rules_match_local_on_edge_cases(spark: Any, config: PipelineConfig, changes: dict[str, Any]) -> None:
    """NULL and duplicate ids, "1,000", " 41 ", "nan", blanks, +-inf, ranges, categories: same
    reasons, same details, same survivors and values as the local engine."""
    from segmentation_pipeline.engines.spark.cleaning import clean_customers

    cfg = _variant(config, **{"cleaning.outliers.enabled": False, **changes})
    rows = EDGE_ROWS.astype({"customer_id": "Int64"}).astype(object).where(EDGE_ROWS.notna(), None)
    result = clean_customers(spark.createDataFrame(rows, EDGE_SCHEMA), cfg)
    local = local_clean(EDGE_ROWS.copy(), cfg)  # a copy: local impute_median writes into its input
    pd.testing.assert_frame_equal(_keyed(result.rejects.toPandas()), _keyed(local.rejects))
    clean = result.clean.toPandas().sort_values("customer_id", ignore_index=True)
    expected = local.clean.sort_values("customer_id", ignore_index=True)
    assert clean["customer_id"].tolist() == expected["customer_id"].astype("int64").tolist()
    np.testing.assert_allclose(clean[cfg.features].to_numpy(float), expected[cfg.features].to_numpy(float))
    assert clean["imputed"].tolist() == expected["imputed"].tolist()
    assert result.report["n_input"] == len(EDGE_ROWS) == result.report["n_clean"] + result.report["n_rejected"]


def test_outlier_guard_keeps_a_vip_segment_like_the_local_engine(spark: Any, config: PipelineConfig) -> None:
    """Issue 8 on Spark: pooled fences would erase a small rich segment; the guard trips and the
    segment-aware fences (provisional MLlib KMeans) keep the VIPs."""
    from segmentation_pipeline.engines.spark.cleaning import clean_customers

    frame, planted = generate_customers(3_000, seed=5, vip_share=0.03)
    frame = frame.astype({"gender": str})
    result = clean_customers(spark.createDataFrame(frame), config)
    local = local_clean(frame, config)
    report, local_report = result.report["outliers"], local.report["outliers"]
    assert report["guard_tripped"] and local_report["guard_tripped"]
    assert report["method_used"] == local_report["method_used"] == "segment_aware"
    assert "a real segment, not noise" in report["warning"]
    clean = result.clean.toPandas().set_index("customer_id")
    vips = frame.loc[planted == 5, "customer_id"]
    assert clean.loc[clean.index.intersection(vips), "is_outlier"].mean() < 0.05
    flags = local.clean.set_index("customer_id")["is_outlier"]
    agreement = (clean.loc[flags.index, "is_outlier"].to_numpy() == flags.to_numpy()).mean()
    assert agreement >= 0.98, f"segment-aware outlier flags agree with the local engine on {agreement:.2%}"
    assert result.report["n_input"] == len(frame) == result.report["n_clean"] + result.report["n_rejected"]


def test_outlier_policies_fail_widen_and_reject_like_the_local_engine(spark: Any, config: PipelineConfig) -> None:
    from segmentation_pipeline.core.cleaning import DataQualityError
    from segmentation_pipeline.engines.spark.cleaning import clean_customers

    frame, _ = generate_customers(3_000, seed=3)
    frame = frame.astype({"gender": str})
    source = spark.createDataFrame(frame).persist()
    fail = _variant(config, **{"cleaning.outliers.max_share": 0.001, "cleaning.outliers.on_excess": "fail"})
    with pytest.raises(DataQualityError) as spark_error:
        clean_customers(source, fail)
    with pytest.raises(DataQualityError) as local_error:
        local_clean(frame, fail)
    assert str(spark_error.value) == str(local_error.value)

    widen = _variant(config, **{"cleaning.outliers.max_share": 0.002, "cleaning.outliers.on_excess": "widen"})
    spark_report = clean_customers(source, widen).report["outliers"]
    local_report = local_clean(frame, widen).report["outliers"]
    for key in ("method_used", "multiplier_used", "n_outliers", "warning"):
        assert spark_report[key] == local_report[key], key

    reject = _variant(config, **{"cleaning.outliers.action": "reject"})
    result = clean_customers(source, reject)
    local = local_clean(frame, reject)
    pd.testing.assert_frame_equal(_keyed(result.rejects.toPandas()), _keyed(local.rejects))
    assert result.report["rejected_by_reason"] == local.report["rejected_by_reason"]
    assert not result.clean.toPandas()["is_outlier"].any()
    source.unpersist()


# --------------------------------------------------------------------------- model


def test_planted_segments_are_recovered(spark_run: dict[str, Any], demo: Any) -> None:
    frame, planted = demo
    truth = pd.Series(planted, index=frame["customer_id"])
    truth = truth[truth >= 0]  # dirty and outlier rows have no planted segment
    assigned = spark_run["assigned"]["segment_id"]
    common = truth.index.intersection(assigned.index)
    assert len(common) > 0.95 * len(truth)
    score = adjusted_rand_score(truth.loc[common], assigned.loc[common])
    assert score >= 0.9, f"adjusted Rand vs planted segments {score:.3f}"


def test_same_k_rule_and_segments_as_the_local_engine(spark_run: dict[str, Any], local_run: dict[str, Any]) -> None:
    training = spark_run["training"]
    metrics = training.selection.metrics
    assert list(metrics["k"]) == list(range(2, 9))
    assert {"inertia", "silhouette", "davies_bouldin", "calinski_harabasz", "silhouette_spark"} <= set(metrics.columns)
    assert metrics["silhouette_spark"].notna().all()  # ClusteringEvaluator ran on the sample
    assert training.k == local_run["selection"].k == 5
    # the evidence rule names the chosen k and the deciding evidence first (core/k_evidence.py)
    assert training.selection.reason.startswith(f"k={training.k}: "), training.selection.reason
    assert training.features.n_components == 3 or 0.95 < training.features.explained_variance_ratio.sum()
    spark_segments = spark_run["assigned"]["segment_id"]
    local_segments = local_run["segments"]
    common = local_segments.index.intersection(spark_segments.index)
    assert len(common) == len(local_segments)
    score = adjusted_rand_score(local_segments.loc[common], spark_segments.loc[common])
    assert score >= 0.9, f"adjusted Rand vs the local engine {score:.3f}"
    quality = training.metrics
    assert quality["n_clusters"] == 5 and quality["silhouette"] > 0.5 and quality["davies_bouldin"] > 0


def test_exported_assigner_scores_like_spark(
    spark_run: dict[str, Any], config: PipelineConfig, local_mlflow_uri: str, tmp_path: Any
) -> None:
    from segmentation_pipeline.core.modeling import canonical_relabel as relabel
    from segmentation_pipeline.engines.spark.export import to_segment_assigner

    training = spark_run["training"]
    assigner = to_segment_assigner(training, config, segment_names={i: f"S{i}" for i in range(training.k)})
    steps = assigner.pipeline.named_steps
    assert list(steps) == ["preprocess", "kmeans"]
    assert list(steps["preprocess"].named_steps) == ["log1p", "scale", "pca", "float32"]
    assert (relabel(steps["kmeans"]) == np.arange(training.k)).all()  # ids already canonical
    clean = spark_run["clean"]
    exported = assigner.assign(clean)
    spark_ids = spark_run["assigned"]["segment_id"].loc[clean["customer_id"]].to_numpy()
    agreement = (exported["segment_id"].to_numpy() == spark_ids).mean()
    assert agreement >= 0.999, f"exported sklearn pipeline agrees with Spark on {agreement:.4%} of rows"
    assert set(exported["segment_name"]) == {f"S{i}" for i in range(training.k)}
    blob = pickle.dumps(assigner.pipeline)  # served by MLflow: plain numpy/sklearn objects only
    assert b"segmentation_pipeline" not in blob and b"pyspark" not in blob
    restored = pickle.loads(blob)
    assert (restored.predict(clean[config.features].astype("float64")) == assigner.labels(clean)).all()

    # the registry contract: logged as the pyfunc, loaded back by alias, same answers
    from segmentation_pipeline.storage import mlflow_registry as registry

    target = registry.TrackingTarget(local_mlflow_uri, "spark-engine", str(tmp_path / "artifacts"))
    with registry.training_run(target, "dagster-run-spark"):
        version = registry.log_segmentation_model(assigner, clean, "spark_segmentation")
    registry.set_alias(local_mlflow_uri, "spark_segmentation", "champion", version)
    loaded, loaded_version = registry.load_assigner(local_mlflow_uri, "spark_segmentation", "champion")
    assert str(loaded_version) == str(version)
    assert (loaded.assign(clean)["segment_id"].to_numpy() == exported["segment_id"].to_numpy()).all()


# --------------------------------------------------------------------------- write-back


def test_writeback_through_jdbc_and_swap_lands_every_row(
    spark_run: dict[str, Any], engine: sa.Engine, config: PipelineConfig
) -> None:
    from segmentation_pipeline.engines.spark.writeback import publish_segments, rejects_frame, segments_frame

    training = spark_run["training"]
    result = spark_run["result"]
    names = {i: f"Segment {i}" for i in range(training.k)}
    output = config.output
    n_clean, n_rejected = result.report["n_clean"], result.report["n_rejected"]

    def publish(run_key: str, segments_df: Any = None) -> dict[str, int]:
        segments = segments_df if segments_df is not None else segments_frame(
            training.assign(result.clean), "customer_id", names, model_name=config.model.name,
            model_version="1", mlflow_run_id="mlflow-run", dagster_run_id=run_key,
        )
        rejects = rejects_frame(result.rejects, mlflow_run_id="mlflow-run", dagster_run_id=run_key)
        return publish_segments(engine, output, segments, rejects, run_key=run_key, lock_timeout_s=60)

    started = time.perf_counter()
    written = publish("run-1")
    print(f"\nSpark JDBC write-back of {n_clean + n_rejected} rows: {time.perf_counter() - started:.1f}s")
    assert written == {output.segments_table: n_clean, output.rejects_table: n_rejected, output.history_table: n_clean}
    publish("run-2")  # the second write swaps over existing tables; history keeps both runs

    with engine.connect() as conn:
        def scalar(sql: str) -> Any:
            return conn.exec_driver_sql(sql).scalar()

        assert scalar(f"SELECT COUNT(*) FROM {output.segments_table}") == n_clean
        assert scalar(f"SELECT COUNT(DISTINCT customer_id) FROM {output.segments_table}") == n_clean
        assert scalar(f"SELECT COUNT(*) FROM {output.rejects_table}") == n_rejected
        assert scalar(f"SELECT COUNT(*) FROM {output.segments_table}") + scalar(
            f"SELECT COUNT(*) FROM {output.rejects_table}") == N_ROWS
        assert scalar(f"SELECT COUNT(*) FROM {output.history_table} WHERE dagster_run_id = 'run-2'") == n_clean
        assert scalar(f"SELECT COUNT(DISTINCT dagster_run_id) FROM {output.history_table}") == 2
        assert scalar(f"SELECT SUM(is_outlier) FROM {output.segments_table}") == result.report["n_outliers"]
        tables = set(sa.inspect(conn).get_table_names())
    assert not {t for t in tables if t.startswith("spark_") and t.endswith(("__staging", "__old"))}, tables
    pk = sa.inspect(engine).get_pk_constraint(output.segments_table)["constrained_columns"]
    assert pk == ["customer_id"]
    stored = read_table(engine, output.segments_table, None, id_column="customer_id", chunk_size=100_000)
    expected = spark_run["assigned"]["segment_id"]
    assert (stored.set_index("customer_id")["segment_id"].loc[expected.index] == expected).all()
    assert set(stored["segment_name"]) == set(names.values())
    assert set(stored["dagster_run_id"]) == {"run-2"}

    # a failing write (duplicate primary key) leaves both live tables exactly as they were
    segments = segments_frame(
        training.assign(result.clean), "customer_id", names, model_name=config.model.name,
        model_version="2", mlflow_run_id="mlflow-run", dagster_run_id="run-3",
    )
    with pytest.raises(WriteError) as failure:
        publish("run-3", segments.unionByName(segments.limit(1)))
    assert "Duplicate" in str(failure.value) or "duplicate" in str(failure.value)
    with engine.connect() as conn:
        assert conn.exec_driver_sql(f"SELECT COUNT(*) FROM {output.segments_table}").scalar() == n_clean
        assert conn.exec_driver_sql(
            f"SELECT COUNT(*) FROM {output.segments_table} WHERE dagster_run_id = 'run-2'").scalar() == n_clean
        assert conn.exec_driver_sql(
            f"SELECT COUNT(*) FROM {output.history_table} WHERE dagster_run_id = 'run-3'").scalar() == 0
        tables = set(sa.inspect(conn).get_table_names())
    assert not {t for t in tables if t.startswith("spark_") and t.endswith(("__staging", "__old"))}, tables
