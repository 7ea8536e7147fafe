"""SparseTrainingArguments: TrainingArguments plus the regime, the sparsity fields and the regrowth schedule."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from transformers import TrainingArguments

from ..config import SparsityConfig, SparsityConfigError, parse_n_m
from ..masks import MASKS_FILE_NAME
from .schedule import SCHEDULES

REGIMES = ("dense", "sparse", "freeze", "sparse_to_dense")

# SparsityConfig field -> argument name here (prefixed where the bare name would be ambiguous next to
# TrainingArguments). A test checks that every SparsityConfig field has an argument.
SPARSITY_ARGUMENTS = {
    "method": "sparsity_method",
    "sparsity": "sparsity",
    "pattern": "sparsity_pattern",
    "scope": "sparsity_scope",
    "include": "sparsity_include",
    "ignore": "sparsity_ignore",
    "num_calibration_samples": "num_calibration_samples",
    "sparsegpt_block_size": "sparsegpt_block_size",
    "sparsegpt_dampening": "sparsegpt_dampening",
}
REGROWTH_ARGUMENTS = ("regrowth_schedule", "regrowth_end_fraction", "regrowth_stages")


@dataclass
class SparseTrainingArguments(TrainingArguments):
    """``TrainingArguments`` for ``SparseTrainer``.

    ``regime`` picks one of the study's four fine-tuning regimes; the ``sparsity_*`` fields say how the
    model is pruned ("sparse", "sparse_to_dense") or which weights are frozen ("freeze": the
    ``freeze_fraction`` smallest-magnitude ones); ``mask_path`` uses a saved MaskSet instead. Fields left
    at None take the defaults of ``SparsityConfig``. Every inconsistency raises here, before any model is
    loaded, with the field's name in the message.
    """

    # --- regime
    regime: str = field(
        default="dense",
        metadata={
            "help": "Fine-tuning regime: 'dense' (ordinary fine-tuning), 'sparse' (prune, then keep pruned weights "
            "at 0), 'freeze' (keep the smallest weights frozen at their pretrained values) or 'sparse_to_dense' "
            "(prune, then release pruned weights for training gradually).",
            "choices": list(REGIMES),
        },
    )
    # --- what to prune (SparsityConfig fields; None = SparsityConfig's default)
    sparsity_method: str | None = field(
        default=None, metadata={"help": "Pruning criterion: magnitude (default), wanda or sparsegpt."}
    )
    sparsity: float | None = field(
        default=None,
        metadata={"help": "Fraction of prunable weights set to 0, e.g. 0.5 for 50%% (default 0.5; N:M fixes it)."},
    )
    sparsity_pattern: str | None = field(
        default=None, metadata={"help": "'unstructured' (default) or 'N:M', e.g. '2:4'."}
    )
    sparsity_scope: str | None = field(
        default=None,
        metadata={"help": "'global' (one ranking over all prunable weights) or 'layer' (default: the method's)."},
    )
    sparsity_include: list[str] | None = field(
        default=None, metadata={"help": "Regexes of parameter names to prune (default: every prunable weight)."}
    )
    sparsity_ignore: list[str] | None = field(
        default=None, metadata={"help": "Regexes of parameter names never to prune."}
    )
    num_calibration_samples: int | None = field(
        default=None,
        metadata={"help": "Training examples passed through the model to calibrate wanda/sparsegpt (default 128)."},
    )
    sparsegpt_block_size: int | None = field(
        default=None, metadata={"help": "Columns per SparseGPT reconstruction block (default 128)."}
    )
    sparsegpt_dampening: float | None = field(
        default=None, metadata={"help": "SparseGPT Hessian dampening, as a fraction of the mean diagonal."}
    )
    mask_path: str | None = field(
        default=None,
        metadata={
            "help": "A saved MaskSet file (.safetensors), or a folder holding one (save_pruned output, a checkpoint), "
            "to use instead of pruning; it must fit the model."
        },
    )
    # --- freeze
    freeze_fraction: float | None = field(
        default=None,
        metadata={
            "help": "regime 'freeze': fraction in (0, 1) of the smallest-magnitude prunable weights kept frozen at "
            "their pretrained values (default 0.5, i.e. 50%%)."
        },
    )
    # --- sparse_to_dense
    regrowth_schedule: str | None = field(
        default=None,
        metadata={
            "help": "regime 'sparse_to_dense': how the released fraction of pruned weights grows: 'linear' "
            "(default), 'cosine' or 'step' (regrowth_stages equal releases).",
            "choices": list(SCHEDULES),
        },
    )
    regrowth_end_fraction: float | None = field(
        default=None,
        metadata={
            "help": "regime 'sparse_to_dense': fraction of the total training steps by which every pruned weight "
            "is released, in (0, 1] (default 0.5: all trainable after 50%% of the steps)."
        },
    )
    regrowth_stages: int | None = field(
        default=None, metadata={"help": "regime 'sparse_to_dense' with schedule 'step': number of releases (4)."}
    )

    def __post_init__(self):
        self._validate_sparse_fields()
        super().__post_init__()

    # ------------------------------------------------------------ validation
    def _given(self, names) -> list[str]:
        return [name for name in names if getattr(self, name) is not None]

    def _validate_sparse_fields(self) -> None:
        if self.regime not in REGIMES:
            raise ValueError(f"regime={self.regime!r} is not a regime; choose one of {REGIMES}")
        sparsity_given = self._given(SPARSITY_ARGUMENTS.values())
        if self.freeze_fraction is not None:
            fraction = self.freeze_fraction
            if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
                raise ValueError(
                    f"freeze_fraction={fraction!r} must be a number strictly between 0 and 1 (the fraction of "
                    "weights kept frozen)"
                )
        if self.regime == "dense":
            given = sparsity_given + self._given(["mask_path", "freeze_fraction", *REGROWTH_ARGUMENTS])
            if given:
                raise ValueError(
                    f"regime='dense' fine-tunes every weight, but {given[0]}={getattr(self, given[0])!r} was given; "
                    "pick regime 'sparse', 'freeze' or 'sparse_to_dense', or drop the sparsity arguments"
                )
            return
        if self.regime != "freeze" and self.freeze_fraction is not None:
            raise ValueError(
                f"freeze_fraction only applies to regime='freeze' (regime is {self.regime!r}); use sparsity to set "
                "how much is pruned"
            )
        if self.regime != "sparse_to_dense" and self._given(REGROWTH_ARGUMENTS):
            name = self._given(REGROWTH_ARGUMENTS)[0]
            raise ValueError(f"{name} only applies to regime='sparse_to_dense' (regime is {self.regime!r})")
        if self.regime == "freeze":
            if self.sparsity is not None:
                raise ValueError(
                    f"sparsity={self.sparsity!r} with regime='freeze': freeze prunes nothing; set freeze_fraction "
                    "(the fraction of weights kept frozen) instead"
                )
            if self.sparsity_method not in (None, "magnitude"):
                raise ValueError(
                    f"sparsity_method={self.sparsity_method!r} with regime='freeze': the frozen weights are the "
                    "smallest-magnitude ones, so only 'magnitude' applies"
                )
        if self.regime == "sparse_to_dense":
            if self.regrowth_schedule is not None and self.regrowth_schedule not in SCHEDULES:
                raise ValueError(f"regrowth_schedule={self.regrowth_schedule!r}: choose one of {SCHEDULES}")
            end = self.regrowth_end_fraction
            if end is not None and not 0.0 < end <= 1.0:
                raise ValueError(f"regrowth_end_fraction={end!r} must be in (0, 1] (a fraction of the training steps)")
            if self.regrowth_stages is not None and self.regrowth_stages < 1:
                raise ValueError(f"regrowth_stages={self.regrowth_stages!r} must be at least 1")
        if self.mask_path is not None:
            pruning_given = [name for name in sparsity_given if name != "num_calibration_samples"]
            if pruning_given:
                raise ValueError(
                    f"mask_path={self.mask_path!r} fixes the masks, so {pruning_given[0]} cannot also be given"
                )
            if os.path.isdir(self.mask_path):  # a save_pruned folder or a checkpoint: the mask file inside it
                inside = os.path.join(self.mask_path, MASKS_FILE_NAME)
                if not os.path.isfile(inside):
                    raise ValueError(
                        f"mask_path={self.mask_path!r} is a folder without {MASKS_FILE_NAME} (folders written by "
                        "save_pruned and SparseTrainer checkpoints hold one)"
                    )
                self.mask_path = inside
            if not os.path.isfile(self.mask_path):
                raise ValueError(f"mask_path={self.mask_path!r}: no such file")
        else:
            self.sparsity_config()  # validates the sparsity fields now, not at trainer construction

    # ------------------------------------------------------------- accessors
    def sparsity_config(self) -> SparsityConfig | None:
        """The SparsityConfig these arguments describe (None for 'dense' or when ``mask_path`` is given).

        For 'freeze' it is the magnitude selection of ``freeze_fraction`` of the weights (to keep frozen).
        """
        if self.regime == "dense" or self.mask_path is not None:
            return None
        values = {
            config_name: getattr(self, argument)
            for config_name, argument in SPARSITY_ARGUMENTS.items()
            if getattr(self, argument) is not None
        }
        if self.regime == "freeze":
            values["method"] = "magnitude"
            try:
                n_m = parse_n_m(values.get("pattern", "unstructured"))
            except SparsityConfigError as error:
                raise SparsityConfigError(_rename_fields(str(error))) from error
            if n_m is None:
                values["sparsity"] = 0.5 if self.freeze_fraction is None else float(self.freeze_fraction)
            elif self.freeze_fraction is not None and float(self.freeze_fraction) != 1 - n_m[0] / n_m[1]:
                raise SparsityConfigError(
                    f"freeze_fraction={self.freeze_fraction!r} contradicts sparsity_pattern={self.sparsity_pattern!r}, "
                    f"which freezes 1 - N/M = {1 - n_m[0] / n_m[1]:g} of the weights; leave freeze_fraction unset"
                )
            # an N:M pattern fixes the frozen fraction itself (N of every M weights train)
        try:
            return SparsityConfig(**values)
        except SparsityConfigError as error:
            raise SparsityConfigError(_rename_fields(str(error))) from error

    def regrowth_kwargs(self) -> dict:
        """Keyword arguments of ``SparseToDenseRegimeCallback`` (schedule, end_fraction, stages, seed)."""
        return {
            "schedule": self.regrowth_schedule or "linear",
            "end_fraction": 0.5 if self.regrowth_end_fraction is None else float(self.regrowth_end_fraction),
            "stages": 4 if self.regrowth_stages is None else int(self.regrowth_stages),
            "seed": self.seed,
        }


def _rename_fields(message: str) -> str:
    """SparsityConfig names its fields bare ('pattern=...'); name them as the arguments here do."""
    for config_name, argument in SPARSITY_ARGUMENTS.items():
        if argument != config_name:
            message = re.sub(rf"(?<![\w.]){config_name}(?=[=:])", argument, message)
    return message
