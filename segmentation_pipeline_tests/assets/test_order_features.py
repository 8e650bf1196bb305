"""Transactions mode in Dagster: lineage from the orders table, the features asset's metadata,
and the new-customers sensor watching the orders table."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from segmentation_pipeline.config import load_config
from segmentation_pipeline.core.demo_data import generate_orders
from segmentation_pipeline.definitions import build_definitions, build_resources
from segmentation_pipeline.resources import DatabaseResource, SettingsResource
from segmentation_pipeline.storage.bulk_load import load_frame
from segmentation_pipeline.storage.connection import create_db_engine
from segmentation_pipeline_tests.helpers import write_config


def _transactions_config(tmp_path: Path, database_url: str, table: str = "orders") -> Path:
    return write_config(
        tmp_path, database_url, f"sqlite:///{tmp_path / 'mlflow.db'}",
        source={"kind": "transactions", "table": table, "amount": "amount", "features_table": f"{table}_features"},
        features=["recency_days", "frequency", "monetary", "return_rate"],
        cleaning={"ranges": {}}, transform={"log1p": ["frequency", "monetary"], "pca_components": None},
        naming={"value_feature": "monetary"},
    )


def _deps(defs: dg.Definitions) -> dict[str, set[str]]:
    graph = defs.resolve_asset_graph()
    return {key.to_user_string(): {p.to_user_string() for p in graph.get(key).parent_keys}
            for key in graph.get_all_asset_keys()}


def test_lineage_runs_from_the_orders_table_and_customers_mode_is_unchanged(tmp_path: Path) -> None:
    config = _transactions_config(tmp_path, f"sqlite:///{tmp_path / 'orders.db'}")
    deps = _deps(build_definitions(str(config)))
    assert deps["order_features"] == {"source_orders"}
    assert deps["raw_customers"] == {"order_features"}
    assert "source_customers" not in deps
    repo = build_definitions(str(config)).get_repository_def()
    assert "orders_score_job" in repo.job_names
    job = build_definitions(str(config)).resolve_job_def("segmentation_job")
    assert "order_features" in {node.name for node in job.graph.nodes}

    plain = _deps(build_definitions(str(write_config(tmp_path, f"sqlite:///{tmp_path / 'c.db'}", "x", name="p.yaml"))))
    assert plain["raw_customers"] == {"source_customers"}
    assert "order_features" not in plain and "source_orders" not in plain


def test_order_features_asset_reports_rows_and_excluded_lines(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'orders.db'}"
    config = _transactions_config(tmp_path, url)
    lines, planted = generate_orders(300, seed=3)
    engine = create_db_engine(url)
    load_frame(engine, "orders", lines)
    settings = SettingsResource(config_path=str(config))
    cfg = settings.load()
    defs = build_definitions(str(config))
    result = dg.materialize(
        [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)],
        selection=dg.AssetSelection.assets("order_features"),
        resources=build_resources(settings, cfg, io_manager=dg.mem_io_manager),
    )
    [event] = result.asset_materializations_for_node("order_features")
    meta = {k: getattr(v, "value", v) for k, v in event.metadata.items()}
    assert meta["dagster/row_count"] == len(planted) == 300
    assert meta["excluded_lines"]["missing_customer_id"] == int(lines["customer_id"].isna().sum()) > 0
    assert meta["n_excluded_lines"] == meta["excluded_lines"]["missing_customer_id"]
    assert meta["n_order_lines"] == len(lines) and meta["as_of"] == "2025-01-01"
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM orders_features")).scalar_one() == 300


@pytest.mark.mysql
def test_new_customers_sensor_watches_the_orders_table(tmp_path: Path, mysql_database_url: str,
                                                       mysql_engine: sa.Engine) -> None:
    table = f"orders_{tmp_path.name[-10:]}".replace("-", "_")
    config = _transactions_config(tmp_path, mysql_database_url, table)
    lines, _ = generate_orders(50, seed=1)
    load_frame(mysql_engine, table, lines)
    settings = SettingsResource(config_path=str(config))
    sensor = {s.name: s for s in build_definitions(str(config)).sensors}["new_customers_sensor"]
    resources = {"settings": settings, "database": DatabaseResource(settings=settings)}

    def tick(cursor: str | None):
        with dg.build_sensor_context(cursor=cursor, resources=resources) as context:
            return sensor(context), context.cursor

    first, cursor = tick(None)
    assert isinstance(first, dg.SkipReason) and json.loads(cursor)["row_count"] == len(lines)
    quiet, _ = tick(cursor)
    assert isinstance(quiet, dg.SkipReason)
    load_frame(mysql_engine, table, lines.tail(2).assign(order_id=[10**6, 10**6 + 1]), if_exists="append")
    request, moved = tick(cursor)
    assert isinstance(request, dg.RunRequest) and request.tags["trigger"] == "new_orders"
    assert json.loads(moved)["row_count"] == len(lines) + 2
    assert sensor.job_name == "orders_score_job"
    assert load_config(config).transactions is not None
