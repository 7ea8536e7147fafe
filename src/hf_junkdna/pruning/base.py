"""The contract every pruning criterion follows."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from ..config import SparsityConfig
from ..masks import MaskSet
from ..targets import PrunableWeight


class PruningCriterion:
    """Turns a model (and, if needed, calibration data) into keep-masks and prunes the model in place.

    ``prune`` is called only after ``hf_junkdna.prune`` has validated every input (config, shapes,
    calibration data), so a criterion may assume valid input. Criteria that only score weights (magnitude,
    Wanda) build every mask before touching the model; SparseGPT, which also updates kept weights, works
    block by block.
    """

    name: ClassVar[str]
    needs_calibration: ClassVar[bool] = False

    def prune(
        self, model: nn.Module, weights: list[PrunableWeight], config: SparsityConfig, calibration_data: Any = None
    ) -> MaskSet:
        raise NotImplementedError


def selection_scope(config: SparsityConfig, layer_scope: str = "layer") -> str:
    """Map the config's scope to a selection scope; ``layer_scope`` lets Wanda compare within rows."""
    return "global" if config.scope == "global" else layer_scope
