"""Order-features benchmark (issue 16): the feature step against its aggregate query alone, on MariaDB.

    flock /tmp/bench.lock python -m benchmarks.transactions --customers 200000

``generate_orders(N)`` is loaded into the dedicated database ``segbench_orders`` (dropped and
recreated) as table ``orders``, indexed on ``ordered_at`` (the default as_of reads its MAX); then,
in this process:

* the aggregate query alone (``aggregate_statement`` executed and its rows fetched): the floor;
* the feature step (``build_order_features``: the same query, features and RFM in pandas, the
  atomic write of ``customer_features``), its wall time and its Python heap peak (tracemalloc,
  which numpy's allocations report to);
* the same two after every line is loaded a second time under new order ids (twice the lines,
  the same customers): the step's memory must not grow with the lines.

Each timing is the best of ``--repeat`` runs, query and step alternating. Results are appended
to benchmarks/RESULTS.md by hand from the printed JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import tracemalloc
from typing import Any

import sqlalchemy as sa

from segmentation_pipeline.config import TransactionsConfig
from segmentation_pipeline.core.demo_data import generate_orders
from segmentation_pipeline.storage.bulk_load import load_frame
from segmentation_pipeline.storage.connection import create_db_engine
from segmentation_pipeline.storage.transactions import (
    aggregate_inputs,
    aggregate_statement,
    build_order_features,
)

ADMIN_URL = os.environ.get("SEGMENTATION_BENCH_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
DATABASE = "segbench_orders"


def _fresh_database() -> sa.Engine:
    admin = sa.create_engine(ADMIN_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{DATABASE}`"))
        conn.execute(sa.text(f"CREATE DATABASE `{DATABASE}` CHARACTER SET utf8mb4"))
    admin.dispose()
    return create_db_engine(sa.engine.make_url(ADMIN_URL).set(database=DATABASE))


def _query_alone(engine: sa.Engine, orders: TransactionsConfig) -> tuple[float, int]:
    inputs = aggregate_inputs(engine, orders)
    started = time.perf_counter()
    with engine.connect() as conn:
        rows = conn.execute(aggregate_statement(engine, orders, inputs.table, inputs.as_of_number, inputs.start)).all()
    return time.perf_counter() - started, len(rows)


def _step(engine: sa.Engine, orders: TransactionsConfig) -> float:
    started = time.perf_counter()
    build_order_features(engine, orders)
    return time.perf_counter() - started


def _step_peak_mb(engine: sa.Engine, orders: TransactionsConfig) -> float:
    tracemalloc.start()
    try:
        build_order_features(engine, orders)
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def measure(engine: sa.Engine, orders: TransactionsConfig, repeat: int) -> dict[str, Any]:
    query, step = [], []
    for _ in range(repeat):
        seconds, groups = _query_alone(engine, orders)
        query.append(seconds)
        step.append(_step(engine, orders))
    with engine.connect() as conn:
        lines = conn.execute(sa.text("SELECT COUNT(*) FROM orders")).scalar_one()
    return {
        "order_lines": int(lines), "result_rows": groups, "query_s": round(min(query), 3),
        "step_s": round(min(step), 3), "ratio": round(min(step) / min(query), 3),
        "step_heap_peak_mb": round(_step_peak_mb(engine, orders), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--single", action="store_true", help="skip the run on twice the lines")
    parser.add_argument("--reuse", action="store_true", help="measure the orders table the last run loaded")
    args = parser.parse_args(argv)
    load_s = 0.0
    if args.reuse:
        engine = create_db_engine(sa.engine.make_url(ADMIN_URL).set(database=DATABASE))
    else:
        engine = _fresh_database()
        lines, _ = generate_orders(args.customers, seed=0)
        started = time.perf_counter()
        load_frame(engine, "orders", lines)
        with engine.begin() as conn:  # orders tables are usually indexed by time: the default as_of's MAX uses it
            conn.execute(sa.text("CREATE INDEX orders_ordered_at ON orders (ordered_at)"))
        load_s = time.perf_counter() - started
        if args.single:
            del lines
    orders = TransactionsConfig(table="orders", amount="amount")
    once = measure(engine, orders, args.repeat)
    result: dict[str, Any] = {"customers": args.customers, "load_s": round(load_s, 1), "lines_x1": once}
    if not args.single and not args.reuse:
        # twice the lines, the same customers: every line again under new order ids
        offset = int(lines["order_id"].max())
        load_frame(engine, "orders", lines.assign(order_id=lines["order_id"] + offset), if_exists="append")
        result["lines_x2"] = measure(engine, orders, args.repeat)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
