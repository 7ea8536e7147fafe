"""hf_junkdna: prune, fine-tune and publish sparse Hugging Face models, and measure how much sparsity
each task tolerates (the "Junk DNA Hypothesis" study as a tool).

The core (config, masks, pruning) imports eagerly; the Trainer and Hub pieces import on first use, so
``import hf_junkdna`` stays cheap for code that only prunes.
"""

__version__ = "0.1.0.dev0"

from .config import SparsityConfig, SparsityConfigError
from .masks import MaskMismatchError, MaskSet
from .pruning import prune
from .targets import NoPrunableWeightsError, find_blocks, find_prunable_weights

_LAZY = {
    "SparseTrainer": "training",
    "SparseTrainingArguments": "training",
    "SparseRegimeCallback": "training",
    "FreezeRegimeCallback": "training",
    "SparseToDenseRegimeCallback": "training",
    "save_pruned": "hub",
    "push_pruned_to_hub": "hub",
    "load_pruned": "hub",
}

__all__ = [
    "SparsityConfig",
    "SparsityConfigError",
    "MaskSet",
    "MaskMismatchError",
    "prune",
    "find_prunable_weights",
    "find_blocks",
    "NoPrunableWeightsError",
    *_LAZY,
]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'hf_junkdna' has no attribute {name!r}")
