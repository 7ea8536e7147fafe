"""The card's curve: normalised score vs sparsity, one line per difficulty setting, the threshold dashed.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend switch), and saved without
time-dependent metadata so the same results give the same PNG bytes.
"""

from __future__ import annotations

import os

from .results import Curve


def plot_sparsity_curves(curves: list[Curve], path: str | os.PathLike, threshold: float, title: str = "") -> bool:
    """Write the PNG; returns False (and writes nothing) when no curve has a normalised sparse point."""
    drawable = [c for c in curves if any(p.normalized_score is not None and not p.is_dense for p in c.points)]
    if not drawable:
        return False
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.2), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for curve in drawable:
        xs = [100 * p.sparsity for p in curve.points if p.normalized_score is not None]
        ys = [p.normalized_score for p in curve.points if p.normalized_score is not None]
        label = curve.label if curve.difficulty is None else f"{curve.label} (difficulty {curve.difficulty})"
        axes.plot(xs, ys, marker="o", label=label)
    axes.axhline(threshold, color="grey", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    axes.set_xlabel("sparsity (%)")
    axes.set_ylabel("score / dense score")
    if title:
        axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(os.fspath(path), format="png", metadata={"Software": None})
    return True
