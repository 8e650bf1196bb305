"""Diagnostic figures as PNG bytes (the caller decides where they go: MLflow, Dagster, disk).

Why ``Figure`` + ``FigureCanvasAgg`` instead of pyplot: no global figure state and no GUI
backend, so plotting is safe in worker threads and never leaks figures between runs.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from segmentation_pipeline.core.naming import population_moments

__all__ = ["elbow_plot", "metrics_plot", "profile_plot", "silhouette_plot"]

_DPI = 100
_CHOSEN_COLOR = "tab:red"


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.1f}"


def _metric_panel(axes, metrics: pd.DataFrame, column: str, label: str, chosen_k: int | None) -> None:
    table = metrics.sort_values("k")
    axes.plot(table["k"], table[column], marker="o", color="tab:blue")
    if chosen_k is not None:
        axes.axvline(chosen_k, color=_CHOSEN_COLOR, linestyle="--", label=f"chosen k={chosen_k}")
        axes.legend(loc="best", fontsize="small")
    axes.set_xlabel("k")
    axes.set_ylabel(label)
    axes.set_xticks(table["k"].to_numpy())
    axes.grid(alpha=0.3)


def elbow_plot(metrics: pd.DataFrame, chosen_k: int | None) -> bytes:
    """WCSS (inertia) against k with the chosen k marked."""
    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.add_subplot()
    _metric_panel(axes, metrics, "inertia", "WCSS (inertia)", chosen_k)
    axes.set_title("Elbow: within-cluster sum of squares")
    return _png(figure)


def silhouette_plot(metrics: pd.DataFrame, chosen_k: int | None) -> bytes:
    """Mean silhouette against k with the chosen k marked."""
    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.add_subplot()
    _metric_panel(axes, metrics, "silhouette", "mean silhouette", chosen_k)
    axes.set_title("Silhouette (higher is better)")
    return _png(figure)


def metrics_plot(metrics: pd.DataFrame, chosen_k: int | None) -> bytes:
    """All four sweep metrics in one 2x2 figure (inertia, silhouette, Davies-Bouldin, Calinski-Harabasz)."""
    figure = Figure(figsize=(10, 7), layout="constrained")
    panels = [
        ("inertia", "WCSS (inertia)"),
        ("silhouette", "silhouette (higher better)"),
        ("davies_bouldin", "Davies-Bouldin (lower better)"),
        ("calinski_harabasz", "Calinski-Harabasz (higher better)"),
    ]
    for index, (column, label) in enumerate(panels, start=1):
        if column in metrics.columns:
            _metric_panel(figure.add_subplot(2, 2, index), metrics, column, label, chosen_k)
    figure.suptitle("k sweep")
    return _png(figure)


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
    figure = Figure(figsize=(min(width, 18.0), height), layout="constrained")
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
    return _png(figure)
