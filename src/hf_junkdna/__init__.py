"""hf_junkdna: prune, fine-tune and publish sparse Hugging Face models, and measure how much sparsity
each task tolerates (the "Junk DNA Hypothesis" study as a tool)."""

__version__ = "0.1.0.dev0"

from .config import SparsityConfig, SparsityConfigError
from .masks import MaskMismatchError, MaskSet
from .pruning import prune
from .targets import NoPrunableWeightsError, find_blocks, find_prunable_weights

__all__ = [
    "SparsityConfig",
    "SparsityConfigError",
    "MaskSet",
    "MaskMismatchError",
    "prune",
    "find_prunable_weights",
    "find_blocks",
    "NoPrunableWeightsError",
]
