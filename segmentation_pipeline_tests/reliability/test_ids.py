"""Ids the database would confuse (issue 20, finding 4): tables compare ids byte for byte, like the
cleaning's duplicate check, and a history typed by an earlier numeric-id run is refused with its fix."""

from __future__ import annotations

import pandas as pd
import pytest

from segmentation_pipeline.core.segment_tables import (
    build_rejects_table,
    build_segments_table,
)
from segmentation_pipeline.storage.errors import WriteError
from segmentation_pipeline.storage.segment_store import (
    publish_segments,
    upsert_segments,
)
from segmentation_pipeline_tests.reliability.conftest import table_rows
from segmentation_pipeline_tests.reliability.test_publication import frames, output_for

pytestmark = pytest.mark.mysql

TWINS = ["abc0", "ABC0", "ábc0", "abc0 "]


def _frames(ids: list[str], run: str, segment: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    clean = pd.DataFrame({"customer_id": ids, "is_outlier": False, "outlier_reason": ""})
    segments = build_segments_table(clean, "customer_id", [segment] * len(ids), {0: "A", 1: "B"}, model_name="m",
                                    model_version="1", mlflow_run_id="m", dagster_run_id=run)
    rejects = build_rejects_table(pd.DataFrame({"customer_id": ["rej0", "REJ0"], "reason": "missing:age",
                                                "detail": "age is missing"}), mlflow_run_id="m", dagster_run_id=run)
    return segments, rejects


def test_case_and_accent_twins_are_distinct_customers_in_every_table(engine, suffix) -> None:
    output = output_for(suffix)
    publish_segments(engine, output, *_frames(TWINS, "r1"), run_key="r1", lock_timeout_s=30)
    assert sorted(table_rows(engine, output.segments_table)["customer_id"]) == sorted(TWINS)
    assert len(table_rows(engine, output.history_table)) == len(TWINS)
    # scoring 'ABC0' again replaces that customer only, not its twins
    upsert_segments(engine, output, *_frames(["ABC0"], "r2", segment=1), run_key="r2", lock_timeout_s=30)
    live = table_rows(engine, output.segments_table).set_index("customer_id")["segment_id"]
    assert sorted(live.index) == sorted(TWINS) and live["ABC0"] == 1 and live["abc0"] == 0
    assert sorted(table_rows(engine, output.rejects_table)["customer_id"]) == ["REJ0", "rej0"]


def test_text_ids_after_a_numeric_history_are_refused_with_the_migration(engine, suffix) -> None:
    output = output_for(suffix)
    publish_segments(engine, output, *frames("r1"), run_key="r1", lock_timeout_s=30)  # integer ids
    before = table_rows(engine, output.segments_table)
    with pytest.raises(WriteError, match=rf"ALTER TABLE `{output.history_table}` MODIFY `customer_id` VARCHAR"):
        publish_segments(engine, output, *_frames(["C000001"], "r2"), run_key="r2", lock_timeout_s=30)
    pd.testing.assert_frame_equal(table_rows(engine, output.segments_table), before)
    message = ""
    try:
        publish_segments(engine, output, *_frames(["C000001"], "r2"), run_key="r2", lock_timeout_s=30)
    except WriteError as exc:
        message = str(exc)
    fix = message[message.index("ALTER TABLE"):]
    with engine.begin() as conn:
        conn.exec_driver_sql(fix)
    publish_segments(engine, output, *_frames(["C000001"], "r2"), run_key="r2", lock_timeout_s=30)
    assert table_rows(engine, output.segments_table)["customer_id"].tolist() == ["C000001"]
