"""Diagnostic figures as PNG bytes (the caller decides where they go: MLflow, Dagster, disk).

Why ``Figure`` + ``FigureCanvasAgg`` instead of pyplot: no global figure state and no GUI
backend, so plotting is safe in worker threads and never leaks figures between runs.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from segmentation_pipeline.core.naming import population_moments

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["new_figure", "png_bytes", "profile_plot"]

_DPI = 100


def new_figure(**options: Any) -> Figure:
    """A bare matplotlib ``Figure`` (``options`` as its constructor takes them). matplotlib is
    imported here, when a figure is drawn, not when the code location loads (~0.5 s)."""
    from matplotlib.figure import Figure

    return Figure(**options)


def png_bytes(figure: Figure) -> bytes:
    """The figure rendered to PNG at the project's one resolution."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.1f}"


def profile_plot(
    profile: pd.DataFrame,
    features: list[str],
    *,
    population: pd.DataFrame | None = None,
    names: dict[int, str] | None = None,
) -> bytes:
    """Heatmap of z-scored segment means (segments x features), annotated with raw means.

    z against ``population`` mean/std when given (as the names use), otherwise across segments.
    Row labels come from ``names``, else a ``segment_name`` column, else the segment id.
    """
    means = profile[[f"mean_{f}" for f in features]].to_numpy(dtype=np.float64)
    if population is not None:
        centre, spread = population_moments(population, list(features))
    else:
        centre = means.mean(axis=0)
        spread = means.std(axis=0)
    z = np.where(spread > 0, (means - centre) / np.where(spread > 0, spread, 1.0), 0.0)
    ids = profile["segment_id"].to_numpy()
    if names is None and "segment_name" in profile.columns:
        names = dict(zip(ids.tolist(), profile["segment_name"].astype(str), strict=True))
    rows = [
        f"{sid}: {names[int(sid)]}" if names and int(sid) in names else f"segment {sid}"
        for sid in ids
    ]
    if "share_pct" in profile.columns:
        rows = [f"{row} ({share:.1f}%)" for row, share in zip(rows, profile["share_pct"], strict=True)]

    height = max(2.5, 0.5 * len(ids) + 1.5)
    width = max(6.0, 2.0 + 1.4 * len(features) + 0.07 * max(len(r) for r in rows))
    figure = new_figure(figsize=(min(width, 18.0), height), layout="constrained")
    axes = figure.add_subplot()
    # colours saturate at |z| = 3 so one extreme segment does not wash out the rest
    limit = min(3.0, max(1.0, float(np.nanmax(np.abs(z))) if z.size else 1.0))
    image = axes.imshow(z, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    axes.set_xticks(range(len(features)), [f.replace("_", " ") for f in features])
    axes.set_yticks(range(len(rows)), rows)
    for i in range(z.shape[0]):  # one label per heatmap cell, at most segments x features
        for j in range(z.shape[1]):
            axes.text(j, i, _number(means[i, j]), ha="center", va="center", fontsize="small")
    figure.colorbar(image, ax=axes, label="z-score of segment mean")
    axes.set_title("Segment profiles")
    return png_bytes(figure)
