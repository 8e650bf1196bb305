"""The benchmark harness keeps working: its smallest size runs end to end against the real MariaDB."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.mysql, pytest.mark.e2e]


def test_quick_benchmark_runs_the_real_pipeline_and_reports_targets(mysql_server_url: str, tmp_path: Path) -> None:
    out = tmp_path / "results.md"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]  # non-zero also when ARI vs the plants < 0.9
    report = out.read_text()
    assert "Command: `python -m benchmarks.run --quick --out" in report
    stages = report[report.index("## Stage times"):report.index("## Floors")]
    for stage in ("extraction", "cleaning", "sweep", "write_back", "**whole run**"):
        assert f"| {stage} |" in stages, stage
    ari = float(report.split("| ARI vs planted segments | ")[1].split(" |")[0])
    assert ari >= 0.9
