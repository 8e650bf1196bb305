"""What a newcomer does after a run, through the real CLI: explanations, the segment table, an export."""

from __future__ import annotations

import io
import json
import os
from contextlib import redirect_stdout

import pandas as pd
import pytest

from segmentation_pipeline.cli import main
from segmentation_pipeline.storage.connection import create_db_engine
from segmentation_pipeline_tests.helpers import invoke, served_model, write_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("usable")
    database = f"sqlite:///{tmp_path / 'customers.db'}"
    config = write_config(tmp_path, database, f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert main(["--config", str(config), "demo-data", "--rows", "1500"]) == 0
    printed = io.StringIO()
    with redirect_stdout(printed):
        assert main(["--config", str(config), "run", "--json"]) == 0
    summary = json.loads(printed.getvalue().strip().splitlines()[-1])
    return tmp_path, config, database, summary


def test_run_json_carries_the_explanations(trained):
    _, _, database, summary = trained
    explanations = summary["explanations"]
    assert len(explanations) == summary["k"]
    assert sum(e["share_customers_pct"] for e in explanations) == pytest.approx(100.0)
    assert sum(e["share_annual_income_pct"] for e in explanations) == pytest.approx(100.0)
    for segment in explanations:
        assert segment["explanation"]
        assert [f["feature"] for f in segment["features"]] == ["age", "annual_income", "spending_score"]
        genders = {c["category"]: c for c in segment["categories"] if c["column"] == "gender"}
        assert set(genders) <= {"Female", "Male", "Other"}
        assert sum(c["share_pct"] for c in genders.values()) == pytest.approx(100.0)
    # the customer counts are those of the written table
    written = pd.read_sql("SELECT segment_id, COUNT(*) AS n FROM customer_segments GROUP BY segment_id",
                          create_db_engine(database)).set_index("segment_id")["n"]
    assert {e["segment_id"]: e["customers"] for e in explanations} == written.to_dict()


def test_segments_and_export_after_a_run(trained, capsys):
    tmp_path, config, database, _ = trained
    assert main(["--config", str(config), "segments", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    output = tmp_path / "out" / "segments.csv"
    assert main(["--config", str(config), "export", "--output", str(output)]) == 0
    assert f"to {output}" in capsys.readouterr().out
    exported = pd.read_csv(output, dtype={"is_outlier": str})
    table = pd.read_sql("SELECT customer_id, segment_id FROM customer_segments", create_db_engine(database))
    assert len(exported) == len(table) == sum(r["customers"] for r in rows)
    assert exported["customer_id"].is_unique
    assert sorted(exported["customer_id"]) == sorted(table["customer_id"])
    first = rows[0]["segment_id"]
    only = tmp_path / "out" / "one.parquet"
    assert main(["--config", str(config), "export", "--output", str(only), "--segment", str(first)]) == 0
    assert set(pd.read_parquet(only)["segment_id"]) == {first}
    assert main(["--config", str(config), "segments"]) == 0
    printed = capsys.readouterr().out
    assert "segments" in printed and rows[0]["segment_name"] in printed


def test_served_model_scores_each_row_with_the_batch_rules(trained):
    tmp_path, _, _, summary = trained
    rows = [
        {"age": 24, "annual_income": 38000, "spending_score": 85},
        {"age": 24, "annual_income": "38,000", "spending_score": 85},
        {"age": None, "annual_income": 50000, "spending_score": 50},
        {"age": 500, "annual_income": 40000, "spending_score": 50},
        {"age": "abc", "annual_income": 40000, "spending_score": 50},
        {"age": 40, "annual_income": 9_000_000, "spending_score": 50},
    ]
    with served_model(f"models:/{summary['model_name']}@champion", f"sqlite:///{tmp_path / 'mlflow.db'}") as url:
        predictions = invoke(url, rows)
    assert len(predictions) == len(rows)
    good, thousands, null, huge_age, text, rich = predictions
    assert good["error"] is None and isinstance(good["segment_id"], int) and good["segment_name"]
    assert (thousands["segment_id"], thousands["error"]) == (good["segment_id"], None)
    assert good["is_outlier"] is False
    assert null["segment_id"] is None and null["error"] == "missing:age: age is missing"
    assert huge_age["segment_id"] is None and huge_age["error"].startswith("out_of_range:age: age=500 ")
    assert text["segment_id"] is None and text["error"] == "non_numeric:age: age=abc is not numeric"
    assert rich["error"] is None and rich["is_outlier"] is True  # in range, beyond the training fences


def test_mlflow_run_model_and_experiment_say_what_they_are(trained):
    from mlflow.tracking import MlflowClient

    tmp_path, config, _, summary = trained
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.run_name == f"train k={summary['k']} {_utc_day(run.info.start_time)}"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    model = client.get_registered_model(summary["model_name"])
    assert "age, annual_income, spending_score" in model.description
    version = client.get_model_version(summary["model_name"], summary["model_version"])
    assert version.description.startswith(f"k={summary['k']} ")
    assert "gate: promoted to champion" in version.description and "clean customers" in version.description
    cumulative = client.get_metric_history(run.info.run_id, "pca_cumulative_explained_variance")
    shares = client.get_metric_history(run.info.run_id, "pca_explained_variance_ratio")
    assert len(cumulative) == len(shares) >= 1
    assert max(m.value for m in cumulative) == pytest.approx(sum(m.value for m in shares))
    total = run.data.metrics["pca_explained_variance_total"]
    assert total == pytest.approx(max(m.value for m in cumulative)) and total >= 0.95


def _utc_day(millis: int) -> str:
    from datetime import datetime, timezone

    return f"{datetime.fromtimestamp(millis / 1000, timezone.utc):%Y-%m-%d}"


def test_report_opens_in_a_browser_and_shows_each_segment(trained, capsys):
    from playwright.sync_api import sync_playwright

    _, config, _, summary = trained
    assert main(["--config", str(config), "report"]) == 0
    path = capsys.readouterr().out.strip().splitlines()[-1]
    assert path.endswith(f"segments-{summary['mlflow_run_id']}.html") and os.path.exists(path)
    assert main(["--config", str(config), "report", "--run", summary["mlflow_run_id"]]) == 0
    assert capsys.readouterr().out.strip() == path
    os.remove(path)  # the MLflow artifact is the copy of record: fetched again when the file is gone
    assert main(["--config", str(config), "report", "--run", summary["mlflow_run_id"]]) == 0
    assert capsys.readouterr().out.strip() == path and os.path.exists(path)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(f"file://{path}")
            for segment in summary["explanations"]:
                card = page.locator(f"#segment-{segment['segment_id']}")
                assert card.is_visible()
                assert segment["segment_name"] in card.inner_text()
                assert segment["explanation"] in card.inner_text()
            assert page.locator("img[alt='segment profiles']").evaluate("img => img.naturalWidth") > 0
            assert f"Why k = {summary['k']}" in page.inner_text("body")
        finally:
            browser.close()


def test_segment_export_asset_writes_the_configured_file(trained):
    import dagster as dg

    from segmentation_pipeline.definitions import ASSETS, build_resources
    from segmentation_pipeline.resources import SettingsResource

    tmp_path, _, database, summary = trained

    def export_run(config):
        settings = SettingsResource(config_path=str(config))
        return dg.materialize(ASSETS, selection=dg.AssetSelection.assets("segment_export"),
                              resources=build_resources(settings, settings.load(), io_manager=dg.mem_io_manager))

    plain = write_config(tmp_path, database, f"sqlite:///{tmp_path / 'mlflow.db'}", name="plain.yaml")
    assert export_run(plain).asset_materializations_for_node("segment_export") == []
    configured = write_config(tmp_path, database, f"sqlite:///{tmp_path / 'mlflow.db'}", name="export.yaml",
                              **{"output.export": {"path": "exports/segments.parquet", "format": "parquet"}})
    [event] = export_run(configured).asset_materializations_for_node("segment_export")
    written = pd.read_parquet(tmp_path / "data" / "exports" / "segments.parquet")
    assert event.metadata["dagster/row_count"].value == len(written) == summary["n_segmented"]
    assert list(written.columns) == ["customer_id", "segment_id", "segment_name", "is_outlier"]
