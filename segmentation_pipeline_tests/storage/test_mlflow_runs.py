"""storage.mlflow_registry.training_run: every step of a Dagster run reopens one MLflow run, on
both stores the product supports, without searching for it again; a run deleted meanwhile is
replaced, not an error; an active experiment the caller set elsewhere does not stop a resume."""

from __future__ import annotations

import uuid

import mlflow
import pytest
from mlflow import MlflowClient

from segmentation_pipeline.storage import mlflow_registry as registry


@pytest.fixture(params=["local", "server"])
def tracking_uri(request: pytest.FixtureRequest, local_mlflow_uri: str) -> str:
    return local_mlflow_uri if request.param == "local" else request.getfixturevalue("mlflow_server")


def test_steps_of_one_dagster_run_share_one_mlflow_run_found_once(tracking_uri: str, monkeypatch) -> None:
    target = registry.TrackingTarget(tracking_uri, f"runs-{uuid.uuid4().hex[:8]}")
    dagster_run = str(uuid.uuid4())
    searches: list[str] = []
    real_find = registry.find_run
    monkeypatch.setattr(registry, "find_run", lambda *a, **kw: searches.append("find") or real_find(*a, **kw))

    with registry.training_run(target, dagster_run, run_name="first step") as first:
        mlflow.log_param("step", "one")
    with registry.training_run(target, dagster_run) as second:
        mlflow.log_metric("later", 1.0)
    assert first == second and searches == ["find"]  # the second step did not search the store
    run = MlflowClient(tracking_uri).get_run(first)
    assert run.data.params == {"step": "one"} and run.data.metrics == {"later": 1.0}
    assert run.data.tags[registry.DAGSTER_RUN_TAG] == dagster_run and run.info.status == "FINISHED"

    other = str(uuid.uuid4())  # another Dagster run gets its own MLflow run
    with registry.training_run(target, other) as third:
        pass
    assert third != first


def test_a_run_deleted_between_steps_is_replaced(tracking_uri: str) -> None:
    target = registry.TrackingTarget(tracking_uri, f"runs-{uuid.uuid4().hex[:8]}")
    dagster_run = str(uuid.uuid4())
    with registry.training_run(target, dagster_run) as first:
        pass
    MlflowClient(tracking_uri).delete_run(first)
    with registry.training_run(target, dagster_run) as second:
        mlflow.log_param("after", "delete")
    assert second != first
    assert MlflowClient(tracking_uri).get_run(second).data.params == {"after": "delete"}


def test_an_active_experiment_set_elsewhere_does_not_stop_the_next_step(tracking_uri: str) -> None:
    """A notebook that called mlflow.set_experiment before running the pipeline in-process."""
    client = MlflowClient(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment_id=client.create_experiment(f"notebook-{uuid.uuid4().hex[:8]}"))
    target = registry.TrackingTarget(tracking_uri, f"runs-{uuid.uuid4().hex[:8]}")
    dagster_run = str(uuid.uuid4())
    with registry.training_run(target, dagster_run) as first:
        pass
    with registry.training_run(target, dagster_run) as second:
        mlflow.log_param("second", "step")
    assert first == second
    run = client.get_run(first)
    assert run.info.experiment_id == client.get_experiment_by_name(target.experiment).experiment_id
    assert run.data.params == {"second": "step"}
