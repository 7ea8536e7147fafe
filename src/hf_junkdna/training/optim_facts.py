"""What an optimizer provably does to a weight whose gradient and optimizer state are zero.

The regimes use these facts to skip work: for the optimizers listed here, a position whose gradient is 0
and whose moments are 0 gets an update of exactly 0 apart from weight decay (Adam: ``m = 0`` so
``lr * m / (sqrt(v) + eps) = 0`` for ``eps > 0``; SGD: the momentum buffer stays 0). A pruned weight is
0, so weight decay leaves it at 0 too, and no re-zeroing after the step is needed. A frozen weight is
not 0, so decay moves it: with decoupled decay (AdamW) the regime takes the decay over for that group and
applies it to the trainable positions only. Every other optimizer (or setting) gets the general path:
re-zero / restore after each step. Only exact classes count: a subclass may change the update.
"""

from __future__ import annotations

import torch

_ADAM_FAMILY = (torch.optim.Adam, torch.optim.AdamW)
_ZERO_KEEPING = (*_ADAM_FAMILY, torch.optim.SGD)


def keeps_zero_grad_positions(optimizer: torch.optim.Optimizer) -> bool:
    """True if positions with zero grad and zero state get exactly no update from the step (decay aside)."""
    if type(optimizer) not in _ZERO_KEEPING:
        return False
    if type(optimizer) in _ADAM_FAMILY:
        return all(_is_positive(group.get("eps", 0.0)) for group in optimizer.param_groups)
    return True


def decouples_weight_decay(optimizer: torch.optim.Optimizer, group: dict) -> bool:
    """True if ``group``'s weight decay is ``p *= 1 - lr * wd`` applied apart from the gradient (AdamW)."""
    if type(optimizer) not in _ADAM_FAMILY:
        return False
    return bool(group.get("decoupled_weight_decay", type(optimizer) is torch.optim.AdamW))


def weight_decay(group: dict) -> float:
    value = group.get("weight_decay", 0.0)
    return float(value.item() if torch.is_tensor(value) else value)


def learning_rate(group: dict) -> float:
    value = group["lr"]
    return float(value.item() if torch.is_tensor(value) else value)


def _is_positive(value) -> bool:
    return float(value.item() if torch.is_tensor(value) else value) > 0.0
