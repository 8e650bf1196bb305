"""Engines, safe identifiers, introspection and transactions, for both backends.

MySQL/MariaDB (``mysql+pymysql://``) for production and a SQLite file for the embedded default
are both first class. Table and column names come from config or the CLI, so they are validated
and dialect-quoted, never interpolated raw. URLs are only ever shown masked.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url
from sqlalchemy.engine.interfaces import ReflectedColumn

from segmentation_pipeline.config import validate_identifier
from segmentation_pipeline.storage.errors import DatabaseUrlError, SourceError

log = logging.getLogger(__name__)

__all__ = [
    "ProgressFn",
    "check_columns",
    "check_database_url",
    "create_db_engine",
    "is_mysql",
    "is_sqlite",
    "masked_url",
    "quote_identifier",
    "reflect_columns",
    "scrub_password",
    "table_columns",
    "table_exists",
    "transaction",
]

#: ``progress(done, total)`` callbacks of long reads and writes.
ProgressFn = Callable[[int, int], None]


SUPPORTED_BACKENDS = ("mysql", "mariadb", "sqlite")


def check_database_url(url: str | URL) -> URL:
    """Parse a database URL, naming the part at fault (scheme, port, charset) instead of letting a
    driver fail later with ``invalid literal for int()`` or ``'NoneType' has no attribute``."""
    if isinstance(url, URL):
        parsed = url
    else:
        try:
            parsed = make_url(url)
        except (sa.exc.ArgumentError, ValueError) as exc:
            scheme = url.split("://", 1)[0] if "://" in url else ""
            if scheme and ":" in url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]:
                port = url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1].rsplit(":", 1)[1]
                raise DatabaseUrlError(f"database URL port {port!r} is not a number (1-65535)") from None
            raise DatabaseUrlError(
                "database URL is not a URL like mysql+pymysql://user@host:3306/database or sqlite:///path.db "
                f"({type(exc).__name__})"
            ) from None
    backend = parsed.get_backend_name()
    if backend not in SUPPORTED_BACKENDS:
        raise DatabaseUrlError(
            f"database URL scheme {parsed.drivername!r} is not supported: use mysql+pymysql:// (MySQL, MariaDB) "
            "or sqlite:///"
        )
    if backend != "sqlite":
        if parsed.port is not None and not 0 < parsed.port < 65536:
            raise DatabaseUrlError(f"database URL port {parsed.port} is out of range (1-65535)")
        charset = parsed.query.get("charset")
        if isinstance(charset, str):
            from pymysql.charset import charset_by_name

            if charset_by_name(charset) is None:
                raise DatabaseUrlError(
                    f"database URL option charset={charset!r} is not a MySQL character set; use charset=utf8mb4"
                )
    return parsed


def create_db_engine(url: str | URL, *, local_infile: bool = True) -> sa.Engine:
    """One place that knows how each backend must be configured for this pipeline.

    MySQL: PyMySQL with ``local_infile`` (bulk loads via LOAD DATA LOCAL; only point it at
    servers you trust, as with any LOCAL INFILE client), utf8mb4, and pre-ping/recycle so
    long Dagster runs survive ``wait_timeout``. SQLite: WAL so readers never block on the
    writer, a busy timeout, and SQLAlchemy-emitted BEGIN so DDL is transactional (the
    atomic table swap depends on it).
    """
    parsed = check_database_url(url)
    backend = parsed.get_backend_name()
    if backend in ("mysql", "mariadb"):
        if "+" not in parsed.drivername:  # bare mysql:// would pick mysqlclient, which is not installed
            parsed = parsed.set(drivername=f"{backend}+pymysql")
        connect_args: dict[str, Any] = {}
        if parsed.get_driver_name() == "pymysql":
            connect_args["local_infile"] = local_infile
            if "charset" not in parsed.query:
                connect_args["charset"] = "utf8mb4"
        return sa.create_engine(parsed, connect_args=connect_args, pool_pre_ping=True, pool_recycle=3600)
    if backend == "sqlite":
        database = parsed.database or ""
        file_backed = database not in ("", ":memory:") and not database.startswith("file:")
        if file_backed:
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(parsed, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (transactional DDL)
            cursor = dbapi_connection.cursor()
            if file_backed:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn: sa.Connection) -> None:
            conn.exec_driver_sql("BEGIN")

        return engine
    return sa.create_engine(parsed, pool_pre_ping=True)


def masked_url(engine_or_url: sa.Engine | sa.Connection | URL | str) -> str:
    """The only form of a URL allowed in logs and error messages."""
    if isinstance(engine_or_url, (sa.Engine, sa.Connection)):
        url = engine_or_url.engine.url
    else:
        url = make_url(engine_or_url) if isinstance(engine_or_url, str) else engine_or_url
    return url.render_as_string(hide_password=True)


def is_mysql(engine: sa.Engine | sa.Connection) -> bool:
    return engine.dialect.name in ("mysql", "mariadb")


def is_sqlite(engine: sa.Engine | sa.Connection) -> bool:
    return engine.dialect.name == "sqlite"


def quote_identifier(engine: sa.Engine | sa.Connection, name: str, what: str = "identifier") -> str:
    """Validate, then quote as the dialect requires (reserved words, case): config/CLI names never smuggle SQL."""
    validate_identifier(name, what)
    return engine.dialect.identifier_preparer.quote(name)


# --------------------------------------------------------------------------- introspection


def table_exists(engine: sa.Engine, table: str) -> bool:
    validate_identifier(table, "table")
    return sa.inspect(engine).has_table(table)


def _missing_table(engine: sa.Engine, table: str) -> SourceError:
    tables = sorted(sa.inspect(engine).get_table_names())
    shown = tables[:30] + (["..."] if len(tables) > 30 else [])
    return SourceError(f"table {table!r} not found in {masked_url(engine)}; tables: {shown}")


def reflect_columns(engine: sa.Engine, table: str) -> list[ReflectedColumn]:
    """The reflected columns; SourceError naming the tables when missing, or the masked URL when unreachable."""
    validate_identifier(table, "table")
    try:
        inspector = sa.inspect(engine)  # connects
        exists = inspector.has_table(table)
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:  # unreachable, refused, bad login
        detail = scrub_password(str(getattr(exc, "orig", exc)), engine.url)
        raise SourceError(f"cannot reach the database at {masked_url(engine)} to read table {table!r}: {detail}") from exc
    if not exists:
        raise _missing_table(engine, table)
    return list(inspector.get_columns(table))


def table_columns(engine: sa.Engine, table: str) -> list[str]:
    """Column names in table order; SourceError (listing the tables) when the table is missing."""
    return [column["name"] for column in reflect_columns(engine, table)]


def check_columns(engine: sa.Engine, table: str, available: Sequence[str], wanted: Sequence[str]) -> None:
    """SourceError naming every missing column and listing the available ones."""
    missing = [name for name in wanted if name not in available]
    if missing:
        label = f"column {missing[0]!r}" if len(missing) == 1 else f"columns {missing}"
        raise SourceError(
            f"{label} not found in table {table!r} ({masked_url(engine)}); available columns: {list(available)}"
        )


def scrub_password(message: str, url: URL) -> str:
    """Remove the password (raw and URL-escaped) from a driver's error text."""
    if url.password:
        for secret in {str(url.password), quote(str(url.password), safe="")}:
            message = message.replace(secret, "***")
    return message


@contextlib.contextmanager
def transaction(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A real transaction on both backends, DDL included.

    Engines from create_db_engine emit BEGIN for SQLite; for any other SQLite engine pysqlite
    would autocommit DDL, so BEGIN is emitted here.

    When the connection died mid-statement (KILL, server restart, network), the rollback fails
    too; the original error (naming the table) is raised, not the driver's bare ``(0, '')``.
    """
    with engine.connect() as conn:
        trans = conn.begin()
        try:
            if is_sqlite(conn) and not conn.connection.dbapi_connection.in_transaction:  # type: ignore[union-attr]
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            yield conn
        except BaseException:
            try:
                trans.rollback()
            except Exception as rollback_error:  # noqa: BLE001 - the first error is the one to report
                log.warning("rollback failed after an error (%s); discarding the connection", rollback_error)
                conn.invalidate()
            raise
        trans.commit()

