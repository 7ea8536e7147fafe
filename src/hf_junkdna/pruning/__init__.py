"""Pruning: scores (magnitude, wanda, sparsegpt) -> selection (global, per layer, N:M) -> masks."""

from . import magnitude, sparsegpt, wanda  # noqa: F401  (each registers its criterion)
from .api import prunable_weights_for, prune, resolve_config
from .registry import PRUNING_CRITERIA, get_criterion, register_criterion

__all__ = [
    "prune",
    "prunable_weights_for",
    "resolve_config",
    "PRUNING_CRITERIA",
    "get_criterion",
    "register_criterion",
]
