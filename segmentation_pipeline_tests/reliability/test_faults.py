"""Faults outside the pipeline: the database, the MLflow server, and the disk.

Each fault must end the run with an error that says what failed and where (URLs masked), and
must not write anything: the output tables hold a sentinel row that has to survive, and no
model version may carry the ``champion`` alias.
"""

from __future__ import annotations

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa
from mlflow.tracking import MlflowClient

from segmentation_pipeline import cli
from segmentation_pipeline.assets import training
from segmentation_pipeline.core.demo_data import generate_customers
from segmentation_pipeline.storage.bulk_load import load_frame
from segmentation_pipeline.storage.connection import create_db_engine
from segmentation_pipeline_tests.helpers import free_port
from segmentation_pipeline_tests.reliability.conftest import TcpProxy, fast_config, table_rows

SECRET = "Pw-unreachable-7731"


@pytest.fixture()
def fail_fast_mlflow(monkeypatch):
    """MLflow's HTTP client retries a refused connection for minutes by default (7 retries,
    exponential backoff; measured here: 257 s before the run failed). Tests want the error
    within a second, but keep two quick retries: a pooled keep-alive connection the server
    closed while idle is a normal event, not the fault under test."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def _error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, captured.err[-3000:]
    return lines[0]


@pytest.fixture()
def mysql_source(mysql_database_url, suffix):
    """Demo customers plus sentinel rows in every output table (a previous run's results)."""
    engine = create_db_engine(mysql_database_url)
    frame, _ = generate_customers(400, seed=9, dirty=False)
    load_frame(engine, f"customers_{suffix}", frame)
    sentinels = {
        f"seg_{suffix}": pd.DataFrame({"customer_id": [1], "segment_id": [9], "segment_name": ["previous"]}),
        f"rej_{suffix}": pd.DataFrame({"customer_id": ["2"], "reason": ["previous"]}),
        f"hist_{suffix}": pd.DataFrame({  # a real history's columns: a write-back appends to it
            "dagster_run_id": ["previous"], "customer_id": [1], "segment_id": [9], "segment_name": ["previous"],
            "is_outlier": [False], "model_version": ["0"], "scored_at": [pd.Timestamp("2026-01-01")],
        }),
    }
    for table, rows in sentinels.items():
        rows.to_sql(table, engine, index=False)
    yield engine, sentinels
    engine.dispose()


def _assert_sentinels_intact(engine: sa.Engine, sentinels: dict[str, pd.DataFrame]) -> None:
    for table, rows in sentinels.items():
        assert table_rows(engine, table).to_dict("records") == rows.to_dict("records"), table
        assert not sa.inspect(engine).has_table(f"{table}__staging")


def test_database_unreachable_at_extraction_names_the_masked_url(tmp_path, local_mlflow_uri, suffix, capsys):
    port = free_port()  # nothing listens here
    url = f"mysql+pymysql://segbot:{SECRET}@127.0.0.1:{port}/crm"
    config = fast_config(tmp_path, url, local_mlflow_uri, suffix)
    assert cli.main(["run", "--config", str(config)]) == 1
    err = _error_line(capsys)
    assert err.startswith("error: SourceError: cannot reach the database at "
                          f"mysql+pymysql://segbot:***@127.0.0.1:{port}/crm to read table 'customers_{suffix}'")
    assert "Connection refused" in err
    assert SECRET not in err


@pytest.mark.mysql
def test_mlflow_unreachable_from_the_start_fails_clearly_and_writes_nothing(
    tmp_path, mysql_database_url, mysql_source, suffix, fail_fast_mlflow, capsys
):
    engine, sentinels = mysql_source
    tracking = f"http://127.0.0.1:{free_port()}"
    config = fast_config(tmp_path, mysql_database_url, tracking, suffix)
    assert cli.main(["run", "--config", str(config)]) == 1
    err = _error_line(capsys)
    assert err.startswith("error: RegistryError: MLflow at " + tracking)
    assert "Connection refused" in err
    _assert_sentinels_intact(engine, sentinels)


@pytest.mark.mysql
@pytest.mark.e2e
@pytest.mark.parametrize("when", ["after_model_logged", "at_promotion"])
def test_mlflow_server_dies_mid_run_no_version_becomes_champion(
    tmp_path, mysql_database_url, mlflow_server, mysql_source, suffix, fail_fast_mlflow, monkeypatch, capsys, when
):
    """The tracking URI goes through a TCP proxy that is cut mid-run: to the pipeline the server
    is gone. Afterwards the real server (still up) is asked what was left behind."""
    engine, sentinels = mysql_source
    host, port = mlflow_server.removeprefix("http://").split(":")
    proxy = TcpProxy(host, int(port))
    config = fast_config(tmp_path, mysql_database_url, proxy.url, suffix)
    model_name = f"rel_{suffix}"

    if when == "after_model_logged":  # the version is registered, nothing else happened yet
        real_log = training.registry.log_segmentation_model

        def log_then_die(*args, **kwargs):
            version = real_log(*args, **kwargs)
            proxy.cut()
            return version

        monkeypatch.setattr(training.registry, "log_segmentation_model", log_then_die)
    else:  # challenger registered and aliased; the server dies as the gate decides to promote
        real_set_alias = training.registry.set_alias

        def die_before_champion(tracking_uri, name, alias, version):
            if alias == "champion":
                proxy.cut()
            return real_set_alias(tracking_uri, name, alias, version)

        monkeypatch.setattr(training.registry, "set_alias", die_before_champion)

    assert cli.main(["run", "--config", str(config)]) == 1
    assert proxy.cut_event.is_set()
    err = _error_line(capsys)
    assert proxy.url in err and ("Connection refused" in err or "Max retries exceeded" in err), err

    client = MlflowClient(mlflow_server)
    [version] = client.search_model_versions(f"name = '{model_name}'")
    assert version.version == "1"
    aliases = client.get_registered_model(model_name).aliases
    assert "champion" not in aliases
    assert aliases == ({} if when == "after_model_logged" else {"challenger": "1"})
    _assert_sentinels_intact(engine, sentinels)


@pytest.mark.mysql
def test_artifact_location_under_a_regular_file_fails_clearly(
    tmp_path, mysql_database_url, mysql_source, suffix, capsys
):
    """Tests run as root, so chmod cannot make a directory unwritable: a path *under a regular
    file* cannot be created by anyone."""
    engine, sentinels = mysql_source
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = fast_config(tmp_path, mysql_database_url, tracking, suffix,
                         **{"mlflow.artifact_location": str(blocker / "sub")})
    assert cli.main(["run", "--config", str(config)]) == 1
    err = _error_line(capsys)
    assert err.startswith("error: NotADirectoryError") and str(blocker / "sub") in err
    assert MlflowClient(tracking).search_registered_models() == []
    _assert_sentinels_intact(engine, sentinels)


@pytest.mark.mysql
def test_artifact_store_lost_after_the_experiment_exists_fails_clearly(
    tmp_path, mysql_database_url, mysql_source, suffix, capsys
):
    """The experiment's artifact root was fine when it was created, and is no longer writable."""
    engine, sentinels = mysql_source
    artifacts = tmp_path / "artifacts"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(tracking).create_experiment(f"rel_{suffix}", artifact_location=artifacts.as_uri())
    artifacts.write_text("the artifact root was replaced by a file")
    config = fast_config(tmp_path, mysql_database_url, tracking, suffix)
    assert cli.main(["run", "--config", str(config)]) == 1
    err = _error_line(capsys)
    assert str(artifacts) in err, err
    assert MlflowClient(tracking).search_registered_models() == []
    _assert_sentinels_intact(engine, sentinels)


@pytest.mark.mysql
def test_dagster_asset_storage_under_a_regular_file_fails_clearly(tmp_path, mysql_database_url, mysql_source, suffix):
    """Runs launched from the Dagster UI hand assets over through files under data_dir."""
    from segmentation_pipeline.definitions import ASSETS, build_resources
    from segmentation_pipeline.resources import SettingsResource

    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    config = fast_config(tmp_path, mysql_database_url, "sqlite:///unused.db", suffix,
                         data_dir=str(blocker / "data"))
    settings = SettingsResource(config_path=str(config))
    result = dg.materialize(
        ASSETS, selection=dg.AssetSelection.assets("raw_customers"),
        resources=build_resources(settings, settings.load()), raise_on_error=False,
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    error = failure.event_specific_data.error
    text = ""
    while error is not None:
        text += error.message
        error = error.cause or error.context
    assert "NotADirectoryError" in text and str(blocker / "data" / "dagster_storage") in text


def test_one_runs_tracking_uri_does_not_leak_into_the_next_config(tmp_path, monkeypatch):
    """MLflow exports the URI it is pointed at as MLFLOW_TRACKING_URI, which the config loader
    reads as the user's override: without care, a second config in the same process (a Dagster
    code server, a test session) would silently log to the first run's tracking server."""
    from segmentation_pipeline.config import load_config
    from segmentation_pipeline.storage.mlflow_registry import TrackingTarget, configure

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = f"sqlite:///{tmp_path / 'first.db'}"
    configure(TrackingTarget(first, "leak-check"))
    second = fast_config(tmp_path, "sqlite:///customers.db", f"sqlite:///{tmp_path / 'second.db'}", "leak")
    assert load_config(second).mlflow.tracking_uri == f"sqlite:///{tmp_path / 'second.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", first)  # a user's explicit override still wins
    assert load_config(second).mlflow.tracking_uri == first
