"""segmentation: customer segments from a database table, trained and published in-process.

Typical first session: `segmentation demo-data`, `segmentation run`, `segmentation segments`,
`segmentation export --output segments.csv`, `segmentation report --open`.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from segmentation_pipeline.config import DEFAULT_CONFIG, ConfigError, PipelineConfig, load_config

if TYPE_CHECKING:
    import dagster as dg


def _overrides_for_features(cfg_path: str | None, features: list[str]) -> dict[str, Any]:
    """--features narrows the feature list; rules naming dropped features are dropped with it."""
    from segmentation_pipeline.resources import SettingsResource

    base = SettingsResource(config_path=cfg_path).load()  # cached: the same load the run makes
    keep = set(features)
    overrides: dict[str, Any] = {
        "features": features,
        "cleaning.ranges": {k: v.model_dump() for k, v in base.cleaning.ranges.items() if k in keep},
        "transform.log1p": (
            base.transform.log1p if base.transform.log1p_auto else [c for c in base.transform.log1p_columns if c in keep]
        ),
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


def cli_instance(config_path: str | None = None) -> dg.DagsterInstance:
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
    result = run_training(cli_instance(config_path), config_path, overrides_json, run_config=QUIET_LOGS, tags={"trigger": "cli"})
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
    features = _metadata(result, "customer_features")
    metrics = trained["metrics"]
    return {
        "k": trained["k"],
        "k_reason": selection["reason"],
        "structure": selection.get("structure"),
        "k_evidence": selection.get("k_evidence"),
        "algorithm": trained.get("algorithm", cfg.model.algorithm),
        "silhouette": metrics.get("silhouette"),
        "davies_bouldin": metrics.get("davies_bouldin"),
        "calinski_harabasz": metrics.get("calinski_harabasz"),
        "log1p": features.get("log1p"),
        "log1p_mode": features.get("log1p_mode"),
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
        "explanations": trained.get("explanations"),
        "orders": _orders_summary(result),
        "seconds": round(seconds, 2),
    }


def _orders_summary(result: Any) -> dict[str, Any] | None:
    """With ``source.kind: transactions``: the order lines read and those left out, by reason."""
    if not result.asset_materializations_for_node("order_features"):
        return None
    meta = _metadata(result, "order_features")
    keys = ("orders_table", "as_of", "n_order_lines", "n_excluded_lines", "excluded_lines", "n_non_positive_monetary")
    return {key: meta.get(key) for key in keys}


def _print_summary(summary: dict[str, Any]) -> None:
    import pandas as pd

    print(f"\nSegmented {summary['n_segmented']:,} of {summary['n_input']:,} customers "
          f"({summary['n_rejected']:,} rejected, {summary['n_outliers_segmented']:,} outliers flagged) "
          f"in {summary['seconds']} s")
    orders = summary.get("orders")
    if orders:
        left_out = {reason: n for reason, n in (orders["excluded_lines"] or {}).items() if n}
        print(f"from {orders['n_order_lines']:,} order lines of {orders['orders_table']!r} as of {orders['as_of']}"
              f" ({orders['n_excluded_lines']:,} left out{': ' + str(left_out) if left_out else ''})")
    print(f"k = {summary['k']}: {summary['k_reason']}")
    if summary.get("log1p") is not None:
        print(f"log1p ({summary.get('log1p_mode')}): {', '.join(summary['log1p']) or 'no column'}")
    if summary.get("structure") not in (None, "clear"):
        print(f"warning: segment structure is {summary['structure']}; other k may be about as good (see k_evidence)")
    print(f"quality: silhouette {summary['silhouette']:.3f}, Davies–Bouldin {summary['davies_bouldin']:.3f}, "
          f"Calinski–Harabasz {summary['calinski_harabasz']:.1f}")
    verdict = "promoted to champion" if summary["promoted"] else f"not promoted (champion stays v{summary['champion_version']})"
    print(f"model: {summary['model_name']} v{summary['model_version']}, {verdict}")
    for reason in summary["promotion_reasons"]:
        print(f"  - {reason}")
    if summary["segments"]:
        frame = pd.DataFrame(summary["segments"])
        print("\n" + frame.to_string(index=False, float_format=lambda v: f"{v:,.1f}"))
    for row in summary.get("explanations") or []:
        print(f"  segment {row['segment_id']} ({row['share_customers_pct']:.1f}% of customers): {row['explanation']}")
    print(f"\nwritten to {summary['database']}: {', '.join(str(t) for t in summary['tables'])}")
    print(f"MLflow run {summary['mlflow_run_id']} at {summary['mlflow_tracking_uri']}")
    print(f"Dagster run {summary['dagster_run_id']}")


def parse_features(text: str) -> list[str]:
    """``--features age,annual_income``: a non-empty list of distinct column names, or a ConfigError."""
    from segmentation_pipeline.config import validate_identifier

    names = [name.strip() for name in text.split(",")]
    if not any(names) or "" in names:
        raise ConfigError(f"--features {text!r} has an empty name; expected column names like age,annual_income")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"--features {text!r} names {repeated} more than once")
    for name in names:
        try:
            validate_identifier(name, "feature column")
        except ValueError as exc:
            raise ConfigError(f"--features: {exc}") from None
    return names


def _cmd_run(args: argparse.Namespace) -> int:
    features = parse_features(args.features) if args.features is not None else None
    summary = run_pipeline(args.config, features)
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        _print_summary(summary)
        from segmentation_pipeline.resources import SettingsResource

        cfg = SettingsResource(config_path=args.config).load()  # cached by the run: not read again
        print("\nLook at it: `make ui` (Dagster, http://127.0.0.1:3000) and `make mlflow-ui` "
              f"(MLflow, http://127.0.0.1:5000, store {cfg.mlflow.tracking_uri})")
    return 0


def _run_single_asset(config_path: str | None, asset_name: str, run_config: dict | None = None) -> Any:
    import dagster as dg

    from segmentation_pipeline.definitions import assets_for, build_resources
    from segmentation_pipeline.resources import SettingsResource

    settings = SettingsResource(config_path=config_path)
    cfg = settings.load()
    result = dg.materialize(
        assets_for(cfg),
        selection=dg.AssetSelection.assets(asset_name),
        resources=build_resources(settings, cfg, io_manager=dg.mem_io_manager),
        instance=cli_instance(config_path),
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
    from segmentation_pipeline.core.demo_data import generate_customers, generate_orders
    from segmentation_pipeline.storage.bulk_load import load_frame
    from segmentation_pipeline.storage.connection import create_db_engine, table_columns

    cfg = load_config(args.config)
    engine = create_db_engine(cfg.database.sqlalchemy_url())
    table = _orders_table(cfg) if args.transactions else cfg.source.table
    if args.if_missing:
        try:
            table_columns(engine, table)
            print(f"{table} already exists in {cfg.database.safe_url()}; keeping it")
            return 0
        except Exception:  # noqa: BLE001 - missing table: generate it
            pass
    replaced = _row_count(engine, table)
    before = "(new table)" if replaced is None else f"(replaced the previous {replaced:,} rows)"
    if args.transactions:
        lines, planted = generate_orders(args.customers, seed=args.seed)
        n = load_frame(engine, table, lines, if_exists="replace", primary_key=None)
        print(f"wrote {n:,} demo order lines of {len(planted):,} customers to {cfg.database.safe_url()} "
              f"table {table} {before}")
        if cfg.transactions is None:
            print("segment them with a transactions config, e.g. --config configs/transactions.yaml")
        return 0
    frame, _ = generate_customers(args.rows, seed=args.seed, vip_share=args.vip_share)
    n = load_frame(engine, table, frame, if_exists="replace", primary_key=None)
    print(f"wrote {n:,} demo customers to {cfg.database.safe_url()} table {table} {before}")
    return 0


def _orders_table(cfg: PipelineConfig) -> str:
    """The configured orders table (``source.kind: transactions``), else ``orders``."""
    return cfg.transactions.table if cfg.transactions is not None else "orders"


def _row_count(engine: Any, table: str) -> int | None:
    """Rows in ``table``, None when it does not exist: demo-data says what it is about to replace."""
    import sqlalchemy as sa

    from segmentation_pipeline.storage.connection import quote_identifier, table_exists

    if not table_exists(engine, table):
        return None
    with engine.connect() as conn:
        return int(conn.execute(sa.text(f"SELECT COUNT(*) FROM {quote_identifier(engine, table, 'table')}")).scalar_one())


def _cmd_segments(args: argparse.Namespace) -> int:
    from segmentation_pipeline.storage.connection import create_db_engine
    from segmentation_pipeline.storage.export import segment_summary

    cfg = load_config(args.config)
    summary = segment_summary(create_db_engine(cfg.database.sqlalchemy_url()), cfg.output.segments_table,
                              cfg.naming.tiers)
    if args.json:
        print(summary.to_json(orient="records", force_ascii=False))
        return 0
    total = int(summary["customers"].sum())
    models = ", ".join(f"{n} v{v}" for n, v in summary[["model_name", "model_version"]].drop_duplicates().to_numpy())
    print(f"{len(summary)} segments, {total:,} customers in {cfg.output.segments_table} (model {models})\n")
    shown = summary.drop(columns=["model_name", "model_version"])
    print(shown.to_string(index=False, float_format=lambda v: f"{v:,.1f}"))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from segmentation_pipeline.storage.connection import create_db_engine
    from segmentation_pipeline.storage.export import export_segments

    cfg = load_config(args.config)
    fmt = args.format or ("parquet" if args.output.lower().endswith(".parquet") else "csv")
    n = export_segments(create_db_engine(cfg.database.sqlalchemy_url()), cfg.output.segments_table, args.output,
                        fmt=fmt, segments=args.segment or (), tiers=cfg.naming.tiers)
    which = f" of segments {', '.join(map(str, args.segment))}" if args.segment else ""
    print(f"wrote {n:,} customers{which} to {args.output} ({fmt}, UTF-8)")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    import webbrowser

    from segmentation_pipeline.storage import mlflow_registry as registry

    cfg = load_config(args.config)
    run_id = args.run or registry.version_run(cfg.mlflow.tracking_uri, cfg.model.name, cfg.model.alias)
    path = registry.fetch_report(cfg.mlflow.tracking_uri, cfg.data_path, run_id)
    print(path)
    if args.open and not webbrowser.open(path.as_uri()):
        print("no browser found here: open the file above in one", file=sys.stderr)
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("segmentation-pipeline")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def _cmd_load_csv(args: argparse.Namespace) -> int:
    from segmentation_pipeline.storage.bulk_load import load_frame
    from segmentation_pipeline.storage.connection import create_db_engine, table_exists
    from segmentation_pipeline.storage.csv_loader import read_csv_file, whole_number_ids
    from segmentation_pipeline.storage.segment_store import pipeline_tables

    cfg = load_config(args.config)
    rename: dict[str, str] = {}
    for item in args.rename or []:
        if "=" not in item:
            raise ConfigError(f"--rename expects 'Source Name=target', got {item!r}")
        source, target = item.split("=", 1)
        rename[source.strip()] = target.strip()
    # transactions: the source is the orders table; the features table is the pipeline's own
    table = args.table or (cfg.transactions.table if cfg.transactions is not None else cfg.source.table)
    written = pipeline_tables(cfg.output)
    if cfg.transactions is not None:
        written = [*written, cfg.transactions.features_table]
    if table in written:
        raise ConfigError(
            f"load-csv refuses table {table!r}: the pipeline writes it (outputs, history, failures and their "
            "staging/old twins); load customers into the source table or another table"
        )
    frame = read_csv_file(args.path, rename=rename)
    if cfg.transactions is not None and table == cfg.transactions.table:
        frame = whole_number_ids(frame, [cfg.transactions.customer_id, cfg.transactions.order_id])
    engine = create_db_engine(cfg.database.sqlalchemy_url())
    if table_exists(engine, table) and not args.replace:
        raise ConfigError(
            f"table {table!r} already exists ({cfg.database.safe_url()}); add --replace to replace its rows"
        )
    n = load_frame(engine, table, frame, if_exists="replace", primary_key=None)
    print(f"loaded {n:,} rows with columns {list(frame.columns)} into {table} ({cfg.database.safe_url()})")
    return 0


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions as written (plain text, line breaks kept) and each option's default shown.

    An option whose default is None says in its own help what happens without it.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segmentation", description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument("--config", help="YAML config (default: $SEGMENTATION_CONFIG or configs/default.yaml)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--verbose", action="store_true", help="show stack traces here, not only in the log file")
    parser.add_argument("--log-file", help="where logs and stack traces go (default: $SEGMENTATION_LOG_FILE or "
                        "segmentation-cli.log in the temp folder)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, formatter_class=_HelpFormatter)

    demo = command("demo-data", "replace the configured source table with synthetic customers (or orders)")
    demo.add_argument("--rows", type=int, default=5000, help="number of customers to generate")
    demo.add_argument("--seed", type=int, default=0, help="random seed (same seed, same customers)")
    demo.add_argument("--vip-share", type=float, default=0.0, help="share of planted high-value customers (0-1)")
    demo.add_argument("--if-missing", action="store_true", help="do nothing when the table exists")
    demo.add_argument("--transactions", action="store_true",
                      help="write a planted orders table instead (the config's orders table, else 'orders')")
    demo.add_argument("--customers", type=int, default=2000, help="customers (--transactions)")
    demo.set_defaults(func=_cmd_demo_data)

    csv = command("load-csv", "load a customer (or orders) CSV (comma/tab, CRLF, BOM) into a table")
    csv.add_argument("path", help="the CSV file (comma or tab separated, UTF-8, a header row)")
    csv.add_argument("--table", help="target table (default: the config's source table, or its orders table)")
    csv.add_argument("--rename", action="append", metavar="'Source Name=target'",
                     help="rename a column on the way in; repeat for several")
    csv.add_argument("--replace", action="store_true", help="replace the rows of an existing table")
    csv.set_defaults(func=_cmd_load_csv)

    run = command("run", "run the whole pipeline in-process and print a summary")
    run.add_argument("--features", help="comma-separated feature columns (default: the config's features)")
    run.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    run.set_defaults(func=_cmd_run)

    score = command("score", "assign segments with the champion model, no refit")
    score.add_argument("--after-id", help="only customers with id greater than this (default: all)")
    score.set_defaults(func=_cmd_score)

    drift = command("drift", "Evidently drift report vs the champion's reference")
    drift.set_defaults(func=_cmd_drift)

    segments = command("segments", "print the published segments: size, share, outliers, model")
    segments.add_argument("--json", action="store_true", help="print the table as JSON records")
    segments.set_defaults(func=_cmd_segments)

    export = command("export", "write the published segments to a CSV or Parquet file (UTF-8, streamed)")
    export.add_argument("--output", required=True, metavar="FILE", help="file to write (replaced when it exists)")
    export.add_argument("--format", choices=["csv", "parquet"],
                        help="file format (default: parquet for a .parquet name, else csv)")
    export.add_argument("--segment", type=int, action="append", metavar="ID",
                        help="only this segment id; repeat for several (default: every segment)")
    export.set_defaults(func=_cmd_export)

    report = command("report", "print the path of a training run's HTML segment report")
    report.add_argument("--run", metavar="ID", help="MLflow run id (default: the run of the current champion)")
    report.add_argument("--open", action="store_true", help="also open it in a browser, where one exists")
    report.set_defaults(func=_cmd_report)

    for p in (demo, csv, run, score, drift, segments, export, report):
        p.add_argument("--config", help=argparse.SUPPRESS, default=argparse.SUPPRESS)
        p.add_argument("--verbose", action="store_true", help=argparse.SUPPRESS, default=argparse.SUPPRESS)
        p.add_argument("--log-file", help=argparse.SUPPRESS, default=argparse.SUPPRESS)
    return parser


_DAGSTER_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4} - dagster - (\w+) - ")


class QuietStderr(io.TextIOBase):
    """Everything goes to the log file; the terminal gets progress and warnings, not the stack
    traces Dagster logs with each failure (the one-line error follows them anyway)."""

    def __init__(self, terminal: TextIO, log: TextIO) -> None:
        self.terminal, self.log = terminal, log
        self.show = True
        self.pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.log.write(text)
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            match = _DAGSTER_LINE.match(line)
            if match:
                self.show = match.group(1) not in {"ERROR", "CRITICAL"}
            if self.show:
                self.terminal.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        self.terminal.flush()


def log_file_path(explicit: str | None) -> Path:
    """Where full logs and stack traces go: ``--log-file``, ``$SEGMENTATION_LOG_FILE``, or the temp folder."""
    chosen = explicit or os.environ.get("SEGMENTATION_LOG_FILE")
    return Path(chosen) if chosen else Path(tempfile.gettempdir()) / "segmentation-cli.log"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not hasattr(args, "config"):
        args.config = None
    verbose = bool(getattr(args, "verbose", False))
    log_path = log_file_path(getattr(args, "log_file", None))
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as exc:
        print(f"error: cannot write the log file {log_path}: {exc}; pass --log-file PATH", file=sys.stderr)
        return 1
    terminal = sys.stderr
    try:
        with log:
            log.write(f"\n=== segmentation {' '.join(sys.argv[1:] if argv is None else argv)}\n")
            try:
                with contextlib.redirect_stderr(terminal if verbose else QuietStderr(terminal, log)):
                    return args.func(args)
            except Exception as exc:  # noqa: BLE001 - the CLI's job is a readable error, not a traceback
                traceback.print_exception(exc, file=log)
                print(f"error: {_describe_error(_root_cause(exc))}", file=terminal)
                if not verbose:
                    print(f"(stack trace in {log_path}; --verbose shows it here)", file=terminal)
                if os.environ.get("SEGMENTATION_DEBUG"):
                    raise
                return 1
    finally:
        sys.stderr = terminal


def console_main() -> int:
    """The ``segmentation`` command: :func:`main`, then a process exit that skips the interpreter's
    last garbage collections. With Dagster, MLflow and scikit-learn loaded those walk millions of
    objects for about two seconds (measured on a 200-row run), freeing memory the OS takes back
    anyway; atexit handlers, log flushing and module teardown still run as usual."""
    code = main()
    gc.freeze()  # objects frozen here are left to the OS, not collected one by one
    return code


if __name__ == "__main__":
    sys.exit(console_main())
