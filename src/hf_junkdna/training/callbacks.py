"""The fine-tuning regimes as TrainerCallbacks; they work with ``SparseTrainer`` and with the stock ``Trainer``.

    masks = prune(model, SparsityConfig(sparsity=0.5))
    Trainer(model, args, train_dataset=..., callbacks=[SparseRegimeCallback(masks)]).train()

Each callback binds its masks at ``on_train_begin`` to the tensors the optimizer updates (``mask_binding``:
hooks on the innermost torch optimizer, so it holds under accelerate's wrapper and in custom loops through
``bind(model, optimizer)``) and unbinds at ``on_train_end``; it keeps no parameter references in between.

- ``SparseRegimeCallback``: pruned weights stay exactly 0 (gradients and optimizer state at pruned
  positions are zeroed; re-zeroing after the step is skipped for optimizers that provably leave them at 0).
- ``FreezeRegimeCallback``: masked-out ("frozen") weights stay bit-identical to their values at the start.
  With AdamW the callback takes the decoupled weight decay of the masked tensors over and applies it to
  their trainable positions only, so frozen weights never move and nothing is stored; for other optimizers
  it keeps the frozen values (only those) and writes them back after every step.
- ``SparseToDenseRegimeCallback``: pruned weights start at 0 and are released for training gradually
  (``schedule``), in a fixed pseudo-random order; their optimizer state is zeroed at release.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from transformers import TrainerCallback

from ..masks import MaskSet
from . import optim_facts
from . import schedule as regrowth
from .backends.shards import ShardMaskSet, packed_storages, slice_bits
from .bitops import keep_bool, scale_by_bits_
from .mask_binding import MaskBinding, MaskedTensor, refuse_fsdp1, unwrap_model


class MaskRegimeCallback(TrainerCallback):
    """Base: binds masks to the optimizer at train begin; subclasses say what happens around each step.

    ``masks``: True = kept (sparse, sparse_to_dense) / trainable (freeze). ``grad_hooks``: also mask each
    gradient in a post-accumulate-grad hook, so gradient clipping sees the sparse model's gradient (the
    pre-step hook masks in any case). It costs more than one pass before the step (benchmark); the stock
    Trainer has no event between backward and clipping, so it is the default here, while ``SparseTrainer``
    turns it off and masks once right before clipping instead.
    """

    regime: ClassVar[str]

    def __init__(self, masks: MaskSet, grad_hooks: bool = True):
        if not isinstance(masks, MaskSet):
            raise TypeError(f"masks must be a MaskSet (hf_junkdna.prune returns one), got {type(masks).__name__}")
        self.masks = masks
        self.grad_hooks = grad_hooks
        self.binding: MaskBinding | None = None

    # ------------------------------------------------------------ lifecycle
    @torch.no_grad()
    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if model is None or optimizer is None:
            raise ValueError(f"{type(self).__name__} needs the model and optimizer from the Trainer's callback kwargs")
        self.bind(
            model, optimizer, step=state.global_step, max_steps=state.max_steps, keep_full_masks=args.should_save
        )

    def on_step_begin(self, args, state, control, **kwargs):
        # a step the optimizer skipped (fp16 overflow) never ran the post-step hook that clears these
        if self.binding is not None:
            self.binding.clear_marks()

    def on_train_end(self, args, state, control, **kwargs):
        self.unbind()

    @torch.no_grad()
    def bind(
        self, model, optimizer, step: int = 0, max_steps: int = 0, keep_full_masks: bool | None = None
    ) -> MaskBinding:
        """Attach to ``optimizer`` (any wrapper around a torch optimizer); usable in custom training loops.

        Under a sharded backend (ZeRO, FSDP2) each rank binds the bits of its own shards; a rank that does not
        keep the full masks (``keep_full_masks``; by default all but rank 0) then drops them and keeps a
        ``ShardMaskSet``: 1 bit per weight of its shards instead of 1 bit per weight of the model.
        """
        self.unbind()
        refuse_fsdp1(model)  # a clear refusal, before FSDP1's flattened names fail the name check
        self.masks.check_compatible(unwrap_model(model))
        binding = MaskBinding(model, optimizer, self.masks, use_grad_hooks=self.grad_hooks)
        if keep_full_masks is None:
            keep_full_masks = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
        if binding.sharded and not keep_full_masks:
            pieces = [(entry.name, entry.offset, entry.numel, entry.bits) for entry in binding.entries]
            self.masks = ShardMaskSet.of_pieces(self.masks, pieces)
        self._prepare(binding, step, max_steps)
        binding.attach(self._pre_step, self._post_step)
        self.binding = binding
        return binding

    def unbind(self) -> None:
        if self.binding is not None:
            self._release(self.binding)
            self.binding.detach()
            self.binding = None

    def set_masks(self, masks: MaskSet) -> None:
        """Replace the masks (e.g. with those of a checkpoint); only between trainings."""
        if self.binding is not None:
            raise RuntimeError("cannot replace the masks while they are bound to an optimizer (during training)")
        self.masks = masks

    # -------------------------------------------------------------- regime
    def _prepare(self, binding: MaskBinding, step: int, max_steps: int) -> None:
        """Bring weights and optimizer state in line with the masks before the first step."""

    def _pre_step(self, binding: MaskBinding) -> None:
        """After the gradients were masked, before the optimizer updates."""

    def _post_step(self, binding: MaskBinding) -> None:
        """After the optimizer updated."""

    def _release(self, binding: MaskBinding) -> None:
        """Before the hooks come off (drop per-training buffers)."""

    # ------------------------------------------------------------- logging
    def statistics(self) -> dict[str, float]:
        """Measured sparsity of the masked weights and the fraction trainable now (empty when not training)."""
        if self.binding is None or not (self.binding.entries or self.binding.sharded):
            return {}  # (a sharded rank without entries still joins the count's collective)
        weights, zeros, trainable = self.binding.count()
        return {"sparsity": zeros / weights, "trainable_fraction": trainable / weights}

    def resident_bytes(self) -> int:
        """Bytes this regime keeps beyond the model and optimizer: packed masks and regime buffers."""
        total = self.masks.resident_bytes()
        if self.binding is not None:
            held = packed_storages(self.masks)
            total += sum(entry.bits.numel() for entry in self.binding.entries if entry.bits.data_ptr() not in held)
        return total


class SparseRegimeCallback(MaskRegimeCallback):
    """Fixed mask: pruned weights are 0 and stay exactly 0; kept weights train."""

    regime = "sparse"

    def _prepare(self, binding, step, max_steps):
        binding.mask_values()  # idempotent for a pruned model; enforces the masks on any other
        binding.mask_state()  # moments of a dense run (or a foreign checkpoint) would move pruned weights
        self._rezero = not optim_facts.keeps_zero_grad_positions(binding.optimizer)

    def _post_step(self, binding):
        if self._rezero:
            binding.mask_values()


class FreezeRegimeCallback(MaskRegimeCallback):
    """Masked-out weights (bit 0) stay bit-identical to their values when training starts; the others train.

    Decoupled weight decay (AdamW) moves weights whose gradient is 0. For optimizers that provably leave
    zero-gradient, zero-state positions alone (``optim_facts``), the decay of the masked tensors is taken
    over: ``p *= 1 - lr * wd`` is applied to their trainable positions only, and for the step they sit in a
    copy of their param group with ``weight_decay`` 0 (the group's other parameters keep AdamW's own decay).
    Frozen weights then never move and nothing but the packed masks is held. For other optimizers (or L2
    decay), and under ZeRO and FSDP2 (whose flat master fragments / DTensor shards cannot change groups), the
    frozen values of this rank's shards, only those, are kept and written back after every step. Under bf16
    ZeRO they are the values the fp32 master starts from: bf16(pretrained) (docs/distributed.md).
    """

    regime = "freeze"
    _guard_weight_decay: ClassVar[bool] = True  # tests switch this off to show the guard is what holds

    def _prepare(self, binding, step, max_steps):
        binding.mask_state()
        optimizer = binding.optimizer
        self._groups = _groups_of(binding.entries)
        self._splits: list[tuple[dict, list]] = []
        keeps = optim_facts.keeps_zero_grad_positions(optimizer)
        # flat master fragments and DTensor shards cannot move between param groups: store the frozen values
        self._take_over_decay = self._guard_weight_decay and keeps and binding.whole_parameters
        needs_restore = (
            not keeps
            or not binding.whole_parameters
            or any(
                optim_facts.weight_decay(group) > 0 and not optim_facts.decouples_weight_decay(optimizer, group)
                for group in self._groups
            )
        )
        if needs_restore and self._guard_weight_decay:
            self._take_over_decay = False
            # frozen values only: a fraction of the model, captured once per parameter (shard) and kept
            # across re-binds, so a second train() still restores the values of the first
            frozen = getattr(self, "_frozen_values", {})
            for entry in binding.entries:
                key = (entry.name, entry.offset)
                if key not in frozen:
                    frozen[key] = entry.tensor.detach()[~keep_bool(entry.bits, entry.numel, entry.tensor.shape)]
            self._frozen_values = frozen
        else:
            self._frozen_values = {}

    def _pre_step(self, binding):
        if not self._take_over_decay:
            return
        optimizer = binding.optimizer
        for group, entries in _entries_by_group(binding.entries):
            decay = optim_facts.weight_decay(group)
            if decay == 0.0 or not optim_facts.decouples_weight_decay(optimizer, group):
                continue  # no decay; or L2 decay, for which _prepare chose the restore path
            factor = 1.0 - optim_facts.learning_rate(group) * decay
            for entry in entries:
                if entry.tensor.grad is not None:  # AdamW skips parameters without a gradient, decay included
                    scale_by_bits_(entry.tensor, entry.bits, on=factor, off=1.0, workspace=binding.workspace)
            # For this step only, the masked tensors move to a copy of their group with weight_decay 0, so
            # the group's other parameters keep AdamW's own (fused) decay and nothing is decayed twice.
            # Optimizer state is keyed by tensor, and the layout is restored before anything else (the LR
            # scheduler, state_dict) looks at the groups.
            masked = {id(entry.tensor) for entry in entries}
            split = {**group, "params": [entry.tensor for entry in entries], "weight_decay": 0.0}
            self._splits.append((group, group["params"]))
            group["params"] = [tensor for tensor in group["params"] if id(tensor) not in masked]
            optimizer.param_groups.append(split)

    def _post_step(self, binding):
        self._restore_groups(binding.optimizer)
        for entry in binding.entries:
            values = self._frozen_values.get((entry.name, entry.offset))
            if values is not None:
                entry.tensor.masked_scatter_(~keep_bool(entry.bits, entry.numel, entry.tensor.shape), values)

    def _restore_groups(self, optimizer):
        if not self._splits:
            return
        del optimizer.param_groups[len(optimizer.param_groups) - len(self._splits) :]
        for group, params in self._splits:
            group["params"] = params
        self._splits.clear()

    def _release(self, binding):
        self._restore_groups(binding.optimizer)  # a step that raised never ran the post-hook

    def set_masks(self, masks: MaskSet) -> None:
        super().set_masks(masks)
        self._frozen_values = {}

    def resident_bytes(self) -> int:
        frozen = sum(v.numel() * v.element_size() for v in getattr(self, "_frozen_values", {}).values())
        return super().resident_bytes() + frozen


class SparseToDenseRegimeCallback(MaskRegimeCallback):
    """Pruned weights start at 0 and are released for training gradually, in a fixed pseudo-random order.

    Before optimizer step ``t`` the fraction ``regrowth.released_fraction(t, max_steps, schedule,
    end_fraction, stages)`` of the pruned weights is trainable (in 256 levels; see ``schedule``); everything
    is trainable from ``ceil(end_fraction * max_steps)`` on. Released weights start from 0 with zero
    optimizer state: gradients and moments at pruned positions are zeroed from the start, and for
    optimizers not known to keep them at 0 (``optim_facts``) they are zeroed again at release.
    """

    regime = "sparse_to_dense"

    def __init__(
        self,
        masks: MaskSet,
        schedule: str = "linear",
        end_fraction: float = 0.5,
        stages: int = 4,
        seed: int = 0,
        grad_hooks: bool = True,
    ):
        super().__init__(masks, grad_hooks=grad_hooks)
        if schedule not in regrowth.SCHEDULES:
            raise ValueError(f"regrowth_schedule={schedule!r}: choose one of {regrowth.SCHEDULES}")
        if not 0.0 < end_fraction <= 1.0:
            raise ValueError(f"regrowth_end_fraction={end_fraction!r} must be in (0, 1]")
        if int(stages) < 1:
            raise ValueError(f"regrowth_stages={stages!r} must be at least 1")
        self.schedule, self.end_fraction, self.stages, self.seed = schedule, float(end_fraction), int(stages), seed
        self._fraction = 0.0

    def released_fraction(self, step: int) -> float:
        return regrowth.released_fraction(step, self._max_steps, self.schedule, self.end_fraction, self.stages)

    def on_step_begin(self, args, state, control, **kwargs):
        super().on_step_begin(args, state, control, **kwargs)
        if self.binding is not None:
            # The schedule follows the Trainer's step count, which also advances over steps the optimizer skipped
            # (fp16 overflow: no post-step hook ran), as a resumed run (bound at state.global_step) does.
            self._step = state.global_step

    def _prepare(self, binding, step, max_steps):
        if max_steps <= 0:
            raise ValueError("sparse_to_dense needs the number of training steps (max_steps) for its schedule")
        self._max_steps, self._step = max_steps, step
        self._fraction = self.released_fraction(step)
        self._level = regrowth.release_level(self._fraction)
        self._base_bits, self._ranks = {}, {}
        for entry in binding.entries:
            self._base_bits[id(entry)] = entry.bits
            seed = regrowth.parameter_seed(entry.name, self.seed)
            # ranks of the parameter's own bytes that this entry's elements fall in (a shard may start mid-byte)
            first, last = entry.offset // 8, (entry.offset + entry.numel + 7) // 8
            self._ranks[id(entry)] = regrowth.byte_ranks(last - first, first, seed, entry.bits.device)
            entry.bits = self._trainable_bits(entry, self._level)
        binding.mask_values()  # not-yet-released weights are 0 (a no-op after pruning, and on resume)
        binding.mask_state()
        self._rezero = not optim_facts.keeps_zero_grad_positions(binding.optimizer)

    def _post_step(self, binding):
        if self._rezero:
            binding.mask_values()
        if not binding.last_call:  # ZeRO steps its flat masters one call each: advance once per optimizer step
            return
        binding = binding.full
        self._step += 1
        self._fraction = self.released_fraction(self._step)
        level = regrowth.release_level(self._fraction)
        if level == self._level:
            return
        self._level = level
        for entry in binding.entries:
            old = entry.bits
            entry.bits = self._trainable_bits(entry, level)
            if self._rezero:
                # released weights are 0 and their moments 0 for the optimizers in optim_facts (gradients
                # were masked from the start); for any other, zero both explicitly at release
                keep_old = ~(entry.bits & ~old)
                scale_by_bits_(entry.tensor, keep_old)
                for state in entry.state_tensors(binding.optimizer):
                    scale_by_bits_(state, keep_old)

    def _trainable_bits(self, entry: MaskedTensor, level: int) -> torch.Tensor:
        base = self._base_bits[id(entry)]
        if level <= 0:
            return base
        released = regrowth.released_bits(self._ranks[id(entry)], level)
        if entry.offset % 8:  # bring the parameter's byte layout to the shard's
            released = slice_bits(released, entry.offset % 8, entry.numel)
        bits = base | released
        remainder = entry.numel % 8
        if remainder:  # padding bits past the last weight stay 0
            bits[-1] &= (1 << remainder) - 1
        return bits

    def resident_bytes(self) -> int:
        extra = 0
        if self.binding is not None:
            extra = sum(ranks.numel() for ranks in self._ranks.values())
        return super().resident_bytes() + extra

    def statistics(self) -> dict[str, float]:
        stats = super().statistics()
        if stats:
            stats["released_fraction"] = regrowth.release_level(self._fraction) / regrowth.LEVELS
        return stats


def _groups_of(entries: list[MaskedTensor]) -> list[dict]:
    return [group for group, _ in _entries_by_group(entries)]


def _entries_by_group(entries: list[MaskedTensor]) -> list[tuple[dict, list[MaskedTensor]]]:
    groups: dict[int, tuple[dict, list[MaskedTensor]]] = {}
    for entry in entries:
        groups.setdefault(id(entry.group), (entry.group, []))[1].append(entry)
    return list(groups.values())


REGIME_CALLBACKS: dict[str, type[MaskRegimeCallback]] = {
    callback.regime: callback for callback in (SparseRegimeCallback, FreezeRegimeCallback, SparseToDenseRegimeCallback)
}
