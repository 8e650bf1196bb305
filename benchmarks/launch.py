"""Launch benchmark (issue 19): what people wait for when a run starts, as ratios from one run.

    python -m benchmarks.launch                       # 200 rows, 5k and 1M -> appended to RESULTS.md
    python -m benchmarks.launch --sizes 200,5000      # quicker

Every figure is a fresh process's wall time, measured in the same run as what it is compared with:

(a) the training job as the Dagster UI, a schedule or a sensor launches it: ``dagster job execute
    -m segmentation_pipeline.definitions -j segmentation_job`` (the code location's own job, its own
    executor and IO manager, the shared instance) against ``segmentation run`` (the CLI) on the
    same table and MLflow store. Target: <= 1.5x.
(b) ``segmentation run`` on a 200-row table against the import floor, ``python -c "import dagster,
    mlflow, sklearn.cluster"``. Target: <= 2x.

A warm-up CLI run registers the champion first, so every timed run is a retrain with a champion in
place (the run users meet every week); then the job and the CLI alternate, ``--repeats`` times
each, and medians are compared. 200 rows and 5k run on the embedded default (SQLite); 1M runs on
the local MariaDB (database ``seglaunch``, dropped and recreated), as production would.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MYSQL_DB = "seglaunch"
MYSQL_URL = f"mysql+pymysql://root@127.0.0.1:3306/{MYSQL_DB}"
IMPORT_FLOOR = "import dagster, mlflow, sklearn.cluster"


def timed(cmd: list[str], env: dict[str, str], *, cpu: list[float] | None = None) -> float:
    """Wall seconds of ``cmd``; with ``cpu``, its user + system CPU seconds are appended there."""
    before = os.times()
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    after = os.times()
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    if cpu is not None:
        cpu.append((after.children_user - before.children_user) + (after.children_system - before.children_system))
    return elapsed


STEP_SCRIPT = """
import json, dagster as dg
instance = dg.DagsterInstance.get()
run = instance.get_runs(limit=1)[0]
stats = instance.get_run_stats(run.run_id)
steps = {s.step_key: s.end_time - s.start_time for s in instance.get_run_step_stats(run.run_id)}
print(json.dumps({"run": stats.end_time - stats.start_time, "steps": steps}))
"""


def last_run_steps(env: dict[str, str]) -> dict[str, Any]:
    """The newest run's wall time inside Dagster and its step durations (from the run's instance)."""
    done = subprocess.run([sys.executable, "-c", STEP_SCRIPT], env=env, cwd=ROOT, capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout)


def prepare(workdir: Path, rows: int) -> tuple[Path, dict[str, str]]:
    """A config, a Dagster home and a loaded table of ``rows`` demo customers."""
    raw = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    if rows >= 100_000:
        subprocess.run(["mariadb", "-h127.0.0.1", "-uroot", "-e",
                        f"DROP DATABASE IF EXISTS {MYSQL_DB}; CREATE DATABASE {MYSQL_DB}"], check=True)
        raw["database"]["url"] = MYSQL_URL
    else:
        raw["database"]["url"] = f"sqlite:///{workdir / 'customers.db'}"
    raw["mlflow"]["tracking_uri"] = f"sqlite:///{workdir / 'mlflow.db'}"
    raw["mlflow"]["artifact_location"] = str(workdir / "mlartifacts")
    raw["data_dir"] = str(workdir / "data")
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    home = workdir / "dagster_home"
    home.mkdir()
    shutil.copyfile(ROOT / "configs" / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "SEGMENTATION_CONFIG": str(config), "DAGSTER_HOME": str(home)}
    timed([str(BIN / "segmentation"), "--config", str(config), "demo-data", "--rows", str(rows)], env)
    return config, env


def bench(rows: int, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="seglaunch-") as tmp:
        config, env = prepare(Path(tmp), rows)
        cli = [str(BIN / "segmentation"), "--config", str(config), "run"]
        job = [str(BIN / "dagster"), "job", "execute", "-m", "segmentation_pipeline.definitions",
               "-j", "segmentation_job"]
        floor = [sys.executable, "-c", IMPORT_FLOOR]
        warmup = timed(cli, env)  # registers the champion: every timed run below is a retrain
        times: dict[str, list[float]] = {"cli": [], "job": [], "floor": []}
        cpu: dict[str, list[float]] = {"cli": [], "floor": []}
        inside: list[dict[str, Any]] = []
        for _ in range(repeats):
            times["floor"].append(timed(floor, env, cpu=cpu["floor"]))
            times["job"].append(timed(job, env))
            times["cli"].append(timed(cli, env, cpu=cpu["cli"]))
            inside.append(last_run_steps(env))
        medians = {name: statistics.median(values) for name, values in times.items()}
        cpu_medians = {name: statistics.median(values) for name, values in cpu.items()}
        # the CLI run whose wall time is the median: where its time went, step by step
        middle = inside[sorted(range(repeats), key=lambda i: times["cli"][i])[repeats // 2]]
        return {"rows": rows, "warmup_s": warmup, "times": times, "median": medians, "cpu": cpu,
                "cpu_median": cpu_medians, "cli_steps": middle,
                "job_vs_cli": medians["job"] / medians["cli"], "cli_vs_floor": medians["cli"] / medians["floor"],
                "cli_vs_floor_cpu": cpu_medians["cli"] / cpu_medians["floor"]}


def render(results: list[dict[str, Any]], command: str) -> str:
    lines = [
        "## Launch: the UI's way against the CLI, and a small table against the import floor (issue 19)",
        "",
        f"Command: `{command}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; medians of alternating "
        "fresh processes, each a retrain with a champion in place)",
        "",
        "| rows | import floor | `segmentation run` | `dagster job execute` (UI's executor) | job ÷ CLI (≤ 1.5×) "
        "| CLI ÷ import floor (≤ 2× at 200 rows) | same, CPU seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        m, c = r["median"], r["cpu_median"]
        lines.append(f"| {r['rows']:,} | {m['floor']:.2f} s | {m['cli']:.2f} s | {m['job']:.2f} s "
                     f"| {r['job_vs_cli']:.2f}× | {r['cli_vs_floor']:.2f}× | {r['cli_vs_floor_cpu']:.2f}× "
                     f"({c['cli']:.1f} / {c['floor']:.1f} s) |")
    lines += ["", "Where the median `segmentation run` spent its time (Dagster run and step durations, the rest is "
              "process start, imports, config and instance):", "",
              "| rows | process | Dagster run | " + " | ".join(STEP_COLUMNS) + " | other steps |",
              "|---|---|---|" + "---|" * (len(STEP_COLUMNS) + 1)]
    for r in results:
        steps = dict(r["cli_steps"]["steps"])
        wall = sorted(r["times"]["cli"])[len(r["times"]["cli"]) // 2]
        shown = [steps.pop(name, 0.0) for name in STEP_COLUMNS]
        lines.append(f"| {r['rows']:,} | {wall:.2f} s | {r['cli_steps']['run']:.2f} s | "
                     + " | ".join(f"{v:.2f} s" for v in shown) + f" | {sum(steps.values()):.2f} s |")
    return "\n".join(lines) + "\n"


STEP_COLUMNS = ["raw_customers", "clean_and_reject", "customer_features", "k_selection", "segmentation_model",
                "model_promotion", "customer_segments"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.launch", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="200,5000,1000000", help="comma-separated row counts")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each kind per size")
    parser.add_argument("--out", default=None, help="append the table to this file (default: print only)")
    args = parser.parse_args(argv)
    results = []
    for rows in (int(s) for s in args.sizes.split(",")):
        result = bench(rows, args.repeats)
        print(f"{rows:>9,} rows: {result['median']}", flush=True)
        results.append(result)
    text = render(results, "python -m benchmarks.launch " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(text)
    if args.out:
        with open(args.out, "a") as handle:
            handle.write("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
