"""The whole asset graph against the real MariaDB and a real MLflow server over HTTP."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from sklearn.metrics import adjusted_rand_score

from segmentation_pipeline.cli import main, run_pipeline
from segmentation_pipeline.core.features import logged_columns
from segmentation_pipeline.core.demo_data import generate_customers
from segmentation_pipeline.storage.bulk_load import load_frame
from segmentation_pipeline.storage import mlflow_registry as registry
from segmentation_pipeline.storage.connection import create_db_engine
from segmentation_pipeline_tests.helpers import mlflow_rest as rest
from segmentation_pipeline_tests.helpers import write_config

pytestmark = [pytest.mark.mysql, pytest.mark.e2e]


@pytest.fixture()
def demo_customers(mysql_engine: sa.Engine) -> tuple[pd.DataFrame, np.ndarray]:
    frame, planted = generate_customers(4000, seed=7)
    load_frame(mysql_engine, "customers", frame, if_exists="replace")
    return frame, planted


def test_pipeline_end_to_end_on_mariadb_and_mlflow_server(
    tmp_path, mysql_database_url, mysql_engine, mlflow_server, demo_customers
):
    frame, planted = demo_customers
    experiment = f"e2e-{tmp_path.name}"
    config = write_config(tmp_path, mysql_database_url, mlflow_server, **{"mlflow.experiment": experiment,
                                                                          "model.name": f"seg_{tmp_path.name}"[:60]})
    summary = run_pipeline(str(config))

    # every input row is accounted for
    assert summary["n_input"] == len(frame)
    assert summary["n_input"] == summary["n_segmented"] + summary["n_rejected"]
    segments = pd.read_sql("SELECT * FROM customer_segments", mysql_engine)
    rejects = pd.read_sql("SELECT * FROM customer_rejects", mysql_engine)
    assert len(segments) == summary["n_segmented"] and len(rejects) == summary["n_rejected"]
    assert segments["customer_id"].is_unique
    assert set(rejects["reason"]) >= {"duplicate_id"} and rejects["reason"].str.len().gt(0).all()

    # the planted segments are found
    assert summary["k"] == 5, summary["k_reason"]
    # a duplicated id's stale copy is planted -1; the customer's own segment is the other copy's
    truth = pd.Series(planted, index=frame["customer_id"]).groupby(level=0).max()
    ids = segments["customer_id"].astype(frame["customer_id"].dtype)
    labelled = truth.loc[ids].to_numpy() >= 0
    assert adjusted_rand_score(truth.loc[ids].to_numpy()[labelled], segments["segment_id"].to_numpy()[labelled]) >= 0.9

    # the model is registered on the server, champion on the first version
    model_name = summary["model_name"]
    champion = rest(mlflow_server, "registered-models/alias", name=model_name, alias="champion")
    assert champion["model_version"]["version"] == summary["model_version"] == "1"
    run = rest(mlflow_server, "runs/get", run_id=summary["mlflow_run_id"])["run"]
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["dagster_run_id"] == summary["dagster_run_id"]
    assert {"final_silhouette", "n_input"} <= {m["key"] for m in run["data"]["metrics"]}

    # a second run replaces the segments atomically and keeps history per run
    second = run_pipeline(str(config))
    assert second["model_version"] == "2"
    after = pd.read_sql("SELECT * FROM customer_segments", mysql_engine)
    assert len(after) == second["n_segmented"] and after["dagster_run_id"].nunique() == 1
    assert after["dagster_run_id"].iloc[0] == second["dagster_run_id"]
    history = pd.read_sql("SELECT dagster_run_id, COUNT(*) AS n FROM segment_assignments GROUP BY dagster_run_id",
                          mysql_engine)
    assert set(history["dagster_run_id"]) == {summary["dagster_run_id"], second["dagster_run_id"]}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"source.table": "no_such_table"}, "no_such_table"),
        ({"features": ["age", "annual_income", "lifetime_value"], "cleaning.ranges": {}}, "lifetime_value"),
        ({"k_range": [2, 5000]}, "k_range [2, 5000] is outside the allowed range [2, "),
    ],
    ids=["missing-table", "missing-column", "k-range-too-large"],
)
def test_bad_input_fails_clearly_and_keeps_previous_segments(
    tmp_path, mysql_database_url, mysql_engine, local_mlflow_uri, demo_customers, capsys, changes, expected
):
    table = f"segments_{tmp_path.name[-12:]}".replace("-", "_")
    sentinel = pd.DataFrame({"customer_id": [1], "segment_id": [9], "segment_name": ["previous"]})
    sentinel.to_sql(table, mysql_engine, index=False)
    config = write_config(tmp_path, mysql_database_url, local_mlflow_uri,
                          **{"output.segments_table": table, **changes})
    assert main(["run", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert expected in err
    assert pd.read_sql(f"SELECT * FROM {table}", mysql_engine).to_dict("records") == sentinel.to_dict("records")


def test_cli_json_summary_on_sqlite_default(tmp_path, local_mlflow_uri, capsys):
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'customers.db'}", local_mlflow_uri)
    assert main(["--config", str(config), "demo-data", "--rows", "1500"]) == 0
    assert main(["--config", str(config), "run", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("k", "silhouette", "n_input", "n_segmented", "n_rejected", "model_name", "model_version", "mlflow_run_id"):
        assert key in summary
    assert summary["n_input"] == 1500 == summary["n_segmented"] + summary["n_rejected"]
    # the evidence for k: one object per candidate k, the structure grade and the deciding evidence
    evidence = summary["k_evidence"]
    assert [row["k"] for row in evidence] == list(range(2, 11))
    assert set(evidence[0]) >= {"k", "inertia", "silhouette", "davies_bouldin", "calinski_harabasz", "gap",
                                "gap_se", "stability", "smallest_share"}
    assert summary["structure"] in {"clear", "weak", "none"} and f"k={summary['k']}" in summary["k_reason"]
    engine = create_db_engine(f"sqlite:///{tmp_path / 'customers.db'}")
    assert pd.read_sql("SELECT COUNT(*) AS n FROM customer_segments", engine)["n"].iloc[0] == summary["n_segmented"]

    # transform.log1p: auto (the default) chose the money column once; the choice is in the summary
    # (from the features asset's Dagster metadata), in MLflow, and inside the registered model
    assert summary["log1p_mode"] == "auto" and summary["log1p"] == ["annual_income"]
    client = mlflow.MlflowClient(local_mlflow_uri)
    params = client.get_run(summary["mlflow_run_id"]).data.params
    assert params["transform.log1p"] == "auto" and params["transform.log1p_columns"] == "annual_income"
    assert client.get_model_version(summary["model_name"], summary["model_version"]).tags["log1p_columns"] == "annual_income"
    assigner, _ = registry.load_assigner(local_mlflow_uri, summary["model_name"], "champion")
    assert logged_columns(assigner.pipeline.named_steps["preprocess"]) == ["annual_income"]
