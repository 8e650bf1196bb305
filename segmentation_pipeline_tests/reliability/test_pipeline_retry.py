"""The whole pipeline when its write-back connection is KILLed: Dagster retries, or fails clearly.

``customer_segments`` carries ``RetryPolicy(max_retries=2, delay=5)``; these tests prove the
in-process ``materialize`` behind ``segmentation run`` honours it, that a retried run ends with
every customer exactly once and one history copy per run key, and that a run whose every
attempt is killed fails with an error naming the table while the previous tables stay intact.
"""

from __future__ import annotations

import pandas as pd
import pytest
import sqlalchemy as sa

from segmentation_pipeline import cli
from segmentation_pipeline.engines import local as local_engine
from segmentation_pipeline.config import OutputConfig
from segmentation_pipeline.core.demo_data import generate_customers
from segmentation_pipeline.core.segment_tables import build_rejects_table, build_segments_table
from segmentation_pipeline.storage.bulk_load import load_frame
from segmentation_pipeline.storage.connection import create_db_engine
from segmentation_pipeline.storage.segment_store import publish_segments
from segmentation_pipeline_tests.reliability.conftest import database_name, fast_config, table_rows

pytestmark = [pytest.mark.mysql, pytest.mark.e2e]

N_ROWS = 800


@pytest.fixture()
def requested_delays(monkeypatch):
    """The retry delays the asset's RetryPolicy asks for, recorded; waited for at a tenth of them."""
    from dagster._core.definitions import policy

    real, asked = policy.calculate_delay, []

    def scaled(*args, **kwargs):
        asked.append(real(*args, **kwargs))
        return asked[-1] / 10

    monkeypatch.setattr(policy, "calculate_delay", scaled)
    return asked


def _error_text(error) -> str:
    """A Dagster SerializableErrorInfo with its causes and contexts, as one string."""
    parts = []
    while error is not None:
        parts.append(error.message)
        error = error.cause or error.context
    return "\n".join(parts)


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory) -> str:
    """A local tracking store for the module: MLflow is not what these tests break."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture()
def setup(tmp_path, mysql_database_url, mlflow_store, suffix):
    engine = create_db_engine(mysql_database_url)
    source, _ = generate_customers(N_ROWS, seed=5)  # with dirty rows: duplicates, missing, impossible
    load_frame(engine, f"customers_{suffix}", source)
    config = fast_config(tmp_path, mysql_database_url, mlflow_store, suffix)
    output = OutputConfig(segments_table=f"seg_{suffix}", rejects_table=f"rej_{suffix}", history_table=f"hist_{suffix}")
    # a previous run's tables, which a failing write-back must leave exactly as they are
    previous = pd.DataFrame({"customer_id": [1, 2], "is_outlier": False, "outlier_reason": ""})
    segments = build_segments_table(previous, "customer_id", [0, 1], {0: "old A", 1: "old B"}, model_name="old",
                                    model_version="0", mlflow_run_id="old", dagster_run_id="previous-run")
    rejects = build_rejects_table(pd.DataFrame({"customer_id": [3], "reason": ["missing:age"], "detail": ["x"]}),
                                  mlflow_run_id="old", dagster_run_id="previous-run")
    publish_segments(engine, output, segments, rejects, run_key="previous-run", lock_timeout_s=30)
    yield {"engine": engine, "source": source, "config": config, "output": output, "suffix": suffix}
    engine.dispose()


def _snapshot(engine: sa.Engine, output: OutputConfig) -> dict[str, list[dict]]:
    return {t: table_rows(engine, t).to_dict("records")
            for t in (output.segments_table, output.rejects_table, output.history_table)}


def test_killed_write_back_is_retried_and_a_rerun_of_the_same_run_is_idempotent(
    setup, mysql_database_url, kill_load_data, monkeypatch, requested_delays
):
    engine, output = setup["engine"], setup["output"]
    results = []
    real_summarise = cli.summarise
    monkeypatch.setattr(cli, "summarise", lambda result, *a: results.append(result) or real_summarise(result, *a))

    # attempt 1: the LOAD DATA into the staging table is KILLed on the server
    # attempt 2: the write-back completes, then the step dies before reporting success (a crash)
    # attempt 3: the same run key is published again
    real_publish = local_engine.publish_segments
    attempts = []

    def publish_then_crash_once(*args, **kwargs):
        attempts.append(kwargs["run_key"])
        written = real_publish(*args, **kwargs)
        if len(attempts) == 2:
            raise ConnectionResetError("worker lost after the write-back committed (injected)")
        return written

    monkeypatch.setattr(local_engine, "publish_segments", publish_then_crash_once)

    def reader(admin: sa.Engine) -> set[str]:
        table = f"`{database_name(mysql_database_url)}`.`{output.segments_table}`"
        return set(pd.read_sql(f"SELECT dagster_run_id FROM {table}", admin)["dagster_run_id"])

    staging = f"{output.segments_table}__staging"
    with kill_load_data(database_name(mysql_database_url), staging, before_kill=reader) as killer:
        summary = cli.run_pipeline(str(setup["config"]))
    assert len(killer.killed) == 1 and killer.observations == [{"previous-run"}]

    [result] = results
    run_id = summary["dagster_run_id"]
    retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert [e.step_key for e in retries] == ["customer_segments", "customer_segments"]
    first_error = _error_text(retries[0].event_specific_data.error)
    assert f"LOAD DATA into '{staging}' failed" in first_error and "root@127.0.0.1" in first_error
    assert "injected" in _error_text(retries[1].event_specific_data.error)
    assert requested_delays == [5, 15]  # RetryPolicy(max_retries=2, delay=5, backoff=EXPONENTIAL)
    assert attempts == [run_id] * 3, "every attempt publishes under the same run key"

    segments = table_rows(engine, output.segments_table)
    rejects = table_rows(engine, output.rejects_table)
    source_ids = setup["source"]["customer_id"].astype(str)
    assert set(segments["dagster_run_id"]) == {run_id} == set(rejects["dagster_run_id"])
    assert segments["customer_id"].is_unique
    assert len(segments) + len(rejects) == N_ROWS == summary["n_input"]
    assert len(segments) == summary["n_segmented"] and len(rejects) == summary["n_rejected"]
    # every source customer is somewhere; only a duplicated id's stale copy is a reject of a segmented id
    assert set(segments["customer_id"].astype(str)) | set(rejects["customer_id"]) == set(source_ids)
    both = set(segments["customer_id"].astype(str)) & set(rejects["customer_id"])
    assert set(rejects.loc[rejects["customer_id"].isin(both), "reason"]) <= {"duplicate_id"}
    assert rejects["reason"].str.len().gt(0).all()

    history = table_rows(engine, output.history_table)
    assert history.groupby("dagster_run_id").size().to_dict() == {"previous-run": 2, run_id: len(segments)}
    assert not history.duplicated(["dagster_run_id", "customer_id"]).any()
    assert not [t for t in sa.inspect(engine).get_table_names() if setup["suffix"] in t and "__" in t]


def test_write_back_killed_on_every_attempt_fails_clearly_and_keeps_previous_tables(
    setup, mysql_database_url, kill_load_data, capsys, requested_delays
):
    engine, output = setup["engine"], setup["output"]
    before = _snapshot(engine, output)
    staging = f"{output.segments_table}__staging"
    with kill_load_data(database_name(mysql_database_url), staging, max_kills=3) as killer:
        code = cli.main(["run", "--config", str(setup["config"])])
    assert code == 1 and len(killer.killed) == 3  # the first try and both retries
    assert requested_delays[:2] == [5, 15]  # (Dagster also computes a third delay before giving up)
    [err] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert err.startswith(f"error: WriteError: LOAD DATA into '{staging}' failed (mysql+pymysql://root@127.0.0.1")
    assert "connection lost" in err and err.endswith("(gave up: Exceeded max_retries of 2)")
    assert _snapshot(engine, output) == before
    assert not [t for t in sa.inspect(engine).get_table_names() if setup["suffix"] in t and "__" in t]
