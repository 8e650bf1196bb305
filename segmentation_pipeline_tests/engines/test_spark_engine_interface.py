"""SparkEngine through the ComputeEngine interface, stage by stage, against the real MariaDB.

One module-scoped ``local[2]`` session drives extract -> clean -> fit_features -> sweep_k ->
fit_clusters -> assign_eval -> publish on 4,000 planted demo customers, with the assigner built
the engine-neutral way an asset builds a first model. The checks: the records have the contract's
shapes (the same as the core functions produce), every row lands in the database exactly once, the
planted segments are recovered, and the Features record survives the hand-off to another process.
Without Java, pyspark or the JDBC jar the tests skip with the reason, and fail under ``CI=true``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from sklearn.metrics import adjusted_rand_score

from segmentation_pipeline.config import PipelineConfig
from segmentation_pipeline.core.assigner import SegmentAssigner
from segmentation_pipeline.core.demo_data import generate_customers
from segmentation_pipeline.core.modeling import build_model_pipeline, quality_metrics, spread_scores
from segmentation_pipeline.core.naming import profile_segments
from segmentation_pipeline.engines.base import ComputeEngine, Features, RunIds
from segmentation_pipeline.engines.spark import SparkSettings, SparkUnavailableError, build_session
from segmentation_pipeline.storage.connection import create_db_engine
from segmentation_pipeline.storage.reads import read_table
from segmentation_pipeline.storage.bulk_load import load_frame

pytestmark = [pytest.mark.mysql, pytest.mark.spark]

TABLE = "customers_spark_iface"
N_ROWS = 4_000
RUN_IDS = RunIds(mlflow_run_id="mlflow-iface", dagster_run_id="dagster-iface")


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _config(url: str) -> PipelineConfig:
    """The shipped defaults written out (as test_spark_engine does), k candidates around the five
    planted segments, and output tables of this module's own."""
    return PipelineConfig.model_validate(
        {
            "engine": "spark",
            "spark": {"num_partitions": 4},
            "database": {"url": url},
            "source": {"table": TABLE, "id_column": "customer_id", "updated_at_column": "updated_at"},
            "features": ["age", "annual_income", "spending_score"],
            "k_range": [4, 6],
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
            "naming": {"value_feature": "annual_income"},
            "mlflow": {"tracking_uri": "sqlite:///unused.db"},
            "output": {
                "segments_table": "iface_customer_segments",
                "rejects_table": "iface_customer_rejects",
                "history_table": "iface_segment_assignments",
            },
        }
    )


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    settings = SparkSettings(
        master="local[2]", app_name="segmentation-engine-tests", num_partitions=4,
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
def db(mysql_database_url: str) -> Iterator[sa.Engine]:
    engine = create_db_engine(mysql_database_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def config(mysql_database_url: str) -> PipelineConfig:
    return _config(mysql_database_url)


@pytest.fixture(scope="module")
def demo(db: sa.Engine) -> tuple[pd.DataFrame, np.ndarray]:
    frame, planted = generate_customers(N_ROWS, seed=11)
    load_frame(db, TABLE, frame, if_exists="replace")
    return frame, planted


@pytest.fixture(scope="module")
def run(spark: Any, db: sa.Engine, config: PipelineConfig, demo: Any) -> dict[str, Any]:
    from segmentation_pipeline.engines.spark.engine import SparkEngine

    engine = SparkEngine(spark)
    extracted = engine.extract(config, db)
    cleaned = engine.clean(extracted.table, config)
    features = engine.fit_features(cleaned.clean, config)
    swept: list[int] = []
    selection = engine.sweep_k(features, config, progress=lambda k, _row: swept.append(k))
    clusters = engine.fit_clusters(cleaned.clean, features, selection.k, config)
    # a first model, as the asset builds it: canonical ids, any names
    assigner = SegmentAssigner(
        pipeline=build_model_pipeline(features.preprocessor, clusters.model),
        features=list(config.features),
        label_to_segment=clusters.canonical,
        segment_names={int(s): f"S{int(s)}" for s in clusters.canonical},
    )
    eval_ids = engine.assign_eval(cleaned.clean, features, clusters, assigner)
    published = engine.publish(db, config, cleaned, assigner, "1", eval_ids, RUN_IDS)
    return {
        "engine": engine, "extracted": extracted, "cleaned": cleaned, "features": features, "swept": swept,
        "selection": selection, "clusters": clusters, "assigner": assigner, "eval_ids": eval_ids,
        "published": published,
    }


def test_spark_engine_is_a_compute_engine(run: dict[str, Any]) -> None:
    engine = run["engine"]
    assert isinstance(engine, ComputeEngine)
    assert engine.name == "spark"


def test_extract_reports_the_source(run: dict[str, Any], db: sa.Engine, demo: Any) -> None:
    extracted = run["extracted"]
    assert extracted.row_count == len(demo[0]) == len(extracted.table) == N_ROWS
    assert extracted.columns[:4] == ["customer_id", "age", "annual_income", "spending_score"]
    assert {"gender", "updated_at"} <= set(extracted.columns)
    with db.connect() as conn:
        max_id, max_updated = conn.exec_driver_sql(f"SELECT MAX(customer_id), MAX(updated_at) FROM {TABLE}").one()
    assert extracted.max_id == str(max_id)
    assert extracted.max_updated_at == str(max_updated)
    assert TABLE in extracted.source
    assert extracted.details == {"engine": "spark", "partitions": 4, "partitioning": "range"}


def test_every_row_lands_once_in_the_database(run: dict[str, Any], db: sa.Engine, config: PipelineConfig) -> None:
    cleaned, published = run["cleaned"], run["published"]
    report, output = cleaned.report, config.output
    n_clean, n_rejected = report["n_clean"], report["n_rejected"]
    assert n_clean + n_rejected == N_ROWS and n_rejected > 0 and report["n_outliers"] > 0
    assert len(cleaned.clean) == n_clean and len(cleaned.rejects) == n_rejected
    assert published.written == {
        output.segments_table: n_clean, output.rejects_table: n_rejected, output.history_table: n_clean
    }
    assert (published.n_segmented, published.n_rejected, published.n_outliers) == (
        n_clean, n_rejected, report["n_outliers"]
    )
    with db.connect() as conn:
        def scalar(sql: str) -> Any:
            return conn.exec_driver_sql(sql).scalar()

        assert scalar(f"SELECT COUNT(*) FROM {output.segments_table}") == n_clean
        assert scalar(f"SELECT COUNT(DISTINCT customer_id) FROM {output.segments_table}") == n_clean
        assert scalar(f"SELECT COUNT(*) FROM {output.rejects_table}") == n_rejected
        assert scalar(f"SELECT SUM(is_outlier) FROM {output.segments_table}") == report["n_outliers"]
        assert scalar(
            f"SELECT COUNT(*) FROM {output.history_table} WHERE dagster_run_id = '{RUN_IDS.dagster_run_id}'"
        ) == n_clean
        assert scalar(f"SELECT COUNT(DISTINCT mlflow_run_id) FROM {output.segments_table}") == 1
        assert scalar(f"SELECT MAX(mlflow_run_id) FROM {output.segments_table}") == RUN_IDS.mlflow_run_id
    shares = published.shares
    assert list(shares.columns) == ["segment_id", "segment_name", "count", "share_pct"]
    assert int(shares["count"].sum()) == n_clean
    assert shares["share_pct"].sum() == pytest.approx(100.0)
    assert list(shares["segment_name"]) == [f"S{int(s)}" for s in shares["segment_id"]]


def test_planted_segments_are_recovered(run: dict[str, Any], db: sa.Engine, config: PipelineConfig, demo: Any) -> None:
    frame, planted = demo
    assert run["selection"].k == 5
    assert run["swept"] == [4, 5, 6]
    # the evidence and the rule are the core's, read on the driver sample
    assert run["selection"].evidence["k"].tolist() == [4, 5, 6]
    assert run["selection"].evidence["gap"].notna().all() and run["selection"].structure in {"clear", "weak", "none"}
    stored = read_table(db, config.output.segments_table, None, id_column="customer_id", chunk_size=100_000)
    assigned = stored.set_index("customer_id")["segment_id"]
    truth = pd.Series(planted, index=frame["customer_id"])
    truth = truth[truth >= 0]  # dirty and outlier rows have no planted segment
    common = truth.index.intersection(assigned.index)
    assert len(common) > 0.95 * len(truth)
    score = adjusted_rand_score(truth.loc[common], assigned.loc[common])
    assert score >= 0.9, f"adjusted Rand vs planted segments {score:.3f}"


def test_records_have_the_contract_shapes(run: dict[str, Any], config: PipelineConfig) -> None:
    features, clusters, cleaned = run["features"], run["clusters"], run["cleaned"]
    k = run["selection"].k
    n_eval = len(features.X_eval)
    assert 0 < n_eval <= features.n_fit < features.n_rows == cleaned.report["n_clean"]
    assert features.X_eval.shape[1] == len(features.component_names) == features.loadings.shape[1]
    assert features.X_eval.dtype == np.float32 and features.dtype == "float32"
    mask = features.eval_fit_mask
    assert mask.dtype == bool and mask.all() and len(mask) == n_eval
    assert len(clusters.eval_labels) == len(run["eval_ids"]) == n_eval == features.details["driver_sample_rows"]
    # a first model's ids are its canonical labels, so the assigner gives the evaluation rows their own labels
    assert (run["eval_ids"] == clusters.canonical[clusters.eval_labels]).all()
    assert list(clusters.canonical) == list(range(k)) and clusters.model.n_clusters == k
    assert len(clusters.population) == len(clusters.population_labels) == cleaned.report["n_clean"]
    assert set(np.unique(clusters.population_labels)) == set(range(k))
    # the profile is core.naming.profile_segments' record, over every clean row
    profile = clusters.label_profile
    core = profile_segments(clusters.population, clusters.population_labels, config.features, "annual_income")
    assert list(profile.columns) == list(core.columns)
    assert list(profile.dtypes) == list(core.dtypes)
    assert list(profile["segment_id"]) == list(range(k))
    assert int(profile["count"].sum()) == cleaned.report["n_clean"]
    np.testing.assert_allclose(profile["count"], core["count"], atol=0.002 * N_ROWS)  # Spark vs sklearn rounding
    np.testing.assert_allclose(profile["mean_age"], core["mean_age"], rtol=0.01)
    # the metrics are core.modeling.quality_metrics' record plus what the model step adds
    core_keys = set(quality_metrics(features.X_eval, clusters.eval_labels, sample=100, random_state=0))
    assert set(clusters.metrics) == core_keys | {"inertia", "n_iter"}
    assert clusters.metrics["n_clusters"] == k and clusters.metrics["silhouette"] > 0.5
    # the configured categorical columns come with the population rows, for the attribute profiles
    assert clusters.categories is not None and list(clusters.categories.columns) == ["gender"]
    assert len(clusters.categories) == len(clusters.population)
    assert set(clusters.categories["gender"].dropna()) <= {"Female", "Male", "Other"}


def test_spread_scores_over_every_fit_row_match_core(run: dict[str, Any]) -> None:
    from pyspark.ml.functions import vector_to_array

    from segmentation_pipeline.engines.spark.model import FEATURES_COL

    features, clusters = run["features"], run["clusters"]
    rows = features.payload.X_fit.select(vector_to_array(FEATURES_COL).alias("x")).toPandas()
    X = np.asarray(rows["x"].tolist(), dtype=np.float64)
    assert len(X) == features.n_fit
    centers = np.asarray(clusters.model.cluster_centers_, dtype=np.float64)
    labels = ((X[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2).argmin(axis=1)
    expected = spread_scores(X, labels)
    for key in ("davies_bouldin", "calinski_harabasz"):
        assert clusters.metrics[key] == pytest.approx(expected[key], rel=1e-3), key


def test_features_travel_as_a_spark_handoff(
    run: dict[str, Any], spark: Any, config: PipelineConfig, tmp_path: Path
) -> None:
    from segmentation_pipeline.engines.spark.handoff import MARKER, SparkFeatureRecord, load_handoff, save_handoff

    features, engine = run["features"], run["engine"]
    assert isinstance(features, SparkFeatureRecord) and isinstance(features, Features)
    path = tmp_path / "customer_features.spark"
    save_handoff(features, path)
    assert (path / MARKER).exists()
    loaded = load_handoff(spark, path)
    assert isinstance(loaded, SparkFeatureRecord)
    assert loaded.payload.X_fit.count() == features.n_fit
    np.testing.assert_array_equal(loaded.X_eval, features.X_eval)
    assert (engine.assign_eval(None, loaded, None, run["assigner"]) == run["eval_ids"]).all()
    sample = features.payload.sample[config.features].astype("float64")
    np.testing.assert_array_equal(loaded.preprocessor.transform(sample), features.preprocessor.transform(sample))
    with pytest.raises(TypeError, match="not fitted by the Spark engine"):
        engine.sweep_k(Features(**{**vars(features), "payload": None}), config)


def test_gmm_fits_with_mllib_and_profiles_with_the_served_mixture(run: dict[str, Any], config: PipelineConfig) -> None:
    """``model.algorithm: gmm`` on the same features: MLlib's mixture, exported to the served
    sklearn GaussianMixture; the profile aggregated in Spark counts exactly the served model's
    labels of every clean row."""
    from sklearn.mixture import GaussianMixture

    gmm_config = config.model_copy(update={"model": config.model.model_copy(update={"algorithm": "gmm"})})
    engine, features, cleaned = run["engine"], run["features"], run["cleaned"]
    k = 5
    clusters = engine.fit_clusters(cleaned.clean, features, k, gmm_config)
    assert isinstance(clusters.model, GaussianMixture) and clusters.model.means_.shape[0] == k
    assert list(clusters.canonical) == list(range(k))
    served = build_model_pipeline(features.preprocessor, clusters.model)
    assert list(served.named_steps) == ["preprocess", "gmm"]
    # every clean row is in the population here (4,000 < POPULATION_SAMPLE)
    assert len(clusters.population) == cleaned.report["n_clean"]
    counts = np.bincount(clusters.population_labels, minlength=k)
    np.testing.assert_array_equal(clusters.label_profile["count"], counts)  # profiled with the served model
    # the planted segments are recovered on the evaluation rows, and the metrics have no WCSS
    assert "inertia" not in clusters.metrics and clusters.metrics["n_clusters"] == k
    kmeans_ids = run["eval_ids"]  # the KMeans model's ids on the same rows (>= 0.9 ARI vs planted above)
    assert adjusted_rand_score(kmeans_ids, clusters.eval_labels) >= 0.9
