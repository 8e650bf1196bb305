"""The publication journal: a run's history and its swapped tables become visible together.

``RENAME TABLE`` cannot join a transaction, so the history cannot commit *in* the swap. Instead
(MySQL): the run's history rows commit *before* the swap, in one transaction with a "publication
pending" row in the failures table that names the token the staging table carries in its
comment. The swap renames that staging table live; then the pending row is deleted. Whatever
stops the run between the two, the next write of the same tables (under the same lock) decides
from the live table's comment alone: token live -> the swap happened, the history is right, the
pending row is cleared (roll forward); token not live -> the swap never happened, the run's
history rows are deleted and the row stays, marked rolled back (the run is visible as failed).
Scratch files of dead processes are removed by the same repair.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from segmentation_pipeline.storage.connection import is_mysql, masked_url

log = logging.getLogger(__name__)

__all__ = [
    "PENDING_JOB",
    "ROLLED_BACK_JOB",
    "SCRATCH_PREFIX",
    "PublicationRepair",
    "PublicationStep",
    "clear_pending",
    "current_step",
    "failures_table",
    "mark_pending",
    "publication_step",
    "remove_dead_scratch",
    "repair_publications",
    "scratch_prefix",
    "table_token",
]

PENDING_JOB = "publication pending"
ROLLED_BACK_JOB = "publication rolled back"
SCRATCH_PREFIX = "segmentation-load-"
_TOKEN = re.compile(r"token=([0-9a-f]{32}) table=(\S+) history=(\S+) run_column=(\S+)")


@dataclass(frozen=True)
class PublicationStep:
    """An outside change that must become true exactly when the tables are published (the champion
    alias): ``apply`` runs right before the swap, once everything is staged and verified; ``undo``
    runs if the swap then fails, so it never stays applied to tables that were not published."""

    apply: Callable[[], None]
    undo: Callable[[], None]


_step: contextvars.ContextVar[PublicationStep | None] = contextvars.ContextVar("publication_step", default=None)


@contextmanager
def publication_step(step: PublicationStep) -> Iterator[None]:
    """Attach ``step`` to the publication made inside the block, whichever engine makes it."""
    token = _step.set(step)
    try:
        yield
    finally:
        _step.reset(token)


def current_step() -> PublicationStep | None:
    """The step attached to the publication being made (None outside :func:`publication_step`)."""
    return _step.get()


def failures_table(name: str) -> sa.Table:
    """One row per failed run (and per unfinished publication): where operators look first."""
    metadata = sa.MetaData()
    return sa.Table(
        name, metadata,
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("job_name", sa.String(255), nullable=False),
        sa.Column("failed_at", sa.DateTime, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
    )


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def mark_pending(
    conn: sa.Connection, journal: str, *, run_key: str, token: str, table: str, history: str, run_column: str
) -> None:
    """Inside the history's transaction: this run's publication has begun and is not finished."""
    tbl = failures_table(journal)
    conn.execute(sa.delete(tbl).where(tbl.c.run_id == run_key))
    conn.execute(sa.insert(tbl).values(
        run_id=run_key, job_name=PENDING_JOB, failed_at=_now(),
        message=(f"publication of run {run_key} into {table!r} did not complete (yet); the next write repairs it "
                 f"token={token} table={table} history={history} run_column={run_column}"),
    ))


def clear_pending(bind: sa.Engine | sa.Connection, journal: str, run_key: str) -> None:
    """After the swap: the publication is complete."""
    tbl = failures_table(journal)
    stmt = sa.delete(tbl).where(tbl.c.run_id == run_key, tbl.c.job_name == PENDING_JOB)
    if isinstance(bind, sa.Engine):
        with bind.begin() as conn:
            conn.execute(stmt)
    else:
        bind.execute(stmt)
        bind.commit()


def table_token(bind: sa.Engine | sa.Connection, table: str) -> str:
    """The write token in a live table's comment ('' when the table or comment is missing)."""
    if not is_mysql(bind):
        return ""
    query = sa.text(
        "SELECT TABLE_COMMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :t"
    )
    if isinstance(bind, sa.Engine):
        with bind.connect() as conn:
            comment = conn.execute(query, {"t": table}).scalar()
    else:
        comment = bind.execute(query, {"t": table}).scalar()
    return (comment or "").rsplit(" ", 1)[-1]


@dataclass(frozen=True)
class PublicationRepair:
    """The run keys a repair completed (the swap had happened) or undid (it had not)."""

    rolled_forward: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)


def repair_publications(
    engine: sa.Engine, journal: str, table: str, *, only_run: str | None = None
) -> PublicationRepair:
    """Finish or undo every unfinished publication into ``table``; call under its write lock, or
    with ``only_run`` (a run undoing its own publication after it lost the lock: another run's
    pending publication is not its to judge).

    Decided by the live table's comment token alone, so it is right whichever statement the
    interrupted run reached.
    """
    remove_dead_scratch()
    if not is_mysql(engine) or not sa.inspect(engine).has_table(journal):
        return PublicationRepair()
    tbl = failures_table(journal)
    with engine.connect() as conn:
        pending = conn.execute(sa.select(tbl.c.run_id, tbl.c.message).where(tbl.c.job_name == PENDING_JOB)).all()
    live = table_token(engine, table)
    forward: list[str] = []
    back: list[str] = []
    for run_key, message in pending:
        match = _TOKEN.search(message)
        if match is None or match.group(2) != table or (only_run is not None and run_key != only_run):
            continue
        token, history, run_column = match.group(1), match.group(3), match.group(4)
        with engine.begin() as conn:
            if token == live:
                conn.execute(sa.delete(tbl).where(tbl.c.run_id == run_key, tbl.c.job_name == PENDING_JOB))
                forward.append(run_key)
                continue
            hist = sa.table(history, sa.column(run_column))
            if sa.inspect(conn).has_table(history):
                conn.execute(sa.delete(hist).where(hist.c[run_column] == run_key))
            conn.execute(sa.delete(tbl).where(tbl.c.run_id == run_key))  # DELETE + INSERT: no UPDATE grant
            conn.execute(sa.insert(tbl).values(
                run_id=run_key, job_name=ROLLED_BACK_JOB, failed_at=_now(),
                message=(f"publication of run {run_key} into {table!r} did not complete: the swap never happened, "
                         f"so its rows in history {history!r} were deleted and {table!r} kept the previous run "
                         f"({masked_url(engine)})"),
            ))
            back.append(run_key)
    for run_key in forward:
        log.warning("run %s was published but not marked complete; marked now", run_key)
    for run_key in back:
        log.warning("run %s did not publish; its history rows were rolled back", run_key)
    return PublicationRepair(forward, back)


def scratch_prefix() -> str:
    """Scratch directories carry the writer's pid, so a later run can tell a dead writer's apart."""
    return f"{SCRATCH_PREFIX}{os.getpid()}-"


def _alive(pid: int) -> bool:
    """Signal 0 probes a pid; EPERM still means someone runs under it."""
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return isinstance(exc, PermissionError)
    return True


def remove_dead_scratch(folder: Path | None = None) -> list[Path]:
    """Delete scratch directories (TSV chunks) left in the temp folder by processes that died."""
    removed = []
    for path in Path(folder or tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*-*"):
        pid_text = path.name[len(SCRATCH_PREFIX):].split("-", 1)[0]
        if not pid_text.isdigit() or _alive(int(pid_text)) or not path.is_dir():
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed
