"""Atomic replacement of tables: stage, load, verify, record the history, swap -- for every engine.

Readers (dashboards, the next pipeline step) must never see a half-written table, so a
replacement is built in ``<table>__staging``, its row count verified, and swapped in with one
atomic statement: MySQL ``RENAME TABLE t TO t__old, t__staging TO t``, SQLite ``DROP`` +
``ALTER TABLE RENAME`` in one transaction. How rows reach the staging table is the engine's part,
a :class:`TableLoader` (pandas: :class:`~segmentation_pipeline.storage.bulk_load.FrameLoader`;
Spark: ``engines.spark.writeback.JdbcLoader``); everything else is written once, here.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import sqlalchemy as sa

from segmentation_pipeline.config import validate_identifier
from segmentation_pipeline.storage.connection import is_mysql, masked_url, quote_identifier, transaction
from segmentation_pipeline.storage.errors import WriteError
from segmentation_pipeline.storage.faults import fire
from segmentation_pipeline.storage.history import (
    HistoryCopy,
    HistoryMirror,
    check_run_key,
    copy_history,
    ensure_history_table,
    open_history_mirror,
)
from segmentation_pipeline.storage.locks import HeldLock, WriteLockLost, write_lock
from segmentation_pipeline.storage.publication import (
    PublicationStep,
    clear_pending,
    current_step,
    failures_table,
    mark_pending,
    repair_publications,
)
from segmentation_pipeline.storage.schema import FramePlan, create_table, drop_table_if_exists

log = logging.getLogger(__name__)

__all__ = [
    "OLD_SUFFIX",
    "STAGING_SUFFIX",
    "StagedTable",
    "TableLoader",
    "TableSwap",
    "swap_tables",
    "write_tables_atomic",
]

STAGING_SUFFIX = "__staging"
OLD_SUFFIX = "__old"


class TableLoader(Protocol):
    """One engine's way of filling a staging table with one frame's rows."""

    @property
    def plan(self) -> FramePlan:
        """Column names and SQL types of the rows (the staging table is created from it)."""
        ...

    @property
    def rows(self) -> int:
        """How many rows the frame has: the staging table must hold exactly these."""
        ...

    def feeds_mirror(self, engine: sa.Engine) -> bool:
        """Whether :meth:`load` can load a :class:`HistoryMirror` from the same files in passing."""
        ...

    def load(self, engine: sa.Engine, staging: str, mirror: HistoryMirror | None) -> int:
        """Insert all rows into the existing ``staging`` table; returns the rows the server holds."""
        ...


@dataclass(frozen=True)
class StagedTable:
    """Replace ``table`` with the rows ``loader`` loads."""

    table: str
    loader: TableLoader


@dataclass(frozen=True)
class TableSwap:
    """The names one replacement uses: ``staging`` becomes ``table``, the live table moves to ``old``."""

    table: str
    staging: str
    old: str

    @classmethod
    def of(cls, table: str) -> TableSwap:
        validate_identifier(table, "table")
        return cls(table, _derived_name(table, STAGING_SUFFIX), _derived_name(table, OLD_SUFFIX))


def _derived_name(table: str, suffix: str) -> str:
    return validate_identifier(table + suffix, f"derived table name ({suffix} of {table!r})")


def swap_tables(
    engine: sa.Engine,
    swaps: Sequence[TableSwap],
    *,
    conn: sa.Connection | None = None,
    in_swap: Callable[[sa.Connection], None] | None = None,
) -> None:
    """Make each ``staging`` become its ``table`` in one atomic step; readers see all old or all
    new, never neither and never a mix.

    ``conn``: the MySQL session to swap on (the one holding the write lock: a killed lock session
    cannot swap). ``in_swap``: SQLite only, runs inside the swap's transaction (the history).
    """
    if is_mysql(engine):
        with contextlib.ExitStack() as stack:
            if conn is None:
                conn = stack.enter_context(engine.connect())
            q = lambda name: quote_identifier(conn, name, "table")  # noqa: E731 - local shorthand
            renames, replaced = [], []
            for swap in swaps:
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {q(swap.old)}")
                if sa.inspect(conn).has_table(swap.table):
                    renames.append(f"{q(swap.table)} TO {q(swap.old)}")
                    replaced.append(swap.old)
                renames.append(f"{q(swap.staging)} TO {q(swap.table)}")
            conn.exec_driver_sql("RENAME TABLE " + ", ".join(renames))  # one statement: atomic
            for old in replaced:
                try:
                    conn.exec_driver_sql(f"DROP TABLE {q(old)}")
                except sa.exc.DBAPIError as exc:  # the swap succeeded; the next write drops it
                    log.warning("could not drop %r after swap: %s", old, getattr(exc, "orig", exc))
            conn.commit()
        return
    with transaction(engine) as tx:  # SQLite DDL is transactional: all or nothing
        for swap in swaps:
            q = lambda name: quote_identifier(tx, name, "table")  # noqa: E731 - local shorthand
            tx.exec_driver_sql(f"DROP TABLE IF EXISTS {q(swap.table)}")
            tx.exec_driver_sql(f"ALTER TABLE {q(swap.staging)} RENAME TO {q(swap.table)}")
        if in_swap is not None:
            in_swap(tx)


def write_tables_atomic(
    engine: sa.Engine,
    tables: Sequence[StagedTable],
    *,
    lock_name: str | None = None,
    lock_timeout_s: int = 600,
    history: HistoryCopy | None = None,
    held: HeldLock | None = None,
    journal: str | None = None,
) -> list[int]:
    """Replace several tables as one unit: every table is staged and its row count verified
    first, then all are swapped together (one MySQL ``RENAME TABLE``, one SQLite transaction). On
    any failure none of the tables changes and the staging tables are dropped. Returns the rows
    written per table.

    Concurrent writers of one table must share ``lock_name`` (they share the staging name), or
    pass the lock they already hold as ``held``: its ownership is verified before each step and
    the swap runs on its session, so a lost lock stops the run before any live table changes
    (:class:`WriteLockLost`; the staging tables are then left alone: they may be the new holder's).

    ``history``: the run's rows are recorded in the history table *with* the swap. SQLite: inside
    the swap's transaction. MySQL with ``journal``: committed just before the swap together with
    a pending row in ``journal`` (see :mod:`~segmentation_pipeline.storage.publication`), which
    the next write resolves from the live table's token if the run stops in between. MySQL
    without a journal: committed right after the swap (a failure then raises, published).
    """
    swaps = [TableSwap.of(item.table) for item in tables]
    source: StagedTable | None = None
    if history is not None:
        source = next((item for item in tables if item.table == history.source), None)
        if source is None:
            raise ValueError(f"history source {history.source!r} is not one of the replaced tables")
        check_run_key(history.run_key)
    started = time.perf_counter()
    lock = write_lock(engine, lock_name, lock_timeout_s) if lock_name else contextlib.nullcontext(held)
    journaled = history is not None and journal is not None and is_mysql(engine)
    with lock as owned, contextlib.ExitStack() as stack:
        verify = owned.verify if owned is not None else (lambda: None)
        if journaled and history is not None and journal is not None:
            failures_table(journal).create(engine, checkfirst=True)
            repair_publications(engine, journal, history.source)
        mirror: HistoryMirror | None = None
        if history is not None and source is not None:
            history_plan = ensure_history_table(
                engine, history.table, source.loader.plan, history.columns, run_key_column=history.run_key_column,
                id_column=history.id_column,
            )
            if source.loader.feeds_mirror(engine):
                mirror = open_history_mirror(
                    stack.enter_context(engine.connect()), history, history_plan, source.loader.plan
                )
        with engine.connect() as conn:
            for swap in swaps:
                drop_table_if_exists(conn, swap.staging)
            conn.commit()
        token = uuid.uuid4().hex
        history_committed = False
        applied: PublicationStep | None = None
        try:
            for item, swap in zip(tables, swaps, strict=True):
                fire("before_load", table=item.table, staging=swap.staging)
                verify()
                with transaction(engine) as conn:
                    # the comment changes the table's identity token, so chunked readers notice a swap
                    mark = token if item is source else uuid.uuid4().hex
                    create_table(conn, swap.staging, item.loader.plan, comment=f"segmentation-pipeline write {mark}")
                loaded = item.loader.load(engine, swap.staging, mirror if item is source else None)
                if loaded != item.loader.rows:
                    raise WriteError(
                        f"staging table {swap.staging!r} holds {loaded} rows but the frame has {item.loader.rows} "
                        f"({masked_url(engine)}); {item.table!r} left unchanged"
                    )
            if mirror is not None and mirror.complete and source is not None and mirror.loaded != source.loader.rows:
                raise WriteError(
                    f"history {mirror.table!r} got {mirror.loaded} rows for run {history.run_key!r}, expected "
                    f"{source.loader.rows} ({masked_url(engine)}); nothing replaced"
                )
            verify()
            if journaled and history is not None and source is not None and journal is not None:
                fire("before_history_commit", run_key=history.run_key)
                _commit_history_pending(engine, history, source, mirror, journal, token)
                history_committed = True
            step = current_step() if history is not None else None
            if step is not None:
                verify()
                step.apply()
                applied = step
            fire("before_swap", run_key=history.run_key if history else None)
            verify()
            in_swap = None
            if history is not None and source is not None and not is_mysql(engine):
                in_swap = _history_copier(history, source)
            swap_tables(engine, swaps, conn=owned.conn if owned is not None else None, in_swap=in_swap)
        except WriteLockLost:
            _undo(applied)
            if mirror is not None:
                _abandon(mirror.conn)
            if history_committed and journal is not None and history is not None:
                with contextlib.suppress(Exception):
                    repair_publications(engine, journal, history.source, only_run=history.run_key)
            raise
        except BaseException:
            _undo(applied)
            if mirror is not None:
                _abandon(mirror.conn)
            with contextlib.suppress(Exception), engine.connect() as conn:
                for swap in swaps:
                    drop_table_if_exists(conn, swap.staging)
                conn.commit()
            if history_committed and journal is not None and history is not None:
                with contextlib.suppress(Exception):
                    repair_publications(engine, journal, history.source, only_run=history.run_key)
            raise
        fire("after_swap", run_key=history.run_key if history else None)
        if history_committed and journal is not None and history is not None:
            try:
                clear_pending(engine, journal, history.run_key)
            except Exception as exc:  # noqa: BLE001 - published with its history; the next write clears it
                log.warning("run %r published with its history; clearing its pending mark failed: %s",
                            history.run_key, exc)
        elif history is not None and source is not None and is_mysql(engine):
            try:
                if mirror is not None and mirror.complete:
                    mirror.conn.commit()
                else:
                    if mirror is not None:
                        _abandon(mirror.conn)
                    copy_history(
                        engine, history.table, history.source, source.loader.plan, history.columns,
                        run_key_column=history.run_key_column, run_key=history.run_key,
                        id_column=history.id_column, expected_rows=source.loader.rows,
                    )
            except Exception as exc:
                raise WriteError(
                    f"published {[item.table for item in tables]} but recording run {history.run_key!r} in history "
                    f"{history.table!r} failed ({masked_url(engine)}): {getattr(exc, 'orig', exc)}; a re-run of "
                    "the same run records it"
                ) from exc
        elif mirror is not None:
            _abandon(mirror.conn)
    for item in tables:
        log.info(
            "replaced %r with %d rows in %.2fs (%s)", item.table, item.loader.rows, time.perf_counter() - started,
            masked_url(engine),
        )
    return [item.loader.rows for item in tables]


def _commit_history_pending(
    engine: sa.Engine, history: HistoryCopy, source: StagedTable, mirror: HistoryMirror | None, journal: str,
    token: str,
) -> None:
    """Commit the run's history rows and its pending publication row in one transaction."""
    staging = TableSwap.of(source.table).staging
    try:
        if mirror is not None and mirror.complete:
            mark_pending(mirror.conn, journal, run_key=history.run_key, token=token, table=history.source,
                         history=history.table, run_column=history.run_key_column)
            mirror.conn.commit()
            return
        if mirror is not None:
            _abandon(mirror.conn)
        with transaction(engine) as conn:
            copy_history(conn, history.table, staging, source.loader.plan, history.columns,
                         run_key_column=history.run_key_column, run_key=history.run_key,
                         id_column=history.id_column, expected_rows=source.loader.rows)
            mark_pending(conn, journal, run_key=history.run_key, token=token, table=history.source,
                         history=history.table, run_column=history.run_key_column)
    except sa.exc.DBAPIError as exc:
        raise WriteError(
            f"recording run {history.run_key!r} in history {history.table!r} failed ({masked_url(engine)}): "
            f"{getattr(exc, 'orig', exc)}; nothing published"
        ) from exc


def _history_copier(history: HistoryCopy, source: StagedTable) -> Callable[[sa.Connection], None]:
    def copy(conn: sa.Connection) -> None:
        copy_history(conn, history.table, history.source, source.loader.plan, history.columns,
                     run_key_column=history.run_key_column, run_key=history.run_key,
                     id_column=history.id_column, expected_rows=source.loader.rows)
    return copy


def _undo(step: PublicationStep | None) -> None:
    """The tables were not published: take back the outside change made for them."""
    if step is None:
        return
    try:
        step.undo()
    except Exception as exc:  # noqa: BLE001 - the swap's error is the one being raised
        log.error("the swap failed and undoing its publication step failed too: %s", exc)


def _abandon(conn: sa.Connection) -> None:
    """Roll back; a connection that died mid-statement cannot, so it is discarded instead."""
    try:
        conn.rollback()
    except Exception:  # noqa: BLE001 - the original error is the one being raised
        conn.invalidate()
