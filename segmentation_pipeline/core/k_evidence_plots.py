"""One figure of the evidence for k (PNG bytes), so a reviewer sees why k was chosen.

``Figure`` + ``FigureCanvasAgg`` rather than pyplot: no global figure state, safe in worker threads.
"""

from __future__ import annotations

import pandas as pd

from segmentation_pipeline.core.plots import new_figure, png_bytes

__all__ = ["evidence_plot"]


def evidence_plot(evidence: pd.DataFrame, chosen_k: int | None = None, title: str = "") -> bytes:
    """Four panels against k: WCSS (elbow), silhouette, gap with 1-SE bars (Tibshirani et al. 2001),
    resampling stability; the chosen k is marked in each and k with a too-small segment are hollow."""
    table = evidence.sort_values("k")
    figure = new_figure(figsize=(10, 7))
    panels = figure.subplots(2, 2)
    # fixed margins: a layout engine re-measures every label and costs as much as drawing the figure
    figure.subplots_adjust(left=0.07, right=0.98, bottom=0.08, top=0.92, wspace=0.22, hspace=0.28)
    small = table["min_share"] < 0.01 if "min_share" in table else pd.Series(False, index=table.index)
    for axes, column, label in (
        (panels[0, 0], "inertia", "WCSS (inertia)"),
        (panels[0, 1], "silhouette", "mean silhouette"),
        (panels[1, 0], "gap", "gap statistic (+/- 1 SE)"),
        (panels[1, 1], "stability", "stability (mean ARI of refits)"),
    ):
        if column == "gap":
            axes.errorbar(table["k"], table["gap"], yerr=table["gap_se"], marker="o", capsize=3, color="tab:blue")
        else:
            axes.plot(table["k"], table[column], marker="o", color="tab:blue")
        axes.scatter(table.loc[small, "k"], table.loc[small, column], s=80, facecolors="white",
                     edgecolors="tab:orange", zorder=3, label="a segment < 1%" if small.any() else None)
        if chosen_k is not None:
            axes.axvline(chosen_k, color="tab:red", linestyle="--", label=f"chosen k={chosen_k}")
        axes.set_xlabel("k")
        axes.set_ylabel(label)
        axes.set_xticks(table["k"].to_numpy())
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(loc="best", fontsize="small")
    if title:
        figure.suptitle(title)
    return png_bytes(figure)
