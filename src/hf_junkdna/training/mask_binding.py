"""Where a mask meets a parameter: the one module that knows which tensors an optimizer really updates.

Masks are enforced on the tensors THE OPTIMIZER UPDATES, through hooks on the innermost torch optimizer:

- a step pre-hook zeroes the gradients at non-trainable positions (this also covers backends whose
  parameter gradient hooks do not fire), then lets the regime act (e.g. take weight decay over);
- a step post-hook lets the regime re-zero pruned positions / restore frozen values in the updated tensors.

Where it is cheap and reliable, gradients are masked earlier by a post-accumulate-grad hook on the
parameter, so that gradient clipping (and logging of the norm) sees the gradient of the sparse model; the
pre-step hook then skips the tensors whose gradient was already masked.

What differs between backends is only *which tensors, with which slice of each mask*. That is one function
per backend in ``BACKENDS`` (``view(model, optimizer_chain, masks)``), returning a ``BackendView``: a list
of ``MaskedTensor`` (a tensor the optimizer updates in place, the packed bits of exactly its elements, its
param group and the offset of its first element in the full parameter) plus how the backend steps.

- "plain": one process; the optimizer's params are the module's parameters; gradient hooks are reliable.
- "ddp": the same tensors on every rank (replicated); the reducer rewrites ``p.grad`` after the hooks
  ran, so gradients are masked in the pre-step hook only.
- "deepspeed" (ZeRO-2 and ZeRO-3, optionally with the optimizer offloaded to the CPU; ``backends/deepspeed.py``):
  each entry is this rank's fragment of the flat fp32 master partition; the inner optimizer is called once
  per param group (ZeRO-2) or sub-group (ZeRO-3), so each hook call acts on the fragments of the flat master
  being stepped. Reduced local gradient fragments are masked before DeepSpeed computes its clipping norm.
- "fsdp2" (``backends/fsdp.py``): each entry is this rank's dim-0 shard of a DTensor parameter.

Under the sharded backends each rank binds only the bits of its own shards (``backends/shards.py``).

Only packed masks stay resident (1 bit per weight; on an accelerator one device copy of them); bool or
float masks are expanded transiently, one tensor at a time (``bitops``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..masks import MaskSet
from .bitops import Workspace, scale_by_bits_


class UnsupportedBackendError(RuntimeError):
    """The model/optimizer run under a backend (or a configuration of one) whose masks this module cannot place."""


@dataclass(eq=False)
class MaskedTensor:
    """A tensor an optimizer updates in place and the packed keep-bits of exactly its elements.

    ``bits`` packs ``tensor.numel()`` entries in the tensor's row-major order (1 = trainable / kept);
    ``offset`` is the flat index of the tensor's first element within the full parameter ``name`` (0
    unless the tensor is a shard). Backends whose gradients or optimizer state live elsewhere subclass
    this and override ``grad`` / ``state_tensors`` / ``hook_tensor`` / ``owner``.
    """

    name: str
    tensor: torch.Tensor
    bits: torch.Tensor
    group: dict
    offset: int = 0
    grad_masked: bool = field(default=False, repr=False)  # set by a gradient hook since the last step

    @property
    def numel(self) -> int:
        return self.tensor.numel()

    @property
    def owner(self) -> torch.Tensor:
        """The tensor that sits in the optimizer's param group (a flat master, a DTensor) while it steps."""
        return self.tensor

    def grad(self) -> torch.Tensor | None:
        return self.tensor.grad

    def state_tensors(self, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
        """The optimizer's per-element state for this tensor (moments, momentum buffers)."""
        state = optimizer.state.get(self.tensor, {})
        return [value for value in state.values() if torch.is_tensor(value) and value.shape == self.tensor.shape]

    @property
    def hook_tensor(self) -> torch.Tensor | None:
        """The leaf whose post-accumulate-grad hook sees this tensor's final gradient (None: no such hook)."""
        return self.tensor


@dataclass
class BackendView:
    entries: list[MaskedTensor]
    grad_hooks: bool  # do post-accumulate-grad hooks on entry.hook_tensor see the final (reduced) gradient?
    reduce_sum: Callable[[torch.Tensor], torch.Tensor] = lambda tensor: tensor  # sum of a count over shards
    untracked: list[str] = field(default_factory=list)  # masked parameters the optimizer does not update
    # entries are whole parameters that sit in the optimizer's param groups themselves (regimes may then move
    # them between groups); False for flat master fragments and DTensor shards
    whole_parameters: bool = True
    sharded: bool = False  # each rank holds only part of each mask (its bits are copies, the full set can go)
    # None: one inner step() call updates every entry. Otherwise the inner optimizer is called once per flat
    # master and the hooks act on the entries whose ``owner`` is in its param groups; ``last_call(optimizer)``
    # says whether a call is the last of the optimizer step
    last_call: Callable[[torch.optim.Optimizer], bool] | None = None
    # extra machinery (e.g. masking reduced gradients before a backend's own clipping): called at attach with
    # the binding, returns handles with .remove()
    install: Callable[[MaskBinding], list] | None = None
    # the binding masks gradients before clipping itself (install); SparseTrainer's clip-time masking is moot
    masks_before_clip: bool = False


def optimizer_chain(optimizer) -> list:
    """``[optimizer, optimizer.optimizer, ...]``: accelerate (and DeepSpeed) wrap the torch optimizer."""
    chain = [optimizer]
    while hasattr(chain[-1], "optimizer") and chain[-1].optimizer is not chain[-1] and len(chain) < 8:
        chain.append(chain[-1].optimizer)
    return chain


def unwrap_model(model: nn.Module) -> nn.Module:
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model, keep_torch_compile=False)


def _world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def is_fsdp1(model: nn.Module) -> bool:
    """FSDP1 anywhere: the root wrapper (which unwrapping strips), or auto-wrapped blocks deep inside."""
    return any(type(m).__name__ == "FullyShardedDataParallel" for m in model.modules()) or any(
        type(p).__name__ == "FlatParameter" for p in model.parameters()
    )


def refuse_fsdp1(model: nn.Module) -> None:
    """Raise before anything else looks at parameter names (FSDP1 renames and flattens them)."""
    if is_fsdp1(model):
        _fsdp1_view(model, [], MaskSet())


def detect_backend(model: nn.Module, chain: list) -> str:
    if any(type(opt).__module__.startswith("deepspeed") for opt in chain) or hasattr(model, "ds_config"):
        return "deepspeed"
    if any(type(p).__name__ == "DTensor" for p in model.parameters()):
        return "fsdp2"
    if is_fsdp1(model):
        return "fsdp1"
    return "ddp" if _world_size() > 1 else "plain"


def _replicated_view(model, chain, masks: MaskSet, grad_hooks: bool) -> BackendView:
    """Every rank updates the module's own parameters, whole (one process, or DDP)."""
    from .backends.shards import ShardMaskSet

    optimizer = chain[-1]
    names = {id(parameter): name for name, parameter in unwrap_model(model).named_parameters()}
    entries, seen = [], set()
    for group in optimizer.param_groups:
        for tensor in group["params"]:
            name = names.get(id(tensor))
            if name is None or name not in masks or name in seen:
                continue
            seen.add(name)
            if isinstance(masks, ShardMaskSet):  # a rank that never held the full set reads its masks now
                bits = masks.local_bits(name, 0, tensor.numel())
            else:
                bits = masks.packed(name)
            if bits.device != tensor.device:
                bits = bits.to(tensor.device)  # one device copy of the packed bits, not of a bool mask
            entries.append(MaskedTensor(name, tensor, bits, group))
    return BackendView(entries, grad_hooks=grad_hooks, untracked=[n for n in masks.names() if n not in seen])


def _deepspeed_view(model, chain, masks):
    from .backends.deepspeed import zero_view

    return zero_view(model, chain, masks)


def _fsdp2_view(model, chain, masks):
    from .backends.fsdp import fsdp2_view

    return fsdp2_view(model, chain, masks)


def _fsdp1_view(model, chain, masks):
    raise UnsupportedBackendError(
        "masks cannot be enforced under FSDP1 (FullyShardedDataParallel): its optimizer updates flattened "
        "FlatParameter shards this library does not map. Use FSDP2 (fsdp_version: 2 in the accelerate config, "
        "or fsdp_config={'version': 2}), DeepSpeed ZeRO-2/3, or DDP."
    )


BACKENDS: dict[str, Callable[[nn.Module, list, MaskSet], BackendView]] = {
    "plain": lambda model, chain, masks: _replicated_view(model, chain, masks, grad_hooks=True),
    "ddp": lambda model, chain, masks: _replicated_view(model, chain, masks, grad_hooks=False),
    "deepspeed": _deepspeed_view,
    "fsdp2": _fsdp2_view,
    "fsdp1": _fsdp1_view,
}


class _Removable:
    def __init__(self, undo: Callable[[], None]):
        self._undo = undo

    def remove(self) -> None:
        if self._undo is not None:
            self._undo()
            self._undo = None


class MaskBinding:
    """Masks bound to the tensors one optimizer updates, with the hooks that enforce them.

    ``pre_step(binding)`` and ``post_step(binding)`` are the regime's; the binding masks the gradients
    before calling ``pre_step`` and clears the per-step flags after ``post_step``. Under backends whose
    inner optimizer is called once per flat master (ZeRO), each call gets a copy of the binding restricted
    to the entries being stepped, with ``last_call`` True only on the last call of the optimizer step;
    ``binding.full`` is always the whole binding.
    """

    def __init__(self, model: nn.Module, optimizer, masks: MaskSet, use_grad_hooks: bool = True):
        chain = optimizer_chain(optimizer)
        self.optimizer: torch.optim.Optimizer = chain[-1]
        if not isinstance(self.optimizer, torch.optim.Optimizer):
            raise TypeError(f"expected a torch optimizer inside {type(optimizer).__name__}, found {self.optimizer!r}")
        refuse_fsdp1(model)  # the wrapped model: unwrapping strips a root FSDP1 wrapper
        from .backends.deepspeed import check_deepspeed_config, current_deepspeed_config

        deepspeed_config = current_deepspeed_config(model)
        if deepspeed_config:  # also where the optimizer chain does not show DeepSpeed (stage 0, a torch optimizer)
            check_deepspeed_config(deepspeed_config)
        self.backend = detect_backend(unwrap_model(model), chain)
        view = BACKENDS[self.backend](model, chain, masks)
        self.entries = view.entries
        self.untracked = view.untracked
        self.reduce_sum = view.reduce_sum
        self.whole_parameters = view.whole_parameters
        self.sharded = view.sharded
        self.masks_before_clip = view.masks_before_clip
        self._view = view
        self.grad_hooks = bool(use_grad_hooks and view.grad_hooks)
        self.last_call = True
        self.full = self
        self._handles: list = []
        self._gradient_state = None
        self.workspace = Workspace()  # scratch for expanding bits; dropped with the binding

    # ---------------------------------------------------------------- hooks
    def attach(self, pre_step: Callable[[MaskBinding], None], post_step: Callable[[MaskBinding], None]) -> None:
        self.detach()

        def pre_hook(optimizer, args, kwargs):
            stepping = self.stepping(optimizer)
            with torch.no_grad():
                stepping.mask_grads()
                pre_step(stepping)

        def post_hook(optimizer, args, kwargs):
            stepping = self.stepping(optimizer)
            with torch.no_grad():
                post_step(stepping)
            stepping.clear_marks()

        self._handles.append(self.optimizer.register_step_pre_hook(pre_hook))
        self._handles.append(self.optimizer.register_step_post_hook(post_hook))
        if self._view.install is not None:
            self._handles.extend(self._view.install(self))
        if self.grad_hooks:
            from accelerate.state import GradientState

            self._gradient_state = GradientState()  # shared state: tells whether this backward ends a step
            for entry in self.entries:
                if entry.hook_tensor is not None and entry.hook_tensor.requires_grad:
                    self._handles.append(entry.hook_tensor.register_post_accumulate_grad_hook(self._grad_hook(entry)))

    def stepping(self, optimizer: torch.optim.Optimizer) -> MaskBinding:
        """The binding restricted to the entries this inner ``step()`` call updates (itself when it is all)."""
        if self._view.last_call is None:
            return self
        active = {id(tensor) for group in optimizer.param_groups for tensor in group["params"]}
        part = copy.copy(self)
        part.entries = [entry for entry in self.entries if id(entry.owner) in active]
        part.last_call = bool(self._view.last_call(optimizer))
        return part

    def _grad_hook(self, entry: MaskedTensor):
        def hook(tensor: torch.Tensor) -> None:
            # Mask once per optimizer step, at the backward that completes it (gradients add up linearly).
            sync = self._gradient_state is None or self._gradient_state.sync_gradients
            grad = entry.grad()
            if sync and grad is not None:
                with torch.no_grad():
                    scale_by_bits_(grad, entry.bits, workspace=self.workspace)
            entry.grad_masked = bool(sync)

        return hook

    def clear_marks(self) -> None:
        """Forget which gradients were masked (a new step's gradients are coming)."""
        for entry in self.entries:
            entry.grad_masked = False

    def detach(self) -> None:
        for handle in reversed(self._handles):
            handle.remove()
        self._handles.clear()

    # ------------------------------------------------------------ operations
    @torch.no_grad()
    def mask_grads(self, mark: bool = False) -> None:
        """Zero the gradients at positions whose bit is clear (skipping those already masked this step).

        ``mark=True`` records them as masked, so the pre-step hook skips them: for callers that mask right
        before gradient clipping (``SparseTrainer``), when no further gradient will be added this step.
        """
        for entry in self.entries:
            if entry.grad_masked:
                continue
            grad = entry.grad()
            if grad is not None:
                scale_by_bits_(grad, entry.bits, workspace=self.workspace)
            entry.grad_masked = mark

    @torch.no_grad()
    def mask_state(self, entries: list[MaskedTensor] | None = None, bits_of=None) -> None:
        """Zero the optimizer state (moments) at positions whose bit is clear; ``bits_of(entry)`` overrides."""
        for entry in self.entries if entries is None else entries:
            bits = entry.bits if bits_of is None else bits_of(entry)
            for state in entry.state_tensors(self.optimizer):
                scale_by_bits_(state, bits, workspace=self.workspace)

    @torch.no_grad()
    def mask_values(self, entries: list[MaskedTensor] | None = None) -> None:
        """Zero the updated tensors at positions whose bit is clear."""
        for entry in self.entries if entries is None else entries:
            scale_by_bits_(entry.tensor, entry.bits, workspace=self.workspace)

    @torch.no_grad()
    def count(self) -> tuple[int, int, int]:
        """(weights, zeros, set bits) over the bound tensors, summed over shards (a collective when sharded)."""
        from .bitops import count_set

        numbers = torch.zeros(3, dtype=torch.float64)
        for entry in self.entries:
            numbers[0] += entry.numel
            numbers[1] += int((entry.tensor == 0).sum())
            numbers[2] += count_set(entry.bits)
        numbers = self.reduce_sum(numbers)
        return int(numbers[0]), int(numbers[1]), int(numbers[2])

    def resident_bits_bytes(self) -> int:
        """Bytes of the packed bits the entries hold (on their tensors' devices)."""
        return sum(entry.bits.numel() for entry in self.entries)
