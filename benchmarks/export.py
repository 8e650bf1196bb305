"""Peak memory and time of ``segmentation export`` on a large published segments table.

    python -m benchmarks.export                       # 1M rows, SQLite and MariaDB (127.0.0.1, root)
    python -m benchmarks.export --rows 5000000 --backends mysql

For each backend a ``customer_segments`` table of N rows (text ids, 5 segments) is written with the
pipeline's own write-back (``publish_segments``); then a fresh interpreter exports it to CSV and
to Parquet, and reports its peak RSS (VmHWM) over the export, against the RSS it had before (the
imports), so the figure is what the export itself adds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MYSQL_SERVER = "mysql+pymysql://root@127.0.0.1:3306"
MYSQL_DB = "segbench_export"


def _vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def build_table(url: str, rows: int) -> None:
    """A published segments table of ``rows`` customers, written the way the pipeline writes it."""
    import numpy as np
    import pandas as pd

    from segmentation_pipeline.config import OutputConfig
    from segmentation_pipeline.core.segment_tables import build_rejects_table, build_segments_table
    from segmentation_pipeline.storage.connection import create_db_engine
    from segmentation_pipeline.storage.segment_store import publish_segments

    rng = np.random.default_rng(0)
    ids = pd.Series([f"C{i:09d}" for i in range(rows)])
    clean = pd.DataFrame({"customer_id": ids, "is_outlier": rng.random(rows) < 0.03,
                          "outlier_reason": pd.Categorical([""] * rows)})
    names = {s: f"Segment {s} · Öffentlich" for s in range(5)}
    segments = build_segments_table(clean, "customer_id", rng.integers(0, 5, rows), names, model_name="bench",
                                    model_version="1", mlflow_run_id="r", dagster_run_id="d")
    rejects = build_rejects_table(pd.DataFrame({"customer_id": [], "reason": [], "detail": []}),
                                  mlflow_run_id="r", dagster_run_id="d")
    publish_segments(create_db_engine(url), OutputConfig(), segments, rejects, run_key="d", lock_timeout_s=60)


def worker(url: str, output: str, fmt: str) -> None:
    """Runs in a fresh interpreter: one export, its figures as JSON on stdout."""
    from segmentation_pipeline.storage.connection import create_db_engine
    from segmentation_pipeline.storage.export import export_segments

    engine = create_db_engine(url)
    before = _vm("VmRSS")
    started = time.perf_counter()
    n = export_segments(engine, "customer_segments", output, fmt=fmt)  # type: ignore[arg-type]
    seconds = time.perf_counter() - started
    print(json.dumps({"rows": n, "seconds": round(seconds, 2), "rss_before_mb": round(before / 2**20, 1),
                      "peak_mb": round(_vm("VmHWM") / 2**20, 1),
                      "added_mb": round((_vm("VmHWM") - before) / 2**20, 1),
                      "file_mb": round(Path(output).stat().st_size / 2**20, 1)}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.export", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="customers in the table")
    parser.add_argument("--backends", default="sqlite,mysql", help="comma-separated: sqlite, mysql")
    parser.add_argument("--worker", nargs=3, metavar=("URL", "OUTPUT", "FORMAT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return 0
    import sqlalchemy as sa

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends.split(","):
            if backend == "mysql":
                admin = sa.create_engine(MYSQL_SERVER)
                with admin.begin() as conn:
                    conn.execute(sa.text(f"DROP DATABASE IF EXISTS {MYSQL_DB}"))
                    conn.execute(sa.text(f"CREATE DATABASE {MYSQL_DB} CHARACTER SET utf8mb4"))
                url = f"{MYSQL_SERVER}/{MYSQL_DB}"
            else:
                url = f"sqlite:///{tmp}/segments.db"
            started = time.perf_counter()
            build_table(url, args.rows)
            print(f"{backend}: wrote {args.rows:,} rows in {time.perf_counter() - started:.1f} s", file=sys.stderr)
            for fmt in ("csv", "parquet"):
                out = subprocess.run(
                    [sys.executable, "-m", "benchmarks.export", "--worker", url, f"{tmp}/out.{fmt}", fmt],
                    check=True, capture_output=True, text=True,
                ).stdout
                result = {"backend": backend, "format": fmt, **json.loads(out.strip().splitlines()[-1])}
                print(json.dumps(result))
                results.append(result)
            if backend == "mysql":
                with admin.begin() as conn:
                    conn.execute(sa.text(f"DROP DATABASE IF EXISTS {MYSQL_DB}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
