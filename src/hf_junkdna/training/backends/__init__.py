"""Per-backend halves of ``mask_binding``: where each rank's shard of a mask meets what the optimizer updates.

- ``shards``: packed-bit slices at any offset, and ``ShardMaskSet`` (the masks a non-writing rank keeps);
- ``deepspeed``: ZeRO-2/3 fragments of the fp32 master, the config check, pruning a ZeRO-3 partitioned model;
- ``fsdp``: FSDP2 DTensor ``Shard(0)`` shards.

``mask_binding.BACKENDS`` is still the one table from backend name to view; these modules fill it.
"""

from __future__ import annotations

import torch


def comm_device(group=None) -> torch.device:
    """The device collectives of ``group`` take tensors on (the current accelerator for NCCL and the like)."""
    import torch.distributed as dist

    if dist.get_backend(group) == "gloo":
        return torch.device("cpu")
    accelerator = torch.accelerator.current_accelerator() if hasattr(torch, "accelerator") else None
    return accelerator if accelerator is not None else torch.device("cuda", torch.cuda.current_device())


def all_reduce_sum(tensor: torch.Tensor, group=None) -> torch.Tensor:
    """Sum of ``tensor`` over the ranks of ``group`` (a new tensor on the input's device)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    moved = tensor.to(comm_device(group), copy=True)
    dist.all_reduce(moved, group=group)
    return moved.to(tensor.device)
