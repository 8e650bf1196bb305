"""The append-only run history: which rows a run published, recorded idempotently per run.

Copies are made on the server (``INSERT ... SELECT``) from the published table, or, on MySQL,
loaded beside it from the same LOAD DATA files (:class:`HistoryMirror`): the rows never travel
through Python a second time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import sqlalchemy as sa

from segmentation_pipeline.config import validate_identifier
from segmentation_pipeline.storage.connection import is_mysql, masked_url, quote_identifier, transaction
from segmentation_pipeline.storage.errors import WriteError
from segmentation_pipeline.storage.schema import (
    MAX_KEY_VARCHAR,
    VARCHAR,
    FramePlan,
    IndexSpec,
    create_table_if_missing,
    id_collation,
    index_name,
)

__all__ = [
    "RUN_KEY_VARCHAR",
    "HistoryCopy",
    "HistoryMirror",
    "check_run_key",
    "copy_history",
    "ensure_history_table",
    "open_history_mirror",
]

RUN_KEY_VARCHAR = 64  # Dagster run ids have 36 characters; leaves room for the id in a (run, id) key


@dataclass(frozen=True)
class HistoryCopy:
    """Also record the rows of replaced table ``source`` in history ``table`` as run ``run_key``
    (the run's earlier history rows are replaced: re-runs are idempotent)."""

    table: str
    source: str
    columns: Sequence[str]
    run_key_column: str
    run_key: str
    id_column: str


@dataclass
class HistoryMirror:
    """The history table loaded from the same LOAD DATA files, on its own connection and thread.

    The server inserts into both tables at once (one core each) while the rows are rendered and
    sent once. ``fields[i]`` names the mirror column for file field i (None: dropped);
    ``set_values`` fills the remaining columns. ``loaded`` counts the server-reported rows;
    ``complete`` is False when the main load fell back to INSERTs (the caller then copies the
    rows on the server instead).
    """

    conn: sa.Connection
    table: str
    fields: list[str | None]
    set_values: dict[str, Any]
    loaded: int = 0
    complete: bool = False


def _history_plan(source: FramePlan, columns: Sequence[str], run_key_column: str, id_column: str) -> FramePlan:
    """History columns typed like the source's; keyed by (run, id) where the key fits InnoDB's limit."""
    missing = [c for c in (*columns, id_column) if c != run_key_column and c not in source.names]
    if missing:
        raise ValueError(f"history columns {missing} are not columns of the source table; it has {source.names}")
    names = [run_key_column, *(c for c in columns if c != run_key_column)]
    if id_column not in names:
        names.append(id_column)
    sql_types = {c: source.sql_types[c] for c in names if c != run_key_column}
    sql_types[run_key_column] = sa.String(RUN_KEY_VARCHAR)
    arrow_types = {c: source.arrow_types.get(c, pa.string()) for c in names}
    id_type = sql_types[id_column]
    fits = not isinstance(id_type, sa.String) or (id_type.length or VARCHAR) <= MAX_KEY_VARCHAR - RUN_KEY_VARCHAR
    return FramePlan(names, arrow_types, sql_types, (run_key_column, id_column) if fits else None, binary_key=True)


def ensure_history_table(
    engine: sa.Engine, table: str, source_plan: FramePlan, columns: Sequence[str], *, run_key_column: str,
    id_column: str,
) -> FramePlan:
    """Create the history table on first use (typed like the source); returns its plan.

    New tables are keyed ``(run_key_column, id_column)``: one B-tree instead of rows + an index.
    """
    validate_identifier(table, "history table")
    validate_identifier(run_key_column, "run key column")
    validate_identifier(id_column, "id column")
    plan = _history_plan(source_plan, columns, run_key_column, id_column)
    index = None if plan.primary_key else IndexSpec(index_name(table, "run"), (run_key_column, id_column))
    create_table_if_missing(engine, table, plan, index=index)
    _check_id_type(engine, table, id_column, plan.sql_types[id_column])
    return plan


def _check_id_type(engine: sa.Engine, table: str, id_column: str, wanted: sa.types.TypeEngine[object]) -> None:
    """Text ids cannot go into a history whose id column an earlier numeric-id run made an integer:
    refuse before anything is written, with the statement that migrates it."""
    existing = next((c["type"] for c in sa.inspect(engine).get_columns(table) if c["name"] == id_column), None)
    if not isinstance(wanted, sa.String) or not isinstance(existing, sa.Integer):
        return
    length = wanted.length or VARCHAR
    collate = f" COLLATE {id_collation(engine)}" if is_mysql(engine) else ""
    raise WriteError(
        f"history {table!r} ({masked_url(engine)}) keeps {id_column!r} as {existing}, but the source's ids are now "
        f"text; nothing was written. Migrate it once: ALTER TABLE `{table}` MODIFY `{id_column}` "
        f"VARCHAR({length}){collate} NOT NULL"
    )


def check_run_key(run_key: str) -> None:
    """A run key fits the history's run column (checked before anything is written)."""
    if not isinstance(run_key, str) or not run_key:
        raise ValueError(f"run_key must be a non-empty string, got {run_key!r}")
    if len(run_key) > RUN_KEY_VARCHAR:
        raise ValueError(f"run_key {run_key[:80]!r} has {len(run_key)} characters; at most {RUN_KEY_VARCHAR}")


def _delete_run(conn: sa.Connection, table: str, run_key_column: str, run_key: str) -> None:
    tbl = sa.table(table, sa.column(run_key_column))
    conn.execute(sa.delete(tbl).where(tbl.c[run_key_column] == run_key))


def copy_history(
    bind: sa.Engine | sa.Connection,
    table: str,
    source_table: str,
    source_plan: FramePlan,
    columns: Sequence[str],
    *,
    run_key_column: str,
    run_key: str,
    id_column: str,
    expected_rows: int,
) -> int:
    """Record ``source_table``'s rows as run ``run_key`` of the history, on the server.

    ``INSERT ... SELECT``: rows already in the database never travel through Python again.
    Idempotent: the run's earlier rows are replaced. Given an Engine, the table is created when
    missing and the copy runs in its own transaction; given a Connection, it runs inside the
    caller's transaction (the scoring upsert commits segments and history together) and
    :func:`ensure_history_table` must have run first. The server's row count must equal
    ``expected_rows`` or nothing is recorded.
    """
    validate_identifier(source_table, "history source table")
    check_run_key(run_key)
    if isinstance(bind, sa.Engine):
        ensure_history_table(bind, table, source_plan, columns, run_key_column=run_key_column, id_column=id_column)
        with transaction(bind) as conn:
            return copy_history(conn, table, source_table, source_plan, columns, run_key_column=run_key_column,
                                run_key=run_key, id_column=id_column, expected_rows=expected_rows)
    conn = bind
    names = _history_plan(source_plan, columns, run_key_column, id_column).names
    q = lambda name: quote_identifier(conn, name, "column")  # noqa: E731 - local shorthand
    target, source = quote_identifier(conn, table, "history table"), quote_identifier(conn, source_table, "table")
    selected = ", ".join(":run_key" if c == run_key_column else q(c) for c in names)
    try:
        _delete_run(conn, table, run_key_column, run_key)
        copied = conn.execute(
            sa.text(f"INSERT INTO {target} ({', '.join(q(c) for c in names)}) SELECT {selected} FROM {source}"),
            {"run_key": run_key},
        ).rowcount
    except sa.exc.DBAPIError as exc:
        raise WriteError(
            f"history {table!r} copy from {source_table!r} for run {run_key!r} failed ({masked_url(conn)}): "
            f"{getattr(exc, 'orig', exc)}; rolled back"
        ) from exc
    if copied != expected_rows:
        raise WriteError(
            f"history {table!r} got {copied} rows for run {run_key!r} from {source_table!r}, "
            f"expected {expected_rows}; rolled back"
        )
    return copied


def open_history_mirror(
    conn: sa.Connection, history: HistoryCopy, history_plan: FramePlan, source_plan: FramePlan
) -> HistoryMirror:
    """Begin the history load of run ``history.run_key`` on ``conn`` (its own connection): the
    run's earlier rows are deleted in the same transaction, which the caller commits after the swap."""
    conn.begin()
    _delete_run(conn, history.table, history.run_key_column, history.run_key)
    fields = [n if n in history_plan.names and n != history.run_key_column else None for n in source_plan.names]
    return HistoryMirror(conn, history.table, fields, {history.run_key_column: history.run_key})
