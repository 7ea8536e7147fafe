"""One ranking of the prunable weights, masks at many sparsities: what lets a sweep rank once per method.

The selection code (``hf_junkdna.pruning.selection``) prunes the lowest scores with a total tie order, so
for one set of scores the zeros at sparsity s1 are a subset of the zeros at s2 > s1. A sweep therefore
computes the scores once, from the dense weights, and asks :meth:`NestedRanking.masks_at` for each level:

- magnitude: the scores are the dense weights themselves (``|w|``, no copy). The masks equal those of
  ``prune(model, SparsityConfig(method="magnitude", ...))`` on the dense model, level by level.
- Wanda: ``|w| * ||x||`` with the input norms taken in ONE pass of the calibration data through the *dense*
  model. This is a choice: ``prune(method="wanda")`` with the default per-layer scope calibrates sequentially
  (block k sees the already pruned blocks before it, so the statistics depend on the sparsity and masks of
  different levels need not nest). With dense statistics the masks nest and the first block's masks equal
  ``prune``'s exactly; with scope "global" ``prune`` itself uses dense statistics, so all masks are equal.

SparseGPT updates the kept weights while it prunes, so it has no ranking that serves several levels: a sweep
re-prunes it from the dense weights at every level.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..config import SparsityConfig
from ..masks import MaskSet
from ..pruning.api import describe_model
from ..pruning.base import selection_scope
from ..pruning.calibration import check_calibration_fits, layer_by_layer, prepare_calibration_data
from ..pruning.selection import iter_select
from ..pruning.wanda import LazyWandaScores, SquaredNormStatistics
from ..targets import PrunableWeight

NESTED_METHODS = ("magnitude", "wanda")


class NestedRanking:
    """Scores fixed once; ``masks_at(s)`` gives the masks at sparsity ``s``, nested across ``s``."""

    def __init__(
        self,
        weights: Sequence[PrunableWeight],
        scores: Sequence[torch.Tensor],
        config: SparsityConfig,
        scope: str,
        absolute: bool = False,
        metadata: Mapping[str, Any] | None = None,
    ):
        if len(scores) != len(weights):
            raise ValueError(f"got {len(scores)} score tensors for {len(weights)} weights")
        self.weights = list(weights)
        self.scores = scores
        self.config = config
        self.scope = scope
        self.absolute = absolute
        self.metadata = dict(metadata or {})

    @torch.no_grad()
    def masks_at(self, sparsity: float) -> MaskSet:
        """Keep-masks at ``sparsity`` (for N:M patterns only ``1 - N/M`` is valid). The model is not touched."""
        config = self.config.with_sparsity(float(sparsity))  # validates: [0, 1), N:M consistency
        masks = MaskSet(metadata={**self.metadata, "sparsity_config": config.to_dict()})
        dims = [weight.input_dim for weight in self.weights]
        selected = iter_select(self.scores, dims, config.sparsity, self.scope, config.n_m, absolute=self.absolute)
        for weight, keep in zip(self.weights, selected):
            masks.set(weight.name, keep)
        return masks


def magnitude_ranking(
    weights: Sequence[PrunableWeight], config: SparsityConfig, dense: Mapping[str, torch.Tensor] | None = None
) -> NestedRanking:
    """Magnitude scores of the dense weights. ``dense`` maps names to dense copies (e.g. a CPU snapshot);
    without it the live weights are used, which is only right while the model stays dense."""
    tensors = [(dense[weight.name] if dense is not None else weight.weight).detach() for weight in weights]
    return NestedRanking(weights, tensors, config, selection_scope(config), absolute=True)


@torch.no_grad()
def wanda_ranking(
    model: nn.Module,
    weights: Sequence[PrunableWeight],
    config: SparsityConfig,
    calibration_data: Any,
    dense: Mapping[str, torch.Tensor] | None = None,
) -> NestedRanking:
    """Wanda scores with input norms from one calibration pass over ``model``, which must be dense now."""
    if calibration_data is None:
        raise ValueError("calibration_data: method='wanda' needs calibration data (tokenized sequences)")
    batches = prepare_calibration_data(calibration_data, config.num_calibration_samples)
    check_calibration_fits(model, batches)
    statistics = layer_by_layer(
        model, weights, batches, lambda weight: SquaredNormStatistics(weight.in_features, weight.weight.device)
    )
    if dense is None:
        dense = {weight.name: weight.weight.detach().clone() for weight in weights}
    scores = LazyWandaScores(weights, statistics, dense)
    metadata = {"wanda_statistics": "dense", **describe_model(model)}
    # per layer, as WandaCriterion: weights compete within output rows, zeros apportioned exactly over the layers
    return NestedRanking(weights, scores, config, selection_scope(config, "row"), metadata=metadata)


def nested_ranking(
    model: nn.Module,
    weights: Sequence[PrunableWeight],
    config: SparsityConfig,
    calibration_data: Any = None,
    dense: Mapping[str, torch.Tensor] | None = None,
) -> NestedRanking:
    """The ranking of ``config.method`` (one of :data:`NESTED_METHODS`) over ``weights`` of the dense model."""
    if config.method == "magnitude":
        return magnitude_ranking(weights, config, dense)
    if config.method == "wanda":
        return wanda_ranking(model, weights, config, calibration_data, dense)
    raise ValueError(
        f"method={config.method!r} has no nested ranking (it updates weights while pruning); nested methods: "
        f"{NESTED_METHODS}"
    )
