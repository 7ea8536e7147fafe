"""SparseGPT (Frantar & Alistarh, 2023): one-shot pruning with optimal-brain-surgeon reconstruction.

For a layer with weight W (out, in) and calibration inputs X (tokens, in), SparseGPT chooses a mask and
updates the *kept* weights so that ||W X^T - W' X^T|| stays small. With H = 2 X^T X (in, in) and its
inverse, pruning input column j of a row costs w_j^2 / [H^-1]_jj and is compensated by moving the
other, not yet processed columns of that row along row j of H^-1. Processing the columns left to right,
the inverse Hessians of the remaining columns are the rows of the upper Cholesky factor U of H^-1
(H^-1 = U^T U), so one factorisation serves the whole layer.

What ``sparsegpt_prune`` does, following Algorithm 1 of the paper:

- dampening: ``dampening * mean(diag H)`` is added to the diagonal (if that factorisation still fails,
  the dampening is multiplied by 10, up to 3 times). Dead inputs (H_jj = 0: the feature was always 0 on
  the calibration data) need no special case: after dampening their inverse-Hessian entry is large, so
  their saliency is small and they are pruned first, which costs nothing on the calibration data. If
  every input is dead, H = I (plain magnitude order).
- columns are processed in blocks of ``block_size``; the mask of a block is chosen when the block is
  reached (adaptive mask selection), from the saliency w^2 / U_jj^2 of the weights as updated so far,
  over the whole (out, block) slab, ties broken by position (input column first, then output row).
- exact counts: the layer gets exactly K zeros, K = round(s * out * in) for the pure function; through
  ``prune``, K comes from ``layer_zero_counts`` as for the other criteria (each layer close to s * n_layer,
  the total over all layers exactly round(s * N)). Block b covering columns [c0, c1)
  gets floor(K * c1 / in) - floor(K * c0 / in) zeros, so the per-block counts add up to K exactly and
  each block is at sparsity s to within one weight.
- N:M: every group of M consecutive columns of a row is decided when the sweep reaches it (the M - N
  lowest saliencies are pruned, ties by column), so every group keeps exactly N. The block size is
  rounded down to a multiple of M (at least M) so that groups never straddle blocks.
- pruned weights are set to exactly 0; the kept ones carry the reconstruction updates.

The statistics are the sum of x x^T over calibration tokens (fp32, in x in per layer).
"""

from __future__ import annotations

import torch

from ..masks import MaskSet
from ..targets import PrunableWeight
from .calibration import CalibratedCriterion, layer_by_layer
from .registry import register_criterion
from .selection import iter_select_smallest, layer_zero_counts, target_zeros

_MAX_DAMPENING_RETRIES = 3


def _inverse_cholesky_upper(hessian: torch.Tensor, dampening: float, name: str | None = None) -> torch.Tensor:
    """Upper Cholesky factor U of (H + damp * mean(diag H) * I)^-1, with H^-1 = U^T U.

    ``name`` (the parameter the Hessian belongs to) is put in the error messages.

    Computed without forming H^-1: the Cholesky factor of the index-reversed matrix gives an upper R with
    H = R R^T, so H^-1 = R^-T R^-1 and U = R^-1 (upper, positive diagonal: the unique factor). That is one
    factorisation and one triangular inverse instead of factorise, invert, factorise again.
    """
    where = f"sparsegpt: {name}: " if name else "sparsegpt: "
    diagonal = hessian.diagonal()
    if not torch.isfinite(hessian).all():
        raise ValueError(f"{where}the Hessian has non-finite entries (inf/nan in the calibration activations)")
    mean = float(diagonal.mean())
    if not mean > 0:  # every input is dead: no information, fall back to plain magnitude order
        hessian = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
        mean = 1.0
    damp = dampening
    for _ in range(_MAX_DAMPENING_RETRIES + 1):
        damped = hessian.flip(0, 1)  # a copy
        damped.diagonal().add_(damp * mean)
        lower, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            upper = lower.flip(0, 1)
            identity = torch.eye(upper.shape[0], dtype=upper.dtype, device=upper.device)
            return torch.linalg.solve_triangular(upper, identity, upper=True)
        damp *= 10
    raise ValueError(
        f"{where}the Hessian is not positive definite even with dampening {damp / 10:g} * mean(diag); "
        "raise sparsegpt_dampening or use more calibration data"
    )


def _block_zero_counts(num_zeros: int, columns: int, bounds: list[tuple[int, int]]) -> list[int]:
    """Zeros per column block: floor(K * c1 / in) - floor(K * c0 / in); they sum to K exactly."""
    return [(num_zeros * stop) // columns - (num_zeros * start) // columns for start, stop in bounds]


def _lowest(values: torch.Tensor, count: int) -> torch.Tensor:
    """Bool mask of the ``count`` lowest entries of ``values`` (ties: earlier row-major position first)."""
    flat = values.reshape(-1)
    if count <= 0:
        return torch.zeros_like(values, dtype=torch.bool)
    if count >= flat.numel():
        return torch.ones_like(values, dtype=torch.bool)
    threshold = torch.kthvalue(flat, count).values
    chosen = flat < threshold
    ties = flat == threshold
    remaining = count - int(chosen.sum())
    chosen |= ties & (torch.cumsum(ties, 0) <= remaining)
    return chosen.view(values.shape)


def _lowest_per_column(values: torch.Tensor, count: int) -> torch.Tensor:
    """Bool mask of the ``count`` lowest entries of each column (ties: lower row first)."""
    order = torch.sort(values, dim=0, stable=True).indices[:count]
    chosen = torch.zeros_like(values, dtype=torch.bool)
    chosen.scatter_(0, order, True)
    return chosen


def _zero_count(
    rows: int, columns: int, sparsity: float | None, n_m: tuple[int, int] | None, num_zeros: int | None = None
) -> int:
    if n_m is not None:
        n, m = n_m
        if not 0 < n < m or columns % m:
            raise ValueError(f"sparsegpt: N:M={n}:{m} needs 0 < N < M and M dividing {columns} inputs")
        return rows * columns // m * (m - n)
    if num_zeros is not None:
        if not 0 <= num_zeros <= rows * columns:
            raise ValueError(f"sparsegpt: num_zeros={num_zeros!r} must be in [0, {rows * columns}]")
        return int(num_zeros)
    if sparsity is None or not 0 <= sparsity < 1:
        raise ValueError(f"sparsegpt: sparsity={sparsity!r} must be in [0, 1) (or give n_m)")
    return target_zeros(sparsity, rows * columns)


@torch.no_grad()
def sparsegpt_prune(
    weight_out_in: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float | None = None,
    n_m: tuple[int, int] | None = None,
    block_size: int = 128,
    dampening: float = 0.01,
    num_zeros: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune an (out, in) weight with OBS reconstruction; returns ``(keep_mask, updated_weight)``.

    ``hessian`` is (in, in), e.g. X^T X over calibration tokens (its scale does not matter). Give either
    ``sparsity`` (exactly round(sparsity * numel) zeros, or exactly ``num_zeros`` if given) or ``n_m``
    (N kept in every M consecutive inputs of a row). ``num_zeros`` may be every weight (a global ranking
    can ask that of a layer): the layer is then all zeros and the Hessian is not used. The input is not
    modified; the updated weight has the input's dtype and device.
    """
    rows, columns = weight_out_in.shape
    if tuple(hessian.shape) != (columns, columns):
        raise ValueError(f"sparsegpt: hessian has shape {tuple(hessian.shape)}, expected ({columns}, {columns})")
    count = _zero_count(rows, columns, sparsity, n_m, num_zeros)
    if count == 0:
        return torch.ones_like(weight_out_in, dtype=torch.bool), weight_out_in.detach().clone()
    if count == rows * columns:
        return torch.zeros_like(weight_out_in, dtype=torch.bool), torch.zeros_like(weight_out_in)
    upper = _inverse_cholesky_upper(hessian.detach().to(weight_out_in.device, torch.float32), dampening)
    return sparsegpt_sweep(weight_out_in, upper, sparsity, n_m, block_size, num_zeros)


_INNER = 16  # columns per inner sub-block: rank-1 updates stay inside it, the rest is one matrix product


@torch.no_grad()
def sparsegpt_sweep(
    weight_out_in: torch.Tensor,
    upper: torch.Tensor | None,
    sparsity: float | None = None,
    n_m: tuple[int, int] | None = None,
    block_size: int = 128,
    num_zeros: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``sparsegpt_prune`` given U, the upper Cholesky factor of the damped inverse Hessian.

    Layers fed by the same input (q/k/v, gate/up) share one Hessian and so one factor. ``upper`` is not
    used (and may be None) when no weight or every weight is pruned: no reconstruction is left to do.
    """
    rows, columns = weight_out_in.shape
    num_zeros = _zero_count(rows, columns, sparsity, n_m, num_zeros)
    if block_size <= 0:
        raise ValueError(f"sparsegpt: block_size={block_size!r} must be positive")
    inner = _INNER
    if n_m is not None:  # N:M groups must not straddle blocks or sub-blocks
        m = n_m[1]
        block_size = max(m, (block_size // m) * m)
        inner = max(m, (inner // m) * m)
    if num_zeros == 0:
        return torch.ones_like(weight_out_in, dtype=torch.bool), weight_out_in.detach().clone()
    if num_zeros == rows * columns:  # every weight pruned: nothing kept to reconstruct with
        return torch.zeros_like(weight_out_in, dtype=torch.bool), torch.zeros_like(weight_out_in)

    # Work on the transpose (in, out): one input column of W is then one contiguous row, so the
    # per-column updates below touch contiguous memory.
    weight = weight_out_in.detach().t().to(torch.float32, copy=True).contiguous()
    upper = upper.to(weight.device, torch.float32)
    pruned = torch.zeros_like(weight, dtype=torch.bool)
    inverse_diagonal = upper.diagonal().reciprocal().unsqueeze(1)
    scale = torch.zeros_like(weight)  # 1 / U_jj where pruned, 0 where kept
    errors = torch.empty_like(weight)
    bounds = [(start, min(start + block_size, columns)) for start in range(0, columns, block_size)]
    block_zeros = _block_zero_counts(num_zeros, columns, bounds) if n_m is None else None
    for index, (start, stop) in enumerate(bounds):
        if n_m is None:
            # adaptive mask selection: saliency w^2 / U_jj^2 of the weights as updated by earlier blocks
            saliency = weight[start:stop].square() * inverse_diagonal[start:stop].square()
            pruned[start:stop] = _lowest(saliency, block_zeros[index])
            scale[start:stop] = pruned[start:stop] * inverse_diagonal[start:stop]
        for first in range(start, stop, inner):
            last = min(first + inner, stop)
            for column in range(first, last):
                if n_m is not None and (column - start) % n_m[1] == 0:
                    group = slice(column, column + n_m[1])
                    saliency = weight[group].square() * inverse_diagonal[group].square()
                    pruned[group] = _lowest_per_column(saliency, n_m[1] - n_m[0])
                    scale[group] = pruned[group] * inverse_diagonal[group]
                # error of pruning this column (0 where kept), spread over the later columns of the sub-block
                torch.mul(weight[column], scale[column], out=errors[column])
                if column + 1 < last:  # a rank-1 addmm_ (BLAS): far faster on CPU than addr_
                    weight[column + 1 : last].addmm_(
                        upper[column, column + 1 : last, None], errors[column : column + 1], alpha=-1
                    )
            if last < stop:  # the sub-block's errors, applied to the rest of the block at once
                weight[last:stop].addmm_(upper[first:last, last:stop].t(), errors[first:last], alpha=-1)
        if stop < columns:  # lazy batch update of all later columns
            weight[stop:].addmm_(upper[start:stop, stop:].t(), errors[start:stop], alpha=-1)
    weight.masked_fill_(pruned, 0.0)
    return (~pruned).t().contiguous(), weight.t().to(weight_out_in.dtype).contiguous()


class HessianStatistics:
    """Sum of x x^T over calibration tokens for one layer (fp32, in x in)."""

    def __init__(self, in_features: int, device: torch.device):
        self.xtx = torch.zeros((in_features, in_features), dtype=torch.float32, device=device)
        self.tokens = 0

    def update(self, inputs: torch.Tensor) -> None:
        inputs = inputs.to(torch.float32)
        self.xtx.addmm_(inputs.t(), inputs)
        self.tokens += inputs.shape[0]

    def hessian(self) -> torch.Tensor:
        """H = 2/n * sum x x^T, as in the paper (the scale does not change the result)."""
        return self.xtx * (2.0 / max(self.tokens, 1))


@torch.no_grad()
def zero_counts(weights: list[PrunableWeight], config) -> list[int]:
    """Zeros per layer, adding up to exactly round(s * N).

    scope "layer": each layer gets its share (``layer_zero_counts``). scope "global": one magnitude ranking
    over all prunable weights of the dense model decides how many zeros each layer takes (layers with many
    small weights take more); SparseGPT then chooses *which* weights within each layer and reconstructs the
    rest, as usual. (Its own saliencies are not comparable across layers before the layers below are pruned.)
    """
    if config.scope != "global":
        return layer_zero_counts([weight.weight.numel() for weight in weights], config.sparsity)
    tensors = [weight.weight.detach() for weight in weights]
    total = target_zeros(config.sparsity, sum(tensor.numel() for tensor in tensors))
    return [int(keep.numel() - torch.count_nonzero(keep)) for keep in iter_select_smallest(tensors, total, True)]


@register_criterion
class SparseGPTCriterion(CalibratedCriterion):
    name = "sparsegpt"
    needs_calibration = True

    @staticmethod
    def new_statistics(weight: PrunableWeight) -> HessianStatistics:
        return HessianStatistics(weight.in_features, weight.weight.device)

    @torch.no_grad()
    def prune(self, model, weights, config, calibration_data=None) -> MaskSet:
        batches = self.calibration_batches(model, config, calibration_data)
        counts = dict(zip((weight.name for weight in weights), zero_counts(weights, config)))
        masks = MaskSet()

        def prune_block(block_weights, statistics):
            factors: list[tuple[torch.Tensor, torch.Tensor]] = []  # (hessian, factor): shared inputs, one factor
            for weight in block_weights:
                hessian = statistics.pop(weight.name).hessian()
                everything = not config.n_m and counts[weight.name] == weight.weight.numel()
                upper = next((u for h, u in factors if h.shape == hessian.shape and torch.equal(h, hessian)), None)
                if upper is None and not everything:  # a layer that loses every weight needs no factor
                    upper = _inverse_cholesky_upper(hessian, config.sparsegpt_dampening, weight.name)
                    factors.append((hessian, upper))
                keep, updated = sparsegpt_sweep(
                    weight.as_out_in(weight.weight),
                    upper,
                    n_m=config.n_m,
                    block_size=config.sparsegpt_block_size,
                    num_zeros=None if config.n_m else counts[weight.name],
                )
                weight.weight.copy_(weight.as_out_in(updated))
                masks.set(weight.name, weight.as_out_in(keep).contiguous())

        layer_by_layer(model, weights, batches, self.new_statistics, prune_block)
        return masks
