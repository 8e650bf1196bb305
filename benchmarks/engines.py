"""Engine benchmark (issue 7): the whole pipeline with ``engine: local`` and ``engine: spark`` on this machine.

    flock /tmp/bench.lock python -m benchmarks.engines --sizes 1000000,5000000

For every size N: ``generate_customers(N, seed=0)`` (stale duplicate ids dropped so the table has
``PRIMARY KEY (customer_id)``, as in benchmarks/run.py) loaded into the dedicated database
``segbench_engines`` (dropped and recreated; never ``segbench``, which benchmarks/run.py owns).
Then, each in a fresh worker interpreter (so the Spark run pays its own JVM start), the real
pipeline through ``cli.run_pipeline`` once per engine, each writing its own output tables.

Times per stage come from the Dagster run's STEP_SUCCESS durations plus measurement-only
wrappers around the functions the assets call (JVM start, the Spark cleaning incl. its JDBC
read, the MLlib sweep/final fit, the JDBC write-back). The Spark worker also times a bare
partitioned JDBC read of the table into Spark's ``noop`` sink first (the read floor, on the same
warm JVM). After both runs: adjusted Rand index of each engine vs the planted segments and of
the two engines' written-back assignments against each other.

Results accumulate in benchmarks/engines_results.json (by size, so 1M and 5M can be run
separately) and benchmarks/ENGINES.md is rendered from all of them; the hand-written analysis
below the marker in ENGINES.md is kept across re-runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks import run as bench

ROOT = Path(__file__).resolve().parent.parent
DB = "segbench_engines"
URL = f"mysql+pymysql://{bench.USER}@{bench.HOST}:{bench.PORT}/{DB}"
RESULTS_DIR = ROOT / "benchmarks"
ANALYSIS_MARKER = "<!-- analysis: kept by benchmarks/engines.py across re-runs -->"
ENGINES = ("local", "spark")
SPARK = {"master": "local[2]", "driver_memory": "6g", "num_partitions": 8}
STEPS = ["raw_customers", "clean_and_reject", "customer_features", "k_selection", "segmentation_model",
         "model_promotion", "customer_segments"]


# --------------------------------------------------------------------------- worker


def worker(engine: str, workdir: Path) -> None:
    """Fresh interpreter: the real pipeline on one engine, timed; writes <engine>.json."""

    import segmentation_pipeline.engines.local as local_engine
    import segmentation_pipeline.storage.source as source
    from segmentation_pipeline import cli, in_process
    from segmentation_pipeline.config import load_config
    from segmentation_pipeline.engines.spark import cleaning as spark_cleaning
    from segmentation_pipeline.engines.spark import model as spark_model
    from segmentation_pipeline.engines.spark import session as spark_session
    from segmentation_pipeline.engines.spark import writeback as spark_writeback

    cfg_path = workdir / f"{engine}.yaml"
    cfg = load_config(cfg_path)
    timings: dict[str, float] = defaultdict(float)
    captured: dict[str, Any] = {}

    def timed(stage: str, module: Any, name: str) -> None:
        fn = getattr(module, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                timings[stage] += time.perf_counter() - started

        setattr(module, name, wrapper)

    if engine == "spark":
        timed("jvm_start", spark_session, "build_session")
        timed("cleaning_incl_jdbc_read", spark_cleaning, "clean_customers")
        timed("sweep", spark_model, "sweep_k")
        timed("final_fit", spark_model, "fit_kmeans")
        timed("write_back_jdbc_and_swap", spark_writeback, "publish_segments")
    else:
        timed("read_table", source, "read_table")
        timed("sweep", local_engine, "select_k")
        timed("final_fit", local_engine, "fit_clustering")
        timed("write_back_and_swap", local_engine, "publish_segments")
    original = in_process.run_training

    def run_training(*args: Any, **kwargs: Any) -> Any:
        captured["result"] = original(*args, **kwargs)
        return captured["result"]

    in_process.run_training = run_training
    floor: dict[str, float] = {}
    if engine == "spark":
        floor = spark_read_floor(cfg)
    started = time.perf_counter()
    summary = cli.run_pipeline(str(cfg_path))
    whole = time.perf_counter() - started
    steps = {e.step_key: e.event_specific_data.duration_ms / 1000
             for e in captured["result"].all_events if e.event_type_value == "STEP_SUCCESS"}
    out = {"engine": engine, "whole_s": whole, "steps_s": steps, "stages_s": dict(timings), "floor_s": floor,
           "k": summary["k"], "k_reason": summary["k_reason"], "n_input": summary["n_input"],
           "n_segmented": summary["n_segmented"], "n_rejected": summary["n_rejected"],
           "silhouette": summary["silhouette"]}
    (workdir / f"{engine}.json").write_text(json.dumps(out, default=str, indent=1))


def spark_read_floor(cfg: Any) -> dict[str, float]:
    """A bare partitioned JDBC read of the source columns into Spark's noop sink (JVM started here,
    and reused by the pipeline run that follows: its own JVM start is then near zero, so the
    JVM start measured here is the one reported)."""
    from segmentation_pipeline.engines.spark import build_session
    from segmentation_pipeline.engines.spark.extract import read_customers
    from segmentation_pipeline.storage.connection import create_db_engine

    started = time.perf_counter()
    session = build_session(cfg.spark)
    jvm = time.perf_counter() - started
    engine = create_db_engine(cfg.database.sqlalchemy_url())
    started = time.perf_counter()
    ex = read_customers(session, engine, cfg.source.table, None, id_column=cfg.source.id_column,
                        num_partitions=cfg.spark.num_partitions)
    ex.frame.write.format("noop").mode("overwrite").save()
    read = time.perf_counter() - started
    engine.dispose()
    return {"jvm_start": jvm, "jdbc_read_noop": read}


# --------------------------------------------------------------------------- driver


def write_config(workdir: Path, engine: str) -> Path:
    import yaml

    raw = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    raw["database"]["url"] = URL
    raw["mlflow"]["tracking_uri"] = f"sqlite:///{workdir / engine}-mlflow.db"
    raw["mlflow"]["artifact_location"] = str(workdir / f"{engine}-mlartifacts")
    raw["data_dir"] = str(workdir / f"{engine}-data")
    raw["output"] = {"segments_table": f"{engine}_segments", "rejects_table": f"{engine}_rejects",
                     "history_table": f"{engine}_assignments"}
    raw["engine"] = engine
    if engine == "spark":
        raw["spark"] = SPARK
    path = workdir / f"{engine}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def agreement(workdir: Path) -> dict[str, float]:
    """ARI of each engine vs the plants, and of the two engines' written-back segments."""
    import numpy as np
    import pandas as pd
    import sqlalchemy as sa
    from sklearn.metrics import adjusted_rand_score

    ids, planted = np.load(workdir / "planted.npy")
    truth = pd.Series(planted, index=ids)
    truth = truth[truth >= 0]
    engine = sa.create_engine(URL)
    segments = {}
    with engine.connect() as conn:
        for name in ENGINES:
            frame = pd.read_sql(f"SELECT customer_id, segment_id FROM {name}_segments", conn)
            segments[name] = frame.set_index("customer_id")["segment_id"]
    engine.dispose()
    out: dict[str, float] = {}
    for name, seg in segments.items():
        joined = seg.reindex(truth.index)
        ok = joined.notna()
        out[f"ari_{name}_vs_planted"] = float(adjusted_rand_score(truth[ok], joined[ok]))
    common = segments["local"].index.intersection(segments["spark"].index)
    out["ari_spark_vs_local"] = float(adjusted_rand_score(segments["local"].loc[common], segments["spark"].loc[common]))
    return out


def bench_size(n: int, log: Any) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"segbench-engines-{n}-") as tmp:
        workdir = Path(tmp)
        log(f"{n:,} rows: generating and loading into {DB}")
        # benchmarks/run.py's loader, pointed at this benchmark's own database
        bench.DB, bench.URL = DB, URL
        setup = bench.setup_database(n, workdir)
        result: dict[str, Any] = {"rows": setup["rows"], "setup": setup}
        for engine in ENGINES:
            write_config(workdir, engine)
            log(f"{n:,} rows: pipeline with engine {engine}")
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "benchmarks.engines", "--worker", engine, "--workdir", str(workdir)],
                           check=True, cwd=ROOT)
            result[engine] = json.loads((workdir / f"{engine}.json").read_text())
            result[engine]["process_s"] = time.perf_counter() - started
            log(f"{n:,} rows: {engine} done in {result[engine]['whole_s']:.1f} s")
        result["agreement"] = agreement(workdir)
        log(f"{n:,} rows: agreement {result['agreement']}")
    return result


def versions() -> dict[str, str]:
    import pyspark

    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()[0]
    jar = os.environ.get("SPARK_JDBC_JAR") or "/usr/share/java/mariadb-java-client.jar"
    return {**bench.versions(), "pyspark": pyspark.__version__, "java": java, "jdbc jar": os.path.realpath(jar),
            "cpus": str(os.cpu_count()), "machine": platform.machine()}


def _s(value: float | None) -> str:
    return bench.fmt_s(value)


def render(results: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Engine benchmark: local vs Spark (issue 7)", "",
        f"Last command: `{meta['command']}` (run at {meta['when']}, {meta['elapsed_s']:.0f} s); per size: "
        + ", ".join(f"{bench.fmt_n(int(n))}: `{results[n].get('command', '?')}`" for n in sorted(results, key=int))
        + ". Every run was wrapped in `flock /tmp/bench.lock`.", "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".", "",
        f"Spark: `{json.dumps(SPARK)}` (the default `configs/spark.yaml` section, one machine, 2 cores). "
        "Default config otherwise (k 2..10, sweep on at most 200k sampled rows, silhouette on 10k).", "",
        "## Per-stage seconds (Dagster step durations, plus what the stage spent inside)", "",
    ]
    sizes = sorted(results, key=int)
    header = "| stage | " + " | ".join(f"{bench.fmt_n(int(n))} {e}" for n in sizes for e in ENGINES) + " |"
    lines += [header, "|---" * (1 + 2 * len(sizes)) + "|"]

    def row(label: str, get: Any) -> None:
        cells = []
        for n in sizes:
            for e in ENGINES:
                try:
                    value = get(results[n][e])
                except KeyError:
                    value = None
                cells.append(_s(value))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("JVM start (SparkSession)", lambda r: r["floor_s"]["jvm_start"])
    row("bare JDBC read → noop (floor)", lambda r: r["floor_s"]["jdbc_read_noop"])
    row("`raw_customers` (local: the read; spark: plan + bounds query)", lambda r: r["steps_s"]["raw_customers"])
    row("`clean_and_reject` (spark: incl. the JDBC read)", lambda r: r["steps_s"]["clean_and_reject"])
    row("`customer_features`", lambda r: r["steps_s"]["customer_features"])
    row("`k_selection` (sweep k=2..10)", lambda r: r["steps_s"]["k_selection"])
    row("`segmentation_model` (final fit, naming, registry)", lambda r: r["steps_s"]["segmentation_model"])
    row("  of which the final KMeans fit", lambda r: r["stages_s"]["final_fit"])
    row("`model_promotion`", lambda r: r["steps_s"]["model_promotion"])
    row("`customer_segments` (assign + write-back + swap)", lambda r: r["steps_s"]["customer_segments"])
    row("  of which write-back + swap + history",
        lambda r: r["stages_s"].get("write_back_jdbc_and_swap", r["stages_s"].get("write_back_and_swap")))
    row("**pipeline wall** (`run_pipeline`)", lambda r: r["whole_s"])
    row("worker process (incl. imports, JVM)", lambda r: r["process_s"])
    lines += ["", "## Results and agreement", "",
              "| rows | engine | k | silhouette | n_input | segmented | rejected | ARI vs planted | ARI spark vs local |",
              "|---|---|---|---|---|---|---|---|---|"]
    for n in sizes:
        for e in ENGINES:
            r, a = results[n][e], results[n]["agreement"]
            lines.append(f"| {int(n):,} | {e} | {r['k']} | {r['silhouette']:.3f} | {r['n_input']:,} | "
                         f"{r['n_segmented']:,} | {r['n_rejected']:,} | {a[f'ari_{e}_vs_planted']:.3f} | "
                         f"{a['ari_spark_vs_local']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.engines", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000000,5000000", help="comma-separated row counts")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR),
                        help="where engines_results.json and ENGINES.md go (default benchmarks/)")
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, Path(args.workdir))
        return 0

    def log(message: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)

    command = "python -m benchmarks.engines " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    Path(args.results_dir).mkdir(parents=True, exist_ok=True)
    results_json, results_md = Path(args.results_dir) / "engines_results.json", Path(args.results_dir) / "ENGINES.md"
    results: dict[str, Any] = json.loads(results_json.read_text()) if results_json.exists() else {}
    started = time.perf_counter()
    try:
        for n in [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]:
            results[str(n)] = {**bench_size(n, log), "command": command.strip()}
            results_json.write_text(json.dumps(results, indent=1, default=str))  # one size at a time survives
    finally:
        bench.run_sql(f"DROP DATABASE IF EXISTS {DB}")
    meta = {"command": command.strip(), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "elapsed_s": time.perf_counter() - started, "versions": versions()}
    report = render(results, meta)
    previous = results_md.read_text() if results_md.exists() else ""
    if ANALYSIS_MARKER in previous:
        report += "\n" + previous[previous.index(ANALYSIS_MARKER):]
    results_md.write_text(report)
    print("\n" + report)
    log(f"wrote {results_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
