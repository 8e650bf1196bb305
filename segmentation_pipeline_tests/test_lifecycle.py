"""Segments over time, for real: scoring new customers, drift, promotion, stable ids, serving.

Runs against the real MariaDB and a real ``mlflow server`` on loopback; nothing is mocked.
"""

from __future__ import annotations

import os

import pandas as pd
import pytest
import sqlalchemy as sa

from segmentation_pipeline.cli import _run_single_asset, run_pipeline
from segmentation_pipeline.core.demo_data import generate_customers
from segmentation_pipeline.storage.bulk_load import load_frame
from segmentation_pipeline_tests.helpers import invoke, mlflow_rest, served_model, write_config

pytestmark = [pytest.mark.mysql, pytest.mark.e2e]


def _segments(engine: sa.Engine, table: str = "customer_segments") -> pd.DataFrame:
    return pd.read_sql(f"SELECT customer_id, segment_id, segment_name, model_version FROM {table}", engine)


@pytest.fixture()
def trained(tmp_path, mysql_database_url, mysql_engine, mlflow_server):
    """One champion trained on 3,000 demo customers in its own source and output tables."""
    suffix = tmp_path.name[-8:].replace("-", "_")
    source = f"customers_{suffix}"
    frame, planted = generate_customers(3000, seed=11, dirty=False)
    load_frame(mysql_engine, source, frame, if_exists="replace", primary_key="customer_id")
    changes = {
        "source.table": source,
        "output.segments_table": f"segments_{suffix}",
        "output.rejects_table": f"rejects_{suffix}",
        "output.history_table": f"history_{suffix}",
        "model.name": f"lifecycle_{suffix}",
        "mlflow.experiment": f"lifecycle_{suffix}",
        "promotion.bootstrap_rounds": 4,
    }
    config = write_config(tmp_path, mysql_database_url, mlflow_server, **changes)
    summary = run_pipeline(str(config))
    return {"config": config, "changes": changes, "frame": frame, "summary": summary, "source": source}


def test_scoring_new_customers_uses_champion_without_refit(trained, mysql_engine, mlflow_server):
    segments_table = trained["changes"]["output.segments_table"]
    before = _segments(mysql_engine, segments_table)
    new, _ = generate_customers(200, seed=99, dirty=False)
    new["customer_id"] = new["customer_id"] + 100_000
    load_frame(mysql_engine, trained["source"], new, if_exists="append")

    meta = _run_single_asset(str(trained["config"]), "scored_customers",
                             {"ops": {"scored_customers": {"config": {"after_id": str(trained["frame"]["customer_id"].max())}}}})
    assert meta["n_input"] == 200 and meta["n_segmented"] + meta["n_rejected"] == 200
    after = _segments(mysql_engine, segments_table)
    assert len(after) == len(before) + meta["n_segmented"]
    assert after["customer_id"].is_unique
    scored = after[after["customer_id"] >= 100_000]
    assert len(scored) == meta["n_segmented"]
    assert set(scored["model_version"]) == {trained["summary"]["champion_version"]}
    # no new model version was registered by scoring
    versions = mlflow_rest(mlflow_server, "model-versions/search", filter=f"name='{trained['summary']['model_name']}'")
    assert len(versions["model_versions"]) == 1


def test_drift_quiet_on_same_distribution_fires_on_shift(trained, mysql_engine):
    quiet = _run_single_asset(str(trained["config"]), "segment_drift")
    assert quiet["severity"] == "ok", quiet
    with mysql_engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {trained['source']} SET annual_income = annual_income * 2.5, age = age + 15"))
    shifted = _run_single_asset(str(trained["config"]), "segment_drift")
    assert shifted["severity"] in {"warn", "error"}, shifted
    assert "annual_income" in shifted["drifted_features"]
    assert os.path.exists(shifted["report_path"])


def test_retrain_with_other_seed_keeps_segment_ids_and_worse_model_is_not_promoted(
    trained, tmp_path, mysql_database_url, mysql_engine, mlflow_server
):
    segments_table = trained["changes"]["output.segments_table"]
    first = _segments(mysql_engine, segments_table).set_index("customer_id")
    reseeded = write_config(tmp_path, mysql_database_url, mlflow_server, name="reseeded.yaml",
                            **{**trained["changes"], "model.random_state": 7})
    second_summary = run_pipeline(str(reseeded))
    assert second_summary["promoted"], second_summary["promotion_reasons"]
    second = _segments(mysql_engine, segments_table).set_index("customer_id")
    agreement = (first["segment_id"] == second.loc[first.index, "segment_id"]).mean()
    assert agreement >= 0.95, agreement
    assert (first["segment_name"] == second.loc[first.index, "segment_name"]).mean() >= 0.95

    worse = write_config(tmp_path, mysql_database_url, mlflow_server, name="worse.yaml",
                         **{**trained["changes"], "k": 2})
    worse_summary = run_pipeline(str(worse))
    assert not worse_summary["promoted"]
    assert any("FAIL" in reason for reason in worse_summary["promotion_reasons"])
    alias = mlflow_rest(mlflow_server, "registered-models/alias", name=worse_summary["model_name"], alias="champion")
    assert alias["model_version"]["version"] == second_summary["model_version"]
    # customers keep following the champion
    third = _segments(mysql_engine, segments_table)
    assert set(third["model_version"]) == {second_summary["model_version"]}
    assert third["segment_id"].nunique() > 2


def test_served_champion_answers_invocations(trained, mlflow_server):
    model = trained["summary"]["model_name"]
    with served_model(f"models:/{model}@champion", mlflow_server) as url:
        predictions = invoke(url, [
            {"age": 24, "annual_income": 38000, "spending_score": 85},
            {"age": 68, "annual_income": 30000, "spending_score": 15},
        ])
    assert len(predictions) == 2
    assert {"segment_id", "segment_name"} <= set(predictions[0])
    assert predictions[0]["segment_id"] != predictions[1]["segment_id"]
    assert predictions[0]["segment_name"] and isinstance(predictions[0]["segment_id"], int)
