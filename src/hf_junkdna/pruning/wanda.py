"""Wanda (Sun et al., 2023): the score of weight W_ij is |W_ij| * ||X_j||_2.

``X_j`` is input feature j of the layer over all calibration tokens, so the only statistic is one sum of
squares per input feature. Patterns:

- scope "layer" (the default, as in the paper): weights compete within each output row
  (selection scope "row"). As for magnitude pruning, the layers' zero counts come from
  ``layer_zero_counts``: each layer close to s * n_layer (see its docstring), the total exactly round(s * N); a
  layer's count is spread over its rows as evenly as possible (``select_per_row``). Calibration is
  sequential: block k is scored on the outputs of the already pruned blocks < k.
- N:M: the N highest scores of every M consecutive inputs of a row are kept (also sequential).
- scope "global": one ranking over all prunable weights of the model. A global threshold needs every
  layer's scores at once, so the statistics come from ONE pass over the *dense* model (no sequential
  pruning), then the exact global selection runs over scores computed on the fly, layer by layer (no
  concatenation, no resident copy of all scores).

For one set of statistics the masks nest: higher sparsity only adds zeros.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..masks import MaskSet
from ..targets import PrunableWeight
from .calibration import CalibratedCriterion, layer_by_layer
from .registry import register_criterion
from .selection import iter_select, layer_zero_counts, select_n_m, select_per_row, target_zeros


def wanda_scores(weight_out_in: torch.Tensor, input_sq_norm: torch.Tensor) -> torch.Tensor:
    """|W_ij| * sqrt(input_sq_norm_j) in fp32 for an (out, in) weight; ``input_sq_norm`` = sum of x_j^2."""
    norm = input_sq_norm.detach().to(device=weight_out_in.device, dtype=torch.float32).sqrt()
    return weight_out_in.detach().abs().float() * norm.unsqueeze(0)


def wanda_keep_mask(
    weight_out_in: torch.Tensor,
    input_sq_norm: torch.Tensor,
    sparsity: float = 0.5,
    n_m: tuple[int, int] | None = None,
    num_zeros: int | None = None,
) -> torch.Tensor:
    """Keep-mask (out, in) of one layer: N:M, or ``num_zeros`` (default round(sparsity * numel)) zeros
    compared within rows and spread evenly over them."""
    scores = wanda_scores(weight_out_in, input_sq_norm)
    if n_m is not None:
        return select_n_m(scores, *n_m)
    return select_per_row(scores, target_zeros(sparsity, scores.numel()) if num_zeros is None else num_zeros)


class SquaredNormStatistics:
    """Per-input-feature sum of squares over calibration tokens (fp32, ``in_features`` numbers)."""

    def __init__(self, in_features: int, device: torch.device):
        self.sum_sq = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.tokens = 0

    def update(self, inputs: torch.Tensor) -> None:
        self.sum_sq += torch.linalg.vector_norm(inputs, ord=2, dim=0, dtype=torch.float32).square()
        self.tokens += inputs.shape[0]


class LazyWandaScores(Sequence):
    """Wanda scores per weight, in the weight's own shape, computed when accessed (global selection never
    holds them all). ``dense`` maps names to weights to score instead of the live ones (a sweep's snapshot)."""

    def __init__(
        self,
        weights: Sequence[PrunableWeight],
        statistics: Mapping[str, SquaredNormStatistics],
        dense: Mapping[str, torch.Tensor] | None = None,
    ):
        self._weights = list(weights)
        self._statistics = statistics
        self._dense = dense

    def __len__(self) -> int:
        return len(self._weights)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        weight = self._weights[index]
        values = self._dense[weight.name] if self._dense is not None else weight.weight
        norms = self._statistics[weight.name].sum_sq
        return weight.as_out_in(wanda_scores(weight.as_out_in(values), norms))


@register_criterion
class WandaCriterion(CalibratedCriterion):
    name = "wanda"
    needs_calibration = True

    @staticmethod
    def new_statistics(weight: PrunableWeight) -> SquaredNormStatistics:
        return SquaredNormStatistics(weight.in_features, weight.weight.device)

    @torch.no_grad()
    def prune(self, model, weights, config, calibration_data=None) -> MaskSet:
        batches = self.calibration_batches(model, config, calibration_data)
        if config.effective_scope == "global":
            return self._prune_global(model, weights, config, batches)
        counts = dict(
            zip((w.name for w in weights), layer_zero_counts([w.weight.numel() for w in weights], config.sparsity))
        )
        masks = MaskSet()

        def prune_block(block_weights, statistics):
            for weight in block_weights:  # one layer's scores resident at a time
                keep = weight.as_out_in(
                    wanda_keep_mask(
                        weight.as_out_in(weight.weight),
                        statistics[weight.name].sum_sq,
                        n_m=config.n_m,
                        num_zeros=counts[weight.name],
                    )
                ).contiguous()
                weight.weight.masked_fill_(~keep, 0)  # masked_fill, not mul: no -0.0
                masks.set(weight.name, keep)

        layer_by_layer(model, weights, batches, self.new_statistics, prune_block)
        return masks

    def _prune_global(self, model, weights, config, batches) -> MaskSet:
        """Dense one-pass statistics, then one exact ranking over all layers (see the module docstring)."""
        statistics = layer_by_layer(model, weights, batches, self.new_statistics)
        masks = MaskSet()
        scores = LazyWandaScores(weights, statistics)
        selected = iter_select(scores, [weight.input_dim for weight in weights], config.sparsity, "global")
        for weight, keep in zip(weights, selected):
            masks.set(weight.name, keep)
        masks.apply_to(model)
        return masks
