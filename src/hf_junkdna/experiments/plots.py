"""The study's figure: normalised score against sparsity, one line per difficulty setting, one panel per method.

Unstructured sweeps are drawn as lines from the dense point (sparsity 0, normalised score 1); N:M patterns,
which have a single sparsity, as labelled markers in their method's panel. The threshold that defines the
tolerance is a dashed line, and each legend entry carries that setting's tolerance.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def _finite(points, metric):
    return [(p["sparsity"], p["normalized"][metric]) for p in points if math.isfinite(p["normalized"][metric])]


def plot_normalized_curves(
    summary: Mapping[str, Any], path: str | os.PathLike, *, title: str | None = None, dpi: int = 150
) -> Path:
    """Save the figure as a PNG at ``path`` (matplotlib's Agg backend: no display needed); returns the path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    metric, threshold = summary["metric"], summary["threshold"]
    settings, labels = summary["settings"], summary["setting_labels"]
    panels: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
    for name, group in summary["groups"].items():
        panels.setdefault(group["method"], []).append((name, group))
    if not panels:
        raise ValueError("nothing to plot: the summary has no pruned cells")

    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour = {setting: colours[i % len(colours)] for i, setting in enumerate(settings)}
    figure, axes = plt.subplots(
        1, len(panels), figsize=(4.2 * len(panels) + 0.6, 4.6), squeeze=False, sharex=True, sharey=True
    )
    lowest, highest = 1.0, 1.0
    for axis, (method, groups) in zip(axes[0], panels.items()):
        for index, (_name, group) in enumerate(groups):
            structured = group["pattern"] != "unstructured"
            for setting in settings:
                points = _finite(group["curves"][setting], metric)
                lowest = min([lowest] + [score for _, score in points])
                highest = max([highest] + [score for _, score in points])
                tolerance = group["tolerance"][setting]
                if structured:
                    pruned = [(s, v) for s, v in points if s > 0]
                    axis.plot(
                        [s for s, _ in pruned],
                        [v for _, v in pruned],
                        linestyle="none",
                        marker=MARKERS[(index + 1) % len(MARKERS)],
                        markersize=8,
                        markerfacecolor="none",
                        color=colour[setting],
                        label=f"{labels[setting]}, {group['pattern']}",
                    )
                    continue
                undefined = not points or len(points) < len(group["curves"][setting])
                dense = summary["dense"][setting].get(metric)
                if not points:
                    suffix = "dense score 0: undefined"
                elif tolerance is None:
                    reason = (group.get("tolerance_undefined") or {}).get(setting, "undefined")
                    suffix = f"dense {dense:.2f}, tolerance n/a: {reason}"
                else:
                    suffix = f"dense {dense:.2f}, tolerance {tolerance:.2f}"
                axis.plot(
                    [s for s, _ in points],
                    [v for _, v in points],
                    marker=MARKERS[0],
                    color=colour[setting],
                    label=f"{labels[setting]} ({suffix}{', gaps' if undefined and points else ''})",
                )
        axis.axhline(threshold, color="grey", linestyle="--", linewidth=1)
        axis.set_title(method)
        axis.set_xlabel("sparsity")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)  # below: no data hidden
    short = {"exact_match": "exact match", "f1": "F1"}.get(metric, metric)
    axes[0][0].set_ylabel(f"normalised {short} (sparse / dense)")
    axes[0][0].set_ylim(min(0.0, lowest - 0.05), max(1.1, threshold + 0.05, highest + 0.05))
    figure.suptitle(title or f"Normalised {short} vs sparsity (dashed: threshold {threshold:g})", fontsize=11)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        figure.savefig(tmp, dpi=dpi, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(figure)
        if tmp.exists():
            tmp.unlink()
    return path
