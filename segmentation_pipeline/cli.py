"""``segmentation`` console script: demo data, CSV loading, and in-process runs of the jobs."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segmentation_pipeline.config import DEFAULT_CONFIG, ConfigError, PipelineConfig, load_config


def _overrides_for_features(cfg_path: str | None, features: list[str]) -> dict[str, Any]:
    """--features narrows the feature list; rules naming dropped features are dropped with it."""
    base = load_config(cfg_path)
    keep = set(features)
    overrides: dict[str, Any] = {
        "features": features,
        "cleaning.ranges": {k: v.model_dump() for k, v in base.cleaning.ranges.items() if k in keep},
        "transform.log1p": [c for c in base.transform.log1p if c in keep],
    }
    if base.cleaning.outliers.features is not None:
        overrides["cleaning.outliers.features"] = [c for c in base.cleaning.outliers.features if c in keep] or None
    if base.naming.value_feature not in keep:
        overrides["naming.value_feature"] = None
    pca = base.transform.pca_components
    if isinstance(pca, int) and pca > len(features):
        overrides["transform.pca_components"] = len(features)
    return overrides


# progress lines (INFO) stay visible; Dagster's per-step DEBUG events go to the UI only
QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": os.environ.get("SEGMENTATION_LOG_LEVEL", "INFO")}}}}


#: The instance settings a fresh Dagster home starts from (run limits, pools), as `make ui` uses.
INSTANCE_SETTINGS = DEFAULT_CONFIG.with_name("dagster.yaml")


def dagster_home(config_path: str | None = None) -> Path:
    """``$DAGSTER_HOME``, else ``<data_dir>/dagster_home``: the one instance the CLI and ``make ui`` share."""
    home = os.environ.get("DAGSTER_HOME")
    return Path(home) if home else (load_config(config_path).data_path / "dagster_home").resolve()


def _instance(config_path: str | None = None):
    """A persistent instance, so every CLI run is listed in the UI with its logs (never a throwaway one)."""
    import dagster as dg

    home = dagster_home(config_path)
    home.mkdir(parents=True, exist_ok=True)
    settings = home / "dagster.yaml"
    if not settings.exists() and INSTANCE_SETTINGS.exists():
        shutil.copyfile(INSTANCE_SETTINGS, settings)
    return dg.DagsterInstance.from_config(str(home))


def _root_cause(exc: BaseException) -> BaseException:
    import dagster as dg

    while True:
        if isinstance(exc, dg.DagsterExecutionStepExecutionError) and exc.user_exception is not None:
            exc = exc.user_exception
        elif exc.__cause__ is not None and type(exc).__module__.startswith("dagster"):
            exc = exc.__cause__
        else:
            return exc


def _describe_error(cause: BaseException) -> str:
    """``Type: message``; when retries ran out, the last attempt's error (Dagster keeps it as text)."""
    infos = getattr(cause, "user_code_process_error_infos", None)
    info = infos[-1] if infos else None
    while info is not None and info.cls_name and info.cls_name.startswith(("RetryRequested", "Dagster")):
        info = info.cause
    if info is None or not info.cls_name:
        return f"{type(cause).__name__}: {cause}"
    message = info.message.strip()
    qualified, _, rest = message.partition(": ")
    if qualified.endswith(info.cls_name):
        message = f"{info.cls_name}: {rest}"
    return f"{message} (gave up: {str(cause).strip().splitlines()[0]})"


def run_pipeline(config_path: str | None = None, features: list[str] | None = None) -> dict[str, Any]:
    """Run the training job in this process and summarise it from the run's metadata.

    Values pass between steps in memory and each is released after its last consumer
    (``in_process.run_training``), so the raw and clean tables are not all held at once.
    """
    from segmentation_pipeline.in_process import run_training
    from segmentation_pipeline.resources import SettingsResource

    overrides_json = json.dumps(_overrides_for_features(config_path, features) if features else {})
    cfg = SettingsResource(config_path=config_path, overrides_json=overrides_json).load()  # fail fast on config
    started = time.perf_counter()
    result = run_training(_instance(config_path), config_path, overrides_json, run_config=QUIET_LOGS, tags={"trigger": "cli"})
    return summarise(result, cfg, time.perf_counter() - started)


def _metadata(result: Any, node: str) -> dict[str, Any]:
    [event] = result.asset_materializations_for_node(node)
    return {k: getattr(v, "value", v) for k, v in event.metadata.items()}


def summarise(result: Any, cfg: PipelineConfig, seconds: float) -> dict[str, Any]:
    """The run's outcome as plain data, from what its steps reported (nothing is reloaded)."""
    selection = _metadata(result, "k_selection")
    trained = _metadata(result, "segmentation_model")
    promotion = _metadata(result, "model_promotion")
    meta = _metadata(result, "customer_segments")
    metrics = trained["metrics"]
    return {
        "k": trained["k"],
        "k_reason": selection["reason"],
        "silhouette": metrics.get("silhouette"),
        "davies_bouldin": metrics.get("davies_bouldin"),
        "calinski_harabasz": metrics.get("calinski_harabasz"),
        "n_input": meta["n_input"],
        "n_segmented": meta["n_segmented"],
        "n_rejected": meta["n_rejected"],
        "n_outliers_segmented": meta["n_outliers_segmented"],
        "model_name": cfg.model.name,
        "model_version": promotion["challenger_version"],
        "champion_version": promotion["champion_version"],
        "promoted": promotion["promoted"],
        "promotion_reasons": promotion["reason_list"],
        "mlflow_run_id": trained["mlflow_run_id"],
        "mlflow_tracking_uri": cfg.mlflow.tracking_uri,
        "dagster_run_id": result.run_id,
        "database": cfg.database.safe_url(),
        "tables": meta["tables"],
        "segments": trained["segments"] if promotion["promoted"] else None,
        "seconds": round(seconds, 2),
    }


def _print_summary(summary: dict[str, Any]) -> None:
    import pandas as pd

    print(f"\nSegmented {summary['n_segmented']:,} of {summary['n_input']:,} customers "
          f"({summary['n_rejected']:,} rejected, {summary['n_outliers_segmented']:,} outliers flagged) "
          f"in {summary['seconds']} s")
    print(f"k = {summary['k']}: {summary['k_reason']}")
    print(f"quality: silhouette {summary['silhouette']:.3f}, Davies–Bouldin {summary['davies_bouldin']:.3f}, "
          f"Calinski–Harabasz {summary['calinski_harabasz']:.1f}")
    verdict = "promoted to champion" if summary["promoted"] else f"not promoted (champion stays v{summary['champion_version']})"
    print(f"model: {summary['model_name']} v{summary['model_version']}, {verdict}")
    for reason in summary["promotion_reasons"]:
        print(f"  - {reason}")
    if summary["segments"]:
        frame = pd.DataFrame(summary["segments"])
        print("\n" + frame.to_string(index=False, float_format=lambda v: f"{v:,.1f}"))
    print(f"\nwritten to {summary['database']}: {', '.join(str(t) for t in summary['tables'])}")
    print(f"MLflow run {summary['mlflow_run_id']} at {summary['mlflow_tracking_uri']}")
    print(f"Dagster run {summary['dagster_run_id']}")


def _cmd_run(args: argparse.Namespace) -> int:
    features = [f.strip() for f in args.features.split(",") if f.strip()] if args.features else None
    summary = run_pipeline(args.config, features)
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        _print_summary(summary)
        cfg = load_config(args.config)
        print("\nLook at it: `make ui` (Dagster, http://127.0.0.1:3000) and `make mlflow-ui` "
              f"(MLflow, http://127.0.0.1:5000, store {cfg.mlflow.tracking_uri})")
    return 0


def _run_single_asset(config_path: str | None, asset_name: str, run_config: dict | None = None) -> Any:
    import dagster as dg

    from segmentation_pipeline.definitions import ASSETS, build_resources
    from segmentation_pipeline.resources import SettingsResource

    settings = SettingsResource(config_path=config_path)
    cfg = settings.load()
    result = dg.materialize(
        ASSETS,
        selection=dg.AssetSelection.assets(asset_name),
        resources=build_resources(settings, cfg, io_manager=dg.mem_io_manager),
        instance=_instance(config_path),
        run_config={**QUIET_LOGS, **(run_config or {})},
    )
    [event] = result.asset_materializations_for_node(asset_name)
    return {k: getattr(v, "value", v) for k, v in event.metadata.items() if k not in {"plot"}}


def _cmd_score(args: argparse.Namespace) -> int:
    config = {"after_id": args.after_id} if args.after_id else {}
    meta = _run_single_asset(args.config, "scored_customers", {"ops": {"scored_customers": {"config": config}}})
    print(json.dumps(meta, default=str))
    return 0


def _cmd_drift(args: argparse.Namespace) -> int:
    meta = _run_single_asset(args.config, "segment_drift")
    print(json.dumps({k: meta[k] for k in ("severity", "drifted_features", "share_drifted", "segment_psi", "report_path")}, default=str))
    return 0


def _cmd_demo_data(args: argparse.Namespace) -> int:
    from segmentation_pipeline.core.demo_data import generate_customers
    from segmentation_pipeline.storage.bulk_load import load_frame
    from segmentation_pipeline.storage.connection import create_db_engine, table_columns

    cfg = load_config(args.config)
    engine = create_db_engine(cfg.database.sqlalchemy_url())
    if args.if_missing:
        try:
            table_columns(engine, cfg.source.table)
            print(f"{cfg.source.table} already exists in {cfg.database.safe_url()}; keeping it")
            return 0
        except Exception:  # noqa: BLE001 - missing table: generate it
            pass
    frame, _ = generate_customers(args.rows, seed=args.seed, vip_share=args.vip_share)
    n = load_frame(engine, cfg.source.table, frame, if_exists="replace", primary_key=None)
    print(f"wrote {n:,} demo customers to {cfg.database.safe_url()} table {cfg.source.table}")
    return 0


def _cmd_load_csv(args: argparse.Namespace) -> int:
    from segmentation_pipeline.storage.bulk_load import load_frame
    from segmentation_pipeline.storage.connection import create_db_engine
    from segmentation_pipeline.storage.csv_loader import read_csv_file

    cfg = load_config(args.config)
    rename: dict[str, str] = {}
    for item in args.rename or []:
        if "=" not in item:
            raise ConfigError(f"--rename expects 'Source Name=target', got {item!r}")
        source, target = item.split("=", 1)
        rename[source.strip()] = target.strip()
    frame = read_csv_file(args.path, rename=rename)
    table = args.table or cfg.source.table
    engine = create_db_engine(cfg.database.sqlalchemy_url())
    n = load_frame(engine, table, frame, if_exists="replace", primary_key=None)
    print(f"loaded {n:,} rows with columns {list(frame.columns)} into {table} ({cfg.database.safe_url()})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segmentation", description=__doc__)
    parser.add_argument("--config", help="YAML config (default: $SEGMENTATION_CONFIG or configs/default.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo-data", help="fill the configured table with synthetic customers")
    demo.add_argument("--rows", type=int, default=5000)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--vip-share", type=float, default=0.0)
    demo.add_argument("--if-missing", action="store_true", help="do nothing when the table exists")
    demo.set_defaults(func=_cmd_demo_data)

    csv = sub.add_parser("load-csv", help="load a customer CSV (comma/tab, CRLF, BOM) into a table")
    csv.add_argument("path")
    csv.add_argument("--table")
    csv.add_argument("--rename", action="append", metavar="'Source Name=target'")
    csv.set_defaults(func=_cmd_load_csv)

    run = sub.add_parser("run", help="run the whole pipeline in-process and print a summary")
    run.add_argument("--features", help="comma-separated feature columns (overrides the config)")
    run.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    run.set_defaults(func=_cmd_run)

    score = sub.add_parser("score", help="assign segments with the champion model, no refit")
    score.add_argument("--after-id", help="only customers with id greater than this")
    score.set_defaults(func=_cmd_score)

    drift = sub.add_parser("drift", help="Evidently drift report vs the champion's reference")
    drift.set_defaults(func=_cmd_drift)

    for p in (demo, csv, run, score, drift):
        p.add_argument("--config", help=argparse.SUPPRESS, default=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not hasattr(args, "config"):
        args.config = None
    try:
        return args.func(args)
    except Exception as exc:  # noqa: BLE001 - the CLI's job is a readable error, not a traceback
        print(f"error: {_describe_error(_root_cause(exc))}", file=sys.stderr)
        if os.environ.get("SEGMENTATION_DEBUG"):
            raise
        return 1


if __name__ == "__main__":
    sys.exit(main())
