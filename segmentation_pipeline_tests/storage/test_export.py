"""The segment export: every segmented customer once, ids exactly as written, on MariaDB and SQLite."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from segmentation_pipeline.config import OutputConfig
from segmentation_pipeline.core.segment_tables import build_rejects_table, build_segments_table
from segmentation_pipeline.storage.connection import create_db_engine
from segmentation_pipeline.storage.errors import SourceError
from segmentation_pipeline.storage.export import export_segments, segment_summary
from segmentation_pipeline.storage.segment_store import publish_segments

NAMES = {0: "VIP · High income", 1: "Regular · Low income", 2: "Regular · Average customers"}
TEXT_IDS = ["C-001", "00042", "Zoë-7", "客户-九", "a,b \"quoted\"", "x" * 40, " lead space", "ñ"]


def _publish(engine: sa.Engine, ids: list, segment_ids: np.ndarray) -> pd.DataFrame:
    clean = pd.DataFrame({
        "customer_id": ids,
        "is_outlier": np.arange(len(ids)) % 3 == 0,
        "outlier_reason": ["annual_income" if i % 3 == 0 else "" for i in range(len(ids))],
    })
    segments = build_segments_table(
        clean, "customer_id", segment_ids, NAMES, model_name="m", model_version="3",
        mlflow_run_id="r", dagster_run_id="d",
    )
    rejects = build_rejects_table(pd.DataFrame({"customer_id": [], "reason": [], "detail": []}),
                                  mlflow_run_id="r", dagster_run_id="d")
    publish_segments(engine, OutputConfig(), segments, rejects, run_key="d", lock_timeout_s=10)
    return clean


@pytest.fixture(params=["sqlite", "mysql"])
def db(request, tmp_path) -> Iterator[sa.Engine]:
    """An empty database of its own: the export publishes under the default table names, which
    the other tests of the session's shared MySQL database also use."""
    if request.param == "sqlite":
        yield create_db_engine(f"sqlite:///{tmp_path / 'segments.db'}")
        return
    request.applymarker(pytest.mark.mysql)
    server = request.getfixturevalue("mysql_server_url")
    name = f"segexport_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(server)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    engine = create_db_engine(sa.engine.make_url(server).set(database=name))
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
        admin.dispose()


@pytest.mark.parametrize("ids", [TEXT_IDS, list(range(10**12, 10**12 + 8))], ids=["text", "integer"])
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_round_trip_keeps_every_customer_and_id(db, tmp_path, ids, fmt):
    segment_ids = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    clean = _publish(db, ids, segment_ids)
    output = tmp_path / f"out.{fmt}"
    n = export_segments(db, "customer_segments", output, fmt=fmt, tiers=["VIP", "Regular"], chunk_rows=3)
    assert n == len(ids)
    if fmt == "csv":
        assert output.read_bytes()[:3] != b"\xef\xbb\xbf"  # UTF-8 without a byte-order mark
        back = pd.read_csv(output, encoding="utf-8", dtype={"customer_id": str, "is_outlier": str}, keep_default_na=False)
        expected_ids = [str(i) for i in ids]
        assert set(back["is_outlier"]) == {"true", "false"}
        outlier = back["is_outlier"] == "true"
    else:
        back = pq.read_table(output).to_pandas()
        expected_ids = ids
        outlier = back["is_outlier"]
    assert list(back.columns) == ["customer_id", "segment_id", "segment_name", "is_outlier", "tier"]
    assert sorted(back["customer_id"].tolist()) == sorted(expected_ids)  # each exactly once, verbatim
    by_id = back.set_index(back["customer_id"].astype(str))
    for i, customer in enumerate(ids):
        row = by_id.loc[str(customer)]
        assert row["segment_id"] == segment_ids[i]
        assert row["segment_name"] == NAMES[segment_ids[i]]
        assert row["tier"] == NAMES[segment_ids[i]].split(" · ")[0]
    assert outlier.sum() == clean["is_outlier"].sum()


def test_export_of_some_segments_and_the_summary(db, tmp_path):
    _publish(db, TEXT_IDS, np.array([0, 1, 2, 0, 1, 2, 0, 1]))
    output = tmp_path / "vip.csv"
    assert export_segments(db, "customer_segments", output, segments=[0]) == 3
    back = pd.read_csv(output, dtype={"customer_id": str}, keep_default_na=False)
    assert sorted(back["customer_id"]) == sorted([TEXT_IDS[0], TEXT_IDS[3], TEXT_IDS[6]])
    assert "tier" not in back.columns
    summary = segment_summary(db, "customer_segments", tiers=["VIP", "Regular"])
    assert summary["segment_id"].tolist() == [0, 1, 2]
    assert summary["customers"].tolist() == [3, 3, 2]
    assert summary["share_pct"].tolist() == pytest.approx([37.5, 37.5, 25.0])
    assert summary["tier"].tolist() == ["VIP", "Regular", "Regular"]
    assert summary["outliers"].sum() == 3  # rows 0, 3, 6


def test_export_before_any_run_says_what_to_do(tmp_path):
    engine = create_db_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(SourceError, match="run the pipeline first"):
        export_segments(engine, "customer_segments", tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()
