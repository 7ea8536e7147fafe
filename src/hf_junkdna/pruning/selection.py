"""Mask selection: pure tensor maths from scores to keep-masks (True = kept).

Every selector prunes the *lowest* scores and breaks ties deterministically by position (earlier tensor,
then lower row-major index, is pruned first). That total order is what makes the counts exact and the
masks nested: for one set of scores, the zeros at sparsity s1 are a subset of the zeros at s2 > s1.

Global selection never concatenates the scores. It maps each score to an order-preserving integer key
(its IEEE bit pattern, sign-corrected) and runs a radix select over 16-bit digits with histograms
accumulated chunk by chunk, so the extra memory is a few MB whatever the model size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

_CHUNK = 1 << 22  # elements per chunk: bounds temporaries to ~16 MB (int32 keys + bool)
_DIGITS = 1 << 16


def target_zeros(sparsity: float, numel: int) -> int:
    """The exact number of zeros asked for: round(sparsity * numel) (round half to even, as Python)."""
    return int(round(sparsity * numel))


def layer_zero_counts(sizes: Sequence[int], sparsity: float) -> list[int]:
    """Zeros per layer for per-layer selection, adding up to exactly ``round(sparsity * sum(sizes))``.

    Each layer gets about ``sparsity * size`` zeros. Think of layer i's j-th zero as becoming due at
    sparsity (j - 1/2) / size_i; the counts are the first K due slots in the order (due sparsity, layer
    index). Being a prefix of one fixed order, the counts only grow with sparsity, so masks still nest.
    This is Webster's divisor method: counts are ``round(lambda * size)`` for one multiplier ``lambda``
    close to ``sparsity``, so a layer misses its share by at most ``len(sizes) / 2 + 1`` zeros, and by
    at most one when the layers have similar sizes (as in transformer blocks).
    """
    from fractions import Fraction

    total = target_zeros(sparsity, sum(sizes))
    counts = [min(size, max(0, math.floor(sparsity * size + 0.5))) for size in sizes]
    due = lambda i, j: Fraction(2 * j - 1, 2 * sizes[i])  # noqa: E731 - when layer i's j-th zero is due
    while sum(counts) > total:  # drop the latest-due slot; among equals, the later layer's
        i = max((i for i, c in enumerate(counts) if c > 0), key=lambda i: (due(i, counts[i]), i))
        counts[i] -= 1
    while sum(counts) < total:  # add the earliest-due slot; among equals, the earlier layer's
        i = min((i for i, c in enumerate(counts) if c < sizes[i]), key=lambda i: (due(i, counts[i] + 1), i))
        counts[i] += 1
    return counts


def _key_width(scores: Sequence[torch.Tensor]) -> int:
    """16 when every score has the same 16-bit float dtype (keys are then int16), else 32 (int32 keys)."""
    half = all(score.dtype in (torch.bfloat16, torch.float16) for score in scores)
    if half and len({score.dtype for score in scores}) == 1:
        return 16
    return 32


def _ordered_keys(scores: torch.Tensor, absolute: bool = False, width: int | None = None) -> torch.Tensor:
    """Flattened integer keys whose order equals the float order of ``scores`` (or of ``|scores|``).

    int16 keys for 16-bit floats (``width`` 16), int32 otherwise; with ``absolute`` they are >= 0.
    """
    flat = scores.reshape(-1)
    if width is None:
        width = _key_width([scores])
    if width == 16:
        bits, magnitude_bits = flat.contiguous().view(torch.int16), 0x7FFF
    else:
        if flat.dtype != torch.float32:
            flat = flat.float()
        bits, magnitude_bits = flat.contiguous().view(torch.int32), 0x7FFFFFFF
    if absolute:  # |x| is x with the sign bit cleared: no temporary |x| tensor needed
        return bits & magnitude_bits
    # Negative floats order backwards in their bit patterns: flip their magnitude bits. Then shift the
    # negatives up by one so that -0.0 and +0.0 get the same key (they are equal floats: a tie). The
    # result stays within the dtype: [-(2**(width-1)) + 1, 2**(width-1) - 1].
    negative = bits >> (width - 1)  # -1 for negative floats, 0 otherwise
    return (bits ^ (negative & magnitude_bits)) - negative


def _chunks(tensor: torch.Tensor):
    """(offset, chunk) pairs over the row-major flattened tensor."""
    flat = tensor.reshape(-1)
    for start in range(0, flat.numel(), _CHUNK):
        yield start, flat[start : start + _CHUNK]


def _bincount(digits: torch.Tensor) -> torch.Tensor:
    """Histogram over [0, 2**16) on the CPU, counted where the digits live (no device-to-host copy of
    the digits; on CUDA under deterministic algorithms, where bincount refuses to run, on the CPU)."""
    if digits.device.type == "cuda" and torch.are_deterministic_algorithms_enabled():
        digits = digits.cpu()
    return torch.bincount(digits, minlength=_DIGITS).cpu()


def _top_digit_offset(width: int, absolute: bool) -> int:
    """Added to ``key >> (width - 16)`` to make the top digit non-negative (keys >= 0 need nothing)."""
    return 0 if absolute else 1 << 15


def _kth_key(scores: Sequence[torch.Tensor], k: int, absolute: bool) -> tuple[int, int]:
    """The signed key of the k-th smallest score (1-based) and how many keys are below it.

    Radix select over 16-bit digits: one histogram pass for 16-bit floats, two for 32-bit keys (the
    second only over the keys whose top digit matched). Keys are built chunk by chunk in their own width.
    """
    width = _key_width(scores)
    offset = _top_digit_offset(width, absolute)
    histogram = torch.zeros(_DIGITS, dtype=torch.int64)
    for score in scores:
        for _, chunk in _chunks(score):
            keys = _ordered_keys(chunk, absolute, width)
            if width == 32:
                keys = keys >> 16
            if offset:
                keys = keys.to(torch.int32) + offset
            histogram += _bincount(keys)
    cumulative = torch.cumsum(histogram, 0)
    top = int(torch.searchsorted(cumulative, torch.tensor(k), right=False))
    below = int(cumulative[top - 1]) if top > 0 else 0
    if width == 16:
        return top - offset, below
    prefix = top - offset  # the signed top 16 bits of the wanted key
    histogram.zero_()
    for score in scores:
        for _, chunk in _chunks(score):
            keys = _ordered_keys(chunk, absolute, width)
            histogram += _bincount(keys[(keys >> 16) == prefix] & 0xFFFF)
    cumulative = torch.cumsum(histogram, 0)
    low = int(torch.searchsorted(cumulative, torch.tensor(k - below), right=False))
    below += int(cumulative[low - 1]) if low > 0 else 0
    return (prefix << 16) | low, below


@torch.no_grad()
def iter_select_smallest(scores: Sequence[torch.Tensor], num_zeros: int, absolute: bool = False):
    """Yield, tensor by tensor, keep-masks that prune exactly ``num_zeros`` of the lowest scores overall.

    With ``absolute=True`` the scores are ``|tensor|`` (magnitude pruning straight from the weights, with
    no copy). A generator, so the caller can pack each mask before the next one is built. Masks are
    written chunk by chunk, so temporaries stay at a few MB whatever the tensor size.
    """
    total = sum(score.numel() for score in scores)
    if not 0 <= num_zeros <= total:
        raise ValueError(f"cannot prune {num_zeros} of {total} weights")
    if num_zeros == 0 or num_zeros == total:
        for score in scores:
            yield torch.full(score.shape, num_zeros == 0, dtype=torch.bool, device=score.device)
        return
    width = _key_width(scores)
    threshold, below = _kth_key(scores, num_zeros, absolute)
    ties_to_prune = num_zeros - below  # >= 1: the k-th smallest itself is a tie of the threshold
    for score in scores:
        keep = torch.empty(score.shape, dtype=torch.bool, device=score.device)
        flat_keep = keep.view(-1)
        for start, chunk in _chunks(score):
            keys = _ordered_keys(chunk, absolute, width)
            out = flat_keep[start : start + chunk.numel()]
            if ties_to_prune == 0:  # every remaining tie is kept
                torch.ge(keys, threshold, out=out)
                continue
            torch.gt(keys, threshold, out=out)
            ties = keys == threshold
            tie_count = int(torch.count_nonzero(ties))
            if tie_count <= ties_to_prune:
                ties_to_prune -= tie_count
            else:  # prune only the first `ties_to_prune` tied positions (row-major), keep the later ones
                first_kept = int(torch.nonzero(ties)[ties_to_prune])
                out[first_kept:] |= ties[first_kept:]
                ties_to_prune = 0
        yield keep


def select_smallest(scores: Sequence[torch.Tensor], num_zeros: int, absolute: bool = False) -> list[torch.Tensor]:
    """List form of ``iter_select_smallest``."""
    return list(iter_select_smallest(scores, num_zeros, absolute))


@torch.no_grad()
def _rank_within_rows(scores_2d: torch.Tensor) -> torch.Tensor:
    """Rank (0 = lowest, ties by column index) of each entry within its row."""
    order = torch.sort(scores_2d, dim=1, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(scores_2d.shape[1], device=scores_2d.device).expand_as(order).contiguous())
    return ranks


@torch.no_grad()
def select_per_row(scores_out_in: torch.Tensor, num_zeros: int) -> torch.Tensor:
    """Prune ``num_zeros`` weights of an (out, in) matrix, spread evenly over rows, lowest within each row.

    Rows get ``num_zeros // rows`` zeros each and the first ``num_zeros % rows`` rows one more, so the
    total is exact and growing ``num_zeros`` only ever adds zeros (masks nest).
    """
    rows, cols = scores_out_in.shape
    if not 0 <= num_zeros <= rows * cols:
        raise ValueError(f"cannot prune {num_zeros} of {rows * cols} weights")
    base, extra = divmod(num_zeros, rows)
    per_row = torch.full((rows, 1), base, dtype=torch.int64, device=scores_out_in.device)
    per_row[:extra] += 1
    return _rank_within_rows(scores_out_in) >= per_row


@torch.no_grad()
def select_n_m(scores_out_in: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` highest of every ``m`` consecutive scores along the input dimension (dim 1)."""
    rows, cols = scores_out_in.shape
    if cols % m:
        raise ValueError(f"input dimension {cols} is not divisible by M={m}")
    groups = scores_out_in.reshape(rows * cols // m, m)
    return (_rank_within_rows(groups) >= m - n).view(rows, cols)


def _out_in(tensor: torch.Tensor, input_dim: int) -> torch.Tensor:
    return tensor if input_dim == 1 else tensor.t()


def iter_select(
    scores: Sequence[torch.Tensor],
    input_dims: Sequence[int],
    sparsity: float,
    scope: str,
    n_m: tuple[int, int] | None = None,
    absolute: bool = False,
):
    """Yield one keep-mask per score tensor (in the tensor's own shape) for a pattern and scope.

    ``scope`` is "global" (one ranking across all tensors), "layer" (each tensor on its own) or "row"
    (each output row on its own, Wanda's comparison group); ``n_m`` overrides scope with N:M groups along
    the input dimension. ``input_dims[i]`` is the input-feature axis of tensor i (1 for nn.Linear).
    """
    if n_m is not None:
        for score, input_dim in zip(scores, input_dims):
            values = score.abs() if absolute else score
            yield _out_in(select_n_m(_out_in(values, input_dim), *n_m), input_dim).contiguous()
    elif scope == "global":
        total = sum(score.numel() for score in scores)
        yield from iter_select_smallest(scores, target_zeros(sparsity, total), absolute)
    elif scope == "layer":
        counts = layer_zero_counts([score.numel() for score in scores], sparsity)
        for score, count in zip(scores, counts):
            yield from iter_select_smallest([score], count, absolute)
    elif scope == "row":
        counts = layer_zero_counts([score.numel() for score in scores], sparsity)
        for score, input_dim, count in zip(scores, input_dims, counts):
            values = score.abs() if absolute else score
            yield _out_in(select_per_row(_out_in(values, input_dim), count), input_dim).contiguous()
    else:
        raise ValueError(f"unknown selection scope {scope!r}")
