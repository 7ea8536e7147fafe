"""From sweep records to the study's numbers: normalised scores, tolerance per setting, table, all_results.json.

Every score is normalised by the dense model's score in the same setting (``sparse / dense``); the tolerance
of a (method, pattern) in a setting is the largest sparsity whose normalised score stays at or above the
threshold (:func:`~.tolerance.sparsity_tolerance`, default 0.99).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .store import atomic_write_json, atomic_write_text
from .sweep import DENSE
from .tolerance import DEFAULT_THRESHOLD, normalized_score, sparsity_tolerance

METRIC_LABELS = {"exact_match": "EM", "f1": "F1"}


def group_name(method: str, pattern: str) -> str:
    """How a (method, pattern) is named in results: the method alone for unstructured, else "method N:M"."""
    return method if pattern == "unstructured" else f"{method} {pattern}"


def _metric_names(records: Iterable[Mapping[str, Any]]) -> list[str]:
    names: dict[str, None] = {}
    for record in records:
        for name, value in record["metrics"].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and name != "num_questions":
                names.setdefault(name, None)
    return list(names)


def summarize(
    records: Sequence[Mapping[str, Any]],
    *,
    metric: str = "exact_match",
    threshold: float = DEFAULT_THRESHOLD,
    settings: Sequence[str] | None = None,
    setting_labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Summarise cell records (as written by the ResultsStore) into a JSON-ready dict.

    ``settings`` fixes the order (easier first); by default the order of first appearance. The result holds,
    for each (method, pattern) group and setting, the curve of (sparsity, metrics, normalised metrics) starting
    at the dense point, and the tolerance at ``threshold`` on ``metric``.
    """
    if not records:
        raise ValueError("no records to summarise")
    metrics = _metric_names(records)
    if metric not in metrics:
        raise ValueError(f"metric={metric!r} is not among the recorded metrics {metrics}")
    order = list(settings) if settings is not None else list(dict.fromkeys(r["key"]["setting"] for r in records))
    labels = {setting: (setting_labels or {}).get(setting, setting) for setting in order}
    dense = {r["key"]["setting"]: r["metrics"] for r in records if r["key"]["method"] == DENSE}
    missing = [setting for setting in order if setting not in dense]
    if missing:
        raise ValueError(f"no dense reference for setting(s) {missing}: every setting needs a dense cell")

    groups: dict[str, dict[str, Any]] = {}
    for record in records:
        key = record["key"]
        if key["method"] == DENSE or key["setting"] not in labels:
            continue
        name = group_name(key["method"], key["pattern"])
        group = groups.setdefault(
            name, {"method": key["method"], "pattern": key["pattern"], "curves": {s: [] for s in order}}
        )
        group["curves"][key["setting"]].append(_point(key["sparsity"], record["metrics"], dense[key["setting"]]))

    for group in groups.values():
        group["tolerance"], group["tolerance_undefined"] = {}, {}
        for setting, points in group["curves"].items():
            points.sort(key=lambda point: point["sparsity"])
            points.insert(0, _point(0.0, dense[setting], dense[setting]))
            tolerance = sparsity_tolerance(
                [(point["sparsity"], point["normalized"][metric]) for point in points], threshold
            )
            group["tolerance"][setting] = tolerance
            if tolerance is None:
                group["tolerance_undefined"][setting] = _undefined_reason(points, dense[setting].get(metric))
    return {
        "metric": metric,
        "metrics": metrics,
        "threshold": threshold,
        "settings": order,
        "setting_labels": labels,
        "dense": {setting: dense[setting] for setting in order},
        "groups": groups,
    }


def _undefined_reason(points: Sequence[Mapping[str, Any]], dense_score: Any) -> str:
    """Why a tolerance is undefined (None): no pruned point, a dense score of 0 (nothing normalises), or NaN."""
    if not any(point["sparsity"] > 0 for point in points):
        return "no sparse points"
    if dense_score is not None and float(dense_score) == 0:
        return "dense score 0"
    return "NaN normalised score"


def _point(sparsity: float, metrics: Mapping[str, Any], dense: Mapping[str, Any]) -> dict[str, Any]:
    numeric = {
        name: float(value)
        for name, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and name != "num_questions"
    }
    return {
        "sparsity": float(sparsity),
        "metrics": numeric,
        "normalized": {name: normalized_score(value, float(dense[name])) for name, value in numeric.items()},
    }


def tolerance_table(summary: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
    """``{group: {setting: tolerance}}``; None where the tolerance is undefined (see ``tolerance_undefined``)."""
    return {name: dict(group["tolerance"]) for name, group in summary["groups"].items()}


# -------------------------------------------------------------------------------------------------- text
def _number(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _tolerance_cell(group: Mapping[str, Any], setting: str) -> str:
    tolerance = group["tolerance"][setting]
    if tolerance is None or (isinstance(tolerance, float) and math.isnan(tolerance)):
        reason = (group.get("tolerance_undefined") or {}).get(setting)
        return f"n/a ({reason})" if reason else "n/a"
    return _number(tolerance, 2)


def format_table(summary: Mapping[str, Any]) -> str:
    """Markdown tables: scores and normalised scores per (method, pattern, sparsity) and setting, then tolerance."""
    settings, labels = summary["settings"], summary["setting_labels"]
    metrics = [summary["metric"]] + [m for m in summary["metrics"] if m != summary["metric"]]
    header = ["method", "sparsity"]
    for setting in settings:
        for name in metrics:
            short = METRIC_LABELS.get(name, name)
            header += [f"{labels[setting]} {short}", f"{labels[setting]} {short}/dense"]
    rows = [header, ["---"] * len(header)]
    dense_row = [DENSE, _number(0.0, 2)]
    for setting in settings:
        for name in metrics:
            value = summary["dense"][setting].get(name)
            dense_row += [_number(value), _number(normalized_score(float(value), float(value)))]
    rows.append(dense_row)
    for group_key, group in summary["groups"].items():
        sparsities = sorted({p["sparsity"] for points in group["curves"].values() for p in points if p["sparsity"]})
        for sparsity in sparsities:
            row = [group_key, _number(sparsity, 2)]
            for setting in settings:
                point = next((p for p in group["curves"][setting] if p["sparsity"] == sparsity), None)
                for name in metrics:
                    if point is None:
                        row += ["", ""]
                    else:
                        row += [_number(point["metrics"].get(name)), _number(point["normalized"].get(name))]
            rows.append(row)
    lines = ["| " + " | ".join(row) + " |" for row in rows]

    short = METRIC_LABELS.get(summary["metric"], summary["metric"])
    tolerance_rows = [["method"] + [labels[s] for s in settings], ["---"] * (len(settings) + 1)]
    for group_key, group in summary["groups"].items():
        tolerance_rows.append([group_key] + [_tolerance_cell(group, s) for s in settings])
    lines += [
        "",
        f"Sparsity tolerance: the largest sparsity whose normalised {short} (sparse / dense) stays >= "
        f"{summary['threshold']:g}."
        + (
            " n/a: undefined (no sparse points to judge by, or a dense score of 0 that normalises nothing)."
            if any(group.get("tolerance_undefined") for group in summary["groups"].values())
            else ""
        ),
        "",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in tolerance_rows]
    return "\n".join(lines) + "\n"


def all_results(summary: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """The ``all_results.json`` content: flat headline numbers (as transformers' run_* scripts write) + details."""
    flat: dict[str, Any] = {}
    for setting, metrics in summary["dense"].items():
        for name, value in metrics.items():
            flat[f"dense_{setting}_{name}"] = value
    for group_key, group in summary["groups"].items():
        for setting, tolerance in group["tolerance"].items():
            flat[f"tolerance_{group_key.replace(' ', '_')}_{setting}"] = tolerance
    return {**flat, "summary": dict(summary), **extra}


def write_report(output_dir: str | Path, summary: Mapping[str, Any], *, prefix: str = "", **extra: Any) -> dict:
    """Write ``all_results.json`` and ``{prefix}results.md`` (the table) atomically; returns the paths."""
    output_dir = Path(output_dir)
    results_path = output_dir / "all_results.json"
    table_path = output_dir / f"{prefix}results.md"
    atomic_write_json(results_path, all_results(summary, **extra))
    atomic_write_text(table_path, format_table(summary))
    return {"all_results": results_path, "table": table_path}
