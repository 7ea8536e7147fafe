"""The evaluation results a card reports: a list of plain dicts, checked and normalised here.

``results`` (for ``save_pruned``, ``push_pruned_to_hub`` and the card) is a list of points, one per evaluated
model, each a dict with:

=====================  ========  ================================================================================
key                    required  meaning
=====================  ========  ================================================================================
``sparsity``           yes       fraction of prunable weights set to zero; ``0.0`` is the dense baseline
``score``              yes       the raw metric value (higher is better)
``metric``             yes       metric name, e.g. ``"accuracy"``, ``"exact_match"``
``setting``            no        difficulty level label, e.g. ``"25% data"`` or ``"closed-book"`` (one curve each)
``difficulty``         no        the numeric value of the difficulty measure at that level, e.g. ``0.25``
``method``             no        pruning criterion (``"magnitude"``, ``"wanda"``, ``"sparsegpt"``)
``pattern``            no        ``"unstructured"`` or ``"N:M"``
``regime``             no        ``"dense"`` marks the baseline; otherwise the fine-tuning regime
``normalized_score``   no        ``score / dense score``; computed from the dense point of the same setting and
                                 metric when missing
``dataset``            no        dataset name for the model-index (default: the card's task)
``task_type``          no        model-index task type (default: from the model class, e.g. text-classification)
=====================  ========  ================================================================================

A point is the dense baseline when ``regime == "dense"`` or ``sparsity == 0``. The sparsity tolerance of a
curve (same setting, metric, method, pattern and regime) is ``hf_junkdna.experiments.tolerance.sparsity_tolerance``
over its ``(sparsity, normalized_score)`` points.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..experiments.tolerance import DEFAULT_THRESHOLD, normalized_score, sparsity_tolerance


@dataclass(frozen=True)
class ResultPoint:
    sparsity: float
    score: float
    metric: str
    setting: str | None = None
    difficulty: float | str | None = None
    method: str | None = None
    pattern: str | None = None
    regime: str | None = None
    normalized_score: float | None = None
    dataset: str | None = None
    task_type: str | None = None

    @property
    def is_dense(self) -> bool:
        return self.regime == "dense" or self.sparsity == 0

    def baseline_key(self) -> tuple:
        """What a dense baseline must share with a point to normalise it: the same task difficulty and data."""
        return (self.setting, self.difficulty, self.dataset, self.metric)

    def curve_key(self) -> tuple:
        return (*self.baseline_key(), self.method, self.pattern, None if self.is_dense else self.regime)

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}


_FIELDS = {f.name for f in fields(ResultPoint)}


def _number(index: int, raw: Mapping[str, Any], key: str) -> float:
    """``raw[key]`` as a finite float; the error names the point and the key (a sweep has many points)."""
    value = raw[key]
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise ValueError(f"results[{index}]: {key}={value!r} is not a finite number")
    return number


def _point(index: int, raw: Mapping[str, Any]) -> ResultPoint:
    if isinstance(raw, ResultPoint):
        return raw
    if not isinstance(raw, Mapping):
        raise TypeError(f"results[{index}] must be a dict, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise ValueError(f"results[{index}] has unknown key(s) {unknown}; known keys: {sorted(_FIELDS)}")
    for key in ("sparsity", "score", "metric"):
        if raw.get(key) is None:
            raise ValueError(f"results[{index}] lacks {key!r} (every point needs sparsity, score and metric)")
    sparsity = _number(index, raw, "sparsity")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"results[{index}]: sparsity={raw['sparsity']!r} is outside [0, 1)")
    values = dict(raw)
    values["sparsity"] = sparsity
    values["score"] = _number(index, raw, "score")
    values["metric"] = str(raw["metric"])
    if values.get("normalized_score") is not None:
        values["normalized_score"] = _number(index, raw, "normalized_score")
    if values.get("setting") is not None:
        values["setting"] = str(values["setting"])
    return ResultPoint(**values)


def _baseline(dense: Mapping[tuple, ResultPoint], key: tuple) -> ResultPoint | None:
    """The dense point for ``key`` (setting, difficulty, dataset, metric): the exact one, else one that leaves
    difficulty and/or dataset unsaid (a single dense run serving every curve of its setting and metric)."""
    setting, difficulty, dataset, metric = key
    for candidate in (key, (setting, None, dataset, metric), (setting, difficulty, None, metric)):
        if candidate in dense:
            return dense[candidate]
    return dense.get((setting, None, None, metric))


def normalize_results(results: Iterable[Mapping[str, Any]] | None) -> list[ResultPoint]:
    """Check every point and fill in missing normalised scores (score / the dense score of the same setting,
    difficulty, dataset and metric).

    Points are returned sorted by setting, difficulty, dataset, metric, sparsity; a point whose dense baseline
    is missing keeps ``normalized_score=None``.
    """
    points = [_point(index, raw) for index, raw in enumerate(results or [])]
    dense = {p.baseline_key(): p for p in points if p.is_dense}
    filled = []
    for p in points:
        baseline = _baseline(dense, p.baseline_key())
        if p.normalized_score is None and baseline is not None:
            value = 1.0 if p.is_dense else normalized_score(p.score, baseline.score)
            p = ResultPoint(**{**p.to_dict(), "normalized_score": value})
        filled.append(p)
    return sorted(
        filled,
        key=lambda p: (str(p.setting), str(p.difficulty), str(p.dataset), p.metric, p.sparsity, not p.is_dense),
    )


@dataclass(frozen=True)
class Curve:
    """The points of one setting/metric/method/pattern/regime, with its sparsity tolerance."""

    setting: str | None
    metric: str
    method: str | None
    pattern: str | None
    regime: str | None
    difficulty: float | str | None
    points: tuple[ResultPoint, ...]
    tolerance: float | None  # None: no normalised scores to judge by
    dataset: str | None = None

    @property
    def label(self) -> str:
        parts = [self.setting or "all", *([self.dataset] if self.dataset else []), self.metric]
        parts += [part for part in (self.method, self.pattern, self.regime) if part]
        return " · ".join(parts)


def curves(points: list[ResultPoint], threshold: float = DEFAULT_THRESHOLD) -> list[Curve]:
    """Group sparse points into curves (the dense baseline joins each curve of its setting and metric)."""
    groups: dict[tuple, list[ResultPoint]] = {}
    dense = {}
    for p in points:
        if p.is_dense:
            dense.setdefault(p.baseline_key(), p)
        else:
            groups.setdefault(p.curve_key(), []).append(p)
    result = []
    for key, members in groups.items():
        setting, difficulty, dataset, metric, method, pattern, regime = key
        baseline = _baseline(dense, key[:4])
        curve_points = tuple(sorted(([baseline] if baseline else []) + members, key=lambda p: p.sparsity))
        scored = [(p.sparsity, p.normalized_score) for p in curve_points if p.normalized_score is not None]
        tolerance = sparsity_tolerance(scored, threshold) if any(s > 0 for s, _ in scored) else None
        result.append(Curve(setting, metric, method, pattern, regime, difficulty, curve_points, tolerance, dataset))
    return result


def is_finite(value: float | None) -> bool:
    return value is not None and not math.isnan(value) and not math.isinf(value)
