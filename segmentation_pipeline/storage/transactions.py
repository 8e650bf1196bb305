"""Per-customer features from an orders table, aggregated on the database server.

Why on the server: order lines outnumber customers by one or two orders of magnitude and live in
the database already, so one ``GROUP BY`` there returns one row per customer and the lines never
travel. The query groups every line by (customer, exclusion reason): counted lines form one
group per customer, excluded lines one group per reason, so a single scan yields the features
and the excluded-line counts. Times are compared as numbers (SQLite ``julianday``, MySQL/MariaDB
``TO_SECONDS``) so both dialects share the statement; day differences are taken from the
per-customer extremes afterwards. Both engines use this step: the data is in the database.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd
import sqlalchemy as sa

from segmentation_pipeline.config import TransactionsConfig
from segmentation_pipeline.core.rfm import (
    EXCLUDED_LINE_REASONS,
    RFM_SEGMENT_COLUMN,
    add_rfm,
)
from segmentation_pipeline.storage.bulk_load import write_table_atomic
from segmentation_pipeline.storage.connection import (
    check_columns,
    is_mysql,
    masked_url,
    reflect_columns,
)
from segmentation_pipeline.storage.errors import SourceError

__all__ = [
    "AggregateInputs",
    "OrderFeatures",
    "aggregate_inputs",
    "aggregate_statement",
    "build_order_features",
    "compute_order_features",
    "orders_high_water_mark",
]

#: Grouped rows fetched and turned into features at a time.
RESULT_CHUNK_ROWS = 100_000
_JULIAN_UNIX_EPOCH = 2440587.5  # julianday('1970-01-01 00:00:00')
_TO_SECONDS_UNIX_EPOCH = 62167219200  # TO_SECONDS('1970-01-01 00:00:00')


@dataclass(frozen=True)
class OrderFeatures:
    """One row per customer with at least one counted line, and what was left out and why."""

    frame: pd.DataFrame
    as_of: dt.datetime
    excluded_lines: dict[str, int]
    n_lines: int
    query_seconds: float = 0.0

    @property
    def n_non_positive(self) -> int:
        return int((self.frame["monetary"] <= 0).sum())


@dataclass(frozen=True)
class _Clock:
    """A dialect's numeric time: ``unit`` numbers per day and the number of the Unix epoch."""

    per_day: float
    epoch: float

    def number(self, moment: dt.datetime) -> float:
        return self.epoch + (moment - dt.datetime(1970, 1, 1)).total_seconds() * self.per_day / 86400

    def moment(self, number: float) -> dt.datetime:
        return dt.datetime(1970, 1, 1) + dt.timedelta(days=(float(number) - self.epoch) / self.per_day)


def _clock(engine: sa.Engine) -> _Clock:
    return _Clock(86400.0, _TO_SECONDS_UNIX_EPOCH) if is_mysql(engine) else _Clock(1.0, _JULIAN_UNIX_EPOCH)


def _time_number(engine: sa.Engine, column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """NULL when the value is missing or does not parse as a date/time."""
    if is_mysql(engine):
        return sa.func.to_seconds(column)
    return sa.func.julianday(column)


def _numeric(engine: sa.Engine, table: str, types: dict[str, Any], column: str) -> None:
    """A money or quantity column must be numeric: a text column would sum to garbage."""
    kind = types[column]
    if isinstance(kind, (sa.types.Numeric, sa.types.Float, sa.types.Integer)):
        return
    with engine.connect() as conn:
        example = conn.execute(
            sa.select(sa.column(column)).select_from(sa.table(table)).where(sa.column(column).is_not(None)).limit(1)
        ).scalar()
    raise SourceError(
        f"table {table!r}: column {column!r} is not numeric ({kind}), e.g. {example!r} ({masked_url(engine)})"
    )


def _orders_table(engine: sa.Engine, orders: TransactionsConfig) -> tuple[sa.TableClause, dict[str, Any]]:
    types = {c["name"]: c["type"] for c in reflect_columns(engine, orders.table)}
    money = [orders.amount] if orders.amount else [orders.quantity, orders.unit_price]
    wanted = [orders.customer_id, orders.order_id, orders.timestamp, *[c for c in money if c]]
    check_columns(engine, orders.table, list(types), wanted)
    for column in money:
        if column:
            _numeric(engine, orders.table, types, column)
    return sa.table(orders.table, *(sa.column(c, types[c]) for c in wanted)), types


def aggregate_statement(
    engine: sa.Engine, orders: TransactionsConfig, table: sa.TableClause, as_of: float, start: float | None
) -> sa.Select[Any]:
    """The one pushed-down aggregate: per (customer or NULL, exclusion reason), extremes and sums.

    ``as_of``/``start`` are numeric times of the dialect's clock.
    """
    c = table.c
    stamp = _time_number(engine, c[orders.timestamp])
    amount = (
        c[orders.amount] if orders.amount else c[orders.quantity] * c[orders.unit_price]  # type: ignore[index]
    )
    whens = [
        (c[orders.customer_id].is_(None), "missing_customer_id"),
        (stamp.is_(None), "unparseable_timestamp"),
        (stamp > as_of, "after_as_of"),
    ]
    if start is not None:
        whens.append((stamp < start, "before_lookback"))
    reason = sa.case(*whens, else_=sa.null())
    lines = sa.select(
        sa.case((reason.is_(None), c[orders.customer_id]), else_=sa.null()).label("cid"),
        reason.label("reason"),
        c[orders.order_id].label("oid"),
        stamp.label("t"),
        sa.cast(amount, sa.Float).label("amt") if not is_mysql(engine) else amount.label("amt"),
    ).subquery("lines")
    line = lines.c
    bought = line.amt > 0
    purchase_t = sa.case((bought, line.t), else_=sa.null())
    return sa.select(
        line.cid.label("customer_id"),
        line.reason.label("reason"),
        sa.func.count().label("n_lines"),
        sa.func.count(sa.distinct(sa.case((bought, line.oid), else_=sa.null()))).label("frequency"),
        sa.func.sum(line.amt).label("monetary"),
        sa.func.sum(sa.case((bought, line.amt), else_=0)).label("gross"),
        sa.func.sum(sa.case((line.amt < 0, -line.amt), else_=0)).label("returned"),
        sa.func.min(line.t).label("first_t"),
        sa.func.max(line.t).label("last_t"),
        sa.func.min(purchase_t).label("first_purchase_t"),
        sa.func.max(purchase_t).label("last_purchase_t"),
    ).group_by(line.cid, line.reason)


def _latest(engine: sa.Engine, orders: TransactionsConfig, table: sa.TableClause, types: dict[str, Any]) -> dt.datetime | None:
    """The latest order time. A DATETIME column's plain MAX can use an index; text is parsed."""
    column = table.c[orders.timestamp]
    kind = types[orders.timestamp]
    with engine.connect() as conn:
        if isinstance(kind, (sa.types.DateTime, sa.types.Date)):
            value = conn.execute(sa.select(sa.type_coerce(sa.func.max(column), kind)).select_from(table)).scalar()
            if value is None or isinstance(value, dt.datetime):
                return value
            return dt.datetime.combine(value, dt.time())
        number = conn.execute(sa.select(sa.func.max(_time_number(engine, column))).select_from(table)).scalar()
    return None if number is None else _clock(engine).moment(float(number))


@dataclass(frozen=True)
class AggregateInputs:
    """What the aggregate statement needs: the checked table and the window in the dialect's clock."""

    table: sa.TableClause
    as_of: dt.datetime
    as_of_number: float
    start: float | None


def aggregate_inputs(engine: sa.Engine, orders: TransactionsConfig) -> AggregateInputs:
    """Check the orders table's columns and settle as_of (a given date costs no query)."""
    table, types = _orders_table(engine, orders)
    clock = _clock(engine)
    if orders.as_of is not None:
        as_of = dt.datetime.combine(orders.as_of, dt.time())
    else:
        latest = _latest(engine, orders, table, types)
        if latest is None:
            raise SourceError(
                f"orders table {orders.table!r} has 0 rows with a parseable {orders.timestamp!r}; nothing to "
                f"aggregate ({masked_url(engine)})"
            )
        as_of = dt.datetime.combine(latest.date() + dt.timedelta(days=1), dt.time())
    start = None if orders.lookback_days is None else clock.number(as_of - dt.timedelta(days=orders.lookback_days))
    return AggregateInputs(table, as_of, clock.number(as_of), start)


def _features(groups: pd.DataFrame, as_of_number: float, per_day: float) -> pd.DataFrame:
    """Per-customer features from the grouped extremes and sums (one row per customer)."""
    g = groups
    days = lambda later, earlier: (later - earlier) / per_day
    frequency = g["frequency"].astype("int64")
    # float sums of a purchase and its refund leave ~1e-13: rounded, a full refund nets exactly 0
    monetary = g["monetary"].astype("float64").round(6)
    last = g["last_purchase_t"].astype("float64").fillna(g["last_t"].astype("float64"))
    first = g["first_t"].astype("float64")
    span = days(g["last_purchase_t"].astype("float64"), g["first_purchase_t"].astype("float64"))
    gross = g["gross"].astype("float64")
    return pd.DataFrame(
        {
            "customer_id": g["customer_id"].to_numpy(),
            "recency_days": days(as_of_number, last).to_numpy(),
            "frequency": frequency.to_numpy(),
            "monetary": monetary.to_numpy(),
            "avg_order_value": (monetary / frequency.where(frequency > 0)).to_numpy(),
            "tenure_days": days(as_of_number, first).to_numpy(),
            "mean_days_between_orders": (span / (frequency - 1).where(frequency > 1)).to_numpy(),
            "return_rate": (g["returned"].astype("float64") / gross.where(gross > 0)).to_numpy(),
        }
    )


def compute_order_features(engine: sa.Engine, orders: TransactionsConfig) -> OrderFeatures:
    """Aggregate the orders table on the server; SourceError names the table/column/value when
    the input cannot give features (missing column, non-numeric money, no lines, as_of too early)."""
    inputs = aggregate_inputs(engine, orders)
    clock, as_of = _clock(engine), inputs.as_of
    stmt = aggregate_statement(engine, orders, inputs.table, inputs.as_of_number, inputs.start)
    parts: list[pd.DataFrame] = []
    rows: list[Any] = []  # the groups of excluded lines: one per reason
    n_total = 0
    started = time.perf_counter()
    with engine.connect() as conn:
        # streamed, a chunk of customers at a time: the driver's row objects never exist all at once
        result = conn.execution_options(stream_results=True).execute(stmt)
        names = list(result.keys())
        for chunk in result.partitions(RESULT_CHUNK_ROWS):
            n_total += sum(int(row.n_lines) for row in chunk)
            rows.extend(row for row in chunk if row.reason is not None)
            # the counted groups only, so the id column keeps its type (no NULL id among them)
            counted_rows = [row for row in chunk if row.reason is None]
            if counted_rows:
                groups = pd.DataFrame.from_records(counted_rows, columns=names)
                parts.append(_features(groups, inputs.as_of_number, clock.per_day))
    seconds = time.perf_counter() - started
    if n_total == 0:
        raise SourceError(f"orders table {orders.table!r} has 0 rows; nothing to aggregate ({masked_url(engine)})")
    excluded = dict.fromkeys(EXCLUDED_LINE_REASONS, 0)
    for row in rows:
        excluded[str(row.reason)] += int(row.n_lines)
    counted = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if counted.empty:
        starts = [float(row.first_t) for row in rows if row.first_t is not None and row.reason != "unparseable_timestamp"]
        earliest = clock.moment(min(starts)) if starts else None
        if excluded["after_as_of"] + excluded["before_lookback"] and earliest is not None:
            raise SourceError(
                f"orders table {orders.table!r}: as_of {as_of:%Y-%m-%d} is before every order "
                f"(earliest {orders.timestamp!r} {earliest:%Y-%m-%d %H:%M:%S}"
                + (f", lookback_days {orders.lookback_days}" if orders.lookback_days else "")
                + "); no order line is counted"
            )
        raise SourceError(f"orders table {orders.table!r}: no order line can be counted: {excluded}")
    frame = counted.sort_values("customer_id", ignore_index=True)
    frame = add_rfm(frame)
    frame["as_of"] = pd.Timestamp(as_of)
    frame = frame.rename(columns={"customer_id": orders.customer_id})
    return OrderFeatures(frame, as_of, excluded, n_total, seconds)


def _with_attributes(engine: sa.Engine, orders: TransactionsConfig, frame: pd.DataFrame) -> pd.DataFrame:
    """Per-customer attributes (age, gender, ...) joined on the customer id; customers without a row keep NULLs."""
    if orders.attributes_table is None:
        return frame
    available = [c["name"] for c in reflect_columns(engine, orders.attributes_table)]
    check_columns(engine, orders.attributes_table, available, [orders.customer_id])
    clash = sorted(set(available) & set(frame.columns) - {orders.customer_id})
    if clash:
        raise SourceError(
            f"attributes table {orders.attributes_table!r} has column(s) {clash} that the order features also have"
        )
    attributes = pd.read_sql_table(orders.attributes_table, engine, columns=available)
    if not attributes[orders.customer_id].is_unique:
        raise SourceError(f"attributes table {orders.attributes_table!r}: {orders.customer_id!r} is not unique")
    return frame.merge(attributes, on=orders.customer_id, how="left", validate="one_to_one")


def build_order_features(engine: sa.Engine, orders: TransactionsConfig, *, lock_timeout_s: int = 600) -> OrderFeatures:
    """Aggregate, add RFM (and attributes), and replace the features table atomically.

    Any bad input raises before anything is written.
    """
    result = compute_order_features(engine, orders)
    frame = _with_attributes(engine, orders, result.frame)
    column_types: dict[str, sa.types.TypeEngine[Any]] = {RFM_SEGMENT_COLUMN: sa.String(32)}
    write_table_atomic(
        engine, orders.features_table, frame, primary_key=orders.customer_id, column_types=column_types,
        lock_name=f"load:{orders.features_table}", lock_timeout_s=lock_timeout_s,
    )
    return dataclasses.replace(result, frame=frame)


def orders_high_water_mark(engine: sa.Engine, orders: TransactionsConfig) -> dict[str, Any]:
    """Line count and latest time of the orders table: new or changed orders move it."""
    table, types = _orders_table(engine, orders)
    with engine.connect() as conn:
        count = int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())
    latest = _latest(engine, orders, table, types)
    return {"row_count": count, "max_timestamp": None if latest is None else latest.isoformat(timespec="seconds")}
