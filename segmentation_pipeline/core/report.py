"""One self-contained HTML page per training run: what the segments are and why k was chosen.

Why a file: the people who act on segments rarely open Dagster or MLflow. A single page with no
external resources (styles inline, plots as data URIs) can be mailed, attached to a ticket or
opened from disk, and still shows the same numbers as the run's metadata.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass

import pandas as pd

__all__ = ["ReportInputs", "drift_sentence", "segment_report"]

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222;line-height:1.4}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:right}th{background:#f4f4f4}
td:nth-child(2),td.text{text-align:left}
.segment{border:1px solid #ccc;border-radius:6px;padding:.5rem 1rem;margin:.75rem 0}
.segment h3{margin:.25rem 0}img{max-width:100%}.muted{color:#666}
"""


@dataclass
class ReportInputs:
    """What the page shows; every table is optional except the explanations summary."""

    title: str
    summary: pd.DataFrame  # core.explain: one row per segment
    effects: pd.DataFrame
    categories: pd.DataFrame
    k: int
    k_reason: str
    k_metrics: pd.DataFrame | None = None
    migration: pd.DataFrame | None = None
    profile_png: bytes | None = None
    facts: dict[str, str] | None = None  # model, version, run ids, data size: shown as a list
    drift: str | None = None


def drift_sentence(facts: dict[str, object]) -> str | None:
    """The latest drift check in one line, from its recorded facts (None when there was none)."""
    if not facts or "severity" not in facts:
        return None
    drifted = facts.get("drifted_features") or []
    which = f"drifted: {', '.join(map(str, drifted))}" if drifted else "no feature drifted"
    psi = facts.get("segment_psi")
    shares = f"; segment-share PSI {float(psi):.3f}" if isinstance(psi, (int, float)) else ""
    version = f" against champion v{facts['champion_version']}" if facts.get("champion_version") else ""
    return f"severity {facts['severity']}{version}: {which}{shares}"


def _table(frame: pd.DataFrame, float_format: str = "{:,.3g}") -> str:
    return frame.to_html(index=False, escape=True, border=0, na_rep="",
                         float_format=lambda v: float_format.format(v))


def _segment_card(row: pd.Series, effects: pd.DataFrame, categories: pd.DataFrame) -> str:
    segment = int(row["segment_id"])
    shares = [f"{row['share_customers_pct']:.1f}% of customers ({int(row['customers']):,})"]
    shares += [f"{row[c]:.1f}% of {c[len('share_'):-len('_pct')].replace('_', ' ')}"
               for c in row.index if c.startswith("share_") and c.endswith("_pct") and c != "share_customers_pct"]
    tier = f" · tier {html.escape(str(row['tier']))}" if "tier" in row.index and pd.notna(row["tier"]) else ""
    mine = effects[effects["segment_id"] == segment].drop(columns="segment_id")
    parts = [
        f'<div class="segment" id="segment-{segment}">',
        f"<h3>Segment {segment}: {html.escape(str(row['segment_name']))}</h3>",
        f"<p>{html.escape(', '.join(shares))}{tier}</p>",
        f"<p>{html.escape(str(row['explanation']))}</p>",
        _table(mine),
    ]
    if len(categories):
        cats = categories[categories["segment_id"] == segment].drop(columns="segment_id")
        parts.append('<p class="muted">Categories: share within the segment and the standardized residual '
                     "against the other segments (beyond ±2: more or fewer than chance explains)</p>")
        parts.append(_table(cats))
    parts.append("</div>")
    return "\n".join(parts)


def segment_report(inputs: ReportInputs) -> str:
    """The whole page as one HTML string."""
    body = [f"<h1>{html.escape(inputs.title)}</h1>"]
    if inputs.facts:
        body.append("<ul>" + "".join(f"<li>{html.escape(k)}: {html.escape(str(v))}</li>"
                                     for k, v in inputs.facts.items()) + "</ul>")
    body.append("<h2>Segments</h2>")
    overview = inputs.summary.drop(columns=[c for c in ("explanation",) if c in inputs.summary.columns])
    body.append(_table(overview))
    if inputs.profile_png:
        encoded = base64.b64encode(inputs.profile_png).decode()
        body.append(f'<img alt="segment profiles" src="data:image/png;base64,{encoded}">')
    for _, row in inputs.summary.iterrows():
        body.append(_segment_card(row, inputs.effects, inputs.categories))
    body.append("<h2>Why k = %d</h2>" % inputs.k)
    body.append(f"<p>{html.escape(inputs.k_reason)}</p>")
    if inputs.k_metrics is not None:
        body.append(_table(inputs.k_metrics))
    body.append("<h2>Migration from the previous champion</h2>")
    if inputs.migration is not None:
        body.append('<p class="muted">Rows: previous champion\'s segment; columns: this model\'s.</p>')
        body.append(_table(inputs.migration.reset_index(), float_format="{:,.0f}"))
    else:
        body.append("<p>No previous champion: this is the first model.</p>")
    if inputs.drift:
        body.append(f"<h2>Latest drift check</h2><p>{html.escape(inputs.drift)}</p>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(inputs.title)}</title><style>{_STYLE}</style></head>"
        f"<body>\n{chr(10).join(body)}\n</body></html>\n"
    )
