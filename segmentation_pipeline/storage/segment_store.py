"""The segment tables as one unit: full replacement after training, upserts after scoring.

Both paths hold the same database lock, so a scheduled retrain and a sensor-triggered scoring
run never interleave their writes, and both keep the append-only history per run.
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timezone

import pandas as pd
import sqlalchemy as sa

from segmentation_pipeline.config import OutputConfig
from segmentation_pipeline.storage.bulk_load import FrameLoader, write_table_atomic
from segmentation_pipeline.storage.connection import ProgressFn, is_mysql, quote_identifier, table_exists
from segmentation_pipeline.storage.history import HistoryCopy, copy_history, ensure_history_table
from segmentation_pipeline.storage.locks import write_lock
from segmentation_pipeline.storage.publication import failures_table
from segmentation_pipeline.storage.schema import id_collation, plan_frame
from segmentation_pipeline.storage.swap import StagedTable, TableLoader, write_tables_atomic

HISTORY_COLUMNS = ["dagster_run_id", "customer_id", "segment_id", "segment_name", "is_outlier", "model_version", "scored_at"]
FAILURES_TABLE = "pipeline_run_failures"
_HISTORY_KEYS = {"run_key_column": "dagster_run_id", "id_column": "customer_id"}


_TWINS = ("", "__staging", "__old", "__incoming", "__incoming__staging", "__incoming__old", "__incoming_ids",
          "__incoming_ids__staging", "__incoming_ids__old")


def pipeline_tables(output: OutputConfig) -> frozenset[str]:
    """Every table the pipeline writes (outputs, their staging/old/incoming twins, history,
    failures): no other writer (``load-csv``) may replace one of them."""
    names = {FAILURES_TABLE, output.history_table}
    for table in (output.segments_table, output.rejects_table):
        names.update(table + twin for twin in _TWINS)
    names.update(f"{t}__staging" for t in (output.history_table, FAILURES_TABLE))
    return frozenset(names)


def lock_name(output: OutputConfig) -> str:
    return f"segmentation:{output.segments_table}"


def publish_tables(
    engine: sa.Engine,
    output: OutputConfig,
    segments: TableLoader,
    rejects: TableLoader,
    *,
    run_key: str,
    lock_timeout_s: int,
) -> list[int]:
    """Replace both tables (swapped together atomically) and record the run in the history, for
    any engine's loaders. Returns the rows written to the segments and rejects tables.

    The history is loaded from the same files as the segments, in parallel (MySQL LOAD DATA), or
    copied on the server from the staging table: either way the rows are rendered and sent once.
    Tables and history become visible together (the publication journal in ``FAILURES_TABLE``).
    """
    history = HistoryCopy(output.history_table, output.segments_table, HISTORY_COLUMNS, run_key=run_key,
                          **_HISTORY_KEYS)
    with write_lock(engine, lock_name(output), lock_timeout_s) as held:
        return write_tables_atomic(
            engine, [StagedTable(output.segments_table, segments), StagedTable(output.rejects_table, rejects)],
            history=history, held=held, journal=FAILURES_TABLE,
        )


def publish_segments(
    engine: sa.Engine,
    output: OutputConfig,
    segments: pd.DataFrame,
    rejects: pd.DataFrame,
    *,
    run_key: str,
    lock_timeout_s: int,
    progress: ProgressFn | None = None,
) -> list[str]:
    """:func:`publish_tables` for the pandas frames; returns the tables written."""
    publish_tables(
        engine, output,
        FrameLoader(segments, plan_frame(segments, "customer_id", binary_key=True), progress=progress),
        FrameLoader(rejects, plan_frame(rejects), progress=progress),
        run_key=run_key, lock_timeout_s=lock_timeout_s,
    )
    return [output.segments_table, output.rejects_table, output.history_table]


def upsert_segments(
    engine: sa.Engine,
    output: OutputConfig,
    segments: pd.DataFrame,
    rejects: pd.DataFrame,
    *,
    run_key: str,
    lock_timeout_s: int,
    progress: ProgressFn | None = None,
) -> list[str]:
    """Replace only these customers' rows, in one transaction; a customer sits in one table only."""
    if not table_exists(engine, output.segments_table) or not table_exists(engine, output.rejects_table):
        return publish_segments(engine, output, segments, rejects, run_key=run_key,
                                lock_timeout_s=lock_timeout_s, progress=progress)
    incoming_segments = f"{output.segments_table}__incoming"
    incoming_rejects = f"{output.rejects_table}__incoming"
    touched = pd.DataFrame({"customer_id": pd.concat([segments["customer_id"].astype(str),
                                                      rejects["customer_id"].astype(str)], ignore_index=True)})
    incoming_ids = f"{output.segments_table}__incoming_ids"
    plan = plan_frame(segments, "customer_id", binary_key=True)
    with write_lock(engine, lock_name(output), lock_timeout_s):
        ensure_history_table(engine, output.history_table, plan, HISTORY_COLUMNS, **_HISTORY_KEYS)
        try:
            write_tables_atomic(engine, [StagedTable(incoming_segments, FrameLoader(segments, plan, progress=progress))])
            write_table_atomic(engine, incoming_rejects, rejects)
            write_table_atomic(engine, incoming_ids, touched.drop_duplicates())
            q = lambda name: quote_identifier(engine, name)  # noqa: E731 - local shorthand
            seg, rej, inc_seg, inc_rej, ids = map(q, (output.segments_table, output.rejects_table,
                                                      incoming_segments, incoming_rejects, incoming_ids))
            seg_cols = ", ".join(q(c) for c in segments.columns)
            rej_cols = ", ".join(q(c) for c in rejects.columns)
            with engine.begin() as conn:  # DML only: one InnoDB / SQLite transaction
                if is_mysql(engine):
                    # byte-for-byte, like the cleaning's duplicate check: 'ABC0' never deletes 'abc0'
                    conn.execute(sa.text(f"DELETE s FROM {seg} s JOIN {ids} i ON CAST(s.customer_id AS CHAR) "
                                         f"COLLATE {id_collation(conn)} = i.customer_id"))
                    conn.execute(sa.text(f"DELETE r FROM {rej} r JOIN {ids} i ON CAST(r.customer_id AS CHAR) "
                                         f"COLLATE {id_collation(conn)} = i.customer_id"))
                else:
                    conn.execute(sa.text(f"DELETE FROM {seg} WHERE CAST(customer_id AS TEXT) IN (SELECT customer_id FROM {ids})"))
                    conn.execute(sa.text(f"DELETE FROM {rej} WHERE customer_id IN (SELECT customer_id FROM {ids})"))
                conn.execute(sa.text(f"INSERT INTO {seg} ({seg_cols}) SELECT {seg_cols} FROM {inc_seg}"))
                conn.execute(sa.text(f"INSERT INTO {rej} ({rej_cols}) SELECT {rej_cols} FROM {inc_rej}"))
                if len(segments):  # the history commits with the upsert, or neither does
                    copy_history(conn, output.history_table, incoming_segments, plan, HISTORY_COLUMNS,
                                 run_key=run_key, expected_rows=len(segments), **_HISTORY_KEYS)
        finally:
            with contextlib.suppress(Exception), engine.begin() as conn:
                for name in (incoming_segments, incoming_rejects, incoming_ids):
                    conn.execute(sa.text(f"DROP TABLE IF EXISTS {quote_identifier(engine, name)}"))
    return [output.segments_table, output.rejects_table, output.history_table]


def record_run_failure(engine: sa.Engine, *, run_id: str, job_name: str, message: str) -> None:
    """Where operators look first: a table next to the segments, one row per failed run."""
    table = failures_table(FAILURES_TABLE)
    table.create(engine, checkfirst=True)
    with engine.begin() as conn:
        conn.execute(sa.delete(table).where(table.c.run_id == run_id))
        conn.execute(sa.insert(table).values(
            run_id=run_id, job_name=job_name, message=message[:10_000],
            failed_at=datetime.now(timezone.utc).replace(tzinfo=None),
        ))
