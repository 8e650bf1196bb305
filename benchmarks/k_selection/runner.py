"""Rules for choosing k, on planted tables (issue 15).

    python -m benchmarks.k_selection                 # 15 shapes x 5 seeds, 2,000 rows -> benchmarks/K_SELECTION.md
    python -m benchmarks.k_selection --quick         # 3 shapes x 1 seed, 600 rows: a smoke run, seconds
    python -m benchmarks.k_selection --rules-only    # re-read the saved evidence, re-apply the rules

Per case: the shape's raw frame -> auto log1p (``core.skew``) -> StandardScaler -> ``k_evidence`` for
k = 2..10 (k=1 added for the gap) -> every rule's k. ARI: KMeans (n_init=10) at the rule's k, vs the
planted labels (gross outliers left out). Time per rule: the parts of the evidence that rule reads.
A cost case (1M rows, not with --quick) times the product's sweep alone against the full evidence.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from benchmarks.k_selection.shapes import SHAPES, balanced
from segmentation_pipeline.core.k_evidence import RULES, EvidenceSettings, k_evidence, product_rule
from segmentation_pipeline.core.k_selection import sweep_k
from segmentation_pipeline.core.skew import auto_log1p_columns

ROOT = Path(__file__).resolve().parents[2]
K_VALUES = list(range(2, 11))
QUICK_SHAPES = ["balanced_k3", "vip_pairs_5pct", "none_uniform_box"]
# which timed parts of the evidence each rule reads
RULE_PARTS = {
    "elbow": ["sweep"],
    "silhouette": ["sweep"],
    "today": ["sweep"],
    "ch": ["sweep"],
    "gap": ["eval_fits", "gap"],
    "stability": ["eval_fits", "stability"],
    "bic": ["bic"],
    "vote": ["sweep", "eval_fits", "gap", "stability", "bic"],
    "product": ["sweep", "eval_fits", "gap", "stability", "bic"],
}
ALL_RULES = [*RULES, "product"]


def prepare(frame: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """As the product would: auto log1p of skewed non-negative columns, then StandardScaler."""
    logged = auto_log1p_columns(frame)
    frame = frame.copy()
    for column in logged:
        frame[column] = np.log1p(frame[column])
    return StandardScaler().fit_transform(frame.to_numpy(dtype=np.float64)), logged


def ari_per_k(X: np.ndarray, planted: np.ndarray, ks: list[int]) -> dict[str, float]:
    keep = planted >= 0
    scores = {}
    for k in ks:
        labels = KMeans(n_clusters=k, n_init=10, random_state=0).fit_predict(X)
        scores[str(k)] = float(adjusted_rand_score(planted[keep], labels[keep]))  # str: as in the saved JSON
    return scores


def run_case(shape: str, seed: int, n: int, settings: EvidenceSettings) -> dict:
    frame, planted, k_true = SHAPES[shape](n, seed)
    X, logged = prepare(frame)
    evidence = k_evidence(X, K_VALUES, settings)
    return {
        "shape": shape,
        "seed": seed,
        "n": len(X),
        "k_true": k_true,
        "logged": logged,
        "seconds": evidence.attrs["seconds"],
        "evidence": evidence.to_dict(orient="list"),
        "ari": ari_per_k(X, planted, [1, *K_VALUES]),
    }


def apply_rules(case: dict) -> dict:
    evidence = pd.DataFrame(case["evidence"])
    out = {}
    for name in ALL_RULES:
        if name == "product":
            choice = product_rule(evidence)
            k, reason, structure = choice.k, choice.reason, choice.structure
        else:
            (k, reason), structure = RULES[name](evidence), None
        ari = case["ari"][str(k)] if case["k_true"] > 1 else None
        seconds = sum(case["seconds"][part] for part in RULE_PARTS[name])
        out[name] = {"k": int(k), "reason": reason, "structure": structure, "ari": ari, "seconds": seconds}
    return out


def cost_case(rows: int, settings: EvidenceSettings) -> dict:
    """Today's sweep alone vs the full evidence, on one planted table of ``rows`` rows."""
    frame, _, _ = balanced(5)(rows, 0)
    X = StandardScaler().fit_transform(frame.to_numpy())
    started = time.perf_counter()
    sweep_k(X, K_VALUES, n_init=settings.n_init, random_state=settings.random_state,
            silhouette_sample=settings.silhouette_rows, max_rows=settings.max_rows)
    today = time.perf_counter() - started
    started = time.perf_counter()
    evidence = k_evidence(X, K_VALUES, settings)
    total = time.perf_counter() - started
    product = sum(evidence.attrs["seconds"][p] for p in RULE_PARTS["product"])
    return {"rows": rows, "today_sweep_s": today, "evidence_all_s": total, "product_parts_s": product,
            "parts": evidence.attrs["seconds"]}


def summarise(cases: list[dict]) -> pd.DataFrame:
    rows = []
    for case in cases:
        for name, r in case["rules"].items():
            rows.append({"shape": case["shape"], "seed": case["seed"], "k_true": case["k_true"], "rule": name,
                         "k": r["k"], "hit": r["k"] == case["k_true"], "ari": r["ari"],
                         "seconds": r["seconds"], "structure": r["structure"]})
    return pd.DataFrame(rows)


def recoverable(cases: list[dict]) -> dict[str, float]:
    """Per structured shape: mean ARI of KMeans at the planted k. Below 0.9, KMeans itself cannot
    recover the plants, so no rule for k can be judged there: such shapes are shown, not scored."""
    table = pd.DataFrame([{"shape": c["shape"], "ari": c["ari"][str(c["k_true"])]} for c in cases if c["k_true"] > 1])
    return table.groupby("shape")["ari"].mean().to_dict()


def targets(table: pd.DataFrame, ceiling: dict[str, float]) -> dict:
    structured = table[table["k_true"] > 1]
    null = table[table["k_true"] == 1]
    scored = structured[structured["shape"].map(ceiling) >= 0.9]
    product = scored[scored["rule"] == "product"]
    per_shape = structured.groupby(["shape", "rule"]).agg(hits=("hit", "sum"), ari=("ari", "mean"))
    worse = []
    for shape in structured["shape"].unique():
        p, t = per_shape.loc[(shape, "product")], per_shape.loc[(shape, "today")]
        if p["hits"] < t["hits"] or p["ari"] < t["ari"] - 0.005:
            worse.append(shape)
    null_product = null[null["rule"] == "product"]
    return {
        "exact_share": float(product["hit"].mean()) if len(product) else float("nan"),
        "mean_ari": float(product["ari"].mean()) if len(product) else float("nan"),
        "worse_than_today": worse,
        "unscored": sorted(s for s, v in ceiling.items() if v < 0.9),
        "none_share": float((null_product["structure"] == "none").mean()) if len(null_product) else float("nan"),
        "structured_not_none": float((table[(table["k_true"] > 1) & (table["rule"] == "product")]["structure"] != "none").mean())
        if len(product) else float("nan"),
    }


def markdown(cases: list[dict], table: pd.DataFrame, goal: dict, ceiling: dict[str, float], cost: dict | None, command: str) -> str:
    lines = [
        "# Choosing k: rules on planted tables (issue 15)",
        "",
        f"Command: `{command.strip()}`" + (
            " (the rules re-applied to the evidence saved by `python -m benchmarks.k_selection`, "
            "benchmarks/k_selection_results.json, including its cost case)" if "--rules-only" in command else ""
        ),
        "",
        f"{table['shape'].nunique()} shapes x {table['seed'].nunique()} seeds, {cases[0]['n']:,} rows per case, "
        f"candidate k = {K_VALUES[0]}..{K_VALUES[-1]} (k=1 for the gap, BIC and the product rule's 'none').",
        "",
        "## Targets (product rule)",
        "",
        "| target | wanted | got | met |",
        "|---|---|---|---|",
        f"| exact planted k, scored structured cases | >= 90% | {goal['exact_share']:.0%} | {'yes' if goal['exact_share'] >= 0.9 else 'no'} |",
        f"| mean ARI, scored structured cases | >= 0.95 | {goal['mean_ari']:.3f} | {'yes' if goal['mean_ari'] >= 0.95 else 'no'} |",
        f"| shapes where worse than today's rule | none | {', '.join(goal['worse_than_today']) or 'none'} | {'yes' if not goal['worse_than_today'] else 'no'} |",
        f"| says 'none' on no-structure tables | 100% | {goal['none_share']:.0%} | {'yes' if goal['none_share'] == 1 else 'no'} |",
        f"| structured tables not called 'none' | 100% | {goal['structured_not_none']:.0%} | {'yes' if goal['structured_not_none'] == 1 else 'no'} |",
        "",
        "Scored: structured shapes where KMeans at the planted k reaches mean ARI >= 0.9 (else no rule for k can "
        f"be judged; shown below, not scored): unscored = {', '.join(goal['unscored']) or 'none'}. "
        "'Worse than today' is checked on every structured shape: fewer exact hits, or mean ARI lower by > 0.005.",
        "",
        "## The product rule (`core.k_evidence.product_rule`) and why",
        "",
        "1. **Admissible k** (k >= 2): every segment >= `min_segment_share` (1%) of the rows, and resampling "
        "stability >= 0.9 (mean ARI between the evaluation fit and 5 refits on 80% subsamples, on the common "
        "points; Ben-Hur, Elisseeff & Guyon 2002; Lange et al. 2004). The share test is what keeps gross "
        "outliers from becoming a segment (outliers_1pct: silhouette, gap, stability and BIC all add one); "
        "the stability test removes over-splits that an index happens to like (elongated, unequal spreads).",
        "2. **Majority of three indices** over the admissible k, in the manner of NbClust (Charrad et al. 2014): "
        "best silhouette (Rousseeuw 1987), best Calinski-Harabasz (1974), lowest full-covariance "
        "Gaussian-mixture BIC (Schwarz 1978; Fraley & Raftery 2002); a three-way split goes to the smallest k. "
        "Each index fails on different shapes (silhouette merges the small and VIP groups, CH splits wide or "
        "elongated groups, BIC spends components on outliers); restricted to admissible k their errors rarely coincide.",
        "3. **Structure**: `none` when no k >= 2 beats one group by two gap standard errors "
        "(Gap(k) - 2 s_k <= Gap(1) for all k; Tibshirani, Walther & Hastie 2001, PCA-aligned uniform reference, "
        "B = 5) or the best silhouette is <= 0.25 (Kaufman & Rousseeuw 1990: no substantial structure); "
        "`clear` when the silhouette at k is >= 0.5 (their 'reasonable') and stability >= 0.9; else `weak`. "
        "k is still returned for `none` (the product needs segments) and the grade says they are arbitrary.",
        "4. **Not clear: the knee decides.** When the structure at the voted k is weak or none, the three indices "
        "are reading overlapping groups (irrelevant noise columns flatten silhouette and CH alike, and refits "
        "disagree, so the admissible set is nearly empty); the elbow-then-silhouette reading (`today` below) "
        "decides instead, unless its k has a segment below `min_segment_share`. This is what makes the rule "
        "never worse than today's on the noise-column shapes (before it: noise_columns 4/5, ARI 0.943; "
        "noise_columns_heavy 0/5 against today's 1/5); on clear tables the vote is unchanged.",
        "",
        "Not chosen: the gap's own 1-SE rule (with thousands of rows its SE is ~0.01, so it keeps adding k on "
        "Gaussian groups, or stops at k=1 when the first split gains little: 9 groups, VIP pairs) -- it is used "
        "only for the k=1 question; stability alone (k=2 is stable on almost anything, over-splits of a wide "
        "group are stable too); the 7-index vote (the weak indices outvote the good ones on small groups).",
        "",
        "Cost: everything but the sweep runs on one seeded sample of <= 10,000 rows (`EvidenceSettings.eval_rows`), "
        "so the extra work is constant in n; see 'Cost at scale'.",
        "",
        "Real customer data: none on this machine (searched the filesystem for Mall Customers / customer / "
        "retail / RFM / wholesale CSVs, including installed packages); nothing was downloaded. The project's "
        "own demo customers with a 5% VIP group (demo_vip_5pct) are the closest stand-in.",
        "",
        "## Overall (scored structured shapes)",
        "",
        "| rule | exact k | mean ARI | mean s per case |",
        "|---|---|---|---|",
    ]
    structured = table[(table["k_true"] > 1) & (table["shape"].map(ceiling) >= 0.9)]
    for rule in ALL_RULES:
        r = structured[structured["rule"] == rule]
        lines.append(f"| {rule} | {r['hit'].mean():.0%} | {r['ari'].mean():.3f} | {r['seconds'].mean():.2f} |")
    lines += ["", "## Per shape", "", "Cell: exact hits / seeds, k chosen per seed, mean ARI (structured shapes).", ""]
    for shape, block in table.groupby("shape", sort=False):
        k_true = int(block["k_true"].iloc[0])
        note = f"; KMeans at planted k: mean ARI {ceiling[shape]:.3f}" if k_true > 1 else ""
        lines += [f"### {shape} (planted k={k_true}{note})", "", "| rule | hits | k per seed | mean ARI | s |", "|---|---|---|---|---|"]
        for rule in ALL_RULES:
            r = block[block["rule"] == rule].sort_values("seed")
            ks = " ".join(str(k) for k in r["k"])
            ari = "—" if k_true == 1 else f"{r['ari'].mean():.3f}"
            extra = ""
            if rule == "product":
                extra = " (" + " ".join(r["structure"]) + ")"
            lines.append(f"| {rule} | {int(r['hit'].sum())}/{len(r)} | {ks}{extra} | {ari} | {r['seconds'].mean():.2f} |")
        lines.append("")
    if cost:
        p = cost["parts"]
        lines += [
            "## Cost at scale",
            "",
            f"{cost['rows']:,} rows x 4 columns, planted k=5. Today's sweep (k=2..10, n_init 3, 200k-row fit sample, "
            f"10k silhouette sample): {cost['today_sweep_s']:.1f} s. Product rule's evidence "
            f"(sweep + evaluation-sample fits + gap + stability + BIC): {cost['product_parts_s']:.1f} s "
            f"= {cost['product_parts_s'] / cost['today_sweep_s']:.2f}x today's sweep (the evidence re-runs the sweep itself; all evidence: "
            f"{cost['evidence_all_s']:.1f} s). Parts: " + ", ".join(f"{k} {v:.1f} s" for k, v in p.items()) + ". "
            "Times are wall-clock on a shared 2-core machine, one thread; the ratio, not the seconds, is the figure.",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.k_selection", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None, help="markdown report (default benchmarks/K_SELECTION.md; none with --quick)")
    parser.add_argument("--json", default=None, help="raw evidence (default benchmarks/k_selection_results.json)")
    parser.add_argument("--rules-only", action="store_true", help="re-apply the rules to the saved evidence")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--cost-rows", type=int, default=1_000_000, help="0: skip the cost case")
    parser.add_argument("--shapes", default=None, help="comma-separated subset")
    parser.add_argument("--eval-rows", type=int, default=None,
                        help="the evidence sample size (default: EvidenceSettings' own); with --rows above it, "
                             "compares what the sample size changes")
    args = parser.parse_args(argv)
    command = "python -m benchmarks.k_selection " + " ".join(argv if argv is not None else sys.argv[1:])

    settings = EvidenceSettings() if args.eval_rows is None else EvidenceSettings(eval_rows=args.eval_rows)
    if args.quick:
        settings = EvidenceSettings(n_references=5, n_resamples=3, bic=True)
        args.seeds, args.rows, args.cost_rows = 1, 600, 0
    shapes = args.shapes.split(",") if args.shapes else (QUICK_SHAPES if args.quick else list(SHAPES))
    json_path = Path(args.json) if args.json else (None if args.quick else ROOT / "benchmarks" / "k_selection_results.json")
    out = Path(args.out) if args.out else (None if args.quick else ROOT / "benchmarks" / "K_SELECTION.md")

    with threadpool_limits(1):
        if args.rules_only:
            saved = json.loads(json_path.read_text())
            cases, cost = saved["cases"], saved.get("cost")
        else:
            cases = []
            for shape in shapes:
                for seed in range(args.seeds):
                    cases.append(run_case(shape, seed, args.rows, settings))
                    print(f"{shape} seed {seed}: {sum(cases[-1]['seconds'].values()):.1f} s", file=sys.stderr)
            cost = cost_case(args.cost_rows, settings) if args.cost_rows else None
            if json_path is not None:
                json_path.write_text(json.dumps({"cases": cases, "cost": cost}, indent=1, default=float))
        for case in cases:
            case["rules"] = apply_rules(case)
    table = summarise(cases)
    ceiling = recoverable(cases)
    goal = targets(table, ceiling)
    report = markdown(cases, table, goal, ceiling, cost, command)
    if out is not None:
        out.write_text(report + "\n")
    print(report)
    return 0
