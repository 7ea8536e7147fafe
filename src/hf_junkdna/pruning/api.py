"""``prune(model, config, calibration_data)``: validate everything, then let the criterion prune."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..config import SparsityConfig, SparsityConfigError
from ..masks import MaskSet
from ..targets import PrunableWeight, find_prunable_weights
from .registry import get_criterion


def resolve_config(config: SparsityConfig | dict | None = None, **overrides: Any) -> SparsityConfig:
    if config is None:
        return SparsityConfig(**overrides)
    if isinstance(config, dict):
        return SparsityConfig.from_dict({**config, **overrides})
    if not isinstance(config, SparsityConfig):
        raise TypeError(f"config must be a SparsityConfig or a dict, got {type(config).__name__}")
    # Always a fresh, validated copy: fields may have been changed since the config was created.
    return SparsityConfig.from_dict({**config.to_dict(), **overrides})


def prunable_weights_for(model: nn.Module, config: SparsityConfig) -> list[PrunableWeight]:
    """The weights ``config`` would prune, checked against its pattern (raises naming the first misfit)."""
    weights = find_prunable_weights(model, config.include, config.ignore)
    n_m = config.n_m
    if n_m is not None:
        for weight in weights:
            if weight.in_features % n_m[1]:
                raise SparsityConfigError(
                    f"pattern={config.pattern!r}: {weight.name} has {weight.in_features} input features, which "
                    f"M={n_m[1]} does not divide; exclude it with ignore=[...] or pick another M"
                )
    return weights


def describe_model(model: nn.Module) -> dict[str, Any]:
    config = getattr(model, "config", None)
    return {
        "model_class": type(model).__name__,
        "base_model": getattr(config, "_name_or_path", None) or None,
        "model_type": getattr(config, "model_type", None),
    }


def prune(
    model: nn.Module, config: SparsityConfig | dict | None = None, calibration_data: Any = None, **overrides: Any
) -> MaskSet:
    """Prune ``model`` in place and return its masks (True = kept).

    Every input is validated before the model is touched: a bad config, an N:M pattern whose M does not
    divide a layer's input dimension, an include/ignore pattern that matches nothing, a model without
    prunable weights, or a calibration-based method without ``calibration_data`` raise a ValueError that
    names the offending parameter, and leave the model as it was.
    """
    config = resolve_config(config, **overrides)
    criterion = get_criterion(config.method)
    weights = prunable_weights_for(model, config)
    if criterion.needs_calibration and calibration_data is None:
        raise ValueError(
            f"calibration_data: method={config.method!r} scores weights by their input activations and needs "
            "calibration data (a list of tokenized batches / input_ids tensors, or a DataLoader)"
        )
    if hasattr(criterion, "validate"):
        criterion.validate(model, weights, config, calibration_data)
    masks = criterion.prune(model, weights, config, calibration_data)
    masks.metadata.update({"sparsity_config": config.to_dict(), **describe_model(model)})
    return masks
