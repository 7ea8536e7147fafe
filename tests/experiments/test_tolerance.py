import math

import pytest

from hf_junkdna.experiments.tolerance import normalized_score, sparsity_tolerance


def test_tolerance_walks_up_until_the_first_drop():
    points = [(0.0, 1.0), (0.1, 1.0), (0.2, 0.995), (0.3, 0.98), (0.4, 0.999), (0.5, 0.5)]
    assert sparsity_tolerance(points) == 0.2  # 0.4 recovers, but the curve did not *stay* above 0.99
    assert sparsity_tolerance(points, threshold=0.97) == 0.4
    assert sparsity_tolerance(list(reversed(points)), threshold=0.97) == 0.4  # order of input irrelevant


def test_tolerance_edge_cases():
    assert sparsity_tolerance([(0.0, 1.0), (0.1, 0.5)]) == 0.0
    assert sparsity_tolerance([(0.0, 1.0), (0.1, 1.0), (0.2, 0.5), (0.3, math.nan)]) == 0.1
    with pytest.raises(ValueError, match="threshold"):
        sparsity_tolerance([(0.1, 1.0)], threshold=0)


def test_normalized_score():
    assert normalized_score(0.3, 0.6) == 0.5
    assert math.isnan(normalized_score(0.3, 0.0))


def test_undefined_tolerance_is_none_not_zero():
    # no pruned point to judge by: undefined, not "tolerates nothing"
    assert sparsity_tolerance([]) is None
    assert sparsity_tolerance([(0.0, 1.0)]) is None
    # a dense score of 0 normalises every score to NaN: undefined
    assert sparsity_tolerance([(0.0, math.nan), (0.1, math.nan), (0.2, math.nan)]) is None
    assert sparsity_tolerance([(0.1, math.nan), (0.2, 1.0)]) is None
    # a NaN after the first failing point does not matter
    assert sparsity_tolerance([(0.1, 0.5), (0.2, math.nan)]) == 0.0


def test_a_ratio_equal_to_the_threshold_up_to_rounding_passes():
    ratio = normalized_score(0.6435, 0.65)
    assert ratio < 0.99  # 0.98999...: float division, though the scores' ratio is 0.99 exactly
    assert sparsity_tolerance([(0.0, 1.0), (0.5, ratio)], 0.99) == 0.5
    assert sparsity_tolerance([(0.0, 1.0), (0.5, 0.98999)], 0.99) == 0.0  # a real shortfall still fails
