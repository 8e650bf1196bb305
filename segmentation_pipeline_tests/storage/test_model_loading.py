"""storage.mlflow_registry.load_assigner on a real local store: training, which has just resolved
the champion alias, loads that version without asking the registry again."""

from __future__ import annotations

import uuid

import mlflow
import pytest

from segmentation_pipeline.config import load_config
from segmentation_pipeline.core.assigner import SegmentAssigner
from segmentation_pipeline.core.demo_data import generate_customers
from segmentation_pipeline.core.features import build_features
from segmentation_pipeline.core.modeling import build_model_pipeline, canonical_relabel, fit_kmeans
from segmentation_pipeline.storage import mlflow_registry as registry

FEATURES = ["age", "annual_income", "spending_score"]


@pytest.fixture
def registered(local_mlflow_uri: str) -> tuple[str, str, str]:
    """A small segmentation model registered as ``champion``: (tracking uri, model name, version)."""
    config = load_config("configs/default.yaml")
    frame, _ = generate_customers(600, seed=5, dirty=False)
    fm = build_features(frame, config, "customer_id")
    kmeans = fit_kmeans(fm.X_fit, 3, n_init=1, max_iter=50, random_state=0)
    canonical = canonical_relabel(kmeans)
    assigner = SegmentAssigner(
        pipeline=build_model_pipeline(fm.preprocessor, kmeans), features=FEATURES, label_to_segment=canonical,
        segment_names={int(s): f"segment {s}" for s in canonical},
    )
    name = f"loading_{uuid.uuid4().hex[:8]}"
    mlflow.set_tracking_uri(local_mlflow_uri)
    # Not mlflow.set_experiment: it would leave this test's experiment active for the rest of the process.
    experiment_id = mlflow.MlflowClient(local_mlflow_uri).create_experiment(name)
    with mlflow.start_run(experiment_id=experiment_id):
        version = registry.log_segmentation_model(assigner, frame[FEATURES], name)
    registry.set_alias(local_mlflow_uri, name, "champion", version)
    return local_mlflow_uri, name, version


def test_a_version_already_resolved_is_loaded_without_asking_for_the_alias(registered, monkeypatch) -> None:
    uri, name, version = registered
    monkeypatch.setattr(registry, "alias_version", lambda *a, **kw: pytest.fail("the alias was resolved again"))
    assigner, loaded = registry.load_assigner(uri, name, "champion", version=version)
    assert loaded == version and assigner.features == FEATURES
