"""Drift on both tracking stores MLflow offers: the embedded SQLite file and an HTTP server.

A SQLite store hands model versions back as ints, a server as strings; the drift asset, its
check and the retrain sensor must work on both. Real SQLite customers, real MLflow, real Dagster.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from segmentation_pipeline.automation import build_sensors
from segmentation_pipeline.cli import run_pipeline
from segmentation_pipeline.config import load_config
from segmentation_pipeline.core.demo_data import generate_customers
from segmentation_pipeline.definitions import ASSETS, build_resources
from segmentation_pipeline.resources import SettingsResource
from segmentation_pipeline.storage.bulk_load import load_frame
from segmentation_pipeline.storage.connection import create_db_engine
from segmentation_pipeline_tests.helpers import write_config

pytestmark = pytest.mark.e2e


@pytest.fixture(params=["sqlite_store", "http_server"])
def tracking_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite_store":
        return request.getfixturevalue("local_mlflow_uri")
    return request.getfixturevalue("mlflow_server")


def _train(tmp_path: Path, sqlite_url: str, tracking_uri: str) -> Path:
    """A champion trained on 1,500 demo customers in a SQLite file, tracked in the given store."""
    frame, _ = generate_customers(1500, seed=5, dirty=False)
    load_frame(create_db_engine(sqlite_url), "customers", frame, if_exists="replace", primary_key="customer_id")
    name = f"drift_{tmp_path.name[-8:]}".replace("-", "_")
    config = write_config(
        tmp_path, sqlite_url, tracking_uri, **{
            "mlflow.artifact_location": str(tmp_path / "mlartifacts"), "model.name": name,
            "mlflow.experiment": name, "promotion.bootstrap_rounds": 2, "k": 4,
        },
    )
    run_pipeline(str(config))
    return config


@pytest.fixture()
def trained_config(tmp_path: Path, sqlite_url: str, tracking_uri: str) -> Path:
    return _train(tmp_path, sqlite_url, tracking_uri)


def _materialize_drift(config: Path, instance: dg.DagsterInstance, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
    settings = SettingsResource(config_path=str(config))
    return dg.materialize(
        ASSETS, selection=dg.AssetSelection.assets("segment_drift"), instance=instance,
        resources=build_resources(settings, settings.load(), io_manager=dg.mem_io_manager),
        raise_on_error=raise_on_error,
    )


def test_drift_asset_check_and_sensor_work_on_both_stores(trained_config: Path) -> None:
    cfg = load_config(trained_config)
    sensor = {s.name: s for s in build_sensors(cfg)}["drift_retrain_sensor"]
    with dg.instance_for_test() as instance:
        result = _materialize_drift(trained_config, instance)
        assert result.success
        [event] = result.asset_materializations_for_node("segment_drift")
        meta = {k: getattr(v, "value", v) for k, v in event.metadata.items()}
        assert meta["severity"] == "ok", meta
        assert meta["champion_version"] == "1"
        assert Path(meta["report_path"]).exists()
        [evaluation] = result.get_asset_check_evaluations()
        assert evaluation.check_name == "drift_within_thresholds" and evaluation.passed
        quiet = dg.build_sensor_context(instance=instance, cursor=None)
        assert isinstance(sensor(quiet), dg.SkipReason)

        # the same customers, shifted: the check fails and the sensor requests one retrain
        engine = create_db_engine(cfg.database.sqlalchemy_url())
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE customers SET annual_income = annual_income * 3, age = age + 20")
        shifted = _materialize_drift(trained_config, instance)
        [failed] = shifted.get_asset_check_evaluations()
        assert not failed.passed
        fired = dg.build_sensor_context(instance=instance, cursor=quiet.cursor)
        request = sensor(fired)
        assert isinstance(request, dg.RunRequest) and request.tags["trigger"] == "drift"
        assert isinstance(sensor(dg.build_sensor_context(instance=instance, cursor=fired.cursor)), dg.SkipReason)


def test_failed_drift_run_leaves_no_report(tmp_path: Path, sqlite_url: str, local_mlflow_uri: str) -> None:
    """MLflow refuses the drift run's artifact directory (a local store's, so a file can stand in
    its way): no report file stays behind, nothing is materialized."""
    trained_config = _train(tmp_path, sqlite_url, local_mlflow_uri)
    tracking_uri = local_mlflow_uri
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("a file where the drift experiment's artifact directory would go")
    broken = write_config(
        tmp_path, sqlite_url, tracking_uri, name="broken.yaml", **{
            "model.name": load_config(trained_config).model.name, "mlflow.experiment": "drift_elsewhere",
            "mlflow.artifact_location": str(blocker),
        },
    )
    with dg.instance_for_test() as instance:
        result = _materialize_drift(broken, instance, raise_on_error=False)
        assert not result.success
        assert not result.asset_materializations_for_node("segment_drift")
    reports = load_config(broken).data_path / "drift_reports"
    assert reports.is_dir(), "the report is written only after the drift has been computed"
    assert not list(reports.glob("*.html"))
