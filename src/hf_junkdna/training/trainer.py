"""SparseTrainer: a drop-in ``Trainer`` that prunes at construction and fine-tunes under one of four regimes.

With plain ``TrainingArguments`` and no sparsity keyword it is the stock ``Trainer`` (regime "dense"). It
overrides four methods, each a thin wrapper around ``super()``: ``log`` (adds sparsity to the training
logs, so every ``report_to`` integration shows it), ``_save_checkpoint`` and ``save_model`` (write the
masks next to the weights, atomically, on the main process) and ``train`` (reads the masks back from the
checkpoint it resumes from), plus ``_clip_grad_norm``, which masks the gradients right before clipping so
the clipped norm is the sparse model's (measured cheaper than masking in per-parameter gradient hooks,
which the callbacks use under the stock Trainer; under DeepSpeed, which clips inside its own step, the
binding masks the reduced gradients there). Everything else, the regime itself included, is a callback.

Distributed (docs/distributed.md): a DeepSpeed config the masks cannot serve is refused at construction; a
model ZeRO-3 partitioned at load (zero.Init) is pruned by magnitude slice by slice (``backends.deepspeed``);
under ZeRO and FSDP2, ranks other than the main one keep only their shards of the masks (``.masks`` is then
a ``ShardMaskSet``) and read theirs from the checkpoint's mask file on resume.
"""

from __future__ import annotations

import os
from typing import Any

from transformers import Trainer, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME

from ..config import SparsityConfig
from ..masks import MASKS_FILE_NAME, MaskMismatchError, MaskSet
from ..pruning import get_criterion, prunable_weights_for, prune
from .args import REGIMES, SPARSITY_ARGUMENTS, SparseTrainingArguments
from .backends.deepspeed import apply_partitioned, check_deepspeed_config, prunable_partitioned, prune_partitioned
from .backends.deepspeed import is_partitioned as partitioned
from .backends.shards import ShardMaskSet
from .calibration import calibration_batches
from .callbacks import REGIME_CALLBACKS, MaskRegimeCallback

MASKS_NAME = MASKS_FILE_NAME  # written into every checkpoint and next to save_model's weights


class SparseTrainer(Trainer):
    """``Trainer`` plus pruning and the fine-tuning regimes of the Junk DNA study.

    Args (beyond ``Trainer``'s):
        sparsity_config: how to prune ("sparse", "sparse_to_dense") or which weights to freeze ("freeze":
            its ``sparsity`` is the frozen fraction) when ``args`` are plain ``TrainingArguments``.
        masks: a precomputed ``MaskSet`` (True = kept / trainable) instead of pruning.
        regime: "dense", "sparse", "freeze" or "sparse_to_dense" when ``args`` do not say it. Defaults to
            "sparse" when ``sparsity_config`` or ``masks`` is given, else "dense".
        calibration_data: batches for wanda/sparsegpt; by default ``num_calibration_samples`` examples of
            the train dataset through the Trainer's data collator.

    Every inconsistency (unknown regime, sparsity settings with "dense", settings given twice, masks of
    another model) raises before the model's weights are touched. When ``args.resume_from_checkpoint`` names a
    checkpoint (as the transformers example scripts set it), its masks are used and nothing is pruned again:
    a resumed Wanda/SparseGPT run neither repeats the calibration nor needs its data.
    """

    def __init__(
        self,
        model=None,
        args: TrainingArguments | None = None,
        *trainer_args,
        sparsity_config: SparsityConfig | None = None,
        masks: MaskSet | None = None,
        regime: str | None = None,
        calibration_data: Any = None,
        **trainer_kwargs,
    ):
        regime, sparsity_config, masks = _resolve(args, regime, sparsity_config, masks)
        if regime != "dense":
            if model is None:
                raise ValueError(
                    f"model: regime={regime!r} prunes at construction, so it needs the model (not model_init)"
                )
            if masks is not None:
                _check_masks(masks, model, getattr(args, "mask_path", None))
            elif partitioned(model):  # ZeRO-3 zero.Init: shapes from ds_shape, magnitude only
                prunable_partitioned(model, sparsity_config)
            else:
                prunable_weights_for(model, sparsity_config)  # raises naming include/ignore/N:M misfits
        self.regime_callback: MaskRegimeCallback | None = None
        self._masks: MaskSet | None = None
        super().__init__(model, args, *trainer_args, **trainer_kwargs)
        self.regime = regime
        if regime == "dense":
            return
        if self.model_init is not None:
            raise ValueError("model_init: SparseTrainer prunes the model it is given; pass model, not model_init")
        if self.is_deepspeed_enabled:  # before any weight is touched: a config the masks cannot serve stops here
            # (args.deepspeed or the accelerate launch config: the plugin holds it either way)
            check_deepspeed_config(self.accelerator.state.deepspeed_plugin.deepspeed_config)
        if masks is None:
            masks = self._masks_of_resumed_checkpoint(regime)
        if masks is None:
            masks = self._compute_masks(regime, sparsity_config, calibration_data)
        elif regime != "freeze" and partitioned(self.model):
            apply_partitioned(masks, self.model)  # each rank zeroes its own ZeRO-3 partitions
        elif regime != "freeze":
            masks.apply_to(self.model)
        masks.metadata["regime"] = regime
        self.regime_callback = self._make_callback(regime, masks)  # holds the masks from here on (see .masks)
        self.add_callback(self.regime_callback)

    @property
    def masks(self) -> MaskSet | None:
        """The masks (True = kept / trainable). Under ZeRO/FSDP2, ranks that do not save checkpoints hold only
        their shards once training starts (a ``ShardMaskSet``); the main process keeps the full set."""
        return self.regime_callback.masks if self.regime_callback is not None else self._masks

    @masks.setter
    def masks(self, value: MaskSet | None) -> None:
        if self.regime_callback is not None:
            self.regime_callback.set_masks(value)
        else:
            self._masks = value

    # ------------------------------------------------------------ construction
    def _compute_masks(self, regime: str, config: SparsityConfig, calibration_data: Any) -> MaskSet:
        if partitioned(self.model):  # ZeRO-3 zero.Init: each rank scores its own partitions, nothing gathered
            return prune_partitioned(self.model, config, keep_full=self.args.should_save, apply=regime != "freeze")
        if regime == "freeze":  # select the smallest weights, touch nothing
            masks = get_criterion("magnitude").compute_masks(prunable_weights_for(self.model, config), config)
            masks.metadata["sparsity_config"] = config.to_dict()
            return masks
        if config.needs_calibration and calibration_data is None:
            calibration_data = calibration_batches(self, config.num_calibration_samples)
        return prune(self.model, config, calibration_data=calibration_data)

    def _masks_of_resumed_checkpoint(self, regime: str) -> MaskSet | None:
        """The masks of ``args.resume_from_checkpoint`` (a path; "True" means the last complete checkpoint in
        ``output_dir``, if any), checked against the model and the regime; None when not resuming."""
        value = getattr(self.args, "resume_from_checkpoint", None)
        if not value:
            return None
        if str(value).lower() == "true":
            value = last_complete_checkpoint(self.args.output_dir, needs_masks=True)
            if value is None:
                return None  # nothing to resume yet: the first run prunes
        return _checkpoint_masks(value, self.model, regime, whole=True)

    def _make_callback(self, regime: str, masks: MaskSet) -> MaskRegimeCallback:
        # no gradient hooks: _clip_grad_norm masks all gradients in one pass (or the pre-step hook does)
        callback_class = REGIME_CALLBACKS[regime]
        if regime == "sparse_to_dense":
            if isinstance(self.args, SparseTrainingArguments):
                return callback_class(masks, grad_hooks=False, **self.args.regrowth_kwargs())
            return callback_class(masks, grad_hooks=False, seed=self.args.seed)
        return callback_class(masks, grad_hooks=False)

    # ----------------------------------------------------------- overrides
    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self.regime_callback is not None and "loss" in logs:  # training logs only, not eval
            logs.update(self.regime_callback.statistics())
        super().log(logs, *args, **kwargs)

    def _clip_grad_norm(self, model):
        binding = self.regime_callback.binding if self.regime_callback is not None else None
        if binding is not None and not binding.masks_before_clip:  # the last backward is done: mask before the norm
            binding.mask_grads(mark=True)
        return super()._clip_grad_norm(model)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call=_internal_call)
        # Also for checkpoints (_internal_call): the parent's _save_checkpoint saves the model first, then
        # the optimizer, the trainer state, and only then rotates old checkpoints away, so a checkpoint that
        # has a trainer_state.json always has its masks, whenever the process is killed.
        self._save_masks(output_dir if output_dir is not None else self.args.output_dir)

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True, **kwargs):
        """Push as a pruned checkpoint (weights + exact mask + card); a dense run pushes as Trainer does."""
        if self.masks is None:
            return super().push_to_hub(commit_message=commit_message, blocking=blocking, **kwargs)
        from ..hub.trainer_integration import push_trainer_to_hub

        return push_trainer_to_hub(self, commit_message=commit_message, blocking=blocking, **kwargs)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir, needs_masks=self.masks is not None)
            if resume_from_checkpoint is None:
                raise ValueError(f"No valid checkpoint found in output directory ({self.args.output_dir})")
        if resume_from_checkpoint and self.regime_callback is not None:
            self._load_masks(resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    # ------------------------------------------------------------- masks files
    def _save_masks(self, output_dir: str) -> None:
        if self.masks is not None and self.args.should_save:
            self.masks.save(os.path.join(output_dir, MASKS_NAME))  # atomic: temp file + rename

    def _load_masks(self, checkpoint: str) -> None:
        # ranks that do not write checkpoints read only their shards' bits from the file, when they bind
        self.masks = _checkpoint_masks(checkpoint, self.model, self.regime, whole=self.args.should_save)


def _checkpoint_masks(checkpoint: str, model, regime: str, whole: bool) -> MaskSet:
    """The masks saved in ``checkpoint``, checked against the model and the regime (a ShardMaskSet that reads
    its ranges on demand unless ``whole``)."""
    path = os.path.join(checkpoint, MASKS_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"resume_from_checkpoint={checkpoint!r} has no {MASKS_NAME}: it was not written by a SparseTrainer "
            f"with regime {regime!r}, so its masks are unknown"
        )
    masks = MaskSet.load(path) if whole else ShardMaskSet.from_file(path)
    _check_masks(masks, model, path)
    saved_regime = masks.metadata.get("regime")
    if saved_regime not in (None, regime):
        raise ValueError(f"{path!r} holds masks of regime {saved_regime!r}, but this trainer's is {regime!r}")
    return masks


def last_complete_checkpoint(output_dir: str, needs_masks: bool) -> str | None:
    """The newest checkpoint-N folder that was written to the end (trainer state, and masks if needed).

    A process killed while saving leaves a newest folder without ``trainer_state.json`` (the parent writes
    it after the weights and masks, and rotates old checkpoints only after that): resuming skips it.
    """
    if not os.path.isdir(output_dir):
        return None
    numbered = []
    for name in os.listdir(output_dir):
        prefix, _, step = name.partition("-")
        if prefix == "checkpoint" and step.isdigit() and os.path.isdir(os.path.join(output_dir, name)):
            numbered.append((int(step), os.path.join(output_dir, name)))
    for _, folder in sorted(numbered, reverse=True):
        complete = os.path.isfile(os.path.join(folder, TRAINER_STATE_NAME))
        if complete and (not needs_masks or os.path.isfile(os.path.join(folder, MASKS_NAME))):
            return folder
    return None


def _resolve(args, regime, sparsity_config, masks) -> tuple[str, SparsityConfig | None, MaskSet | None]:
    """Merge the arguments and the keywords into (regime, config, masks); raise on any contradiction."""
    if sparsity_config is not None and not isinstance(sparsity_config, SparsityConfig):
        raise TypeError(f"sparsity_config must be a SparsityConfig, got {type(sparsity_config).__name__}")
    if masks is not None and not isinstance(masks, MaskSet):
        raise TypeError(f"masks must be a MaskSet, got {type(masks).__name__}")
    if regime is not None and regime not in REGIMES:
        raise ValueError(f"regime={regime!r} is not a regime; choose one of {REGIMES}")
    if isinstance(args, SparseTrainingArguments) and args.regime != "dense":
        if regime is not None and regime != args.regime:
            raise ValueError(f"regime={regime!r} contradicts args.regime={args.regime!r}; give it once")
        regime = args.regime
        # every field that would go into the SparsityConfig: none may be dropped silently in favour of a keyword
        explicit = args._given([*SPARSITY_ARGUMENTS.values(), "freeze_fraction"])
        if sparsity_config is not None and explicit:
            raise ValueError(
                f"sparsity_config was given and so was args.{explicit[0]}; give the sparsity settings once"
            )
        shaping = [name for name in explicit if name != "num_calibration_samples"]  # masks need no calibration
        if masks is not None and (shaping or args.mask_path):
            given = f"args.{shaping[0]}" if shaping else "args.mask_path"
            raise ValueError(f"masks were given and so was {given}, which says how to make them; give one")
        if masks is None and args.mask_path is not None:
            masks = MaskSet.load(args.mask_path)
        if masks is None and sparsity_config is None:
            sparsity_config = args.sparsity_config()
    regime = regime or ("sparse" if (sparsity_config is not None or masks is not None) else "dense")
    if regime == "dense":
        if sparsity_config is not None or masks is not None:
            given = "sparsity_config" if sparsity_config is not None else "masks"
            raise ValueError(f"regime='dense' fine-tunes every weight, but {given} was given; pick another regime")
        return regime, None, None
    if masks is None and sparsity_config is None:
        sparsity_config = SparsityConfig()
    if regime == "freeze" and sparsity_config is not None and sparsity_config.method != "magnitude":
        raise ValueError(
            f"sparsity_config.method={sparsity_config.method!r} with regime='freeze': frozen weights are the "
            "smallest-magnitude ones, use method='magnitude'"
        )
    return regime, sparsity_config, masks


def _check_masks(masks: MaskSet, model, source: str | None) -> None:
    try:
        masks.check_compatible(model)
    except MaskMismatchError as error:
        where = f"mask file {source!r}: " if source else "masks: "
        raise MaskMismatchError(f"{where}{error}") from error
