"""From an orders table to published segments through the real pipeline (SQLite and MariaDB)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest
import sqlalchemy as sa
from sklearn.metrics import adjusted_rand_score

from segmentation_pipeline.cli import main, run_pipeline
from segmentation_pipeline.config import CONFIG_DIR
from segmentation_pipeline.core.demo_data import generate_orders
from segmentation_pipeline.core.rfm import SEGMENT_NAMES
from segmentation_pipeline.storage.bulk_load import load_frame
from segmentation_pipeline.storage.connection import create_db_engine, table_exists
from segmentation_pipeline_tests.helpers import write_config

pytestmark = pytest.mark.e2e

N_CUSTOMERS = 2000


def _config(tmp_path: Path, database_url: str, tracking_uri: str, **changes: object) -> Path:
    """configs/transactions.yaml pointed at the test database and tracking store."""
    return write_config(tmp_path, database_url, tracking_uri, base=CONFIG_DIR / "transactions.yaml",
                        **{"model.name": f"orders_{tmp_path.name}"[:60], **changes})


@pytest.fixture(params=[pytest.param("mysql", marks=pytest.mark.mysql), "sqlite"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'orders.db'}"
    return str(request.getfixturevalue("mysql_database_url"))


def test_planted_order_behaviours_are_recovered(tmp_path: Path, database_url: str, local_mlflow_uri: str) -> None:
    suffix = tmp_path.name[-10:].replace("-", "_")
    orders, features = f"orders_{suffix}", f"features_{suffix}"
    config = _config(tmp_path, database_url, local_mlflow_uri, **{
        "source.table": orders, "source.features_table": features,
        "output.segments_table": f"seg_{suffix}", "output.rejects_table": f"rej_{suffix}",
        "output.history_table": f"hist_{suffix}",
    })
    engine = create_db_engine(database_url)
    lines, planted = generate_orders(N_CUSTOMERS, seed=11)
    load_frame(engine, orders, lines)

    summary = run_pipeline(str(config))

    # the summary says how many order lines were read and which were left out, by reason
    read = summary["orders"]
    assert read["orders_table"] == orders and read["n_order_lines"] == len(lines)
    walk_ins = int(lines["customer_id"].isna().sum())
    assert read["excluded_lines"]["missing_customer_id"] == walk_ins > 0 == read["excluded_lines"]["after_as_of"]
    assert read["n_excluded_lines"] == walk_ins
    # every customer with a counted order line is segmented or rejected
    assert summary["n_input"] == N_CUSTOMERS == summary["n_segmented"] + summary["n_rejected"]
    segments = pd.read_sql(f"SELECT customer_id, segment_id FROM seg_{suffix}", engine)
    rejects = pd.read_sql(f"SELECT customer_id, reason FROM rej_{suffix}", engine)
    ids = set(segments["customer_id"].astype(int)) | set(rejects["customer_id"].astype(int))
    assert ids == set(planted.index)
    # customers who returned everything are rejected for it
    refunded = set(planted.index[planted == -1])
    assert refunded and refunded <= set(rejects.loc[rejects["reason"] == "non_positive_monetary", "customer_id"].astype(int))

    # the four planted behaviours are the segments
    assert summary["k"] == 4, summary["k_reason"]
    truth = planted.loc[segments["customer_id"].astype(int)].to_numpy()
    kept = truth >= 0
    assert adjusted_rand_score(truth[kept], segments["segment_id"].to_numpy()[kept]) >= 0.9

    # the features table: RFM columns and the as_of used
    table = pd.read_sql(f"SELECT * FROM {features}", engine)
    assert len(table) == N_CUSTOMERS and set(table["rfm_segment"].dropna()) <= set(SEGMENT_NAMES)
    assert {"r_score", "f_score", "m_score", "as_of", "avg_order_value", "tenure_days"} <= set(table.columns)

    # each cluster is profiled in RFM words
    mlflow.set_tracking_uri(local_mlflow_uri)
    profiles = pd.read_csv(mlflow.artifacts.download_artifacts(
        run_id=summary["mlflow_run_id"], artifact_path="segments/categorical_profiles.csv", dst_path=str(tmp_path)))
    rfm = profiles[profiles["column"] == "rfm_segment"]
    assert set(rfm["segment_id"]) == set(segments["segment_id"])
    # the big spenders' cluster is mostly Champions
    spenders = pd.Series(segments["segment_id"].to_numpy()[truth == 0]).mode().iloc[0]
    top = rfm[rfm["segment_id"] == spenders].sort_values("share_pct").iloc[-1]
    assert top["category"] == "Champions"


@pytest.mark.mysql
def test_bad_orders_stop_the_run_and_write_nothing(
    tmp_path: Path, mysql_database_url: str, mysql_engine: sa.Engine, local_mlflow_uri: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    suffix = tmp_path.name[-10:].replace("-", "_")
    orders, features, segments = f"orders_{suffix}", f"features_{suffix}", f"seg_{suffix}"
    config = _config(tmp_path, mysql_database_url, local_mlflow_uri, **{
        "source.table": orders, "source.features_table": features, "source.timestamp": "created_at",
        "output.segments_table": segments,
    })
    lines, _ = generate_orders(100, seed=2)
    load_frame(mysql_engine, orders, lines)
    sentinel = pd.DataFrame({"customer_id": [1], "segment_id": [9]})
    sentinel.to_sql(segments, mysql_engine, index=False)
    assert main(["run", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "'created_at'" in err and repr(orders) in err
    assert not table_exists(mysql_engine, features)
    assert pd.read_sql(f"SELECT * FROM {segments}", mysql_engine).to_dict("records") == sentinel.to_dict("records")


def test_demo_data_transactions_cli(tmp_path: Path, local_mlflow_uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'orders.db'}"
    config = _config(tmp_path, url, local_mlflow_uri)
    assert main(["--config", str(config), "demo-data", "--transactions", "--customers", "150"]) == 0
    assert "150 customers" in capsys.readouterr().out
    lines = pd.read_sql("SELECT * FROM orders", create_db_engine(url))
    assert lines["customer_id"].nunique() == 150
    assert {"order_id", "customer_id", "ordered_at", "quantity", "unit_price", "amount"} == set(lines.columns)
    assert (lines["amount"] < 0).any()  # returns


def test_load_csv_loads_an_orders_file(tmp_path: Path, local_mlflow_uri: str) -> None:
    url = f"sqlite:///{tmp_path / 'orders.db'}"
    config = _config(tmp_path, url, local_mlflow_uri)
    csv = tmp_path / "orders.csv"
    csv.write_text("Order ID;Customer ID;Ordered At;Amount\r\n1;7;2024-01-02 10:00:00;12,5\r\n"
                   "2;;2024-01-03 11:00:00;3\r\n2;8;2024-01-03 11:00:00;4\r\n", encoding="utf-8")
    assert main(["--config", str(config), "load-csv", str(csv)]) == 0
    loaded = pd.read_sql("SELECT * FROM orders", create_db_engine(url))
    assert list(loaded.columns) == ["order_id", "customer_id", "ordered_at", "amount"]
    assert loaded["customer_id"].dropna().tolist() == [7, 8]  # ids, not 7.0
