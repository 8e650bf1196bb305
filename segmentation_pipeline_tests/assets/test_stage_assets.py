"""The stage assets called directly: a real SQLite source and MLflow store, and a fake engine
where the point is what the asset does with the engine's records (not the compute itself)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import dagster as dg
import mlflow
import numpy as np
import pandas as pd

from segmentation_pipeline.assets.extraction import raw_customers
from segmentation_pipeline.assets.segments import customer_segments
from segmentation_pipeline.assets.training import k_selection
from segmentation_pipeline.core.assigner import SegmentAssigner
from segmentation_pipeline.core.demo_data import generate_customers
from segmentation_pipeline.core.k_evidence import PUBLIC_COLUMNS
from segmentation_pipeline.core.k_selection import choose_k
from segmentation_pipeline.core.promotion import PromotionDecision
from segmentation_pipeline.core.segment_model import PromotionOutcome, TrainedSegmentation
from segmentation_pipeline.engines.base import Features, Published
from segmentation_pipeline.resources import (
    DatabaseResource,
    EngineResource,
    LocalEngineResource,
    MlflowResource,
    SettingsResource,
)
from segmentation_pipeline.storage.bulk_load import load_frame
from segmentation_pipeline.storage.connection import create_db_engine
from segmentation_pipeline_tests.helpers import write_config


class RecordingEngine:
    """Stands in for a compute engine at the asset's edge: returns canned records, keeps the calls."""

    name = "recording"

    def __init__(self, **returns: Any) -> None:
        self.returns = returns
        self.calls: list[tuple[str, tuple, dict]] = []

    def __getattr__(self, method: str) -> Any:
        if method not in self.returns:
            raise AttributeError(method)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((method, args, kwargs))
            return self.returns[method]
        return call


ENGINE = RecordingEngine()


class RecordingEngineResource(EngineResource):
    def get(self) -> Any:
        return ENGINE


class CannedInputs(dg.IOManager):
    """Serves upstream values by asset name; keeps what the asset under test returns."""

    def __init__(self, **values: Any) -> None:
        self.values = values

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        self.values[context.asset_key.path[-1]] = obj

    def load_input(self, context: dg.InputContext) -> Any:
        return self.values[context.asset_key.path[-1]]


def _run(asset: dg.AssetsDefinition, resources: dict[str, Any], **inputs: Any) -> tuple[dg.ExecuteInProcessResult, CannedInputs]:
    """Materialize one asset in a real Dagster run (it needs a run id), its inputs served as given."""
    io = CannedInputs(**inputs)
    upstream = [dg.SourceAsset(name) for name in inputs]
    result = dg.materialize([asset, *upstream], resources={**resources, "io_manager": io}, selection=[asset])
    return result, io


def _settings(tmp_path: Path, sqlite_url: str, mlflow_uri: str) -> SettingsResource:
    return SettingsResource(config_path=str(write_config(tmp_path, sqlite_url, mlflow_uri)))


def test_raw_customers_reads_the_source_through_the_configured_engine(tmp_path, sqlite_url, local_mlflow_uri) -> None:
    frame, _ = generate_customers(300, seed=1)
    load_frame(create_db_engine(sqlite_url), "customers", frame, if_exists="replace")
    settings = _settings(tmp_path, sqlite_url, local_mlflow_uri)
    out = raw_customers(dg.build_asset_context(), settings=settings, database=DatabaseResource(settings=settings),
                        compute=LocalEngineResource(settings=settings))
    assert len(out.value) == len(frame)
    assert out.metadata["dagster/row_count"].value == len(frame)
    schema = out.metadata["dagster/column_schema"].value
    assert {"customer_id", "age", "annual_income", "spending_score"} <= {c.name for c in schema.columns}
    assert out.metadata["max_id"].value == str(frame["customer_id"].max())
    assert "***" in out.metadata["source"].value or "sqlite" in out.metadata["source"].value


def _no_features() -> Features:
    return Features(preprocessor=None, component_names=[], explained_variance_ratio=np.array([]),  # type: ignore[arg-type]
                    loadings=pd.DataFrame(), n_rows=0, n_fit=0, dtype="float32", X_eval=np.zeros((0, 2)),
                    eval_fit_mask=np.zeros(0, dtype=bool))


def _run_k_selection(selection: Any, features: Features, settings: SettingsResource) -> tuple[dg.ExecuteInProcessResult, CannedInputs]:
    """The k_selection asset with the fake engine returning ``selection``."""
    ENGINE.returns = {"sweep_k": selection}
    ENGINE.calls.clear()
    return _run(k_selection, {"settings": settings, "mlflow_tracking": MlflowResource(settings=settings),
                              "compute": RecordingEngineResource(settings=settings)}, customer_features=features)


def test_k_selection_reports_what_the_engine_chose(tmp_path, sqlite_url, local_mlflow_uri) -> None:
    metrics = pd.DataFrame({"k": [2, 3, 4], "inertia": [100.0, 40.0, 35.0], "silhouette": [0.5, 0.7, 0.6],
                            "davies_bouldin": [1.0, 0.6, 0.8], "calinski_harabasz": [10.0, 30.0, 20.0]})
    selection = choose_k(metrics.assign(silhouette_sample_size=100), tolerance=0.02)
    features = _no_features()
    result, io = _run_k_selection(selection, features, _settings(tmp_path, sqlite_url, local_mlflow_uri))
    assert [c[0] for c in ENGINE.calls] == ["sweep_k"] and ENGINE.calls[0][1][0] is features
    assert io.values["k_selection"].k == selection.k
    [materialization] = result.asset_materializations_for_node("k_selection")
    assert materialization.metadata["k"].value == selection.k
    runs = mlflow.search_runs(experiment_names=["customer-segmentation"], output_format="list")
    assert runs and runs[0].data.metrics["chosen_k"] == selection.k
    assert runs[0].data.tags["k_reason"] == selection.reason


def test_k_selection_shows_the_evidence_and_tags_weak_structure(tmp_path, sqlite_url, local_mlflow_uri) -> None:
    metrics = pd.DataFrame({"k": [2, 3, 4], "inertia": [100.0, 40.0, 35.0], "silhouette": [0.3, 0.35, 0.33],
                            "davies_bouldin": [1.0, 0.9, 1.1], "calinski_harabasz": [10.0, 30.0, 20.0]})
    evidence = metrics.assign(gap=[0.5, 0.7, 0.72], gap_se=[0.02, 0.02, 0.03], stability=[0.95, 0.93, 0.7],
                              smallest_share=[0.4, 0.2, 0.005], bic=[300.0, 250.0, 260.0],
                              below_min_share=[False, False, True])[PUBLIC_COLUMNS]
    selection = dataclasses.replace(choose_k(metrics, tolerance=0.02), evidence=evidence, structure="weak",
                                    too_small=[4])
    result, _io = _run_k_selection(selection, _no_features(), _settings(tmp_path, sqlite_url, local_mlflow_uri))
    [materialization] = result.asset_materializations_for_node("k_selection")
    meta = materialization.metadata
    assert meta["structure"].value == "weak"
    assert [row["k"] for row in meta["k_evidence"].value] == [2, 3, 4]
    assert meta["k_evidence"].value[2]["below_min_share"] is True
    assert "smallest_share" in meta["evidence"].value and "data:image/png;base64," in meta["evidence_plot"].value
    [run] = mlflow.search_runs(experiment_names=["customer-segmentation"], output_format="list")
    assert run.data.tags["k_structure"] == "weak" and "weak" in run.data.tags["k_structure_warning"]
    assert run.data.metrics["evidence_stability"] == 0.7  # the last step logged (k=4)
    client = mlflow.MlflowClient()
    assert [m.step for m in client.get_metric_history(run.info.run_id, "evidence_gap")] == [2, 3, 4]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "k_selection")}
    assert {"k_selection/evidence.csv", "k_selection/evidence.png"} <= artifacts


def _assigner(names: dict[int, str]) -> SegmentAssigner:
    return SegmentAssigner(pipeline=None, features=["x"], label_to_segment=np.array(sorted(names)),  # type: ignore[arg-type]
                           segment_names=names)


def test_segments_follow_the_champion_when_the_challenger_loses(tmp_path, sqlite_url, local_mlflow_uri) -> None:
    new, old = _assigner({0: "new a", 1: "new b"}), _assigner({0: "old a", 1: "old b"})
    trained = TrainedSegmentation(
        assigner=new, eval_segment_ids=np.array([0, 1, 1]), model_name="m", model_version="2", mlflow_run_id="",
        k=2, k_reason="", metrics={}, profile=pd.DataFrame(), previous_champion="1", champion=old,
        champion_eval_ids=np.array([1, 1, 0]),
    )
    shares = pd.DataFrame({"segment_id": [0, 1], "segment_name": ["old a", "old b"], "count": [1, 2],
                           "share_pct": [33.3, 66.7]})
    ENGINE.returns = {"publish": Published(written={"customer_segments": 3}, n_segmented=3, n_rejected=1,
                                           n_outliers=0, shares=shares)}
    ENGINE.calls.clear()
    settings = _settings(tmp_path, sqlite_url, local_mlflow_uri)
    rejected = PromotionOutcome("1", "2", False, PromotionDecision(False, ["worse"], {}))
    result, _ = _run(
        customer_segments,
        {"settings": settings, "database": DatabaseResource(settings=settings),
         "mlflow_tracking": MlflowResource(settings=settings), "compute": RecordingEngineResource(settings=settings)},
        clean_customers=pd.DataFrame(), rejected_customers=pd.DataFrame(), segmentation_model=trained,
        model_promotion=rejected,
    )
    [materialization] = result.asset_materializations_for_node("customer_segments")
    [(method, args, _)] = ENGINE.calls
    assert method == "publish"
    _, _, _, assigner, version, ids, _ = args
    assert assigner is old and version == "1" and ids.tolist() == [1, 1, 0]
    assert materialization.metadata["n_input"].value == 4 and materialization.metadata["dagster/row_count"].value == 3
    assert "v1" in materialization.metadata["model"].value
