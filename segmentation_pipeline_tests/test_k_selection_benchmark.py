"""The k-selection benchmark keeps working: its quick run (3 shapes x 1 seed) end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_k_selection_benchmark_runs_every_rule(tmp_path: Path) -> None:
    out = tmp_path / "k.md"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.k_selection", "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = out.read_text()
    assert "Command: `python -m benchmarks.k_selection --quick --out" in report
    for rule in ("elbow", "silhouette", "today", "gap", "stability", "ch", "vote", "bic", "product"):
        assert f"| {rule} |" in report, rule
    for shape in ("balanced_k3", "vip_pairs_5pct", "none_uniform_box"):
        assert f"### {shape} (planted k=" in report, shape
    box = report[report.index("### none_uniform_box"):]
    assert "(none)" in box.split("| product |")[1].split("\n")[0]
    vip = report[report.index("### vip_pairs_5pct"):report.index("### none_uniform_box")]
    assert vip.split("| product |")[1].split("|")[0].strip() == "1/1"
