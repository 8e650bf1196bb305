"""The training run's asset checks, in a real run: evaluated every time, and the blocking ones
stop the write-back (SQLite customers, a local MLflow store, a real Dagster instance)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from segmentation_pipeline.core.demo_data import generate_customers
from segmentation_pipeline.in_process import run_training
from segmentation_pipeline.storage.bulk_load import load_frame
from segmentation_pipeline.storage.connection import create_db_engine
from segmentation_pipeline_tests.helpers import write_config

pytestmark = pytest.mark.e2e


def _evaluations(instance: dg.DagsterInstance, run_id: str) -> dict[str, bool]:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
    return {r.event_log_entry.dagster_event.event_specific_data.check_name:
            r.event_log_entry.dagster_event.event_specific_data.passed for r in records}


def _config(tmp_path: Path, sqlite_url: str, local_mlflow_uri: str, **changes: object) -> Path:
    frame, _ = generate_customers(1200, seed=3, dirty=True)
    load_frame(create_db_engine(sqlite_url), "customers", frame, if_exists="replace", primary_key=None)
    return write_config(tmp_path, sqlite_url, local_mlflow_uri, **{
        "mlflow.artifact_location": str(tmp_path / "mlartifacts"), "promotion.bootstrap_rounds": 2, "k": 4, **changes,
    })


def test_checks_evaluated_on_every_training_run(tmp_path, sqlite_url, local_mlflow_uri):
    config = _config(tmp_path, sqlite_url, local_mlflow_uri)
    with dg.instance_for_test() as instance:
        result = run_training(instance, str(config))
        assert result.success
        assert _evaluations(instance, result.run_id) == {
            "every_row_accounted_for": True, "rejected_share_within_ceiling": True, "no_segment_below_min_share": True,
        }


def test_rejected_share_over_ceiling_stops_the_write_back(tmp_path, sqlite_url, local_mlflow_uri):
    config = _config(tmp_path, sqlite_url, local_mlflow_uri, **{"checks.max_rejected_share": 0.0})
    with dg.instance_for_test() as instance:
        with pytest.raises(Exception, match="rejected_share_within_ceiling|[Bb]locking"):
            run_training(instance, str(config))
        [run] = instance.get_runs()
        assert _evaluations(instance, run.run_id)["rejected_share_within_ceiling"] is False
    assert not sa.inspect(create_db_engine(sqlite_url)).has_table("customer_segments")
