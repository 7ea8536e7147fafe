"""What a pruned checkpoint folder contains: file names, the ``sparsity_config.json`` record, library versions.

A folder written by ``save_pruned`` (and pushed as is by ``push_pruned_to_hub``)::

    config.json, generation_config.json     transformers' own files (stock ``from_pretrained`` reads them)
    model.safetensors                       the weights (or model-0000k-of-0000n.safetensors + model.safetensors.index.json)
    tokenizer files                         when a tokenizer was given
    sparsity_masks.safetensors              the keep-masks, packed 1 bit per weight (``MaskSet.save``)
    sparsity_config.json                    this module's record: config, regime, per-layer sparsity, versions
    sparsity_results.json                   the evaluation results behind the card (only when results were given)
    sparsity_curve.png                      normalised score vs sparsity (only when results were given)
    README.md                               the model card

Nothing in the folder depends on the time it was written, so saving the same model twice gives the same bytes
and a re-push uploads nothing.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from pathlib import Path
from typing import Any

from ..masks import MASKS_FILE_NAME

MASKS_NAME = MASKS_FILE_NAME
SPARSITY_CONFIG_NAME = "sparsity_config.json"
RESULTS_NAME = "sparsity_results.json"
CURVE_NAME = "sparsity_curve.png"
CARD_NAME = "README.md"

FORMAT = "hf_junkdna.pruned_checkpoint"
FORMAT_VERSION = 1

WEIGHTS_DENSE = "dense"
WEIGHTS_SPARSE_BITMASK = "sparse-bitmask"  # compressed-tensors' name for the layout, see hub/compressed.py

# The fine-tuning regimes of the study (DESIGN.md). Only "sparse" promises zeros where the mask says pruned:
# "freeze" keeps the small weights (frozen), "sparse_to_dense" lets them regrow, "dense" ignores the mask.
REGIMES = ("dense", "sparse", "freeze", "sparse_to_dense")
ZERO_REGIMES = ("sparse",)

# Files this library owns in a repo: a push replaces them all, so a stale shard or plot never survives.
OWNED_PATTERNS = (
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "sparsity_*",
)

_VERSIONED_LIBRARIES = ("hf_junkdna", "transformers", "torch", "huggingface_hub", "safetensors")


def library_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Installed versions of the libraries that wrote a checkpoint (distribution name -> version)."""
    versions = {}
    for name in (*_VERSIONED_LIBRARIES, *extra):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            if name == "hf_junkdna":
                from .. import __version__

                versions[name] = __version__
    return versions


def check_regime(regime: str) -> str:
    if regime not in REGIMES:
        raise ValueError(f"regime={regime!r}: choose one of {REGIMES}")
    return regime


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Deterministic JSON (sorted keys, fixed indentation, trailing newline)."""
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True, allow_nan=True) + "\n", encoding="utf-8")


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def is_pruned_folder(folder: str | os.PathLike) -> bool:
    """True if ``folder`` holds a checkpoint written by ``save_pruned`` (its sparsity_config.json says so)."""
    path = Path(folder) / SPARSITY_CONFIG_NAME
    if not path.is_file():
        return False
    try:
        return read_json(path).get("format") == FORMAT
    except (OSError, ValueError):
        return False
