"""``save_pruned``: a pruned model as a transformers folder + mask sidecar + metadata + plots + card."""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..experiments.tolerance import DEFAULT_THRESHOLD
from ..masks import MaskSet
from .atomic import atomic_directory
from .card import CardInputs, build_model_card, looks_like_repo_id
from .compressed import compress_folder
from .layout import (
    CARD_NAME,
    CURVE_NAME,
    FORMAT,
    FORMAT_VERSION,
    MASKS_NAME,
    RESULTS_NAME,
    SPARSITY_CONFIG_NAME,
    WEIGHTS_DENSE,
    WEIGHTS_SPARSE_BITMASK,
    ZERO_REGIMES,
    check_regime,
    is_pruned_folder,
    library_versions,
    write_json,
)
from .plots import plot_sparsity_curves
from .results import curves, normalize_results

logger = logging.getLogger(__name__)


def _difficulty(difficulty: Any) -> tuple[str | None, Any]:
    """``{"measure": ..., "value": ...}`` or ``(measure, value)`` or just a measure name -> (measure, value)."""
    if difficulty is None:
        return None, None
    if isinstance(difficulty, Mapping):
        unknown = sorted(set(difficulty) - {"measure", "value"})
        if unknown or "measure" not in difficulty:
            raise ValueError(f"difficulty={dict(difficulty)!r}: expected {{'measure': str, 'value': number or str}}")
        return str(difficulty["measure"]), difficulty.get("value")
    if isinstance(difficulty, str):
        return difficulty, None
    if isinstance(difficulty, Sequence) and len(difficulty) == 2:
        return str(difficulty[0]), difficulty[1]
    raise ValueError(f"difficulty={difficulty!r}: expected {{'measure': ..., 'value': ...}} or (measure, value)")


_INT_VIEWS = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def nonzero(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor != 0`` as a bool tensor, computed on the integer bits of floats (fast for bf16 on CPU; -0.0 is 0)."""
    size = tensor.element_size()
    if tensor.is_floating_point() and size in _INT_VIEWS:
        return tensor.view(_INT_VIEWS[size]).bitwise_and((1 << (8 * size - 1)) - 1).ne(0)
    return tensor.ne(0)


@torch.no_grad()
def zero_counts(model: nn.Module, masks: MaskSet) -> dict[str, tuple[int, int]]:
    """name -> (zeros in the weight, non-zeros where the mask says pruned), for every masked weight."""
    parameters = dict(model.named_parameters())
    counts = {}
    for name in masks.names():
        weight = parameters[name].detach()
        present = nonzero(weight)
        zeros = weight.numel() - int(present.sum())
        counts[name] = (zeros, int(present.logical_and_(~masks.get(name, device=weight.device)).sum()))
    return counts


def redact(text: str | None, secrets: Iterable[str | None]) -> str | None:
    if text is None:
        return None
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    return text


def save_pruned(
    model: nn.Module,
    save_directory: str | os.PathLike,
    masks: MaskSet,
    *,
    results: Iterable[Mapping[str, Any]] | None = None,
    regime: str | None = None,
    tokenizer: Any = None,
    task: str | None = None,
    difficulty: Mapping[str, Any] | tuple | str | None = None,
    command: str | None = None,
    compressed: bool = False,
    threshold: float = DEFAULT_THRESHOLD,
    base_model: str | None = None,
    model_name: str | None = None,
    license: str | None = None,
    language: str | list[str] | None = None,
    datasets: str | list[str] | None = None,
    tags: str | Iterable[str] | None = None,
    max_shard_size: int | str | None = None,
    _secrets: Iterable[str | None] = (),
    _repo_id: str | None = None,
) -> Path:
    """Save a pruned model so that stock ``from_pretrained`` loads it and ``load_pruned`` also gets its mask back.

    Writes (see ``hub/layout.py``) the weights through ``model.save_pretrained`` (safetensors, sharded by
    ``max_shard_size``), the tokenizer if given, ``sparsity_masks.safetensors`` (packed masks), ``sparsity_config.json``
    (sparsity config, regime, overall and per-layer sparsity, task, difficulty, tolerance, library versions, format
    version), with ``results`` also ``sparsity_results.json`` and ``sparsity_curve.png``, and ``README.md`` (the card).

    Args:
        masks: the MaskSet of ``prune`` (or of the trainer); must fit the model's parameters.
        results: evaluation points, a list of dicts documented in ``hf_junkdna.hub.results``.
        regime: "dense", "sparse", "freeze" or "sparse_to_dense" (default: ``masks.metadata["regime"]``, else
            "sparse"). For "sparse" every pruned weight must be 0, or nothing is written.
        task / difficulty: the task name and its difficulty, ``{"measure": "training data fraction", "value": 0.25}``.
        command: the command that reproduces the model (shown in the card).
        compressed: store the masked weights in compressed-tensors' sparse-bitmask layout (``hub/compressed.py``).
        threshold: normalised-score threshold of the sparsity tolerance (default 0.99).
        base_model / model_name / license / language / datasets: card metadata (``base_model`` defaults to the
            masks' metadata, else ``config._name_or_path``; only a Hub repo id is published).
        tags: extra card tags, added after the library's own (``hf_junkdna``, ``sparse``, ``pruned``, the method).

    The folder is built beside ``save_directory`` and moved into place at the end: if anything fails, an existing
    ``save_directory`` is left as it was. ``save_directory`` must be new, empty, or an earlier save_pruned folder.
    Returns the folder's path.
    """
    if not isinstance(masks, MaskSet):
        raise TypeError(f"masks must be a MaskSet (from hf_junkdna.prune), got {type(masks).__name__}")
    if not hasattr(model, "save_pretrained") or getattr(model, "config", None) is None:
        raise TypeError(f"save_pruned needs a transformers PreTrainedModel, got {type(model).__name__}")
    masks.check_compatible(model)
    regime = check_regime(regime or masks.metadata.get("regime") or "sparse")
    counts = zero_counts(model, masks)
    offending = {name: bad for name, (_, bad) in counts.items() if bad}
    if regime in ZERO_REGIMES and offending:
        first = next(iter(offending))
        raise ValueError(
            f"regime={regime!r} promises zeros where the mask says pruned, but {sum(offending.values())} such weights "
            f"are non-zero (first: {first!r}, {offending[first]}); re-apply the mask (masks.apply_to(model)) or give "
            "the right regime"
        )
    weight_zero_fraction = sum(zeros for zeros, _ in counts.values()) / max(masks.num_weights(), 1)
    points = normalize_results(results)
    measure, value = _difficulty(difficulty)
    if not threshold > 0:
        raise ValueError(f"threshold={threshold!r} must be positive")
    secrets = list(_secrets)
    command = redact(command, secrets)

    metadata = dict(masks.metadata)
    config_dict = metadata.get("sparsity_config") or {}
    method = config_dict.get("method", "unknown")
    pattern = config_dict.get("pattern", "unstructured")
    scope = config_dict.get("scope")
    config = model.config
    base_model = base_model or metadata.get("base_model") or getattr(config, "_name_or_path", None) or None
    if base_model and not looks_like_repo_id(base_model):
        base_model = os.path.basename(os.path.normpath(base_model)) or None  # never publish a local path
    model_class = type(model).__name__
    curve_list = curves(points, threshold)
    weights_format = WEIGHTS_SPARSE_BITMASK if compressed else WEIGHTS_DENSE
    versions = library_versions()
    target = Path(save_directory)
    name = model_name or _repo_id or target.name

    with atomic_directory(target, is_pruned_folder) as staging:
        save_kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
        model.save_pretrained(staging, **save_kwargs)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        if compressed:
            structure = "unstructured" if pattern == "unstructured" else pattern
            compress_folder(staging, masks.names(), masks.sparsity(), structure)
        # base_model replaced too: the masks' own metadata may hold the local folder the model came from
        _save_masks(masks, staging / MASKS_NAME, {**metadata, "regime": regime, "base_model": base_model})
        has_curve = bool(points) and plot_sparsity_curves(
            curve_list, staging / CURVE_NAME, threshold, title=task or name
        )
        if points:
            write_json(staging / RESULTS_NAME, {"threshold": threshold, "results": [p.to_dict() for p in points]})
        record = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "masks_file": MASKS_NAME,
            "weights_format": weights_format,
            "regime": regime,
            "sparsity_config": config_dict or None,
            "base_model": base_model,
            "model_class": model_class,
            "sparsity": masks.sparsity(),
            "num_weights": masks.num_weights(),
            "num_zeros": masks.num_zeros(),
            "weight_zero_fraction": weight_zero_fraction,
            "per_layer": masks.statistics()["per_layer"],
            "task": task,
            "difficulty": None if measure is None else {"measure": measure, "value": value},
            "threshold": threshold,
            "sparsity_tolerance": [
                {"setting": c.setting, "metric": c.metric, "method": c.method, "pattern": c.pattern,
                 "regime": c.regime, "difficulty": c.difficulty, "tolerance": c.tolerance}
                for c in curve_list
            ],
            "results_file": RESULTS_NAME if points else None,
            "command": command,
            "library_versions": versions,
        }  # fmt: skip
        write_json(staging / SPARSITY_CONFIG_NAME, record)
        card = build_model_card(
            CardInputs(
                model_name=name,
                repo_or_path=_repo_id or f"path/to/{target.name}",
                model_class=model_class,
                masks=masks,
                regime=regime,
                method=method,
                pattern=pattern,
                scope=scope,
                weights_format=weights_format,
                weight_zero_fraction=weight_zero_fraction,
                threshold=threshold,
                points=points,
                curves=curve_list,
                base_model=base_model,
                task=task,
                difficulty_measure=measure,
                difficulty_value=value,
                command=command,
                versions=versions,
                curve_file=CURVE_NAME if has_curve else None,
                license=license,
                language=language,
                datasets=datasets,
                extra_tags=[tags] if isinstance(tags, str) else list(tags or ()),
            )
        )
        card.save(staging / CARD_NAME)
    logger.info("saved pruned checkpoint (%s weights, sparsity %.4f) to %s", weights_format, masks.sparsity(), target)
    return target


def _save_masks(masks: MaskSet, path: Path, metadata: dict[str, Any]) -> None:
    """MaskSet.save with the regime added to its metadata (the caller's MaskSet is not modified)."""
    view = copy.copy(masks)  # shares the packed tensors, has its own metadata
    view.metadata = metadata
    view.save(path)  # MaskSet.save writes byte-stable files
