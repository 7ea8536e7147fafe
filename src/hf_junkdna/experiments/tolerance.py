"""Normalised performance and sparsity tolerance: the study's headline numbers, as pure functions."""

from __future__ import annotations

import math
from collections.abc import Iterable

DEFAULT_THRESHOLD = 0.99
# A ratio that is the threshold up to float rounding (0.6435 / 0.65 = 0.98999...) passes: tables print 0.99
_ROUNDING = 1e-9


def normalized_score(score: float, dense_score: float) -> float:
    """``score / dense_score``: the sparse model's performance relative to the dense one (1.0 = no loss).

    A dense score of 0 cannot normalise anything; that is NaN rather than a division error, so a sweep
    over a task the dense model cannot do at all reports "undefined" instead of crashing.
    """
    if dense_score == 0:
        return math.nan
    return score / dense_score


def sparsity_tolerance(points: Iterable[tuple[float, float]], threshold: float = DEFAULT_THRESHOLD) -> float | None:
    """The largest sparsity up to which the normalised score *stays* at or above ``threshold``.

    ``points`` are (sparsity, normalised score) pairs. Walking up from the lowest sparsity, the tolerance
    is the last sparsity before the first point below the threshold (a later recovery, usually noise,
    does not count). 0.0 when the first pruned point already fails.

    None when the tolerance is undefined: there is no pruned point (sparsity > 0) to judge by, or a NaN
    score (a dense score of 0 normalises every score to NaN) comes before the first failing point, so
    whether the curve stays above the threshold cannot be told.
    """
    if not 0 < threshold:
        raise ValueError(f"threshold={threshold!r} must be positive")
    tolerance = 0.0
    pruned = False
    for sparsity, score in sorted(points):
        if sparsity == 0:
            continue  # the dense point is the reference, not evidence of tolerance
        pruned = True
        if score is None or math.isnan(score):
            return None
        if not score >= threshold - _ROUNDING:
            break
        tolerance = sparsity
    return tolerance if pruned else None
