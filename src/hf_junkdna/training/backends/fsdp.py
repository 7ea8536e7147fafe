"""FSDP2 (``fully_shard``): masks on this rank's dim-0 shard of each DTensor parameter.

FSDP2 replaces the parameters by DTensors sharded ``Shard(0)`` over a 1-D mesh; the torch optimizer updates
them directly (there is no separate master) and its step hooks fire once per step. Rank r holds rows
``[offset, offset + rows)`` (``torch.chunk`` layout: trailing ranks may hold none), i.e. the contiguous flat
range starting at ``offset * row_size``; ``p.to_local()`` is a view of that shard, so in-place masking acts on
the parameter. ``register_post_accumulate_grad_hook`` fires on the sharded parameter after the
reduce-scatter (``param.register_hook`` never does), so gradient hooks mask the reduced local gradient before
clipping. Entries look the local tensor up on every access: FSDP2 may re-point it at lazy init.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ...masks import MaskSet
from ..mask_binding import BackendView, MaskedTensor, UnsupportedBackendError, unwrap_model
from . import all_reduce_sum
from .shards import local_bits


@dataclass(eq=False)
class DTensorShard(MaskedTensor):
    """This rank's local shard of a DTensor parameter ``param`` (``offset``: its first flat element)."""

    param: Any = None

    @property
    def tensor(self) -> torch.Tensor:
        return self.param.to_local()

    @tensor.setter
    def tensor(self, value) -> None:  # assigned by the dataclass __init__; always derived from param
        pass

    @property
    def owner(self) -> torch.Tensor:
        return self.param

    def grad(self) -> torch.Tensor | None:
        grad = self.param.grad
        if grad is None:
            return None
        return grad.to_local() if hasattr(grad, "to_local") else grad

    def state_tensors(self, optimizer) -> list[torch.Tensor]:
        local_shape = self.tensor.shape
        out = []
        for value in optimizer.state.get(self.param, {}).values():
            if hasattr(value, "to_local") and value.shape == self.param.shape:
                out.append(value.to_local())
            elif torch.is_tensor(value) and value.shape == local_shape and value.dim() > 0:
                out.append(value)
        return out

    @property
    def hook_tensor(self) -> torch.Tensor:
        return self.param


def shard_range(p) -> tuple[int, int]:
    """(first flat element, number of elements) of this rank's ``Shard(0)`` slice of DTensor ``p``."""
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if p.device_mesh.ndim != 1 or tuple(p.placements) != (Shard(0),):
        raise UnsupportedBackendError(
            f"FSDP2 parameter with placements {tuple(p.placements)} on a {p.device_mesh.ndim}-D mesh: masks are "
            "mapped for Shard(0) over a 1-D mesh only (fully_shard without HSDP or tensor parallelism)"
        )
    local_shape, global_offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
    row = math.prod(p.shape[1:])
    return global_offset[0] * row, math.prod(local_shape)


def fsdp2_view(model, chain: list, masks: MaskSet) -> BackendView:
    optimizer = chain[-1]
    names = {id(p): n for n, p in unwrap_model(model).named_parameters()}
    entries, seen, group_of_mesh = [], set(), None
    for group in optimizer.param_groups:
        for p in group["params"]:
            name = names.get(id(p))
            if name is None or name not in masks or name in seen:
                continue
            if not hasattr(p, "device_mesh"):
                raise UnsupportedBackendError(f"{name}: a plain tensor among FSDP2's DTensor parameters")
            seen.add(name)
            start, length = shard_range(p)
            group_of_mesh = p.device_mesh.get_group()
            bits = local_bits(masks, name, start, length).to(p.device)
            entries.append(DTensorShard(name, None, bits, group, offset=start, param=p))
    return BackendView(
        entries,
        grad_hooks=True,
        reduce_sum=lambda tensor: all_reduce_sum(tensor, group=group_of_mesh),
        untracked=[n for n in masks.names() if n not in seen],
        whole_parameters=False,
        sharded=True,
    )
