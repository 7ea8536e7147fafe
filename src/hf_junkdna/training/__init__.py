"""Fine-tuning under the study's four regimes: SparseTrainingArguments, SparseTrainer and the regime callbacks."""

from .args import REGIMES, SparseTrainingArguments
from .callbacks import (
    REGIME_CALLBACKS,
    FreezeRegimeCallback,
    MaskRegimeCallback,
    SparseRegimeCallback,
    SparseToDenseRegimeCallback,
)
from .mask_binding import MaskBinding, UnsupportedBackendError
from .trainer import MASKS_NAME, SparseTrainer

__all__ = [
    "SparseTrainer",
    "SparseTrainingArguments",
    "REGIMES",
    "MASKS_NAME",
    "MaskRegimeCallback",
    "SparseRegimeCallback",
    "FreezeRegimeCallback",
    "SparseToDenseRegimeCallback",
    "REGIME_CALLBACKS",
    "MaskBinding",
    "UnsupportedBackendError",
]
