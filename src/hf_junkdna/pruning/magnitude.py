"""Magnitude pruning: the score of a weight is |w|."""

from __future__ import annotations

import torch

from ..masks import MaskSet
from .base import PruningCriterion, selection_scope
from .registry import register_criterion
from .selection import iter_select


@register_criterion
class MagnitudeCriterion(PruningCriterion):
    name = "magnitude"
    needs_calibration = False

    @torch.no_grad()
    def compute_masks(self, weights, config) -> MaskSet:
        """Masks only; the model is not touched. Scores are the weights themselves (absolute=True: no copy)."""
        masks = MaskSet()
        tensors = [weight.weight.detach() for weight in weights]
        selected = iter_select(
            tensors,
            [weight.input_dim for weight in weights],
            config.sparsity,
            selection_scope(config),
            config.n_m,
            absolute=True,
        )
        for weight, keep in zip(weights, selected):
            masks.set(weight.name, keep)  # packed at once: never more than one bool mask resident
        return masks

    def prune(self, model, weights, config, calibration_data=None) -> MaskSet:
        masks = self.compute_masks(weights, config)
        masks.apply_to(model)
        return masks
