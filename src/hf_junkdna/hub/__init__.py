"""Pruned checkpoints on disk and on the Hub: weights + mask sidecar + metadata + plots + model card.

- ``save_pruned(model, folder, masks, ...)``: a transformers folder stock ``from_pretrained`` loads, plus the mask.
- ``push_pruned_to_hub(model, repo_id, masks, ...)``: the same folder, pushed in one commit.
- ``load_pruned(repo_id_or_path, ...) -> (model, masks)``: back from the Hub or a folder, checked.

File layout: ``hub/layout.py``; results format: ``hub/results.py``; compressed format: ``hub/compressed.py``.
"""

from .errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    HubPushError,
    MaskFileError,
    PrunedCheckpointError,
    RevisionNotFoundError,
)
from .layout import CURVE_NAME, MASKS_NAME, RESULTS_NAME, SPARSITY_CONFIG_NAME
from .load import load_pruned
from .push import push_pruned_to_hub
from .save import save_pruned

__all__ = [
    "save_pruned",
    "push_pruned_to_hub",
    "load_pruned",
    "PrunedCheckpointError",
    "CheckpointNotFoundError",
    "RevisionNotFoundError",
    "MaskFileError",
    "CorruptCheckpointError",
    "HubPushError",
    "MASKS_NAME",
    "SPARSITY_CONFIG_NAME",
    "RESULTS_NAME",
    "CURVE_NAME",
]
