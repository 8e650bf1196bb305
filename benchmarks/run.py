"""Benchmark harness (issue 4): the real pipeline against the real MariaDB, stage by stage, vs floors.

    python -m benchmarks.run                                  # 100k, 1M, 5M + user runs at 1M -> benchmarks/RESULTS.md
    python -m benchmarks.run --sizes 100000,1000000
    python -m benchmarks.run --user-size 0                    # without the six-feature user runs
    python -m benchmarks.run --quick                          # CI smoke: 10k, no baseline, no user runs, < 60 s

For every size N (each in its own fresh state):

1. ``generate_customers(N, seed=0)`` (planted segments, dirty rows, outliers). The generator's stale
   duplicate-id rows (~0.33 %, planted label -1) are dropped so the table can carry
   ``PRIMARY KEY (customer_id)``; the frame is loaded with the project's ``load_frame`` into the
   dedicated database ``segbench`` (``--database``; dropped and recreated by the harness).
2. A **worker subprocess** (fresh interpreter, so peak RSS is the pipeline's own) runs the real
   pipeline through ``segmentation_pipeline.cli.run_pipeline(config)`` with a temp config
   (database -> segbench, MLflow -> a sqlite store in a temp dir, data_dir temp). Stage times come
   from two sources in that same run: measurement-only wrappers around the functions the assets
   call (read_table, clean_customers, build_features, select_k, fit_clustering, evaluate_promotion,
   publish_segments, and every MLflow/registry call, outermost-only) and the Dagster run's
   STEP_SUCCESS durations (``in_process.run_training`` is wrapped to capture its result). RSS is sampled
   every 20 ms (attributed to the stage running) and VmHWM read at the end.
3. Floors in the same run: ``mariadb --batch --quick -e "SELECT * FROM customers"`` > /dev/null;
   ``LOAD DATA LOCAL INFILE`` (mariadb CLI, --local-infile=1) of the rows the write-back wrote to
   ``customer_segments``, from a pre-written TSV, into an empty copy of that table; one plain
   scikit-learn Lloyd sweep (KMeans k=2..10, n_init=1) on the pipeline's PCA matrix (fit rows);
   sklearn KMeans n_init=10 at the chosen k (inertia reference).
4. A second worker run on the same table and MLflow store (the retrain): a champion now exists, so
   the final model also assigns every row with it and builds the migration matrix, and the gate
   compares the two. Its whole-run time and peak RSS are reported, not judged.
5. At 100k only (not --quick): a seed-style baseline: pandas.read_sql over PyMySQL of the whole
   table, KMeans (sklearn defaults) for every k, full silhouette_score for every k (measured for
   one k and multiplied by 9 — stated in the output), to_sql write-back.
6. After the sizes (``--user-size``, default 1M; issue 19): the run as a user meets it. A fresh table
   with six numeric features (the three above and tenure_months, orders_per_year, avg_order_value,
   drawn per planted segment) is loaded the same way; a worker run on it gives the stage times and
   its floors are measured as in 3. Then every table but the source is dropped and the
   ``segmentation`` console script runs ``--config <temp config> run --json`` twice as a fresh
   process, on a new MLflow store and Dagster home (both created before timing, as the worker's
   MLflow store is): the first run, then the retrain with the first run's champion in place. Each
   is timed by wall clock from process start to exit (imports included) and judged against the sum
   of that table's three floors (target <= 2.5x). This adds roughly 5-8 min at 1M (estimated from
   200k trials on a shared 2-core machine, 4.5-4.8 min, mostly size-independent: startup, the k
   evidence on at most 200k sweep rows, MLflow); ``--user-size 0`` skips it.

The MLflow sqlite store is created (schema migrations) before timing: a production store exists.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HOST, PORT, USER = "127.0.0.1", 3306, "root"
DB = "segbench"
TABLE = "customers"
URL = f"mysql+pymysql://{USER}@{HOST}:{PORT}/{DB}"
K_VALUES = list(range(2, 11))
FEATURES = ["age", "annual_income", "spending_score"]
# The user-run table adds three numeric columns drawn per planted segment (demo_data.SEGMENTS order):
# tenure in months (mean, sd), orders per year (median, log-sd), average order value (median, log-sd).
# Each column separates the same five segments, so k selection on six features has real structure.
EXTRA_FEATURES = ["tenure_months", "orders_per_year", "avg_order_value"]
EXTRA_SEGMENTS = [
    (14.0, 6.0, 26.0, 0.25, 45.0, 0.25),  # young high spenders
    (60.0, 15.0, 10.0, 0.25, 70.0, 0.25),  # middle-aged average
    (96.0, 20.0, 4.0, 0.30, 240.0, 0.25),  # affluent careful
    (40.0, 12.0, 22.0, 0.25, 190.0, 0.25),  # affluent spenders
    (130.0, 25.0, 5.0, 0.30, 28.0, 0.25),  # frugal seniors
]
EXTRA_RANGES = {"tenure_months": {"min": 0, "max": 600}, "orders_per_year": {"min": 0, "max": 1000},
                "avg_order_value": {"min": 0, "max": 100_000}}
SIX_FEATURES = FEATURES + EXTRA_FEATURES
USER_SIZE = 1_000_000
USER_RUN_TARGET = 2.5  # issue 19: whole `segmentation run` <= 2.5x the sum of the three floors
STAGES = ["extraction", "cleaning", "features", "sweep", "final_fit", "promotion", "write_back", "mlflow"]
BASELINE_SIZE = 100_000
ANALYSIS_MARKER = "<!-- analysis: kept by benchmarks/run.py across re-runs -->"


# --------------------------------------------------------------------------- small helpers


def use_database(name: str) -> None:
    """Point the harness at another database (a trial beside a running benchmark must not drop its tables)."""
    global DB, URL
    DB, URL = name, f"mysql+pymysql://{USER}@{HOST}:{PORT}/{name}"


def mariadb(*args: str, db: str | None = None) -> list[str]:
    return ["mariadb", "-h", HOST, "-P", str(PORT), "-u", USER, *args, *([db] if db else [])]


def run_sql(statement: str, db: str | None = None) -> str:
    out = subprocess.run(mariadb("--batch", "--skip-column-names", "-e", statement, db=db),
                         check=True, capture_output=True, text=True)
    return out.stdout


def proc_status(field: str) -> int:
    """Bytes of a /proc/self/status field (VmRSS, VmHWM)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


class RssSampler(threading.Thread):
    """VmRSS every ``interval`` s, peak per stage label (set by the timing wrappers)."""

    def __init__(self, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.stage = "other"
        self.peak: dict[str, int] = defaultdict(int)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            rss = proc_status("VmRSS")
            stage = self.stage
            if rss > self.peak[stage]:
                self.peak[stage] = rss
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def fmt_s(value: float | None) -> str:
    return "—" if value is None else (f"{value:.2f} s" if value < 100 else f"{value:.0f} s")


def fmt_mb(value: float | None) -> str:
    return "—" if value is None else f"{value / 2**20:,.0f} MB"


def fmt_n(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else (f"{n // 1000}k" if n % 1000 == 0 else str(n))


# --------------------------------------------------------------------------- worker: the pipeline


def prepare_mlflow_store(cfg_path: Path) -> None:
    """The store a production deployment already has: its schema migrations are no part of a run."""
    from mlflow.tracking import MlflowClient

    from segmentation_pipeline.config import load_config

    MlflowClient(load_config(cfg_path).mlflow.tracking_uri).search_experiments()


def prepare_dagster_instance(cfg_path: Path) -> None:
    """The Dagster instance the CLI keeps its runs in, created the CLI's own way before a timed process
    (its schemas cost seconds once per deployment, not per run)."""
    from segmentation_pipeline import cli

    cli.cli_instance(str(cfg_path)).get_runs(limit=1)


def worker_pipeline(workdir: Path, profile: str | None = None) -> None:
    """Runs in a fresh interpreter: the real pipeline, timed stage by stage; writes pipeline.json."""
    import mlflow
    import numpy as np
    from threadpoolctl import threadpool_info

    import segmentation_pipeline.assets.training as training_asset
    import segmentation_pipeline.engines.local as local_engine
    import segmentation_pipeline.storage.source as source
    from segmentation_pipeline import cli, in_process
    from segmentation_pipeline.config import load_config
    from segmentation_pipeline.storage import mlflow_registry as registry

    cfg_path = workdir / "config.yaml"
    cfg = load_config(cfg_path)
    prepare_mlflow_store(cfg_path)

    timings: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    captured: dict[str, Any] = {}
    sampler = RssSampler()

    harness_s = [0.0]  # time the harness itself spends inside the run (saving the fit matrix)

    def timed(stage: str, fn: Any, keep: Any = None) -> Any:
        """Times ``fn``; ``keep(out)`` extracts what the report needs once, so the harness never
        holds a stage's data (a held DataFrame would count in the pipeline's peak memory)."""

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            previous, sampler.stage = sampler.stage, stage
            started = time.perf_counter()
            try:
                out = fn(*args, **kwargs)
            finally:
                timings[stage] += time.perf_counter() - started
                calls[stage] += 1
                sampler.stage = previous
            if keep is not None and stage not in captured:
                started = time.perf_counter()
                captured[stage] = keep(out)
                harness_s[0] += time.perf_counter() - started
            return out

        return wrapper

    def keep_features(matrix: Any) -> dict[str, Any]:
        # the floors refit on exactly the pipeline's matrix: written now, no copy kept in memory
        np.save(workdir / "X.npy", matrix.X)
        np.save(workdir / "fit_mask.npy", matrix.fit_mask)
        return {"shape": list(matrix.X.shape), "dtype": str(matrix.X.dtype), "n_fit": int(matrix.fit_mask.sum())}

    depth = [0]

    @contextlib.contextmanager
    def mlflow_section():
        if depth[0]:
            yield
            return
        depth[0] += 1
        previous, sampler.stage = sampler.stage, "mlflow"
        started = time.perf_counter()
        try:
            yield
        finally:
            depth[0] -= 1
            timings["mlflow"] += time.perf_counter() - started
            calls["mlflow"] += 1
            sampler.stage = previous

    def mlflow_timed(fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with mlflow_section():
                return fn(*args, **kwargs)

        return wrapper

    original_training_run = registry.training_run

    @contextlib.contextmanager
    def training_run(*args: Any, **kwargs: Any):
        cm = original_training_run(*args, **kwargs)
        with mlflow_section():
            run_id = cm.__enter__()
        try:
            yield run_id
        except BaseException:
            with mlflow_section():
                if not cm.__exit__(*sys.exc_info()):
                    raise
        else:
            with mlflow_section():
                cm.__exit__(None, None, None)

    registry.training_run = training_run
    for name in ("configure", "find_run", "log_params", "log_png", "log_json", "log_frame", "log_segmentation_model",
                 "alias_version", "set_alias", "tag_version", "load_assigner", "log_reference"):
        setattr(registry, name, mlflow_timed(getattr(registry, name)))
    for name in ("log_metric", "log_metrics", "set_tag", "set_tags", "log_param", "log_params", "log_artifact",
                 "log_image", "log_dict", "log_text"):
        setattr(mlflow, name, mlflow_timed(getattr(mlflow, name)))
    source.read_table = timed("extraction", source.read_table)
    local_engine.clean_customers = timed("cleaning", local_engine.clean_customers)
    local_engine.clean_owned_customers = timed("cleaning", local_engine.clean_owned_customers)
    local_engine.build_features = timed("features", local_engine.build_features, keep_features)
    local_engine.select_k = timed("sweep", local_engine.select_k,
                                  lambda sel: {"k": int(sel.k), "reason": sel.reason,
                                               "sweep_rows": int(sel.metrics.attrs.get("sweep_rows", 0))})
    local_engine.fit_clustering = timed("final_fit", local_engine.fit_clustering,
                                        lambda km: {"inertia": float(getattr(km, "inertia_", float("nan")))})
    training_asset.evaluate_promotion = timed("promotion", training_asset.evaluate_promotion)
    local_engine.publish_segments = timed("write_back", local_engine.publish_segments)
    original_run_training = in_process.run_training

    def run_training(*args: Any, **kwargs: Any) -> Any:
        result = original_run_training(*args, **kwargs)
        captured["result"] = result
        return result

    in_process.run_training = run_training

    rss_before = proc_status("VmRSS")
    sampler.start()
    started = time.perf_counter()
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        summary = profiler.runcall(cli.run_pipeline, str(cfg_path))
        profiler.dump_stats(profile)
    else:
        summary = cli.run_pipeline(str(cfg_path))
    whole = time.perf_counter() - started - harness_s[0]
    sampler.stop()
    hwm = proc_status("VmHWM")

    steps: dict[str, float] = {}
    for event in captured["result"].all_events:
        if event.event_type_value == "STEP_SUCCESS":
            steps[event.step_key] = event.event_specific_data.duration_ms / 1000

    matrix = captured["features"]
    selection = captured["sweep"]
    n_clean = int(matrix["shape"][0])
    out = {
        "whole_s": whole,
        "stages_s": dict(timings),
        "stage_calls": dict(calls),
        "dagster_steps_s": steps,
        "rss_before": rss_before,
        "rss_peak": hwm,
        "rss_peak_by_stage": dict(sampler.peak),
        "n_clean": n_clean,
        "n_fit": matrix["n_fit"],
        "n_features": len(cfg.features),
        "matrix_dtype": matrix["dtype"],
        "matrix_shape": matrix["shape"],
        "feature_matrix_f64_bytes": n_clean * len(cfg.features) * 8,
        "k": selection["k"],
        "k_reason": selection["reason"],
        "sweep_rows": selection["sweep_rows"],
        "sweep_n_init": cfg.k_selection.sweep_n_init,
        "final_inertia": captured["final_fit"]["inertia"],
        "final_n_init": cfg.model.n_init,
        "summary_seconds": summary["seconds"],
        "n_input": summary["n_input"],
        "n_segmented": summary["n_segmented"],
        "n_rejected": summary["n_rejected"],
        "threadpool_info": threadpool_info(),
    }
    (workdir / "pipeline.json").write_text(json.dumps(out, default=str, indent=1))


# --------------------------------------------------------------------------- setup and floors


def write_config(workdir: Path, features: list[str] = FEATURES) -> Path:
    import yaml

    raw = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    raw["features"] = features
    raw["cleaning"]["ranges"].update({f: EXTRA_RANGES[f] for f in features if f in EXTRA_RANGES})
    raw["database"]["url"] = URL
    raw["mlflow"]["tracking_uri"] = f"sqlite:///{workdir / 'mlflow.db'}"
    raw["mlflow"]["artifact_location"] = str(workdir / "mlartifacts")
    raw["data_dir"] = str(workdir / "data")
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def add_planted_features(frame: Any, planted: Any, seed: int = 1) -> Any:
    """The three EXTRA_FEATURES, drawn from each row's planted segment (dirty and outlier rows: a
    random one); a separate random stream, so the first three columns equal the three-feature table."""
    import numpy as np

    rng = np.random.default_rng(seed)
    segment = np.where(planted >= 0, planted, rng.integers(0, len(EXTRA_SEGMENTS), len(planted)))
    p = np.asarray(EXTRA_SEGMENTS, dtype=np.float64)[segment]
    n = len(frame)
    return frame.assign(
        tenure_months=np.clip(np.rint(rng.normal(p[:, 0], p[:, 1], n)), 1, 600).astype(np.int64),
        orders_per_year=np.clip(np.rint(np.exp(rng.normal(np.log(p[:, 2]), p[:, 3], n))), 1, 1000).astype(np.int64),
        avg_order_value=np.round(np.exp(rng.normal(np.log(p[:, 4]), p[:, 5], n)), 2),
    )


def setup_database(n: int, workdir: Path, extra_features: bool = False) -> dict[str, Any]:
    import numpy as np

    from segmentation_pipeline.core.demo_data import generate_customers
    from segmentation_pipeline.storage.connection import create_db_engine
    from segmentation_pipeline.storage.bulk_load import load_frame

    started = time.perf_counter()
    frame, planted = generate_customers(n, seed=0)
    stale = frame["customer_id"].duplicated(keep=False).to_numpy() & (planted == -1)
    frame, planted = frame[~stale].reset_index(drop=True), planted[~stale]
    if extra_features:
        frame = add_planted_features(frame, planted)
    generated = time.perf_counter() - started
    np.save(workdir / "planted.npy", np.stack([frame["customer_id"].to_numpy(), planted]))
    run_sql(f"DROP DATABASE IF EXISTS {DB}; CREATE DATABASE {DB} CHARACTER SET utf8mb4")
    engine = create_db_engine(URL)
    started = time.perf_counter()
    load_frame(engine, TABLE, frame, if_exists="replace", primary_key="customer_id")
    loaded = time.perf_counter() - started
    engine.dispose()
    return {"rows": len(frame), "dropped_stale_duplicates": int(stale.sum()), "generate_s": generated,
            "load_frame_s": loaded}


def floor_cli_read() -> float:
    started = time.perf_counter()
    subprocess.run(mariadb("--batch", "--quick", "-e", f"SELECT * FROM {TABLE}", db=DB),
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def read_back(table: str, columns: list[str] | None) -> Any:
    """The harness's own reads of the pipeline's output (connectorx pages; untimed)."""
    from segmentation_pipeline.storage.connection import create_db_engine
    from segmentation_pipeline.storage.reads import read_table

    engine = create_db_engine(URL)
    try:
        return read_table(engine, table, columns, id_column="customer_id", chunk_size=1_000_000)
    finally:
        engine.dispose()


def floor_load_data(workdir: Path) -> tuple[float, int]:
    """LOAD DATA of the rows the write-back wrote to customer_segments (TSV written beforehand)."""
    frame = read_back("customer_segments", None)
    tsv = workdir / "segments.tsv"
    frame.to_csv(tsv, sep="\t", header=False, index=False, na_rep="\\N", lineterminator="\n",
                 date_format="%Y-%m-%d %H:%M:%S.%f")
    columns = ", ".join(f"`{c}`" for c in frame.columns)
    run_sql("DROP TABLE IF EXISTS floor_load; CREATE TABLE floor_load LIKE customer_segments", db=DB)
    statement = (f"LOAD DATA LOCAL INFILE '{tsv}' INTO TABLE floor_load CHARACTER SET utf8mb4 "
                 f"FIELDS TERMINATED BY X'09' ESCAPED BY X'5C' LINES TERMINATED BY X'0A' ({columns})")
    started = time.perf_counter()
    subprocess.run(mariadb("--local-infile=1", "-e", statement, db=DB), check=True)
    seconds = time.perf_counter() - started
    loaded = int(run_sql("SELECT COUNT(*) FROM floor_load", db=DB).strip())
    run_sql("DROP TABLE floor_load", db=DB)
    tsv.unlink()
    return seconds, loaded


def floor_lloyd(workdir: Path, k: int) -> dict[str, float]:
    """One plain sklearn Lloyd sweep (n_init=1) and the n_init=10 inertia reference, same matrix."""
    import numpy as np
    from sklearn.cluster import KMeans

    X = np.ascontiguousarray(np.load(workdir / "X.npy")[np.load(workdir / "fit_mask.npy")])
    started = time.perf_counter()
    for kk in K_VALUES:
        KMeans(n_clusters=kk, algorithm="lloyd", n_init=1, random_state=0).fit(X)
    sweep = time.perf_counter() - started
    started = time.perf_counter()
    reference = KMeans(n_clusters=k, algorithm="lloyd", n_init=10, random_state=0).fit(X)
    return {"lloyd_sweep_s": sweep, "ref_inertia": float(reference.inertia_),
            "ref_fit_s": time.perf_counter() - started, "rows": len(X)}


def pipeline_ari(workdir: Path) -> float:
    import numpy as np
    import pandas as pd
    from sklearn.metrics import adjusted_rand_score

    ids, planted = np.load(workdir / "planted.npy")
    seg = read_back("customer_segments", ["customer_id", "segment_id"])
    truth = pd.Series(planted, index=ids)
    truth = truth[truth >= 0]
    joined = seg.set_index("customer_id")["segment_id"].reindex(truth.index)
    ok = joined.notna()
    return float(adjusted_rand_score(truth[ok], joined[ok]))


def seed_baseline(workdir: Path) -> dict[str, Any]:
    """The seed-style run at 100k (same features and preprocessing as the pipeline, for a fair ARI)."""
    import numpy as np
    import pandas as pd
    import sqlalchemy as sa
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, silhouette_score
    from sklearn.preprocessing import StandardScaler

    engine = sa.create_engine(URL)  # PyMySQL
    out: dict[str, Any] = {}
    started = time.perf_counter()
    with engine.connect() as conn:
        df = pd.read_sql(f"SELECT * FROM {TABLE}", conn)
    out["read_s"] = time.perf_counter() - started

    started = time.perf_counter()
    df = df.dropna(subset=FEATURES)
    df = df[df["age"].between(16, 110) & df["spending_score"].between(1, 100) & (df["annual_income"] >= 0)]
    X = StandardScaler().fit_transform(np.column_stack([df["age"], np.log1p(df["annual_income"]),
                                                        df["spending_score"]]))
    labels: dict[int, np.ndarray] = {}
    for k in K_VALUES:
        labels[k] = KMeans(n_clusters=k, random_state=42).fit_predict(X)
    out["fit_s"] = time.perf_counter() - started

    timed_k = 5
    started = time.perf_counter()
    full = float(silhouette_score(X, labels[timed_k]))
    out["silhouette_one_k_s"] = time.perf_counter() - started
    out["silhouette_extrapolated_s"] = out["silhouette_one_k_s"] * len(K_VALUES)
    # choosing k: the seed would take the best full silhouette; the other 8 full scores are not
    # computed (time extrapolated above), so k is chosen by silhouette on a 20k sample (untimed)
    rng = np.random.default_rng(0)
    idx = rng.choice(len(X), size=min(20_000, len(X)), replace=False)
    sampled = {k: float(silhouette_score(X[idx], labels[k][idx])) for k in K_VALUES}
    sampled[timed_k] = full
    k_best = max(sampled, key=sampled.get)
    out.update({"k": k_best, "silhouettes_sampled": sampled})

    result = pd.DataFrame({"customer_id": df["customer_id"].to_numpy(), "segment_id": labels[k_best]})
    started = time.perf_counter()
    result.to_sql("baseline_segments", engine, if_exists="replace", index=False, chunksize=10_000)
    out["write_s"] = time.perf_counter() - started
    engine.dispose()
    out["total_s"] = out["read_s"] + out["fit_s"] + out["silhouette_extrapolated_s"] + out["write_s"]

    ids, planted = np.load(workdir / "planted.npy")
    truth = pd.Series(planted, index=ids)
    truth = truth[truth >= 0]
    pred = result.set_index("customer_id")["segment_id"].reindex(truth.index)
    ok = pred.notna()
    out["ari"] = float(adjusted_rand_score(truth[ok], pred[ok]))
    return out


# --------------------------------------------------------------------------- one size


def run_worker(workdir: Path, profile: str | None = None) -> dict[str, Any]:
    """One in-process pipeline run in a fresh worker interpreter; its pipeline.json."""
    cmd = [sys.executable, "-m", "benchmarks.run", "--worker", "pipeline", "--workdir", str(workdir)]
    subprocess.run(cmd + (["--profile", profile] if profile else []), check=True, cwd=ROOT)
    return json.loads((workdir / "pipeline.json").read_text())


def cli_command() -> list[str]:
    """The console script a user runs (the module where the script is not installed)."""
    script = Path(sys.executable).parent / "segmentation"
    return [str(script)] if script.exists() else [sys.executable, "-m", "segmentation_pipeline.cli"]


def child_peak_rss(pid: int, stop: threading.Event, seen: list[int]) -> None:
    """The child's own VmHWM, read until it exits (the last reading is kept in ``seen``).

    Not wait4's ``ru_maxrss``: Linux starts a forked child's high-water mark at its parent's RSS
    and keeps it across exec, so it reported this harness's own 1.6 GB (the generated table)."""
    while not stop.is_set():
        try:
            with open(f"/proc/{pid}/status") as handle:
                for line in handle:
                    if line.startswith("VmHWM:"):
                        seen[0] = max(seen[0], int(line.split()[1]) * 1024)
        except (OSError, ValueError):
            return
        stop.wait(0.05)


def run_cli(workdir: Path) -> dict[str, Any]:
    """``segmentation run`` as a user starts it: a fresh process timed by wall clock from its start to
    its exit, its own peak RSS (its VmHWM, read while it runs), and what its JSON summary says."""
    cmd = [*cli_command(), "--config", str(workdir / "config.yaml"), "--log-file", str(workdir / "cli.log"),
           "run", "--json"]
    with open(workdir / "cli.out", "w") as out:
        started = time.perf_counter()
        process = subprocess.Popen(cmd, cwd=ROOT, stdout=out)
        stop, seen = threading.Event(), [0]
        watcher = threading.Thread(target=child_peak_rss, args=(process.pid, stop, seen), daemon=True)
        watcher.start()
        process.wait()
        wall = time.perf_counter() - started
        stop.set()
        watcher.join()
    if process.returncode:
        raise RuntimeError(f"{shlex.join(cmd)} exited {process.returncode} (log: {workdir / 'cli.log'})")
    summary = json.loads((workdir / "cli.out").read_text().strip().splitlines()[-1])
    return {"wall_s": wall, "rss_peak": seen[0], "run_s": summary["seconds"], "k": summary["k"],
            "n_segmented": summary["n_segmented"], "model_version": summary["model_version"],
            "promoted": summary["promoted"]}


def drop_outputs() -> None:
    """Everything but the source table goes: the database a user's first run starts from."""
    tables = run_sql("SELECT table_name FROM information_schema.tables "
                     f"WHERE table_schema = '{DB}' AND table_name <> '{TABLE}'").split()
    if tables:
        run_sql("DROP TABLE " + ", ".join(f"`{t}`" for t in tables), db=DB)


def measure_floors(res: dict[str, Any], workdir: Path, tag: str, log: Any) -> None:
    """The three floors of the table just run (after a worker run: its write-back and PCA matrix)."""
    log(f"{tag} floors ...")
    res["cli_read_s"] = floor_cli_read()
    res["load_data_s"], res["load_data_rows"] = floor_load_data(workdir)
    res["lloyd"] = floor_lloyd(workdir, res["pipeline"]["k"])
    log(f"{tag} cli read {res['cli_read_s']:.2f} s, LOAD DATA {res['load_data_s']:.2f} s, "
        f"Lloyd sweep {res['lloyd']['lloyd_sweep_s']:.2f} s")


def bench_size(n: int, *, baseline: bool, log: Any, profile: str | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"segbench-{n}-") as tmp:
        workdir = Path(tmp)
        write_config(workdir)
        log(f"[{fmt_n(n)}] generating and loading customers into {DB}.{TABLE} ...")
        res: dict[str, Any] = {"n": n, "setup": setup_database(n, workdir)}
        log(f"[{fmt_n(n)}] setup: {json.dumps(res['setup'])}")

        log(f"[{fmt_n(n)}] pipeline (worker subprocess) ...")
        # cProfile slows the run: use for finding where time goes, not for the targets
        res["pipeline"] = run_worker(workdir, f"{profile}.{n}.prof" if profile else None)
        res["pipeline"]["ari"] = pipeline_ari(workdir)
        log(f"[{fmt_n(n)}] whole run {res['pipeline']['whole_s']:.2f} s, stages "
            + ", ".join(f"{k}={v:.2f}" for k, v in res["pipeline"]["stages_s"].items()))
        measure_floors(res, workdir, f"[{fmt_n(n)}]", log)
        # the steady state: the same table again, now with a champion to compare with and fall back
        # on (its assignments of every row, the migration matrix, the agreement), in a fresh worker
        log(f"[{fmt_n(n)}] retrain with a champion (worker subprocess) ...")
        res["retrain"] = run_worker(workdir)
        log(f"[{fmt_n(n)}] retrain {res['retrain']['whole_s']:.2f} s, peak RSS {fmt_mb(res['retrain']['rss_peak'])}")
        if baseline:
            log(f"[{fmt_n(n)}] seed-style baseline (full silhouette for one k, extrapolated) ...")
            res["baseline"] = seed_baseline(workdir)
            log(f"[{fmt_n(n)}] baseline {json.dumps({k: v for k, v in res['baseline'].items() if k != 'silhouettes_sampled'}, default=str)}")
        return res


def bench_user_runs(n: int, *, log: Any) -> dict[str, Any]:
    """Six features, as a user meets them: a worker run (stage times) and the floors of that table, then
    ``segmentation run`` twice in fresh processes on a new MLflow store: the first run and a retrain."""
    tag = f"[{fmt_n(n)}, six features]"
    with tempfile.TemporaryDirectory(prefix=f"segbench-user-{n}-") as tmp:
        workdir = Path(tmp)
        write_config(workdir, SIX_FEATURES)
        log(f"{tag} generating and loading customers into {DB}.{TABLE} ...")
        command = "segmentation" if len(cli_command()) == 1 else "python -m segmentation_pipeline.cli"
        res: dict[str, Any] = {"n": n, "features": SIX_FEATURES, "command": command,
                               "setup": setup_database(n, workdir, extra_features=True)}
        log(f"{tag} pipeline (worker subprocess) ...")
        res["pipeline"] = run_worker(workdir)
        res["pipeline"]["ari"] = pipeline_ari(workdir)
        log(f"{tag} whole run {res['pipeline']['whole_s']:.2f} s")
        measure_floors(res, workdir, tag, log)
        drop_outputs()
        cli_dir = workdir / "cli"
        cli_dir.mkdir()
        cli_config = write_config(cli_dir, SIX_FEATURES)
        prepare_mlflow_store(cli_config)
        prepare_dagster_instance(cli_config)
        for key, what in (("cli_first", "first run"), ("cli_retrain", "retrain with a champion")):
            log(f"{tag} `segmentation run`, {what} (fresh process) ...")
            res[key] = run_cli(cli_dir)
            log(f"{tag} {what}: {res[key]['wall_s']:.2f} s wall, {res[key]['run_s']:.2f} s in the run, "
                f"peak RSS {fmt_mb(res[key]['rss_peak'])}")
        return res


# --------------------------------------------------------------------------- targets and report


def floors_sum(res: dict[str, Any]) -> float:
    return res["cli_read_s"] + res["load_data_s"] + res["lloyd"]["lloyd_sweep_s"]


def stage_targets(add: Any, label: str, res: dict[str, Any]) -> None:
    """Extraction, write-back and sweep of a worker run against the floors of the same table."""
    p = res["pipeline"]
    for stage, floor, what, limit in (("extraction", res["cli_read_s"], "mariadb CLI read", 1.5),
                                      ("write_back", res["load_data_s"], "LOAD DATA", 2),
                                      ("sweep", res["lloyd"]["lloyd_sweep_s"], "one plain Lloyd sweep", 1.5)):
        ratio = p["stages_s"][stage] / floor
        name = {"write_back": "write-back", "sweep": "k sweep"}.get(stage, stage)
        add(f"{label}: {name} ≤ {limit:g}× {what}", f"{ratio:.2f}× ({fmt_s(p['stages_s'][stage])} vs "
            f"{fmt_s(floor)})", ratio <= limit)


def user_targets(add: Any, user: dict[str, Any]) -> None:
    """Issue 19: the six-feature table's stages, and ``segmentation run`` processes against its floors."""
    label = f"{fmt_n(user['n'])}, six features"
    stage_targets(add, label, user)
    floors = floors_sum(user)
    in_process = user["pipeline"]["whole_s"] / floors
    for key, what in (("cli_first", "first run"), ("cli_retrain", "retrain with a champion")):
        run = user[key]
        ratio = run["wall_s"] / floors
        add(f"{label}: `segmentation run` ({what}, fresh process) ≤ {USER_RUN_TARGET:g}× sum of the three floors",
            f"{ratio:.2f}× ({fmt_s(run['wall_s'])} vs {fmt_s(floors)})", ratio <= USER_RUN_TARGET,
            f"wall clock from process start to exit, of which {fmt_s(run['run_s'])} in the run"
            + (f"; the worker's in-process first run: {in_process:.2f}×" if key == "cli_first" else ""))


def evaluate(results: list[dict[str, Any]], user: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    by_n = {r["n"]: r for r in results}
    rows: list[dict[str, Any]] = []

    def add(target: str, measured: str, ok: bool | None, note: str = "") -> None:
        rows.append({"target": target, "measured": measured,
                     "verdict": "n/a" if ok is None else ("PASS" if ok else "FAIL"), "note": note})

    small = by_n.get(BASELINE_SIZE)
    if small and "baseline" in small:
        b, p = small["baseline"], small["pipeline"]
        speedup = b["total_s"] / p["whole_s"]
        add("100k: whole run ≥ 50× faster than seed-style baseline",
            f"{speedup:.1f}× ({fmt_s(b['total_s'])} baseline, of which {fmt_s(b['silhouette_extrapolated_s'])} "
            f"silhouette extrapolated from 1 k × 9; vs {fmt_s(p['whole_s'])})", speedup >= 50)
        add("100k: ARI vs planted ≥ baseline's",
            f"pipeline {p['ari']:.4f} (k={p['k']}) vs baseline {b['ari']:.4f} (k={b['k']})", p["ari"] >= b["ari"] - 1e-9)
    big = by_n.get(1_000_000)
    if big:
        p = big["pipeline"]
        stage_targets(add, "1M", big)
        rel = (p["final_inertia"] - big["lloyd"]["ref_inertia"]) / big["lloyd"]["ref_inertia"]
        add("1M: final inertia within 1% of sklearn n_init=10", f"{100 * rel:+.3f}% at k={p['k']}", abs(rel) <= 0.01)
        floors = floors_sum(big)
        ratio = p["whole_s"] / floors
        add("1M: whole run ≤ 3× sum of the three floors", f"{ratio:.2f}× ({fmt_s(p['whole_s'])} vs "
            f"{fmt_s(floors)})", ratio <= 3)
    if user:
        user_targets(add, user)
    sizes = sorted(by_n)
    memory_fixed: float | None = None  # size-independent part of the peak-RSS increment, when fitted
    if len(sizes) > 1:
        top = sizes[-1]
        whole = {n: by_n[n]["pipeline"]["whole_s"] for n in sizes}
        per_row = {n: whole[n] / n for n in sizes}
        ratio = max(per_row.values()) / min(per_row.values())
        intercept, _marginal = fixed_and_marginal(sizes, [whole[n] for n in sizes])
        add(f"time per row (whole run ÷ rows) {fmt_n(sizes[0])} → {fmt_n(top)} within 1.3×",
            f"{ratio:.2f}× (" + ", ".join(f"{1e6 * per_row[n]:.1f} µs/row at {fmt_n(n)}" for n in sizes) + ")",
            ratio <= 1.3,
            f"as written: the run's size-independent cost (least-squares intercept ≈ {intercept:.1f} s: Dagster, "
            "MLflow, fixed-size samples) dominates small tables")
        marginal = pairwise_slopes(sizes, whole)
        if len(marginal) > 1:
            ratio = max(marginal.values()) / min(marginal.values())
            add("marginal time per row between sizes within 1.3× (linear scaling)",
                f"{ratio:.2f}× (" + ", ".join(f"{1e6 * v:.1f} µs/row {k}" for k, v in marginal.items()) + ")",
                ratio <= 1.3, "slope of whole-run time between consecutive sizes, same run")
        feature_row = 3 * 8 * by_n[top]["pipeline"]["n_features"]  # bytes per row of 3× the float64 matrix
        increments = {n: by_n[n]["pipeline"]["rss_peak"] - by_n[n]["pipeline"]["rss_before"] for n in sizes}
        memory = pairwise_slopes(sizes, increments)
        last = list(memory.values())[-1]
        add(f"peak memory per extra row < 3× a float64 feature-matrix row ({feature_row} B)",
            f"{last:.0f} B/row ({list(memory)[-1]}); " + ", ".join(
                f"{v:.0f} B/row {k}" for k, v in list(memory.items())[:-1]) + ("; " if len(memory) > 1 else "")
            + f"{fmt_mb(increments[top])} over the post-import RSS at {fmt_n(top)}",
            last < feature_row, "slope of peak RSS (VmHWM − RSS after imports) between consecutive sizes")
        if len(sizes) > 2:
            # A straight line through every size, judged by its worst miss. (The ratio of pairwise
            # slopes is no test of linearity here: the peak is the largest of several stages'
            # lines, fixed overhead sets it at the smallest size, so the slope rises at once.)
            fixed, slope = fixed_and_marginal(sizes, [increments[n] for n in sizes])
            memory_fixed = fixed
            worst = max(abs(increments[n] - (fixed + slope * n)) for n in sizes)
            share = worst / increments[top]
            add("peak memory grows linearly (every size within 5% of one straight line)",
                f"worst miss {fmt_mb(worst)} = {100 * share:.1f}% of the {fmt_n(top)} increment; line "
                f"{fmt_mb(fixed)} + {slope:.0f} B/row; pairwise " + ", ".join(
                    f"{v:.0f} B/row {k}" for k, v in memory.items()), share <= 0.05,
                "least-squares fit of the peak-RSS increment over the post-import RSS against rows")
    for n in sizes:
        p = by_n[n]["pipeline"]
        budget = 3 * p["feature_matrix_f64_bytes"]
        increment = p["rss_peak"] - p["rss_before"]
        add(f"{fmt_n(n)}: peak memory < 3× float64 feature matrix (absolute)",
            f"peak RSS {fmt_mb(p['rss_peak'])} (+{fmt_mb(increment)} over the {fmt_mb(p['rss_before'])} "
            f"after imports) vs 3× matrix = {fmt_mb(budget)}", increment < budget,
            "as written: judged on the increment over the post-import baseline"
            + ("" if memory_fixed is None else f", which includes the run's size-independent ≈{fmt_mb(memory_fixed)} "
               "(the line's intercept)"))
    return rows


def pairwise_slopes(sizes: list[int], values: dict[int, float]) -> dict[str, float]:
    """Change per row between consecutive sizes, labelled like "100k→1M"."""
    return {f"{fmt_n(a)}→{fmt_n(b)}": (values[b] - values[a]) / (b - a) for a, b in zip(sizes, sizes[1:])}


def fixed_and_marginal(sizes: list[int], seconds: list[float]) -> tuple[float, float]:
    """Least-squares ``value ≈ fixed + marginal × rows`` (seconds, or bytes)."""
    import numpy as np

    marginal, fixed = np.polyfit(np.asarray(sizes, dtype=float), np.asarray(seconds, dtype=float), 1)
    return float(fixed), float(marginal)


def versions() -> dict[str, str]:
    import dagster
    import mlflow
    import numpy
    import pandas
    import sklearn

    server = run_sql("SELECT VERSION()").strip()
    return {"python": platform.python_version(), "numpy": numpy.__version__, "scikit-learn": sklearn.__version__,
            "pandas": pandas.__version__, "dagster": dagster.__version__, "mlflow": mlflow.__version__,
            "MariaDB": server}


def table_row(label: str, results: list[dict[str, Any]], fn: Any) -> str:
    return f"| {label} | " + " | ".join(str(fn(r)) for r in results) + " |"


def stage_lines(results: list[dict[str, Any]], prefix: str = "") -> list[str]:
    """A worker run's wrapped stages, the rest, and the whole run (rows of a table, one column per result)."""
    def stage(r: dict[str, Any], name: str) -> float | None:
        return r["pipeline"]["stages_s"].get(name)

    return [
        *(table_row(prefix + name, results, lambda r, s=name: fmt_s(stage(r, s))) for name in STAGES),
        table_row(prefix + "other (Dagster, predict/profile/plots, metrics)", results,
                  lambda r: fmt_s(r["pipeline"]["whole_s"] - sum(stage(r, s) or 0.0 for s in STAGES))),
        table_row(f"**{prefix}whole run**", results, lambda r: f"**{fmt_s(r['pipeline']['whole_s'])}**"),
        table_row(prefix + "µs per input row", results, lambda r: f"{1e6 * r['pipeline']['whole_s'] / r['n']:.1f}"),
    ]


def floor_lines(results: list[dict[str, Any]]) -> list[str]:
    return [
        table_row("`mariadb --batch --quick` SELECT * > /dev/null", results, lambda r: fmt_s(r["cli_read_s"])),
        table_row("LOAD DATA LOCAL INFILE of the customer_segments rows (CLI)", results,
                  lambda r: fmt_s(r["load_data_s"])),
        table_row("sklearn Lloyd sweep k=2..10, n_init=1, PCA matrix (fit rows)", results,
                  lambda r: fmt_s(r["lloyd"]["lloyd_sweep_s"])),
        table_row("sklearn KMeans n_init=10 at chosen k (inertia reference)", results,
                  lambda r: fmt_s(r["lloyd"]["ref_fit_s"])),
    ]


def data_lines(results: list[dict[str, Any]], prefix: str = "") -> list[str]:
    """The table and the model a worker run made of it."""
    p = "pipeline"
    return [table_row(prefix + label, results, fn) for label, fn in (
        ("rows loaded (stale duplicate ids dropped)",
         lambda r: f"{r['setup']['rows']:,} ({r['setup']['dropped_stale_duplicates']:,})"),
        ("load_frame into MariaDB (setup, untimed for targets)", lambda r: fmt_s(r["setup"]["load_frame_s"])),
        ("clean / rejected", lambda r: f"{r[p]['n_segmented']:,} / {r[p]['n_rejected']:,}"),
        ("sweep rows × n_init", lambda r: f"{r[p]['sweep_rows']:,} × {r[p]['sweep_n_init']}"),
        ("chosen k", lambda r: r[p]["k"]),
        ("ARI vs planted segments", lambda r: f"{r[p]['ari']:.4f}"),
        ("final inertia vs sklearn n_init=10",
         lambda r: f"{100 * (r[p]['final_inertia'] / r['lloyd']['ref_inertia'] - 1):+.3f}%"),
        ("feature matrix (pipeline)", lambda r: f"{r[p]['matrix_shape']} {r[p]['matrix_dtype']}"),
    )]


def user_lines(user: dict[str, Any]) -> list[str]:
    """Issue 19's section: the six-feature table's worker stages and floors, then the CLI processes."""
    results = [user]
    floors = floors_sum(user)
    lines = [
        "", f"## As a user meets it: `segmentation run` on six numeric features, {fmt_n(user['n'])} rows "
        "(issue 19)", "",
        f"Features: {', '.join(user['features'])} (the last three drawn per planted segment by the harness). "
        "A worker run on this table gives the stage times and the floors are measured on it; then the output "
        f"tables are dropped and `{user['command']} --config … run --json` starts twice as a fresh process on a new "
        "MLflow store and Dagster home (created before timing): the first run, then the retrain with the first "
        "run's champion in place. "
        "Wall clock from process start to exit; peak RSS is the process's own VmHWM, read every 50 ms while it runs.", "",
        f"| | {fmt_n(user['n'])}, six features |", "|---|---|",
        *stage_lines(results, "worker: "),
        *floor_lines(results),
        table_row("**sum of the three floors** (read, LOAD DATA, Lloyd sweep)", results,
                  lambda r: f"**{fmt_s(floors)}**"),
    ]
    for key, what in (("cli_first", "first run"), ("cli_retrain", "retrain with a champion")):
        lines += [
            table_row(f"`segmentation run`, {what}: wall clock from process start (of which in the run)", results,
                      lambda r, k=key: f"**{fmt_s(r[k]['wall_s'])}** ({fmt_s(r[k]['run_s'])})"),
            table_row(f"`segmentation run`, {what}: ÷ sum of the floors (≤ {USER_RUN_TARGET:g}×)", results,
                      lambda r, k=key: f"{r[k]['wall_s'] / floors:.2f}×"),
            table_row(f"`segmentation run`, {what}: peak RSS, chosen k, registered model", results,
                      lambda r, k=key: f"{fmt_mb(r[k]['rss_peak'])}, k={r[k]['k']}, v{r[k]['model_version']} "
                      + ("promoted" if r[k]["promoted"] else "not promoted")),
        ]
    return [*lines, *data_lines(results, "worker: "),
            table_row("worker: peak RSS (VmHWM)", results, lambda r: fmt_mb(r["pipeline"]["rss_peak"]))]


def render(results: list[dict[str, Any]], rows: list[dict[str, Any]], command: str, elapsed: float,
           notes: list[str], user: dict[str, Any] | None = None) -> str:
    lines = ["# Benchmark results (issue 4)", "",
             "Generated by `benchmarks/run.py`; every ratio below compares numbers measured in the same run",
             "(the machine is shared and noisy: absolute seconds move between runs, ratios much less).", "",
             f"Command: `{command}` (total {elapsed / 60:.1f} min, {time.strftime('%Y-%m-%d %H:%M:%S %Z')})", "",
             "## Targets", "", "| target | measured | verdict | note |", "|---|---|---|---|"]
    lines += [f"| {r['target']} | {r['measured']} | **{r['verdict']}** | {r['note']} |" for r in rows]
    lines += ["", "## Stage times (whole run in-process; stage = wrapped core call, MLflow = all MLflow/registry calls)",
              ""]
    sizes = [r["n"] for r in results]
    header = "| stage | " + " | ".join(fmt_n(n) for n in sizes) + " |"
    lines += [header, "|---|" + "---|" * len(sizes), *stage_lines(results)]
    lines += ["", "Dagster STEP_SUCCESS durations (each step includes its own MLflow calls):", "",
              header, "|---|" + "---|" * len(sizes)]
    steps = list(dict.fromkeys(s for r in results for s in r["pipeline"]["dagster_steps_s"]))
    for step in steps:
        lines.append(f"| {step} | " + " | ".join(fmt_s(r["pipeline"]["dagster_steps_s"].get(step)) for r in results)
                     + " |")
    lines += ["", "## Floors (same run)", "", header, "|---|" + "---|" * len(sizes), *floor_lines(results)]
    lines += ["", "## Data, model and memory", "", header, "|---|" + "---|" * len(sizes)]

    def row(label: str, fn: Any) -> None:
        lines.append(table_row(label, results, fn))

    lines += data_lines(results)
    row("3× float64 feature matrix (n × features × 8 B × 3)", lambda r: fmt_mb(3 * r["pipeline"]["feature_matrix_f64_bytes"]))
    row("RSS after imports (before run)", lambda r: fmt_mb(r["pipeline"]["rss_before"]))
    row("peak RSS (VmHWM)", lambda r: fmt_mb(r["pipeline"]["rss_peak"]))
    for stage in [*STAGES, "other"]:
        row(f"peak RSS sampled during {stage}", lambda r, s=stage: fmt_mb(r["pipeline"]["rss_peak_by_stage"].get(s)))
    if all("retrain" in r for r in results):
        row("retrain with a champion: whole run", lambda r: fmt_s(r["retrain"]["whole_s"]))
        row("retrain with a champion: peak RSS (VmHWM)", lambda r: fmt_mb(r["retrain"]["rss_peak"]))
    baseline = next((r["baseline"] for r in results if "baseline" in r), None)
    if baseline:
        lines += ["", "## Seed-style baseline at 100k", "",
                  "pandas.read_sql (PyMySQL) of the whole table; same cleaning rules, log1p(income) + StandardScaler; "
                  "sklearn KMeans with defaults for k=2..10; full `silhouette_score` **measured for k=5 only and "
                  "multiplied by 9** (≈1 min per k); k = best silhouette (the other ks scored on a 20k sample, "
                  "untimed); `to_sql` write-back of (customer_id, segment_id).", "",
                  "| part | time |", "|---|---|"]
        for key, label in (("read_s", "read_sql"), ("fit_s", "clean + scale + 9 KMeans fits"),
                           ("silhouette_one_k_s", "full silhouette, one k (measured)"),
                           ("silhouette_extrapolated_s", "full silhouette × 9 k (extrapolated)"),
                           ("write_s", "to_sql write-back"), ("total_s", "**total**")):
            lines.append(f"| {label} | {fmt_s(baseline[key])} |")
        lines.append(f"| chosen k / ARI | {baseline['k']} / {baseline['ari']:.4f} |")
    if user:
        lines += user_lines(user)
    lines += ["", "## Environment", ""]
    lines += [f"- {k}: {v}" for k, v in versions().items()]
    info = results[0]["pipeline"]["threadpool_info"]
    lines.append(f"- CPUs: {os.cpu_count()}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}; "
                 f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')}")
    lines.append("- threadpoolctl (worker process, after the run):")
    for pool in info:
        lines.append(f"  - {pool.get('user_api')} / {pool.get('internal_api')}: {pool.get('num_threads')} threads "
                     f"({pool.get('prefix')}, {pool.get('version')}, {pool.get('threading_layer', '')} "
                     f"{pool.get('architecture', '')})")
    server = run_sql("SELECT @@innodb_buffer_pool_size, @@innodb_flush_log_at_trx_commit, @@local_infile").split()
    lines.append(f"- MariaDB: innodb_buffer_pool_size={int(server[0]) // 2**20} MB, "
                 f"innodb_flush_log_at_trx_commit={server[1]}, local_infile={server[2]}")
    doc = (__doc__ or "").strip()
    lines += ["", "## Method", "", doc[doc.find("For every size N"):]]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100000,1000000,5000000", help="comma-separated row counts")
    parser.add_argument("--quick", action="store_true", help="CI smoke run: 10k rows, no baseline (< 60 s)")
    parser.add_argument("--out", default=None,
                        help="results markdown (default benchmarks/RESULTS.md; --quick writes only when given)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the seed-style baseline at 100k")
    parser.add_argument("--profile", metavar="PREFIX",
                        help="run the pipeline under cProfile, stats to PREFIX.<n>.prof (distorts the timings)")
    parser.add_argument("--user-size", type=int, default=USER_SIZE,
                        help="rows of the six-feature table run as a user meets it (`segmentation run` processes; "
                             "0 skips it; --quick always skips it)")
    parser.add_argument("--database", default=DB, help="MariaDB database the harness drops, fills and drops again")
    parser.add_argument("--worker", choices=["pipeline"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker == "pipeline":
        worker_pipeline(Path(args.workdir), args.profile)
        return 0

    use_database(args.database)
    sizes = [10_000] if args.quick else [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    out = args.out if args.out else (None if args.quick else str(ROOT / "benchmarks" / "RESULTS.md"))
    command = "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    notes: list[str] = []
    for var in ("SEGMENTATION_DATABASE_URL", "SEGMENTATION_CONFIG", "MLFLOW_TRACKING_URI", "SEGMENTATION_DATA_DIR",
                "DAGSTER_HOME"):
        if os.environ.get(var):
            notes.append(f"{var} is set in the environment and may override the benchmark config")

    def log(message: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)

    started = time.perf_counter()
    results = []
    for n in sizes:
        results.append(bench_size(n, baseline=(n == BASELINE_SIZE and not args.quick and not args.no_baseline), log=log,
                                   profile=args.profile))
    user = bench_user_runs(args.user_size, log=log) if args.user_size and not args.quick else None
    run_sql(f"DROP DATABASE IF EXISTS {DB}")
    rows = evaluate(results, user)
    report = render(results, rows, command.strip(), time.perf_counter() - started, notes, user)
    print("\n" + report)
    if out:
        # a hand-written analysis below the marker survives re-runs (it is about a specific run: re-check it)
        previous = Path(out).read_text() if Path(out).exists() else ""
        if ANALYSIS_MARKER in previous:
            report += "\n" + previous[previous.index(ANALYSIS_MARKER):]
        Path(out).write_text(report)
        log(f"wrote {out}")
    if args.quick:
        ari = results[0]["pipeline"]["ari"]
        if ari < 0.9:
            print(f"smoke run: ARI vs planted segments {ari:.3f} < 0.9", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
