"""Which parameters of a transformers model are prunable.

Prunable = the weight matrices of ``nn.Linear`` (and transformers' ``Conv1D``, as in GPT-2) layers that
sit inside the repeated transformer blocks. Embeddings, the classifier/score head, ``lm_head``, poolers
and any weight tied to an embedding are never pruned: they live outside the blocks, and tied weights are
caught by storage identity as well.

The blocks are found structurally (every ``nn.ModuleList`` whose children share one class and contain a
linear layer), so this works for encoders, decoders and encoder-decoders without a per-architecture table.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

try:  # transformers' Conv1D stores the weight as (in_features, out_features)
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a hard dependency, this is belt and braces
    Conv1D = ()


logger = logging.getLogger(__name__)


class NoPrunableWeightsError(ValueError):
    """The model (after include/ignore filters) has no weight this library may prune."""


@dataclass(frozen=True)
class PrunableWeight:
    """One prunable weight matrix.

    ``input_dim`` is the axis that indexes input features: 1 for ``nn.Linear`` (out, in) and 0 for
    ``Conv1D`` (in, out). Scores and N:M groups are computed on the (out, in) view, see ``as_out_in``.
    """

    name: str  # as in model.named_parameters()
    module_name: str
    module: nn.Module
    block_index: int  # position of the enclosing block in model order (for layer-by-layer calibration)
    input_dim: int

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    def as_out_in(self, tensor: torch.Tensor) -> torch.Tensor:
        """A view of a tensor with this weight's shape as (out_features, in_features)."""
        return tensor if self.input_dim == 1 else tensor.t()

    @property
    def in_features(self) -> int:
        return self.weight.shape[self.input_dim]


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (bool(Conv1D) and isinstance(module, Conv1D))


def find_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The transformer blocks in forward order: children of ModuleLists whose every child holds linear layers.

    Nested lists (e.g. experts inside a block) are not blocks of their own: only the outermost matching
    lists count.
    """
    blocks: list[tuple[str, nn.Module]] = []
    claimed: list[str] = []
    for list_name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if any(list_name.startswith(prefix + ".") for prefix in claimed):
            continue
        # Blocks may differ in class (hybrid attention/SSM stacks such as Jamba), but each must be a
        # container that holds linear layers: a list of bare Linear layers is not a stack of blocks.
        if any(_is_linear(child) for child in module):
            continue
        if not all(any(_is_linear(sub) for sub in child.modules()) for child in module):
            continue
        claimed.append(list_name)
        blocks.extend(
            (f"{list_name}.{index}" if list_name else str(index), child) for index, child in enumerate(module)
        )
    return blocks


def _embedding_storages(model: nn.Module) -> set[int]:
    pointers = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            pointers.add(module.weight.data_ptr())
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        try:
            embedding = getattr(model, getter)() if hasattr(model, getter) else None
        except (NotImplementedError, AttributeError):
            embedding = None
        if embedding is not None and getattr(embedding, "weight", None) is not None:
            pointers.add(embedding.weight.data_ptr())
    pointers.discard(0)  # meta / empty tensors all report 0
    return pointers


def _warn_skipped_matrices(blocks: list[tuple[str, nn.Module]], found: list[PrunableWeight]) -> None:
    """Say so when a block holds weight matrices this library does not prune (e.g. fused MoE experts stored
    as 3-D parameters, SSM projections): pruning silently less than the user expects would mislead."""
    covered = {id(weight.weight) for weight in found}
    skipped = [
        f"{block_name}.{name}"
        for block_name, block in blocks
        for name, parameter in block.named_parameters()
        if parameter.dim() >= 2 and id(parameter) not in covered and parameter.numel() >= 4096
    ]
    if skipped:
        logger.warning(
            "%d weight tensors inside the blocks are not Linear/Conv1D weights and will not be pruned, e.g. %s",
            len(skipped),
            skipped[:3],
        )


def find_prunable_weights(
    model: nn.Module, include: Iterable[str] | None = None, ignore: Iterable[str] | None = None
) -> list[PrunableWeight]:
    """Prunable weights in model order, filtered by ``include``/``ignore`` regexes on parameter names.

    Raises a ValueError naming the pattern when an include/ignore pattern matches no prunable weight, and
    ``NoPrunableWeightsError`` when nothing is left to prune.
    """
    blocks = find_blocks(model)
    tied = _embedding_storages(model)
    found: list[PrunableWeight] = []
    for block_index, (block_name, block) in enumerate(blocks):
        for sub_name, module in block.named_modules():
            if not _is_linear(module) or module.weight is None:
                continue
            if module.weight.data_ptr() in tied and module.weight.data_ptr() != 0:
                continue
            module_name = f"{block_name}.{sub_name}" if sub_name else block_name
            input_dim = 0 if (Conv1D and isinstance(module, Conv1D)) else 1
            found.append(PrunableWeight(f"{module_name}.weight", module_name, module, block_index, input_dim))
    _warn_skipped_matrices(blocks, found)
    candidates = found
    for option, patterns in (("include", include), ("ignore", ignore)):
        for pattern in patterns or ():
            if not any(re.search(pattern, weight.name) for weight in candidates):
                raise ValueError(
                    f"{option} pattern {pattern!r} matches no prunable weight; prunable weights look like "
                    f"{[weight.name for weight in candidates[:3]]}"
                )
    if include:
        found = [w for w in found if any(re.search(p, w.name) for p in include)]
    if ignore:
        found = [w for w in found if not any(re.search(p, w.name) for p in ignore)]
    if not found:
        raise NoPrunableWeightsError(
            f"{type(model).__name__} has no prunable weights (Linear/Conv1D weights inside repeated transformer "
            "blocks" + (", after include/ignore filters)" if (include or ignore) else ")")
        )
    return found
