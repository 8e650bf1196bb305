"""Partitioned JDBC reads of the customer table into Spark.

One aggregate (``MIN(id), MAX(id), COUNT(*)``) over SQLAlchemy gives the bounds; Spark then runs
``numPartitions`` range queries on the id column in parallel (``partitionColumn``/``lowerBound``/
``upperBound``). Spark's first and last ranges are open-ended and the first one also takes
``id IS NULL``, so every row is read exactly once -- duplicate and NULL ids included, because
cleaning must see them to reject them with a reason. Non-numeric ids are split by
``MOD(CRC32(id), n)`` predicates instead.

Credentials: the JDBC URL never carries them; user and password travel as JDBC connection
properties (Spark redacts ``password`` in plans and logs), and any error text is scrubbed of the
password before it is raised. Only the masked SQLAlchemy URL appears in messages.

Why ``jdbc:mysql://`` and not ``jdbc:mariadb://``: Spark has no MariaDB dialect (SPARK-25013,
SPARK-48813); a ``jdbc:mariadb:`` URL falls back to the generic dialect, which quotes identifiers
with double quotes -- MariaDB reads ``"age"`` as a string literal and every row fails with
"Out of range value". With ``jdbc:mysql:`` Spark picks its MySQL dialect (backticks, MySQL types)
while the MariaDB Connector/J driver class does the talking (``permitMysqlScheme`` lets
Connector/J 3.x accept the scheme; 2.x accepts it anyway).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from segmentation_pipeline.config import validate_identifier
from segmentation_pipeline.storage.connection import is_mysql, masked_url, table_columns
from segmentation_pipeline.storage.reads import table_version
from segmentation_pipeline.storage.errors import SourceError

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

__all__ = [
    "MARIADB_DRIVER",
    "JdbcTarget",
    "SparkExtract",
    "SparkJdbcError",
    "jdbc_target",
    "read_customers",
    "scrub",
    "source_changed",
]

MARIADB_DRIVER = "org.mariadb.jdbc.Driver"
#: Rows the driver streams per round trip (0 would buffer a whole partition in the executor).
DEFAULT_FETCH_SIZE = 10_000
# URL query keys that carry nothing security-relevant; anything else (ssl_*, unix_socket, ...)
# is refused rather than silently dropped (dropping ssl_ca would send credentials in clear text).
_HARMLESS_QUERY = {"charset", "local_infile"}
_NUMERIC = (sa.types.Integer, sa.types.Numeric, sa.types.Float)
_TEMPORAL = (sa.types.Date, sa.types.DateTime)
_LONG = 2**63 - 1


class SparkJdbcError(RuntimeError):
    """A Spark JDBC read or write failed; the message names the table and the masked URL only."""


@dataclass(frozen=True)
class JdbcTarget:
    """A JDBC URL without credentials plus the connection properties that carry them.

    ``repr`` and ``str`` never show the password; pass :meth:`properties` to Spark.
    """

    url: str
    safe_url: str  # the masked SQLAlchemy URL, for messages
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    driver: str = MARIADB_DRIVER

    def properties(self, **extra: Any) -> dict[str, str]:
        props = {"driver": self.driver}
        if self.user is not None:
            props["user"] = self.user
        if self.password is not None:
            props["password"] = self.password
        props.update({key: str(value) for key, value in extra.items()})
        return props

    def with_url_options(self, **options: Any) -> "JdbcTarget":
        """The same target with extra driver options in the URL (never credentials)."""
        lowered = {key.lower() for key in options}
        if lowered & {"user", "password"}:
            raise ValueError("credentials belong in the JDBC properties, not the URL")
        joiner = "&" if "?" in self.url else "?"
        extra = "&".join(f"{key}={quote(str(value), safe='')}" for key, value in options.items())
        return dataclasses.replace(self, url=f"{self.url}{joiner}{extra}") if extra else self

    def __str__(self) -> str:
        return self.safe_url


def scrub(message: str, target: JdbcTarget) -> str:
    """Remove the password (raw and URL-escaped) from a driver's or Spark's error text."""
    if target.password:
        for secret in {target.password, quote(target.password, safe="")}:
            message = message.replace(secret, "***")
    return message


def jdbc_target(url: str | URL, *, driver: str = MARIADB_DRIVER) -> JdbcTarget:
    """JDBC form of a ``mysql+pymysql://`` / ``mariadb://`` SQLAlchemy URL (see module docstring).

    Raises ValueError for other backends (SQLite has no Spark JDBC path here) and for URL options
    this translation would drop (TLS, sockets): refusing beats silently connecting without TLS.
    """
    parsed = make_url(url) if isinstance(url, str) else url
    backend = parsed.get_backend_name()
    if backend not in ("mysql", "mariadb"):
        raise ValueError(
            f"the Spark engine reads MySQL/MariaDB over JDBC; {masked_url(parsed)} is {backend!r} "
            "(use the local engine for SQLite)"
        )
    unsupported = sorted(set(parsed.query) - _HARMLESS_QUERY)
    if unsupported:
        raise ValueError(
            f"URL options {unsupported} of {masked_url(parsed)} have no JDBC translation here; "
            "configure them through SparkSettings.extra_conf / JdbcTarget.with_url_options instead"
        )
    host = parsed.host or "localhost"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    database = quote(parsed.database or "", safe="")
    jdbc = f"jdbc:mysql://{host}:{parsed.port or 3306}/{database}?permitMysqlScheme"
    return JdbcTarget(
        url=jdbc,
        safe_url=masked_url(parsed),
        user=parsed.username,
        password=None if parsed.password is None else str(parsed.password),
        driver=driver,
    )


@dataclass
class SparkExtract:
    """The (lazy) DataFrame of the source rows plus what the extraction asset reports."""

    frame: "DataFrame"
    table: str
    columns: list[str]
    row_count: int  # from the bounds query, before Spark read anything
    min_id: Any
    max_id: Any
    num_partitions: int
    partitioning: str  # "range" on the id column, "hash" (CRC32 of the id) or "single"
    source: str  # masked URL / table, for metadata
    version: tuple[Any, ...]  # CREATE_TIME and comment of the table: changes when it is swapped
    seconds: float


def _version(engine: sa.Engine, table: str) -> tuple[Any, ...]:
    with engine.connect() as conn:
        return table_version(conn, table)


def source_changed(engine: sa.Engine, extract: SparkExtract) -> bool:
    """True when the table was swapped since :func:`read_customers` planned the read.

    Spark's partitions are separate queries, run when the frame is first computed; call this
    after materialising (e.g. after cleaning) and re-run when it says the source moved.
    """
    return _version(engine, extract.table) != extract.version


def _range_bounds(id_type: Any, low: Any, high: Any) -> tuple[str, str] | None:
    """Spark's lowerBound/upperBound strings, or None when the id cannot be range-partitioned.

    Spark turns numeric bounds into longs (so fractional ids get floor/ceil: the bounds only
    place the cut points; the outer partitions are open-ended anyway) and parses date/timestamp
    bounds from their ISO text.
    """
    if low is None or high is None or low == high:
        return None
    if isinstance(id_type, _NUMERIC):
        lo, hi = math.floor(low), math.ceil(high)
        if not (-_LONG <= lo <= _LONG and -_LONG <= hi <= _LONG):
            return None
        return str(lo), str(hi)
    if isinstance(id_type, _TEMPORAL) and hasattr(low, "isoformat"):
        if hasattr(low, "hour"):
            return low.isoformat(sep=" "), high.isoformat(sep=" ")
        return low.isoformat(), high.isoformat()
    return None


def read_customers(
    spark: "SparkSession",
    engine: sa.Engine,
    table: str,
    columns: Sequence[str] | None,
    *,
    id_column: str,
    num_partitions: int,
    fetch_size: int = DEFAULT_FETCH_SIZE,
    target: JdbcTarget | None = None,
) -> SparkExtract:
    """Plan a partitioned read of ``columns`` (None: all) of ``table``; nothing is read yet.

    ``engine`` (from :func:`~segmentation_pipeline.storage.connection.create_db_engine`) checks the
    table and columns (SourceError listing what exists) and runs the bounds query; ``target``
    defaults to :func:`jdbc_target` of the engine's URL.
    """
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    if not is_mysql(engine):
        raise ValueError(f"the Spark engine reads MySQL/MariaDB; {masked_url(engine)} is {engine.dialect.name}")
    validate_identifier(table, "table")
    validate_identifier(id_column, "id column")
    available = table_columns(engine, table)  # SourceError naming the tables when missing
    wanted = list(dict.fromkeys(columns)) if columns is not None else list(available)
    for name in wanted:
        validate_identifier(name, "column")
    missing = [name for name in [*wanted, id_column] if name not in available]
    if missing:
        raise SourceError(
            f"column(s) {missing} not found in table {table!r} ({masked_url(engine)}); available columns: {available}"
        )
    target = target or jdbc_target(engine.url)
    started = time.perf_counter()
    version = _version(engine, table)
    id_type = next(c["type"] for c in sa.inspect(engine).get_columns(table) if c["name"] == id_column)
    q = engine.dialect.identifier_preparer.quote
    with engine.connect() as conn:
        low, high, count = conn.execute(
            sa.text(f"SELECT MIN({q(id_column)}), MAX({q(id_column)}), COUNT(*) FROM {q(table)}")
        ).one()
    count = int(count)
    props = target.properties(fetchsize=fetch_size)
    n_parts = max(1, min(num_partitions, count))
    bounds = _range_bounds(id_type, low, high) if n_parts > 1 else None
    try:
        if bounds is not None:
            frame = (
                spark.read.format("jdbc")
                .options(**props)
                .options(
                    url=target.url, dbtable=q(table), partitionColumn=id_column,
                    lowerBound=bounds[0], upperBound=bounds[1], numPartitions=str(n_parts),
                )
                .load()
            )
            partitioning = "range"
        elif n_parts > 1:
            # CRC32 spreads any id type; NULL ids (CRC32 NULL) go with partition 0
            predicates = [
                f"MOD(CRC32({q(id_column)}), {n_parts}) = {i}" + (f" OR {q(id_column)} IS NULL" if i == 0 else "")
                for i in range(n_parts)
            ]
            frame = spark.read.jdbc(target.url, q(table), predicates=predicates, properties=props)
            partitioning = "hash"
        else:
            frame = spark.read.jdbc(target.url, q(table), properties=props)
            partitioning = "single"
            n_parts = 1
        frame = frame.select(*wanted)
    except Exception as exc:  # noqa: BLE001 - py4j wraps every JVM error
        raise SparkJdbcError(f"could not plan the JDBC read of {table!r} from {target.safe_url}: "
                             f"{scrub(str(exc), target)[:2000]}") from None
    log.info(
        "planned Spark JDBC read of %r (%d rows, ids %s..%s) in %d %s partition(s) from %s",
        table, count, low, high, n_parts, partitioning, target.safe_url,
    )
    return SparkExtract(
        frame=frame,
        table=table,
        columns=wanted,
        row_count=count,
        min_id=low,
        max_id=high,
        num_partitions=n_parts,
        partitioning=partitioning,
        source=f"{target.safe_url} / {table}",
        version=version,
        seconds=time.perf_counter() - started,
    )
