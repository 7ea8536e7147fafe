"""Selection maths: exact counts, deterministic ties, nesting, N:M structure, worked by hand and as properties."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_junkdna.pruning.selection import (
    iter_select,
    select_n_m,
    select_per_row,
    select_smallest,
    target_zeros,
)


def reference_smallest(scores, k, absolute=False):
    """Sort-based reference: order by (score, tensor index, flat index)."""
    values = torch.cat([(s.abs() if absolute else s).float().reshape(-1) for s in scores])
    order = torch.sort(values, stable=True).indices
    keep = torch.ones_like(values, dtype=torch.bool)
    keep[order[:k]] = False
    return keep


def test_global_by_hand():
    a = torch.tensor([[0.5, -0.1], [0.3, 0.2]])
    b = torch.tensor([0.05, -0.4, 0.1])
    # |scores| ascending: b0=.05, a01=.1 (tie with b2=.1: earlier tensor first), b2=.1, a11=.2, a10=.3, ...
    keep_a, keep_b = select_smallest([a, b], 3, absolute=True)
    assert keep_a.tolist() == [[True, False], [True, True]]
    assert keep_b.tolist() == [False, True, False]
    keep_a, keep_b = select_smallest([a, b], 2, absolute=True)
    assert keep_a.tolist() == [[True, False], [True, True]]
    assert keep_b.tolist() == [False, True, True]  # the tie at .1 goes to the earlier tensor


def test_ties_broken_by_position_within_a_tensor():
    scores = torch.ones(10)
    (keep,) = select_smallest([scores], 4)
    assert keep.tolist() == [False] * 4 + [True] * 6


def test_signed_scores_order_and_special_values():
    scores = torch.tensor([0.0, -0.0, -3.0, 2.0, float("inf"), -float("inf"), 1e-30, -1e-30])
    for k in range(scores.numel() + 1):
        (keep,) = select_smallest([scores], k)
        assert torch.equal(keep, reference_smallest([scores], k)), k


def test_heavily_tied_bf16_weights_hit_the_exact_count():
    # 4-bit-like weights: 16 distinct values over 40k entries, as in the packaged SmolLM2 GGUF
    torch.manual_seed(0)
    weights = [(torch.randint(-8, 8, (100, 200)).float() / 8).to(torch.bfloat16) for _ in range(2)]
    for sparsity in (0.1, 0.5, 0.77):
        k = target_zeros(sparsity, 40_000)
        masks = select_smallest(weights, k, absolute=True)
        assert sum(int((~m).sum()) for m in masks) == k
        assert torch.equal(torch.cat([m.reshape(-1) for m in masks]), reference_smallest(weights, k, True))


@settings(max_examples=60, deadline=None)
@given(
    shapes=st.lists(st.tuples(st.integers(1, 9), st.integers(1, 17)), min_size=1, max_size=4),
    fraction=st.floats(0, 1),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    distinct=st.integers(1, 50),
    seed=st.integers(0, 2**16),
)
def test_global_matches_sorted_reference(shapes, fraction, dtype, distinct, seed):
    generator = torch.Generator().manual_seed(seed)
    scores = [
        (torch.randint(-distinct, distinct + 1, shape, generator=generator) / distinct).to(dtype) for shape in shapes
    ]
    total = sum(s.numel() for s in scores)
    k = int(fraction * total)
    for absolute in (False, True):
        masks = select_smallest(scores, k, absolute=absolute)
        assert [m.shape for m in masks] == [s.shape for s in scores]
        assert torch.equal(torch.cat([m.reshape(-1) for m in masks]), reference_smallest(scores, k, absolute))


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 12),
    cols=st.integers(1, 12),
    low=st.floats(0, 1),
    high=st.floats(0, 1),
    seed=st.integers(0, 999),
)
def test_masks_nest_across_sparsities(rows, cols, low, high, seed):
    low, high = sorted((low, high))
    scores = torch.randint(0, 5, (rows, cols), generator=torch.Generator().manual_seed(seed)).float()
    n = rows * cols
    for scope in ("global", "layer", "row"):
        (keep_low,) = iter_select([scores], [1], low, scope)
        (keep_high,) = iter_select([scores], [1], high, scope)
        assert int((~keep_low).sum()) == target_zeros(low, n)
        assert int((~keep_high).sum()) == target_zeros(high, n)
        assert not (keep_high & ~keep_low).any(), "a weight pruned at lower sparsity came back at higher sparsity"


def test_per_row_spreads_zeros_by_hand():
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0]])
    keep = select_per_row(scores, 5)  # 5 zeros over 3 rows: 2, 2, 1
    assert keep.tolist() == [[True, True, False, False], [False, False, True, True], [False, True, True, True]]


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 6),
    groups=st.integers(1, 6),
    m=st.sampled_from([4, 8]),
    n_fraction=st.floats(0.01, 0.99),
    seed=st.integers(0, 999),
)
def test_n_m_every_group_keeps_exactly_n(rows, groups, m, n_fraction, seed):
    n = max(1, min(m - 1, round(n_fraction * m)))
    scores = torch.randint(0, 3, (rows, groups * m), generator=torch.Generator().manual_seed(seed)).float()
    keep = select_n_m(scores, n, m)
    assert (keep.view(rows, groups, m).sum(-1) == n).all()
    # kept entries are never below pruned entries of the same group
    grouped, kept = scores.view(rows, groups, m), keep.view(rows, groups, m)
    low_kept = torch.where(kept, grouped, torch.inf).min(-1).values
    high_pruned = torch.where(~kept, grouped, -torch.inf).max(-1).values
    assert (low_kept >= high_pruned).all()


def test_n_m_by_hand_and_nesting():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3, 8.0, 7.0, 6.0, 5.0]])
    assert select_n_m(scores, 2, 4).tolist() == [[False, True, True, False, True, True, False, False]]
    assert select_n_m(scores, 1, 4).tolist() == [[False, True, False, False, True, False, False, False]]
    for n in range(1, 7):
        assert not (select_n_m(scores, n, 8) & ~select_n_m(scores, n + 1, 8)).any()


def test_n_m_along_input_dim_for_transposed_weights():
    # Conv1D stores (in, out): groups must run along dim 0 there
    weight_in_out = torch.arange(32.0).view(8, 4)
    (keep,) = iter_select([weight_in_out], [0], 0.5, "layer", n_m=(2, 4))
    assert (keep.t().reshape(4, 2, 4).sum(-1) == 2).all()


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=6), a=st.floats(0, 0.999), b=st.floats(0, 0.999))
def test_layer_counts_exact_close_and_monotone(sizes, a, b):
    # e.g. sizes [1, 1, 1, 1, 14] at 0.375: 7 zeros in all; the big layer's 7th is due (at 0.46) before
    # any small layer's first (at 0.5), so it takes all 7: 1.75 over its share, within the bound
    from hf_junkdna.pruning.selection import layer_zero_counts

    low, high = sorted((a, b))
    counts_low, counts_high = layer_zero_counts(sizes, low), layer_zero_counts(sizes, high)
    assert sum(counts_low) == target_zeros(low, sum(sizes))
    assert sum(counts_high) == target_zeros(high, sum(sizes))
    bound = len(sizes) / 2 + 1  # Webster's method: a single multiplier, so rounding errors stay bounded
    assert all(0 <= c <= n and abs(c - low * n) <= bound for c, n in zip(counts_low, sizes))
    assert all(hi >= lo for hi, lo in zip(counts_high, counts_low)), "a layer lost zeros at higher sparsity"
